"""Checks of COCO instances files: what Detectron2 would load silently wrong or stop on late.

:class:`DatasetChecker` reads each registered dataset's json once (never writes it) and raises one
:class:`~dropblock_det.tools.errors.InputError` listing every kind of problem found, naming the
file, the first offending id and how to fix it. ``validation.check_training_inputs`` runs it on the
datasets a config names.
"""

import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from . import data
from .errors import InputError, path_problem

logger = logging.getLogger(__name__)

# What ``import detectron2.data`` registered, before any code of ours or the user's registers more.
_DETECTRON2_BUILTIN_NAMES = frozenset(DatasetCatalog.list())
# How many offending paths or ids a message lists before it only counts them.
_MAX_LISTED = 3
_FIX_STRUCTURE = (
    "A COCO instances json is an object with the lists 'images', 'annotations' and "
    "'categories'; fix or regenerate the file, or register the right one."
)
_REGENERATE = "Restore or regenerate the file, or register the right one."
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


def detectron2_builtin_names():
    """The dataset names Detectron2 registered on import, whose problems are logged, not refused.

    The user cannot fix those public files (COCO train2017 has boxes of height 0, which
    Detectron2 drops; the 2014 minival files repeat annotation ids, which it allows).
    """
    return _DETECTRON2_BUILTIN_NAMES


def _datasets_root():
    return os.getenv("DETECTRON2_DATASETS", "datasets")


class DatasetChecker:
    """Checks one dataset at a time, parsing each json file at most once.

    ``require_masks``: every annotation needs a ``segmentation`` (``MODEL.MASK_ON``).
    """

    def __init__(self, *, require_masks=False):
        self._parsed_json = {}
        self._require_masks = require_masks

    def check(self, name, key, *, require_annotations):
        """Check the dataset ``name`` that the config key ``key`` names; its number of categories.

        ``require_annotations``: its json must have annotations (training data). None when the
        number of categories cannot be told.
        """
        where = f"{key} dataset {name!r}"
        try:  # the embedded digits datasets are generated on first use
            data.ensure_dataset(name)
        except Exception as error:
            raise InputError(
                f"{where} could not be generated under DETECTRON2_DATASETS = "
                f"{_datasets_root()!r}: {type(error).__name__}: {error}. Point DETECTRON2_DATASETS "
                "at a writable folder, or remove the partly written dataset folder and retry."
            ) from error
        metadata = MetadataCatalog.get(name) if name in MetadataCatalog else None
        json_file = metadata.get("json_file") if metadata is not None else None
        if json_file is None:
            return self._check_loaded_dicts(name, where)
        if "://" in str(json_file):  # a remote file (iopath URI): not downloaded to be checked
            logger.info("Not checking %s: its json %s is not a local file.", where, json_file)
            return None
        json_file, image_root = os.fspath(json_file), os.fspath(metadata.get("image_root", ""))
        content = self._load_json(where, json_file)
        in_file = f"{where}: annotation file {json_file!r}"
        inside = f"{where}: in annotation file {json_file!r},"
        if not isinstance(content, dict):
            raise InputError(
                f"{in_file} holds a {type(content).__name__}, not an object. {_FIX_STRUCTURE}"
            )
        # A test set may lack annotations (COCO test-dev): COCOEvaluator then only writes the
        # predictions. Training needs them.
        # Missing keys first, then types, then empty lists: the message names the worst fault.
        fields = ("images", "annotations", "categories")
        required = [f for f in fields if require_annotations or f != "annotations"]
        for field in required:
            if field not in content:
                raise InputError(
                    f"{in_file} lacks the key {field!r} (keys found: {sorted(content)}). "
                    f"{_FIX_STRUCTURE}"
                )
        for field in fields:
            if field in content and not isinstance(content[field], list):
                kind = type(content[field]).__name__
                raise InputError(f"{inside} {field!r} is a {kind}, not a list. {_FIX_STRUCTURE}")
        for field in required:
            if not content[field]:
                raise InputError(
                    f"{in_file} has an empty {field!r} list. Check that the file is the complete "
                    "one, or regenerate it."
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
                raise InputError(f"{inside} categories[{index}] has no 'id'. {_FIX_STRUCTURE}")
            category_ids.add(_hashable(category["id"]))
        if len(category_ids) != len(content["categories"]):
            raise InputError(
                f"{in_file} repeats category ids in 'categories'; give each category its own 'id'."
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
                f"{inside} {len(bad_images)} entries of 'images' "
                f"lack a 'file_name' string or an 'id' (first: images[{bad_images[0]}]). "
                f"{_FIX_STRUCTURE}"
            )
        lines = _annotation_problems(
            content["images"], content.get("annotations", []), category_ids, self._require_masks
        )
        if lines and name in detectron2_builtin_names():
            logger.warning(
                "%s: annotation file %r (one of Detectron2's builtin datasets, checked but not "
                "refused) has:\n%s",
                where,
                json_file,
                "\n".join(lines),
            )
        elif lines:
            raise InputError(
                f"{in_file} has entries that would train or evaluate wrongly, or stop the run once "
                "it has started; fix them in the file (it was only read, not changed):\n"
                + "\n".join(lines)
            )
        # Detectron2's load_coco_json joins image_root and file_name the same way.
        paths = [os.path.join(image_root, image["file_name"]) for image in content["images"]]
        _check_images_exist(where, paths, image_root=image_root, json_file=json_file)
        return len(category_ids)

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
        problem = path_problem(json_file)
        if problem:
            raise InputError(
                f"{where}: annotation file {problem}. Fix the json_file given to "
                "register_coco_instances, or put the file there (Detectron2's builtin datasets are "
                f"read from DETECTRON2_DATASETS = {_datasets_root()!r})."
            )
        where = f"{where}: annotation file {json_file!r}"
        try:
            with open(json_file, "rb") as f:
                raw = f.read()
        except OSError as error:
            raise InputError(f"{where}: cannot read it: {error}. Check its permissions.") from error
        if not raw.strip():
            raise InputError(f"{where} is empty ({len(raw)} bytes). {_REGENERATE}")
        try:
            content = json.loads(raw)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{where} is not valid JSON: {error.msg} at line {error.lineno} column "
                f"{error.colno}. {_REGENERATE}"
            ) from error
        except UnicodeDecodeError as error:
            raise InputError(f"{where} is not JSON text ({error}). {_REGENERATE}") from error
        self._parsed_json[cache_key] = content
        return content


