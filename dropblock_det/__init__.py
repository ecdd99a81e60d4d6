"""dropblock_det: DropBlock (Ghiasi, Lin, Le, NeurIPS 2018) for Detectron2 detectors.

Importing the package registers its backbones, meta-architecture and RoI heads in Detectron2's
registries, as Detectron2's own projects do, and has no other side effect. The training tools
(trainer, embedded datasets, evaluation, reports, search) live in :mod:`dropblock_det.tools`.
"""

from . import modeling  # noqa: F401  (registrations on import)
from .config import add_dropblock_config, dropblock_settings, validate_dropblock_config
from .hooks import DropBlockSchedule
from .layers import DropBlock2d, drop_block_2d
from .modeling import check_placements

__all__ = [
    "DropBlock2d",
    "DropBlockSchedule",
    "add_dropblock_config",
    "check_placements",
    "drop_block_2d",
    "dropblock_settings",
    "validate_dropblock_config",
]
__version__ = "0.1.0"
