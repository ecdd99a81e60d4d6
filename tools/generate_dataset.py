#!/usr/bin/env python
"""Generate the embedded digits detection dataset, with a preview.

The command line of :mod:`dropblock_det.tools.generate_dataset`; ``--help`` shows its usage.
"""

import sys

from dropblock_det.tools.generate_dataset import main

if __name__ == "__main__":
    sys.exit(main())
