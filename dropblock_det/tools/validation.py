"""Input checks that run before any training time is spent.

:func:`check_training_inputs` reads the config, the dataset catalogs and the annotation files and
raises one :class:`InputError` that names the offending config key or file and says what to do.
It only reads: it runs before the trainer creates or opens anything in ``OUTPUT_DIR``, so a bad
input never costs a checkpoint or a metrics file already there.
"""

import difflib
import json
import logging
import os
import re

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

from ..config import validate_dropblock_config
from .config import validate_training_config
from .evaluation import check_evaluator_type

__all__ = ["InputError", "check_training_inputs"]

logger = logging.getLogger(__name__)

# FPN backbone builders and the levels their top block adds above the last input (see
# _fpn_levels): RetinaNet's LastLevelP6P7 two, R-CNN's LastLevelMaxPool one.
_FPN_TOP_LEVELS = {
    "build_retinanet_resnet_fpn_backbone": 2,
    "build_retinanet_resnet_fpn_dropblock_backbone": 2,
    "build_resnet_fpn_backbone": 1,
    "build_resnet_fpn_dropblock_backbone": 1,
}
# What ``import detectron2.data`` registered (Detectron2's builtin datasets), before any code of
# ours or the user's registers more.
_DETECTRON2_BUILTIN_NAMES = frozenset(DatasetCatalog.list())
# How many offending paths or ids a message lists before it only counts them.
_MAX_LISTED = 3


class InputError(ValueError):
    """A bad config value, dataset name or dataset file, found before training starts.

    The message names the config key or the file and says how to fix it; the command-line entry
    point logs it and exits with status 2.
    """


def check_training_inputs(cfg, *, check_train=True, check_test=True, world_size=1):
    """Check the config and the datasets it names, raising on the first problem found.

    Checks, in order: the ``MODEL.DROPBLOCK`` values (and that the backbone and meta-architecture
    honour them); that every name in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is registered; that each
    dataset's COCO json exists, parses and has non-empty ``images`` and ``categories`` lists (and
    ``annotations``, which a test set may lack, as COCO test-dev does), that its ids are unique and
    its boxes have a positive size, overlap their image and have a known ``category_id`` (and a
    ``segmentation`` with ``MODEL.MASK_ON``), and that every image file it references exists; and
    that ``MODEL.RETINANET.NUM_CLASSES`` equals each dataset's number of
    categories. Each json is parsed at most once per call. Nothing is written, except that the
    embedded ``dropblock_digits_*`` datasets are generated if they do not exist yet.

    Args:
        cfg (CfgNode): the final (merged) Detectron2 config.
        check_train (bool): check ``DATASETS.TRAIN`` (must be non-empty). False for ``--eval-only``.
        check_test (bool): check ``DATASETS.TEST``.
        world_size (int): training processes over all machines; with ``check_train``, a batch of
            one image per process is refused where BN in the RetinaNet head would see a 1x1 map.

    Raises:
        InputError: one message naming the config key or file at fault and what to do.
    """
    _check_model(cfg)

    datasets_by_key = {}
    if check_train:
        datasets_by_key["DATASETS.TRAIN"] = _dataset_names(cfg, "TRAIN")
        if not datasets_by_key["DATASETS.TRAIN"]:
            raise InputError(
                "DATASETS.TRAIN is empty, so there is nothing to train on. Set it to registered "
                "dataset names in the config file, e.g. DATASETS.TRAIN \"('dropblock_digits_train',)\"."
            )
        _check_head_batch_norm(cfg, world_size)
    if check_test:
        datasets_by_key["DATASETS.TEST"] = _dataset_names(cfg, "TEST")

    # All names first: a typo is reported before any large json is parsed.
    for key, names in datasets_by_key.items():
        for name in names:
            _check_registered(name, key)
            if key == "DATASETS.TEST":
                try:
                    check_evaluator_type(name)
                except ValueError as error:
                    raise InputError(f"DATASETS.TEST: {error}") from error

    checker = _DatasetChecker(require_masks=cfg.MODEL.MASK_ON)
    checked = set()
    for key, names in datasets_by_key.items():
        for name in names:
            if name in checked:
                continue
            checked.add(name)
            num_categories = checker.check(name, key, require_annotations=key == "DATASETS.TRAIN")
            _check_num_classes(cfg, name, key, num_categories)


