# LazyConfig twin of tiny_retinanet_R18_FPN_baseline.yaml (Base-Tiny.yaml explains each value): the
# CPU-sized RetinaNet R18-FPN on the embedded digits scenes, DropBlock off. Train it with
#   python tools/lazyconfig_train_net.py --config-file configs/tiny/tiny_retinanet_R18_FPN_baseline.py
# Expected: no reference number; the demo reports baseline vs DropBlock side by side.
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler, get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.retinanet_dropblock import dropblock, model

model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stem.out_channels = 64
model.backbone.bottom_up.stages.update(depth=18, norm="BN", res2_out_channels=64)
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 512
model.head.update(input_shape=[ShapeSpec(channels=64)] * 5, conv_dims=[64, 64], norm="BN")
model.num_classes = 10
model.pixel_std = [57.375, 57.120, 58.395]
model.anchor_generator.sizes = [
    [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [12, 24, 48, 96, 192]
]

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="dropblock_digits_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=(96,), max_size=96, sample_style="choice")
            ],
            image_format="BGR",
        ),
        total_batch_size=8,
        num_workers=0,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="dropblock_digits_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=0,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="${..test.dataset.names}"),
)

optimizer = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.001,
    weight_decay=0.05,
    fused=True,
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[560, 650], num_updates=700
    ),
    warmup_length=100 / 700,
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=700,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=700, max_to_keep=100),
    eval_period=0,
    log_period=20,
    device="cuda",
    seed=42,
)

__all__ = ["dataloader", "dropblock", "lr_multiplier", "model", "optimizer", "train"]
