"""Detectron2 integration: DropBlock in ResNet, FPN and the RetinaNet head.

Importing this package registers ``build_retinanet_resnet_fpn_dropblock_backbone`` in
``BACKBONE_REGISTRY`` and ``DropBlockRetinaNet`` in ``META_ARCH_REGISTRY``.
"""

from .backbone import build_retinanet_resnet_fpn_dropblock_backbone, retinanet_fpn_levels
from .fpn import DropBlockFPN
from .groups import DROPBLOCK_GROUP_ATTR, build_dropblock, group_keep_prob
from .meta_arch import DropBlockRetinaNet, insert_dropblock_into_head
from .resnet import (
    DropBlockBasicBlock,
    DropBlockBottleneckBlock,
    StageOutputDropBlock,
    insert_dropblock_into_resnet,
)

__all__ = [
    "DROPBLOCK_GROUP_ATTR",
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "DropBlockFPN",
    "DropBlockRetinaNet",
    "StageOutputDropBlock",
    "build_dropblock",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "group_keep_prob",
    "insert_dropblock_into_head",
    "insert_dropblock_into_resnet",
    "retinanet_fpn_levels",
]
