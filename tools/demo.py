#!/usr/bin/env python
"""The main job: RetinaNet without and with DropBlock on the embedded dataset, compared.

The command line of :mod:`dropblock_det.tools.demo`; ``--help`` shows its usage.
"""

import sys

from dropblock_det.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
