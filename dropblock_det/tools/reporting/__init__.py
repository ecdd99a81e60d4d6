"""Reports on training runs: the comparison table and figures, and DropBlock mask pictures.

``write_report`` is behind ``tools/compare.py``, ``draw_dropblock_masks`` behind
``tools/visualize_dropblock.py``.
"""

from .masks import draw_dropblock_masks
from .report import write_report

__all__ = ["draw_dropblock_masks", "write_report"]
