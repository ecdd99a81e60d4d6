#!/usr/bin/env python
"""Train and evaluate a Detectron2 detector with DropBlock (Detectron2's train_net, with the logic
in :mod:`dropblock_det.tools.train_net`).

Examples:
    python tools/train_net.py --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.yaml \
        MODEL.DEVICE cpu
    python tools/train_net.py --num-gpus 8 \
        --config-file configs/COCO-Paper/retinanet_R_50_FPN_scratch_150ep_dropblock_bs7.yaml
    python tools/train_net.py --eval-only --config-file <cfg> MODEL.WEIGHTS <run>/model_final.pth

A bad flag, config value, dataset file or a setting the model builders refuse stops the run before
anything is written, with a message naming it and exit status 2.
"""

import sys

from dropblock_det.tools.train_net import cli

if __name__ == "__main__":
    sys.exit(cli())
