# LazyConfig twin of configs/Base-RetinaNet.yaml: Detectron2's RetinaNet R50-FPN (its
# common/models/retinanet.py) built through the DropBlock placements, which build exactly the stock
# modules while `dropblock.ENABLED` is False. `dropblock` holds the MODEL.DROPBLOCK keys of the yaml
# configs, by the same names; every placement and the schedule hook read it.
# Expected: a base for the leaf configs, not a run of its own.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher

from dropblock_det.config import dropblock_settings
from dropblock_det.modeling import (
    DropBlockRetinaNet,
    dropblock_fpn,
    make_dropblock_stages,
    retinanet_head,
)

dropblock = L(dropblock_settings)(ENABLED=False)

model = L(DropBlockRetinaNet)(
    backbone=L(dropblock_fpn)(
        dropblock="${dropblock}",
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(make_dropblock_stages)(
                depth=50, dropblock="${dropblock}", norm="FrozenBN", stride_in_1x1=True
            ),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(in_channels=2048, out_channels="${..out_channels}"),
    ),
    head=L(retinanet_head)(
        dropblock="${dropblock}",
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        num_anchors=9,
        conv_dims=[256, 256, 256, 256],
        norm="",
        prior_prob=0.01,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    num_classes=80,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    smooth_l1_beta=0.0,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
