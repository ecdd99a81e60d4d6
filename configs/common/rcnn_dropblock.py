# LazyConfig twin of configs/Base-RCNN-FPN.yaml: Detectron2's Mask R-CNN R50-FPN model graph (its
# common/models/mask_rcnn_fpn.py) turned into its DropBlock twin by dropblock_det.lazyconfig's
# add_dropblock, with the values of Base-RCNN-FPN.yaml where the zoo graph differs. The
# placements build exactly the stock modules while `dropblock.ENABLED` is False. Faster R-CNN
# leaves drop the mask branch. `dropblock` holds the MODEL.DROPBLOCK keys of the yaml configs, by
# the same names.
# Expected: a base for the leaf configs, not a run of its own.
from detectron2 import model_zoo

from dropblock_det.lazyconfig import add_dropblock

_zoo = add_dropblock(model_zoo.get_config("common/models/mask_rcnn_fpn.py"), ENABLED=False)
dropblock, model = _zoo.dropblock, _zoo.model

# Detectron2's graph leaves FREEZE_AT to the leaf configs; the yaml default (2) belongs to the
# base here, as in Base-RCNN-FPN.yaml.
model.backbone.bottom_up.freeze_at = 2
# As the yaml builder passes it (MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT); the same losses as
# Detectron2's scalar default, and the same attribute on the built module.
model.roi_heads.box_predictor.loss_weight = {"loss_box_reg": 1.0}

__all__ = ["dropblock", "model"]
