"""Config keys of the training tools (not DropBlock's): evaluation backend, optimizer, augmentation."""

from detectron2.config import CfgNode as CN

from ..config import fail

__all__ = ["OPTIMIZERS", "add_training_config", "validate_training_config"]

# Values SOLVER.OPTIMIZER takes.
OPTIMIZERS = ("SGD", "ADAMW")


def add_training_config(cfg):
    """Add ``TEST.FAST_COCO_EVAL``, ``SOLVER.OPTIMIZER`` and ``INPUT.SCALE_JITTER.*`` to ``cfg``."""
    _C = cfg
    # Evaluate COCO with faster-coco-eval's COCOeval when it is installed (same numbers, many
    # times faster than pycocotools' pure-Python COCOeval that the registry build falls back to).
    _C.TEST.FAST_COCO_EVAL = True
    # "SGD" (Detectron2's) or "ADAMW" (the same parameter groups; SOLVER.WEIGHT_DECAY is then
    # AdamW's decoupled decay).
    _C.SOLVER.OPTIMIZER = "SGD"
    # The DropBlock paper's training augmentation (§4.3, tensorflow/tpu resize_and_crop): resize so
    # that the image fits in TARGET_SIZE * s, s uniform in [MIN_SCALE, MAX_SCALE], keeping the
    # aspect ratio, then random-crop / pad to TARGET_SIZE x TARGET_SIZE. Off: Detectron2's
    # ResizeShortestEdge from INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN.
    _C.INPUT.SCALE_JITTER = CN()
    _C.INPUT.SCALE_JITTER.ENABLED = False
    _C.INPUT.SCALE_JITTER.MIN_SCALE = 0.8
    _C.INPUT.SCALE_JITTER.MAX_SCALE = 1.2
    _C.INPUT.SCALE_JITTER.TARGET_SIZE = 640


def validate_training_config(cfg):
    """The one check of the keys of :func:`add_training_config`: ValueError naming the key."""
    if "FAST_COCO_EVAL" not in cfg.TEST:
        raise ValueError(
            "cfg.TEST.FAST_COCO_EVAL is missing: call "
            "dropblock_det.tools.config.add_training_config(cfg) before merge_from_file."
        )
    if not isinstance(cfg.TEST.FAST_COCO_EVAL, bool):
        fail("TEST.FAST_COCO_EVAL", cfg.TEST.FAST_COCO_EVAL, "expected True or False")
    if cfg.SOLVER.OPTIMIZER not in OPTIMIZERS:
        fail("SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, f"expected one of {list(OPTIMIZERS)}")
    jitter = cfg.INPUT.SCALE_JITTER
    if jitter.ENABLED:
        if not 0 < jitter.MIN_SCALE <= jitter.MAX_SCALE:
            fail(
                "INPUT.SCALE_JITTER.MIN_SCALE",
                jitter.MIN_SCALE,
                f"expected 0 < MIN_SCALE <= MAX_SCALE ({jitter.MAX_SCALE})",
            )
        if not (isinstance(jitter.TARGET_SIZE, int) and jitter.TARGET_SIZE > 0):
            fail(
                "INPUT.SCALE_JITTER.TARGET_SIZE", jitter.TARGET_SIZE, "expected a positive integer"
            )