def _dataset_names(cfg, split):
    names = cfg.DATASETS[split]
    # Detectron2's get_detection_dataset_dicts also accepts a single name.
    return [names] if isinstance(names, str) else list(names)


def _close_matches_hint(name, candidates):
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def _override_hint(key, example):
    return f"Fix it in the config file or override it on the command line, e.g. `{key} {example}`."


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


def _check_head_batch_norm(cfg, world_size):
    """Refuse one image per process where BN in the RetinaNet head would normalise a 1x1 map.

    BatchNorm in training needs more than one value per channel; a 1x1 top FPN level with one image
    fails deep inside the first forward pass with PyTorch's "Expected more than 1 value per
    channel", which names neither the batch nor the norm.
    """
    if "RetinaNet" not in cfg.MODEL.META_ARCHITECTURE or cfg.MODEL.RETINANET.NORM != "BN":
        return
    levels = _fpn_levels(cfg)
    world_size = max(world_size, 1)
    if levels is None or cfg.SOLVER.IMS_PER_BATCH // world_size > 1:
        return
    jitter = cfg.INPUT.get("SCALE_JITTER")
    if jitter is not None and jitter.ENABLED:
        size_key, longest_side = "INPUT.SCALE_JITTER.TARGET_SIZE", jitter.TARGET_SIZE
    else:
        size_key, longest_side = "INPUT.MAX_SIZE_TRAIN", cfg.INPUT.MAX_SIZE_TRAIN
    top_stride = 2 ** int(levels[-1][1:])
    if longest_side > top_stride:
        return
    raise InputError(
        f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} over {world_size} process(es) gives "
        f"each one image, but MODEL.RETINANET.NORM = 'BN' normalises the {levels[-1]} level, a "
        f"1x1 map for images of at most {longest_side} px ({size_key}), and BatchNorm "
        "cannot train on a single value per channel. Use at least 2 images per process, e.g. "
        f"`SOLVER.IMS_PER_BATCH {2 * world_size}`, or MODEL.RETINANET.NORM 'GN'."
    )


def _fpn_levels(cfg):
    """The FPN levels a ResNet-FPN backbone produces, or None when unknown.

    Detectron2's FPN names the output of ``resN`` (stride 2**N) ``pN``; RetinaNet's
    ``LastLevelP6P7`` adds the two levels above the last one (``res3..res5`` give ``p3..p7``),
    R-CNN's ``LastLevelMaxPool`` one (``res2..res5`` give ``p2..p6``).
    """
    top_levels = _FPN_TOP_LEVELS.get(cfg.MODEL.BACKBONE.NAME)
    if top_levels is None:
        return None
    stages = []
    for feature in cfg.MODEL.FPN.IN_FEATURES:
        match = re.fullmatch(r"res(\d)", feature)
        if match is None:
            return None
        stages.append(int(match.group(1)))
    if not stages:
        return None
    return [f"p{s}" for s in sorted(stages)] + [
        f"p{max(stages) + k}" for k in range(1, top_levels + 1)
    ]


def _check_registered(name, key):
    if name in DatasetCatalog:
        return
    raise InputError(
        f"{key} names dataset {name!r}, which is not registered in Detectron2's DatasetCatalog."
        f"{_close_matches_hint(name, DatasetCatalog.keys())} Register it before training with "
        f"detectron2.data.datasets.register_coco_instances({name!r}, {{}}, "
        "'path/to/instances.json', 'path/to/images'), or import the module that registers it "
        "(importing dropblock_det registers 'dropblock_digits_train' and 'dropblock_digits_val')."
    )


