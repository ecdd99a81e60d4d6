#!/usr/bin/env python
"""Train and evaluate a LazyConfig (``configs/**/*.py``, or Detectron2's model-zoo ``.py`` configs)
with DropBlock's schedule hook (the logic is in :mod:`dropblock_det.tools.lazyconfig_train_net`).

Examples:
    python tools/lazyconfig_train_net.py \
        --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.py train.device=cpu
    python tools/lazyconfig_train_net.py --coco-dataset my_train train.json images/ \
        --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.py train.device=cpu \
        dataloader.train.dataset.names=my_train model.num_classes=2
    python tools/lazyconfig_train_net.py --eval-only --config-file <cfg> \
        train.init_checkpoint=<run>/model_final.pth

A bad flag, config value, dataset file or a setting the model builders refuse stops the run before
anything is written, with a message naming it and exit status 2.
"""

import sys

from dropblock_det.tools.lazyconfig_train_net import cli

if __name__ == "__main__":
    sys.exit(cli())
