#!/usr/bin/env python
"""Search the best DropBlock setting of a Detectron2 config with Optuna; see README.md.

A thin command line over :mod:`dropblock_det.tools.tune` (``pip install -e .[tune]``).

Example:
    python tools/tune.py --config-file configs/search/tiny_search.yaml --n-trials 6 \
        --space configs/search/tiny_space.yaml MODEL.DEVICE cpu
"""

import sys

from dropblock_det.tools.tune import main

if __name__ == "__main__":
    sys.exit(main())
