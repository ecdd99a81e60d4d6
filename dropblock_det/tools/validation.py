"""Input checks before any training time is spent: one :class:`InputError` naming the key or file.

They only read, before the trainer creates or opens anything in ``OUTPUT_DIR``.
"""

import difflib

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, RetinaNet
from torch import nn

from ..config import validate_dropblock_config
from .annotations import DatasetChecker
from .config import validate_training_config
from .errors import InputError
from .evaluation import check_evaluator_type

__all__ = ["InputError", "check_head_batch_norm", "check_training_inputs"]


def check_training_inputs(cfg, *, check_train=True, check_test=True):
    """Check the config and the datasets it names, raising on the first problem found.

    In order: the device, the registered builders and the config values; that every dataset
    named is registered (with a COCO evaluator for ``DATASETS.TEST``); each dataset's files
    (:class:`~dropblock_det.tools.annotations.DatasetChecker`); that the head's ``NUM_CLASSES``
    equals each dataset's number of categories. Only the embedded datasets may be written
    (generated if missing).

    Args:
        cfg (CfgNode): the final (merged) Detectron2 config.
        check_train (bool): check ``DATASETS.TRAIN`` (must be non-empty). False for ``--eval-only``.
        check_test (bool): check ``DATASETS.TEST``.

    Raises:
        InputError: one message naming the config key or file at fault and what to do.
    """
    _check_model(cfg)
    # Detectron2's get_detection_dataset_dicts also accepts a single name.
    datasets_by_key = {
        f"DATASETS.{split}": [names] if isinstance(names, str) else list(names)
        for split, names, wanted in (
            ("TRAIN", cfg.DATASETS.TRAIN, check_train),
            ("TEST", cfg.DATASETS.TEST, check_test),
        )
        if wanted
    }
    if check_train and not datasets_by_key["DATASETS.TRAIN"]:
        raise InputError(
            "DATASETS.TRAIN is empty, so there is nothing to train on. Set it to registered "
            "dataset names in the config file, e.g. DATASETS.TRAIN \"('dropblock_digits_train',)\"."
        )
    # All names first: a typo is reported before any large json is parsed.
    for key, names in datasets_by_key.items():
        for name in names:
            _check_registered(name, key)
            if key == "DATASETS.TEST":
                try:
                    check_evaluator_type(name)
                except ValueError as error:
                    raise InputError(f"DATASETS.TEST: {error}") from error
    checker, checked = DatasetChecker(require_masks=cfg.MODEL.MASK_ON), set()
    for key, names in datasets_by_key.items():
        for name in names:
            if name in checked:  # each dataset once, under the first key that names it
                continue
            checked.add(name)
            num_categories = checker.check(name, key, require_annotations=key == "DATASETS.TRAIN")
            _check_num_classes(cfg, name, key, num_categories)


def _close_matches_hint(name, candidates):
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def _check_model(cfg):
    """Check the device, that the meta-architecture and backbone are registered, and the values."""
    device = cfg.MODEL.DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"MODEL.DEVICE = {device!r} but no CUDA GPU is usable here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). Train on the CPU "
            "with `MODEL.DEVICE cpu` after the other arguments, or run where a GPU is visible."
        )
    for key, value, registry, registry_name in (
        ("MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, META_ARCH_REGISTRY, "META_ARCH"),
        ("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, BACKBONE_REGISTRY, "BACKBONE"),
    ):
        if value not in registry:
            raise InputError(
                f"{key} = {value!r} is not registered in Detectron2's {registry_name} registry."
                f"{_close_matches_hint(value, (n for n, _ in registry))} Fix the name in the config "
                "file, or import the module that registers it before the config is checked."
            )

    try:
        validate_training_config(cfg)
        # The values only: whether the built model holds each group is check_placements' to say.
        validate_dropblock_config(cfg)
    except ValueError as error:
        # The message starts with "cfg.<KEY> = <value>" or "cfg.<KEY> names".
        key = str(error).split(" ", 1)[0].removeprefix("cfg.")
        raise InputError(
            f"{error} Fix it in the config file or override it on the command line, e.g. "
            f"`{key} <value>` after the other arguments."
        ) from error


def check_head_batch_norm(cfg, model, world_size=1):
    """Refuse one training image per process where BN in the RetinaNet head sees a 1x1 map.

    Otherwise the first forward pass fails with PyTorch's "Expected more than 1 value per
    channel", which names neither the batch nor the norm. ``world_size``: training processes over
    all machines. The InputError names SOLVER.IMS_PER_BATCH and MODEL.RETINANET.NORM.
    """
    world_size = max(world_size, 1)
    if not isinstance(model, RetinaNet) or cfg.SOLVER.IMS_PER_BATCH // world_size > 1:
        return
    if not any(type(m) is nn.BatchNorm2d for m in model.head.modules()):
        return  # GN, SyncBN or no norm
    jitter = cfg.INPUT.get("SCALE_JITTER")
    if jitter is not None and jitter.ENABLED:
        size_key, longest_side = "INPUT.SCALE_JITTER.TARGET_SIZE", jitter.TARGET_SIZE
    else:
        size_key, longest_side = "INPUT.MAX_SIZE_TRAIN", cfg.INPUT.MAX_SIZE_TRAIN
    shapes = model.backbone.output_shape()
    top = max(model.head_in_features, key=lambda level: shapes[level].stride)
    if longest_side > shapes[top].stride:
        return
    raise InputError(
        f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} over {world_size} process(es) gives "
        f"each one image, but MODEL.RETINANET.NORM = 'BN' normalises the {top} level, a "
        f"1x1 map for images of at most {longest_side} px ({size_key}), and BatchNorm "
        "cannot train on a single value per channel. Use at least 2 images per process, e.g. "
        f"`SOLVER.IMS_PER_BATCH {2 * world_size}`, or MODEL.RETINANET.NORM 'GN'."
    )


def _check_registered(name, key):
    if name in DatasetCatalog:
        return
    raise InputError(
        f"{key} names dataset {name!r}, which is not registered in Detectron2's DatasetCatalog."
        f"{_close_matches_hint(name, DatasetCatalog.keys())} Register it before training with "
        f"detectron2.data.datasets.register_coco_instances({name!r}, {{}}, "
        "'path/to/instances.json', 'path/to/images') (the training tools do it with "
        "`--coco-dataset NAME JSON_FILE IMAGE_ROOT`), or import the module that registers it."
    )


def _check_num_classes(cfg, name, key, num_categories):
    # RetinaNet's heads read MODEL.RETINANET.NUM_CLASSES, R-CNN's MODEL.ROI_HEADS.NUM_CLASSES.
    arch = cfg.MODEL.META_ARCHITECTURE
    head = "RETINANET" if "RetinaNet" in arch else "ROI_HEADS" if "RCNN" in arch else None
    if num_categories is None or head is None:
        return
    num_classes_key, num_classes = f"MODEL.{head}.NUM_CLASSES", cfg.MODEL[head].NUM_CLASSES
    if num_classes != num_categories:
        raise InputError(
            f"{num_classes_key} = {num_classes} but {key} dataset {name!r} has "
            f"{num_categories} categories. Fix it in the config file or override it on the "
            f"command line, e.g. `{num_classes_key} {num_categories}`."
        )