def _annotation_problems(images, annotations, category_ids, require_masks):
    """One line per kind of problem, naming its first offender and counting the others."""
    problems = {kind: [] for kind in _ANNOTATION_PROBLEMS}
    image_sizes, image_indices = {}, {}
    for index, image in enumerate(images):
        image_id = _hashable(image["id"])
        image_indices.setdefault(image_id, []).append(index)
        if _is_number(image.get("width")) and _is_number(image.get("height")):
            image_sizes[image_id] = (image["width"], image["height"])
    for image_id, indices in image_indices.items():
        if len(indices) > 1:
            listed = ", ".join(f"images[{i}]" for i in indices[:_MAX_LISTED])
            problems["duplicate_image_id"].append(
                f"image id {image_id!r} is used by {len(indices)} entries of 'images' ({listed})"
            )
    ordered = sorted(category_ids, key=repr)
    known = ", ".join(map(repr, ordered[:10])) + (", ..." if len(ordered) > 10 else "")
    annotation_images = {}
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            problems["malformed"].append(f"annotations[{index}] is a {type(annotation).__name__}")
            continue
        image = (
            f"image id {annotation['image_id']!r}" if "image_id" in annotation else "no image_id"
        )
        ref = (
            f"annotation id {annotation['id']!r}" if "id" in annotation else f"annotations[{index}]"
        )
        ref += f" ({image})"
        missing = [key for key in ("id", "image_id") if key not in annotation]
        box = annotation.get("bbox")
        if missing:
            problems["malformed"].append(f"{ref}: has no {' or '.join(map(repr, missing))}")
            continue
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            problems["malformed"].append(
                f"{ref}: bbox {box!r} is not 4 numbers [x, y, width, height]"
            )
            continue
        annotation_images.setdefault(_hashable(annotation["id"]), []).append(annotation["image_id"])
        if _hashable(annotation.get("category_id")) not in category_ids:
            problems["unknown_category"].append(
                f"{ref}: category_id {annotation.get('category_id')!r} is not in 'categories' "
                f"(ids {known})"
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
    return [
        f"  - {found[0]}; {f'{len(found) - 1} more like it' if len(found) > 1 else 'no other like it'}."
        f" {_ANNOTATION_PROBLEMS[kind]}"
        for kind, found in problems.items()
        if found
    ]


def _hashable(value):
    # An id that is a list or dict (a broken file) must not crash the check with a TypeError.
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _is_number(value):
    # A finite int or float: json also parses NaN and Infinity.
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and abs(value) < float("inf")
    )


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
