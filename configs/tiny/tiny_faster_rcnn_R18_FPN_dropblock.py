# LazyConfig twin of tiny_faster_rcnn_R18_FPN_dropblock.yaml (same model, data and schedule; see
# that file and Base-Tiny.yaml for the reasons behind each value): the CPU-sized Faster R-CNN
# R18-FPN on the embedded digits scenes, DropBlock in res4+res5 and on the pooled RoI features.
# Train it with
#   python tools/lazyconfig_train_net.py --config-file configs/tiny/tiny_faster_rcnn_R18_FPN_dropblock.py
# Expected: no reference number; it exists to exercise the R-CNN path in a few iterations.
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

from ..common.rcnn_dropblock import dropblock, model

dropblock.update(
    ENABLED=True,
    KEEP_PROB=0.9,
    BLOCK_SIZE=3,
    STAGES=["res4", "res5"],
    PLACEMENT="block",
    ROI_HEADS=True,
)

model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stages.update(depth=18, norm="BN", res2_out_channels=64)
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[12], [24], [48], [96], [192]]
model.proposal_generator.batch_size_per_image = 64
model.proposal_generator.post_nms_topk = (200, 100)
model.roi_heads.num_classes = 10
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [128, 128]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=128)
# MODEL.MASK_ON False: StandardROIHeads without the mask branch.
model.roi_heads.mask_in_features = None
del model.roi_heads.mask_pooler
del model.roi_heads.mask_head
model.pixel_std = [57.375, 57.120, 58.395]

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
        total_batch_size=2,
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

# SOLVER.STEPS () and WARMUP_ITERS 0: a constant learning rate, as Detectron2's builder makes it.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0], milestones=[], num_updates=20),
    warmup_length=0.0,
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=20,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=20, max_to_keep=100),
    eval_period=0,
    log_period=20,
    device="cuda",
    seed=42,
)

__all__ = ["dataloader", "dropblock", "lr_multiplier", "model", "optimizer", "train"]
