"""Moved: the trainer is :mod:`dropblock_det.tools.trainer` (the training tools are kept apart from
the DropBlock core). This module only says so."""

raise ImportError(
    "dropblock_det.engine moved to dropblock_det.tools.trainer: use "
    "`from dropblock_det.tools.trainer import Trainer` (and add_training_config from "
    "dropblock_det.tools.config for SOLVER.OPTIMIZER, INPUT.SCALE_JITTER, TEST.FAST_COCO_EVAL)."
)
