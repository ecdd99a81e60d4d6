# LazyConfig twin of retinanet_R_50_FPN_scratch_150ep_dropblock_bs7.yaml (Base-RetinaNet-Paper.yaml
# explains each value): the DropBlock paper's RetinaNet R50-FPN recipe, from random initialisation,
# 150 epochs of COCO at batch 64, keep_prob 0.9 and block 7 in res4+res5. Train it with
#   python tools/lazyconfig_train_net.py --num-gpus 8 \
#       --config-file configs/COCO-Paper/retinanet_R_50_FPN_scratch_150ep_dropblock_bs7.py
# Expected: the paper's best DropBlock row is 38.4 box AP on COCO val2017 (vs 36.8 without).
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.solver import WarmupParamScheduler, get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch.optim import SGD

from ..common.retinanet_dropblock import dropblock, model

dropblock.update(
    ENABLED=True,
    KEEP_PROB=0.9,
    BLOCK_SIZE=7,
    GAMMA="paper",
    STAGES=["res4", "res5"],
    PLACEMENT="block",
    GROUP_SCALING=True,
)

model.backbone.bottom_up.stem.norm = "SyncBN"
model.backbone.bottom_up.stages.update(norm="SyncBN", stride_in_1x1=False)
model.backbone.bottom_up.freeze_at = 0
model.backbone.norm = "SyncBN"
model.head.norm = "SyncBN"
model.focal_loss_gamma = 1.5
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeScale)(min_scale=0.8, max_scale=1.2, target_height=640, target_width=640),
                L(T.FixedSizeCrop)(crop_size=(640, 640), pad=True),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="RGB",
        ),
        total_batch_size=64,
        num_workers=4,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=640, max_size=640)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=4,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="${..test.dataset.names}"),
)

optimizer = L(SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.08,
    momentum=0.9,
    weight_decay=0.0001,
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[221788, 258753], num_updates=277236
    ),
    warmup_length=1848 / 277236,
    warmup_method="linear",
    warmup_factor=0.1,
)

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=277236,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=9241, max_to_keep=100),
    eval_period=18482,
    log_period=20,
    device="cuda",
    seed=-1,
)

__all__ = ["dataloader", "dropblock", "lr_multiplier", "model", "optimizer", "train"]
