#!/usr/bin/env python
"""Draw DropBlock masks over an image at the feature-map resolution of ResNet stages.

The command line of :mod:`dropblock_det.tools.visualize_dropblock`; ``--help`` shows its usage.
"""

import sys

from dropblock_det.tools.visualize_dropblock import main

if __name__ == "__main__":
    sys.exit(main())