def _check_num_classes(cfg, name, key, num_categories):
    if num_categories is None:
        return
    # RetinaNet's heads read MODEL.RETINANET.NUM_CLASSES, R-CNN's MODEL.ROI_HEADS.NUM_CLASSES.
    if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
        num_classes_key, num_classes = (
            "MODEL.RETINANET.NUM_CLASSES",
            cfg.MODEL.RETINANET.NUM_CLASSES,
        )
    elif "RCNN" in cfg.MODEL.META_ARCHITECTURE:
        num_classes_key, num_classes = (
            "MODEL.ROI_HEADS.NUM_CLASSES",
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        )
    else:
        return
    if num_classes != num_categories:
        raise InputError(
            f"{num_classes_key} = {num_classes} but {key} dataset {name!r} has "
            f"{num_categories} categories. " + _override_hint(num_classes_key, num_categories)
        )


def _datasets_root():
    return os.getenv("DETECTRON2_DATASETS", "datasets")


class _DatasetChecker:
    """Checks one dataset at a time, parsing each json file at most once."""

    def __init__(self, *, require_masks=False):
        """
        Args:
            require_masks (bool): every annotation must have a ``segmentation`` (the config trains
                and evaluates masks, ``MODEL.MASK_ON``).
        """
        self._parsed_json = {}
        self._require_masks = require_masks

    def check(self, name, key, *, require_annotations):
        """Check one registered dataset.

        Args:
            name (str): a registered dataset name.
            key (str): the config key that names it, for the messages.
            require_annotations (bool): whether the json must have annotations (training data).

        Returns:
            int or None: its number of categories, None when it cannot be told.
        """
        where = f"{key} dataset {name!r}"
        # Datasets of dropblock_det.tools.data are generated on first use: their files may not exist yet.
        self._generate(name, where)
        metadata = MetadataCatalog.get(name) if name in MetadataCatalog else None
        json_file = metadata.get("json_file") if metadata is not None else None
        if json_file is None:
            return self._check_loaded_dicts(name, where)
        image_root = metadata.get("image_root", "")
        if "://" in str(json_file):
            # A remote file (iopath URI) cannot be checked without downloading it.
            logger.info("Not checking %s: its json %s is not a local file.", where, json_file)
            return None
        return self._check_coco_json(
            where,
            os.fspath(json_file),
            os.fspath(image_root),
            require_annotations,
            public=name in _detectron2_builtin_names(),
        )

    @staticmethod
    def _generate(name, where):
        from .data import ensure_dataset  # lazy: the data package imports this package's config

        try:
            ensure_dataset(name)
        except Exception as error:
            raise InputError(
                f"{where} could not be generated under DETECTRON2_DATASETS = "
                f"{_datasets_root()!r}: {type(error).__name__}: {error}. Point DETECTRON2_DATASETS "
                "at a writable folder, or remove the partly written dataset folder and retry."
            ) from error

    def _check_loaded_dicts(self, name, where):
        """Check a dataset without a json_file by loading it through the catalog."""
        try:
            dicts = DatasetCatalog.get(name)
        except Exception as error:
            raise InputError(
                f"{where} could not be loaded: DatasetCatalog.get({name!r}) raised "
                f"{type(error).__name__}: {error}. Check that its files exist (Detectron2's builtin "
                f"datasets are read from DETECTRON2_DATASETS = {_datasets_root()!r}) or fix the "
                "function registered for it."
            ) from error
        if not isinstance(dicts, list) or not dicts:
            found = "an empty list" if isinstance(dicts, list) else type(dicts).__name__
            raise InputError(
                f"{where}: the function registered in DatasetCatalog returned {found}; it must "
                "return a non-empty list of dicts. Fix the dataset's files or its registration."
            )
        paths = [d.get("file_name") for d in dicts if isinstance(d, dict)]
        _check_images_exist(where, [p for p in paths if p], image_root=None)
        thing_classes = MetadataCatalog.get(name).get("thing_classes")
        return len(thing_classes) if thing_classes is not None else None

    def _load_json(self, where, json_file):
        cache_key = os.path.abspath(json_file)
        if cache_key in self._parsed_json:
            return self._parsed_json[cache_key]
        relative_hint = (
            ""
            if os.path.isabs(json_file)
            else f" (relative to the working directory {os.getcwd()!r})"
        )
        fix = (
            "Fix the json_file given to register_coco_instances, or put the file there (Detectron2's "
            f"builtin datasets are read from DETECTRON2_DATASETS = {_datasets_root()!r})."
        )
        if not os.path.exists(json_file):
            raise InputError(
                f"{where}: annotation file {json_file!r}{relative_hint} does not exist. {fix}"
            )
        if not os.path.isfile(json_file):
            raise InputError(
                f"{where}: annotation file {json_file!r}{relative_hint} is not a file. {fix}"
            )
        regenerate = "Restore or regenerate the file, or register the right one."
        try:
            with open(json_file, "rb") as f:
                raw = f.read()
        except OSError as error:
            raise InputError(
                f"{where}: cannot read annotation file {json_file!r}: {error}. Check its "
                "permissions."
            ) from error
        if not raw.strip():
            raise InputError(
                f"{where}: annotation file {json_file!r} is empty ({len(raw)} bytes). {regenerate}"
            )
        try:
            content = json.loads(raw)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{where}: annotation file {json_file!r} is not valid JSON: {error.msg} at line "
                f"{error.lineno} column {error.colno}. {regenerate}"
            ) from error
        except UnicodeDecodeError as error:
            raise InputError(
                f"{where}: annotation file {json_file!r} is not JSON text ({error}). {regenerate}"
            ) from error
        self._parsed_json[cache_key] = content
        return content

    def _check_coco_json(self, where, json_file, image_root, require_annotations, *, public):
        content = self._load_json(where, json_file)
        fix = (
            "A COCO instances json is an object with the lists 'images', 'annotations' and "
            "'categories'; fix or regenerate the file, or register the right one."
        )
        if not isinstance(content, dict):
            raise InputError(
                f"{where}: annotation file {json_file!r} holds a {type(content).__name__}, not an "
                f"object. {fix}"
            )
        # A test set may lack annotations (COCO test-dev): COCOEvaluator then only writes the
        # predictions. Training needs them.
        required = [
            field
            for field in ("images", "annotations", "categories")
            if require_annotations or field != "annotations"
        ]
        for field in required:
            if field not in content:
                raise InputError(
                    f"{where}: annotation file {json_file!r} lacks the key {field!r} (keys found: "
                    f"{sorted(content)}). {fix}"
                )
        for field in ("images", "annotations", "categories"):
            if field in content and not isinstance(content[field], list):
                raise InputError(
                    f"{where}: in annotation file {json_file!r}, {field!r} is a "
                    f"{type(content[field]).__name__}, not a list. {fix}"
                )
        for field in required:
            if not content[field]:
                raise InputError(
                    f"{where}: annotation file {json_file!r} has an empty {field!r} list. Check "
                    "that the file is the complete one, or regenerate it."
                )
        if "annotations" not in content:
            logger.warning(
                "%s: %s has no 'annotations'; predictions are written but not scored.",
                where,
                json_file,
            )

        category_ids = set()
        for index, category in enumerate(content["categories"]):
            if not isinstance(category, dict) or "id" not in category:
                raise InputError(
                    f"{where}: in annotation file {json_file!r}, categories[{index}] has no 'id'. "
                    f"{fix}"
                )
            category_ids.add(_hashable(category["id"]))
        if len(category_ids) != len(content["categories"]):
            raise InputError(
                f"{where}: annotation file {json_file!r} repeats category ids in 'categories'; "
                "give each category its own 'id'."
            )
        bad_images = [
            i
            for i, image in enumerate(content["images"])
            if not isinstance(image, dict)
            or not isinstance(image.get("file_name"), str)
            or "id" not in image
        ]
        if bad_images:
            raise InputError(
                f"{where}: in annotation file {json_file!r}, {len(bad_images)} entries of 'images' "
                f"lack a 'file_name' string or an 'id' (first: images[{bad_images[0]}]). {fix}"
            )
        _check_annotations(
            where,
            json_file,
            content["images"],
            content.get("annotations", []),
            category_ids,
            require_masks=self._require_masks,
            warn_only=public,
        )
        # Detectron2's load_coco_json joins image_root and file_name the same way.
        paths = [os.path.join(image_root, image["file_name"]) for image in content["images"]]
        _check_images_exist(where, paths, image_root=image_root, json_file=json_file)
        return len(category_ids)


