"""DropBlock in Detectron2 models: the placements, the registered builders and the one check.

Importing this package registers the backbones ``build_retinanet_resnet_fpn_dropblock_backbone``,
``build_resnet_fpn_dropblock_backbone`` and ``build_resnet_dropblock_backbone``, the
meta-architecture ``DropBlockRetinaNet`` and the RoI heads ``DropBlockFastRCNNConvFCHead`` and
``DropBlockMaskRCNNConvUpsampleHead`` in Detectron2's registries. One file per Detectron2 part, as
in ``projects/TridentNet``: :mod:`.resnet`, :mod:`.fpn`, :mod:`.retinanet`, :mod:`.roi_heads`;
:mod:`.groups` builds each DropBlock for its group and checks a built model
(:func:`check_placements`).
"""

from ..config import HEAD_GROUP, ROI_BOX_GROUP, ROI_MASK_GROUP
from .fpn import (
    DropBlockFPN,
    build_resnet_fpn_dropblock_backbone,
    build_retinanet_resnet_fpn_dropblock_backbone,
    dropblock_fpn,
)
from .groups import (
    DROPBLOCK_BACKBONES,
    build_dropblock,
    check_placements,
    dropblock_modules,
    group_keep_prob,
    make_dropblock_factory,
    set_children,
)
from .resnet import (
    DropBlockBasicBlock,
    DropBlockBottleneckBlock,
    build_resnet_dropblock_backbone,
    make_dropblock_stages,
)
from .retinanet import DropBlockRetinaNet, add_head_dropblocks, retinanet_head
from .roi_heads import (
    DropBlockFastRCNNConvFCHead,
    DropBlockMaskRCNNConvUpsampleHead,
    roi_dropblock_factory,
)

__all__ = [
    "DROPBLOCK_BACKBONES",
    "HEAD_GROUP",
    "ROI_BOX_GROUP",
    "ROI_MASK_GROUP",
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "DropBlockFPN",
    "DropBlockFastRCNNConvFCHead",
    "DropBlockMaskRCNNConvUpsampleHead",
    "DropBlockRetinaNet",
    "add_head_dropblocks",
    "build_dropblock",
    "build_resnet_dropblock_backbone",
    "build_resnet_fpn_dropblock_backbone",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "check_placements",
    "dropblock_fpn",
    "dropblock_modules",
    "group_keep_prob",
    "make_dropblock_factory",
    "make_dropblock_stages",
    "retinanet_head",
    "roi_dropblock_factory",
    "set_children",
]
