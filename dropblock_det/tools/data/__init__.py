"""The embedded detection dataset: scikit-learn's handwritten digits composed into scenes.

:func:`register_dropblock_digits` registers ``dropblock_digits_train`` and ``dropblock_digits_val``
(COCO evaluator type, classes "0".."9"); the training tools call it, importing registers nothing.
The data is generated deterministically on first use (no download) in
``$DETECTRON2_DATASETS/dropblock_digits``, and again when the generation parameters change.
"""

from .datasets import (
    TRAIN_DATASET,
    VAL_DATASET,
    default_dataset_dir,
    ensure_dataset,
    prepare_dataset,
    read_manifest,
    register_dropblock_digits,
)
from .synthetic import CLASS_NAMES, DatasetSpec, SceneParams, hash_dataset_files

__all__ = [
    "CLASS_NAMES",
    "DatasetSpec",
    "SceneParams",
    "TRAIN_DATASET",
    "VAL_DATASET",
    "default_dataset_dir",
    "ensure_dataset",
    "hash_dataset_files",
    "prepare_dataset",
    "read_manifest",
    "register_dropblock_digits",
]
