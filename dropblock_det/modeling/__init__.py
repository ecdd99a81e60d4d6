"""DropBlock in Detectron2 models: the placements and the registered builders.

Importing this package registers the backbones ``build_retinanet_resnet_fpn_dropblock_backbone``,
``build_resnet_fpn_dropblock_backbone`` and ``build_resnet_dropblock_backbone``, the
meta-architecture ``DropBlockRetinaNet`` and the RoI heads ``DropBlockFastRCNNConvFCHead`` and
``DropBlockMaskRCNNConvUpsampleHead`` in Detectron2's registries.
"""

from .backbone import (
    DROPBLOCK_BACKBONES,
    build_dropblock_resnet,
    build_resnet_dropblock_backbone,
    build_resnet_fpn_dropblock_backbone,
    build_retinanet_resnet_fpn_dropblock_backbone,
    dropblock_fpn,
    make_dropblock_stages,
)
from .meta_arch import DropBlockRetinaNet
from .placements import (
    DROPBLOCK_GROUP_ATTR,
    HEAD_GROUP,
    DropBlockBasicBlock,
    DropBlockBottleneckBlock,
    DropBlockFastRCNNConvFCHead,
    DropBlockFPN,
    DropBlockMaskRCNNConvUpsampleHead,
    DropBlockRetinaNetHead,
    build_dropblock,
    dropblock_modules,
    group_keep_prob,
    retinanet_head,
    roi_dropblock_factory,
)

__all__ = [
    "DROPBLOCK_BACKBONES",
    "DROPBLOCK_GROUP_ATTR",
    "HEAD_GROUP",
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "DropBlockFPN",
    "DropBlockFastRCNNConvFCHead",
    "DropBlockMaskRCNNConvUpsampleHead",
    "DropBlockRetinaNet",
    "DropBlockRetinaNetHead",
    "build_dropblock",
    "build_dropblock_resnet",
    "build_resnet_dropblock_backbone",
    "build_resnet_fpn_dropblock_backbone",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "dropblock_fpn",
    "dropblock_modules",
    "group_keep_prob",
    "make_dropblock_stages",
    "retinanet_head",
    "roi_dropblock_factory",
]
