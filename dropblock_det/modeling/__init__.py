"""DropBlock in Detectron2 models: the placements, the registered builders and the one check.

Importing it registers the backbones ``build_retinanet_resnet_fpn_dropblock_backbone``,
``build_resnet_fpn_dropblock_backbone`` and ``build_resnet_dropblock_backbone``, the
meta-architecture ``DropBlockRetinaNet`` and the RoI heads ``DropBlockFastRCNNConvFCHead`` and
``DropBlockMaskRCNNConvUpsampleHead``. One file per Detectron2 part, as in ``projects/TridentNet``;
:mod:`.groups` builds each DropBlock for its group and checks a built model.
"""

from .fpn import (
    DropBlockFPN,
    build_resnet_fpn_dropblock_backbone,
    build_retinanet_resnet_fpn_dropblock_backbone,
    dropblock_fpn,
)
from .groups import check_placements, dropblock_modules, group_keep_prob
from .resnet import (
    DropBlockBasicBlock,
    DropBlockBottleneckBlock,
    build_resnet_dropblock_backbone,
    make_dropblock_stages,
)
from .retinanet import DropBlockRetinaNet, retinanet_head
from .roi_heads import (
    DropBlockFastRCNNConvFCHead,
    DropBlockMaskRCNNConvUpsampleHead,
    roi_dropblock_factory,
)

__all__ = [
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "DropBlockFPN",
    "DropBlockFastRCNNConvFCHead",
    "DropBlockMaskRCNNConvUpsampleHead",
    "DropBlockRetinaNet",
    "build_resnet_dropblock_backbone",
    "build_resnet_fpn_dropblock_backbone",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "check_placements",
    "dropblock_fpn",
    "dropblock_modules",
    "group_keep_prob",
    "make_dropblock_stages",
    "retinanet_head",
    "roi_dropblock_factory",
]