# How to fix each kind of annotation problem, in the order they are reported. Detectron2 loads
# the first ones without a word, or stops on them only once training has started.
_ANNOTATION_PROBLEMS = {
    "malformed": "Give every annotation an 'id', an 'image_id' and a 'bbox' of 4 numbers.",
    "duplicate_image_id": (
        "COCO's index keeps only the last image of an id and gives it the annotations of all; "
        "give each image its own 'id'."
    ),
    "duplicate_annotation_id": (
        "Detectron2's load_coco_json stops on it once training has started; give each "
        "annotation its own 'id'."
    ),
    "unknown_category": "Add those categories to 'categories' or fix the annotations.",
    "empty_box": (
        "COCO boxes are [x, y, width, height] (not [x1, y1, x2, y2]); fix or remove such boxes."
    ),
    "outside_image": (
        "Such a box marks nothing in its image; check the image's 'width' and 'height' and the "
        "box's coordinates (absolute pixels)."
    ),
    "no_segmentation": (
        "MODEL.MASK_ON is True, so every annotation needs polygons or an RLE; add them, or train "
        "boxes only with `MODEL.MASK_ON False`."
    ),
}


def _check_annotations(
    where, json_file, images, annotations, category_ids, *, require_masks, warn_only=False
):
    """Raise one InputError listing every kind of annotation problem found in one pass.

    Each kind names its first offender (annotation id and image id, or the image id) and counts
    the others. Only reads: the user's file is never rewritten.

    Args:
        warn_only (bool): log the problems instead, for Detectron2's builtin datasets: those
            public files hold a few that Detectron2 copes with (COCO train2017 has boxes of height
            0, which it drops; the 2014 minival files repeat annotation ids, which it allows) and
            that the user cannot fix.
    """
    problems = {kind: [] for kind in _ANNOTATION_PROBLEMS}

    image_sizes = {}
    image_indices = {}
    for index, image in enumerate(images):
        image_indices.setdefault(_hashable(image["id"]), []).append(index)
        width, height = image.get("width"), image.get("height")
        if _is_number(width) and _is_number(height):
            image_sizes[_hashable(image["id"])] = (width, height)
    for image_id, indices in image_indices.items():
        if len(indices) > 1:
            listed = ", ".join(f"images[{i}]" for i in indices[:_MAX_LISTED])
            problems["duplicate_image_id"].append(
                f"image id {image_id!r} is used by {len(indices)} entries of 'images' ({listed})"
            )

    ordered = sorted(category_ids, key=repr)
    known_categories = ", ".join(map(repr, ordered[:10])) + (", ..." if len(ordered) > 10 else "")
    annotation_images = {}
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            problems["malformed"].append(f"annotations[{index}] is a {type(annotation).__name__}")
            continue
        ref = _annotation_ref(index, annotation)
        missing = [key for key in ("id", "image_id") if key not in annotation]
        box = annotation.get("bbox")
        if missing or not _is_box(box):
            what = f"has no {' or '.join(map(repr, missing))}" if missing else f"bbox {box!r}"
            problems["malformed"].append(
                f"{ref}: {what}" + ("" if missing else " is not 4 numbers [x, y, width, height]")
            )
            continue
        annotation_images.setdefault(_hashable(annotation["id"]), []).append(annotation["image_id"])
        if _hashable(annotation.get("category_id")) not in category_ids:
            problems["unknown_category"].append(
                f"{ref}: category_id {annotation.get('category_id')!r} is not in 'categories' "
                f"(ids {known_categories})"
            )
        x, y, width, height = box
        size = image_sizes.get(_hashable(annotation["image_id"]))
        if width <= 0 or height <= 0:
            problems["empty_box"].append(f"{ref}: bbox {box} has a width or height <= 0")
        elif size is not None and (
            x >= size[0] or y >= size[1] or x + width <= 0 or y + height <= 0
        ):
            problems["outside_image"].append(
                f"{ref}: bbox {box} lies wholly outside its {size[0]}x{size[1]} image"
            )
        segmentation = annotation.get("segmentation")
        if require_masks and not (isinstance(segmentation, (list, dict)) and segmentation):
            found = (
                "no 'segmentation'" if segmentation is None else f"segmentation {segmentation!r}"
            )
            problems["no_segmentation"].append(f"{ref}: has {found}")
    for annotation_id, image_ids in annotation_images.items():
        if len(image_ids) > 1:
            problems["duplicate_annotation_id"].append(
                f"annotation id {annotation_id!r} (image ids "
                f"{', '.join(map(repr, image_ids[:_MAX_LISTED]))}) is used by {len(image_ids)} "
                "annotations"
            )

    lines = []
    for kind, found in problems.items():
        if not found:
            continue
        more = len(found) - 1
        count = f"{more} more like it" if more else "no other like it"
        lines.append(f"  - {found[0]}; {count}. {_ANNOTATION_PROBLEMS[kind]}")
    if not lines:
        return
    if warn_only:
        logger.warning(
            "%s: annotation file %r (one of Detectron2's builtin datasets, checked but not "
            "refused) has:\n%s",
            where,
            json_file,
            "\n".join(lines),
        )
        return
    raise InputError(
        f"{where}: annotation file {json_file!r} has entries that would train or evaluate "
        "wrongly, or stop the run once it has started; fix them in the file (it was only read, "
        "not changed):\n" + "\n".join(lines)
    )


