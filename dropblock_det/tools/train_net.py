"""The command line of ``tools/train_net.py``: Detectron2's parser and ``launch`` over :mod:`.trainer`.

The inputs are checked once per machine before ``launch``, then :func:`~.trainer.main` runs on
every rank.
"""

import sys

from detectron2.engine import default_argument_parser, launch

from . import trainer
from .validation import InputError

__all__ = ["add_coco_dataset_argument", "build_parser", "cli", "parse_command_line"]


def build_parser():
    """Detectron2's ``default_argument_parser`` plus ``--coco-dataset``."""
    return add_coco_dataset_argument(default_argument_parser())


def add_coco_dataset_argument(parser):
    """Add ``--coco-dataset NAME JSON_FILE IMAGE_ROOT`` (repeatable) to ``parser`` and return it."""
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format dataset (instances json and the folder its 'file_name' "
        "entries are relative to) under NAME, for DATASETS.TRAIN/TEST \"('NAME',)\" (yaml) or "
        "dataloader.train.dataset.names=NAME (LazyConfig); repeatable. Give it before the config "
        "options.",
    )
    return parser


def parse_command_line(argv=None):
    """Parse ``argv`` (None: ``sys.argv``) as either tool's command line; argparse exits on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if "--coco-dataset" in (args.opts or []):
        # argparse hands everything after the first config option to opts.
        parser.error("--coco-dataset must come before the config options (KEY VALUE or key=value).")
    return args


def cli(argv=None, *, main=trainer.main, check_inputs=trainer.check_inputs, tool="train_net.py"):
    """Parse the command line, check the inputs, then run ``main`` on every rank.

    ``main(args)`` must be picklable by name; ``check_inputs(args)`` raises :class:`InputError`,
    printed after ``tool``'s name. Returns the exit status (2 for a bad flag, value or file).
    """
    args = parse_command_line(argv)
    try:
        check_inputs(args)
    except InputError as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
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
