"""Embedded detection dataset: scikit-learn's handwritten digits composed into scenes.

:func:`register_dropblock_digits` registers ``dropblock_digits_train`` and ``dropblock_digits_val``
in Detectron2's DatasetCatalog and MetadataCatalog (COCO evaluator type, classes "0".."9"); the
training tools call it, importing registers nothing. Their folder is
``$DETECTRON2_DATASETS/dropblock_digits``, as the environment says when registering. The data is
generated there on first use (no download), deterministically, and regenerated when the
generation parameters change; ``ensure_dataset(name)`` generates it ahead of code that reads
``metadata.json_file`` directly. ``tools/generate_dataset.py`` generates one and saves a preview.
"""

from .datasets import (
    DATASET_DIRNAME,
    TRAIN_DATASET,
    VAL_DATASET,
    default_dataset_dir,
    ensure_dataset,
    format_summary,
    prepare_dataset,
    read_manifest,
    register_dropblock_digits,
)
from .preview import save_preview_grid
from .synthetic import (
    CLASS_NAMES,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    DatasetSpec,
    SceneParams,
    hash_dataset_files,
)

__all__ = [
    "CLASS_NAMES",
    "DATASET_DIRNAME",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "DEFAULT_SEED",
    "DatasetSpec",
    "SceneParams",
    "TRAIN_DATASET",
    "VAL_DATASET",
    "default_dataset_dir",
    "ensure_dataset",
    "format_summary",
    "hash_dataset_files",
    "prepare_dataset",
    "read_manifest",
    "register_dropblock_digits",
    "save_preview_grid",
]