def _detectron2_builtin_names():
    """The dataset names Detectron2 registered on import (its builtin COCO, LVIS … files)."""
    return _DETECTRON2_BUILTIN_NAMES


def _annotation_ref(index, annotation):
    image = f"image id {annotation['image_id']!r}" if "image_id" in annotation else "no image_id"
    if "id" in annotation:
        return f"annotation id {annotation['id']!r} ({image})"
    return f"annotations[{index}] ({image})"


def _hashable(value):
    # An id that is a list or dict (a broken file) must not crash the check with a TypeError.
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _is_number(value):
    # A finite int or float: NaN fails both comparisons; json also parses NaN and Infinity.
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and float("-inf") < value < float("inf")
    )


def _is_box(box):
    return isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)


def _check_images_exist(where, paths, *, image_root, json_file=None):
    """Raise when any of ``paths`` is missing, counting them and listing the first few."""
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return
    source = f"annotation file {json_file!r}" if json_file else "its dataset dicts"
    listed = ", ".join(repr(p) for p in missing[:_MAX_LISTED])
    if image_root is not None and not os.path.isdir(image_root):
        raise InputError(
            f"{where}: image_root {image_root!r} is not a folder, so all {len(missing)} images "
            f"listed in {source} are missing (e.g. {listed}). Fix the image_root given to "
            "register_coco_instances, or put the images there."
        )
    raise InputError(
        f"{where}: {len(missing)} of the {len(paths)} image files listed in {source} are missing "
        f"(first: {listed}). Put the images there, or fix "
        + ("image_root or the 'file_name' entries." if image_root is not None else "'file_name'.")
    )
