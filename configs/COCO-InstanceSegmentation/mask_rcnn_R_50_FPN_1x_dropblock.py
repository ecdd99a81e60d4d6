# LazyConfig twin of mask_rcnn_R_50_FPN_1x_dropblock.yaml (same model, data and schedule; that file
# explains the DropBlock setting): Mask R-CNN R50-FPN 1x from ImageNet R-50 weights, 90k iterations
# at batch 16, DropBlock keep_prob 0.9 and block 7 in res4+res5. Train it with
#   python tools/lazyconfig_train_net.py --num-gpus 8 \
#       --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_dropblock.py
# Expected: no published number; compare with mask_rcnn_R_50_FPN_1x.yaml (38.6 box / 35.2 mask AP).
from detectron2 import model_zoo

from ..common.rcnn_dropblock import dropblock, model

dropblock.update(
    ENABLED=True, KEEP_PROB=0.9, BLOCK_SIZE=7, STAGES=["res4", "res5"], PLACEMENT="block"
)

# Detectron2's COCO data, SGD, 1x schedule and training options, as its own
# COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py uses them.
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
# TEST.EVAL_PERIOD 0 as in the yaml: one evaluation, after the last iteration.
train.eval_period = 0

__all__ = ["dataloader", "dropblock", "lr_multiplier", "model", "optimizer", "train"]
