"""DropBlock in Detectron2 models: the placements and the registered builders.

Importing this package registers ``build_retinanet_resnet_fpn_dropblock_backbone`` in
``BACKBONE_REGISTRY`` and ``DropBlockRetinaNet`` in ``META_ARCH_REGISTRY``.
"""

from .backbone import (
    build_dropblock_resnet,
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
    DropBlockFPN,
    DropBlockRetinaNetHead,
    build_dropblock,
    dropblock_modules,
    group_keep_prob,
    retinanet_head,
)

__all__ = [
    "DROPBLOCK_GROUP_ATTR",
    "HEAD_GROUP",
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "DropBlockFPN",
    "DropBlockRetinaNet",
    "DropBlockRetinaNetHead",
    "build_dropblock",
    "build_dropblock_resnet",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "dropblock_fpn",
    "dropblock_modules",
    "group_keep_prob",
    "make_dropblock_stages",
    "retinanet_head",
]
