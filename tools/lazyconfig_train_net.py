#!/usr/bin/env python
"""Train a LazyConfig (``configs/**/*.py``) with DropBlock's schedule hook.

The command line of :mod:`dropblock_det.tools.lazyconfig_train_net`; ``--help`` shows its usage.
"""

import sys

from dropblock_det.tools.lazyconfig_train_net import cli

if __name__ == "__main__":
    sys.exit(cli())
