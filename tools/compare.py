#!/usr/bin/env python
"""Compare training runs: box AP table (with the paper's rows) and figures.

The command line of :mod:`dropblock_det.tools.compare`; ``--help`` shows its usage.
"""

import sys

from dropblock_det.tools.compare import main

if __name__ == "__main__":
    sys.exit(main())
