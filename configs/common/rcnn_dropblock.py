# LazyConfig twin of configs/Base-RCNN-FPN.yaml: Detectron2's Mask R-CNN R50-FPN model graph (its
# common/models/mask_rcnn_fpn.py) with the backbone and RoI heads swapped for the DropBlock
# placements, which build exactly the stock modules while `dropblock.ENABLED` is False. The values
# are those of Base-RCNN-FPN.yaml and Detectron2's defaults; Faster R-CNN leaves drop the mask
# branch. `dropblock` holds the MODEL.DROPBLOCK keys of the yaml configs, by the same names.
# Expected: a base for the leaf configs, not a run of its own.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from dropblock_det.config import ROI_BOX_GROUP, ROI_MASK_GROUP, dropblock_settings
from dropblock_det.modeling import (
    DropBlockFastRCNNConvFCHead,
    DropBlockMaskRCNNConvUpsampleHead,
    dropblock_fpn,
    make_dropblock_stages,
    roi_dropblock_factory,
)

dropblock = L(dropblock_settings)(ENABLED=False)

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

# Backbone: build_resnet_fpn_dropblock_backbone. Detectron2's graph leaves FREEZE_AT to the leaf
# configs; the yaml default (2) belongs to the base here, as in Base-RCNN-FPN.yaml.
model.backbone._target_ = dropblock_fpn
model.backbone.dropblock = "${dropblock}"
model.backbone.bottom_up.stages = L(make_dropblock_stages)(
    depth=50, dropblock="${dropblock}", norm="FrozenBN", stride_in_1x1=True
)
model.backbone.bottom_up.freeze_at = 2

# RoI heads: MODEL.ROI_BOX_HEAD.NAME "DropBlockFastRCNNConvFCHead" and MODEL.ROI_MASK_HEAD.NAME
# "DropBlockMaskRCNNConvUpsampleHead"; roi_dropblock_factory applies MODEL.DROPBLOCK.ROI_HEADS by
# the same rule as their from_config.
model.roi_heads.box_head._target_ = DropBlockFastRCNNConvFCHead
model.roi_heads.box_head.make_dropblock = L(roi_dropblock_factory)(
    dropblock="${dropblock}", group=ROI_BOX_GROUP
)
model.roi_heads.mask_head._target_ = DropBlockMaskRCNNConvUpsampleHead
model.roi_heads.mask_head.make_dropblock = L(roi_dropblock_factory)(
    dropblock="${dropblock}", group=ROI_MASK_GROUP
)
# As the yaml builder passes it (MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT); the same losses as
# Detectron2's scalar default, and the same attribute on the built module.
model.roi_heads.box_predictor.loss_weight = {"loss_box_reg": 1.0}

__all__ = ["dropblock", "model"]
