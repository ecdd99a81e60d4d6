#!/usr/bin/env python
"""Train and evaluate RetinaNet with DropBlock: Detectron2's train_net, with the logic in
:mod:`dropblock_det.engine`.

Examples:
    python tools/train_net.py --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.yaml \
        MODEL.DEVICE cpu
    python tools/train_net.py --num-gpus 8 \
        --config-file configs/COCO-Paper/retinanet_R_50_FPN_scratch_150ep_dropblock_bs7.yaml
    python tools/train_net.py --eval-only --config-file <cfg> MODEL.WEIGHTS <run>/model_final.pth

A bad flag, config value or dataset file stops the run before anything is written, with a message
naming it and exit status 2.
"""

import os
import sys

# Importable from a plain checkout too, not only after `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from dropblock_det.engine import check_inputs, main  # noqa: E402
from dropblock_det.validation import InputError  # noqa: E402


def cli(argv=None):
    """Parse the command line, check the inputs, then run :func:`main` on every rank.

    Args:
        argv (list[str] or None): the arguments; None reads ``sys.argv``.

    Returns:
        int: the exit status.
    """
    args = default_argument_parser().parse_args(argv)
    try:
        check_inputs(args)
    except InputError as error:
        print(f"train_net.py: error: {error}", file=sys.stderr)
        return 2
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
