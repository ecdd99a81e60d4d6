"""dropblock_det: DropBlock (Ghiasi, Lin, Le, NeurIPS 2018) for Detectron2 detectors.

Importing the package registers its backbones and meta-architecture in Detectron2's registries,
as Detectron2's own projects do, and has no other side effect. The training tools (trainer,
embedded datasets, evaluation, reports, search) live in :mod:`dropblock_det.tools`.
"""

from . import modeling  # noqa: F401  (registrations on import)
from .config import add_dropblock_config, validate_dropblock_config
from .hooks import DropBlockSchedule
from .layers import DropBlock2d, drop_block_2d

__all__ = [
    "DropBlock2d",
    "DropBlockSchedule",
    "add_dropblock_config",
    "drop_block_2d",
    "validate_dropblock_config",
]
__version__ = "0.1.0"
