# LazyConfig twin of configs/Base-RetinaNet.yaml: Detectron2's RetinaNet R50-FPN (its
# common/models/retinanet.py) turned into its DropBlock twin by dropblock_det.lazyconfig's
# add_dropblock, with the values of Base-RetinaNet.yaml where the zoo graph differs. The
# placements build exactly the stock modules while `dropblock.ENABLED` is False. `dropblock` holds
# the MODEL.DROPBLOCK keys of the yaml configs, by the same names; every placement and the schedule
# hook read it.
# Expected: a base for the leaf configs, not a run of its own.
from detectron2 import model_zoo

from dropblock_det.lazyconfig import add_dropblock

_zoo = add_dropblock(model_zoo.get_config("common/models/retinanet.py"), ENABLED=False)
dropblock, model = _zoo.dropblock, _zoo.model

# Base-RetinaNet.yaml and Detectron2's yaml defaults: MODEL.BACKBONE.FREEZE_AT 2,
# RETINANET.SMOOTH_L1_LOSS_BETA 0.0 and the MSRA weights' PIXEL_STD.
model.backbone.bottom_up.freeze_at = 2
model.smooth_l1_beta = 0.0
model.pixel_std = [1.0, 1.0, 1.0]

__all__ = ["dropblock", "model"]
