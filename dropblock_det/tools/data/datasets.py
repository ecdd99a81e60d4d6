"""Generate-on-first-use and Detectron2 registration of the embedded digits dataset.

Layout of a dataset folder (``$DETECTRON2_DATASETS/dropblock_digits`` by default)::

    train/000000.png ...            val/000000.png ...
    annotations/instances_train.json  annotations/instances_val.json
    manifest.json                   (generation spec, content hash, summary; written last)

A folder is published only complete: it is generated into a temporary sibling and renamed into
place, under a file lock so that several processes (distributed ranks, parallel runs) generate it
once. A folder whose manifest records another spec is stale and is regenerated.
"""

import glob
import json
import logging
import os
import shutil
import uuid

import portalocker
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import CATEGORY_ID_OFFSET, CLASS_NAMES, SPLITS, DatasetSpec, write_dataset

__all__ = [
    "DATASET_DIRNAME",
    "TRAIN_DATASET",
    "VAL_DATASET",
    "default_dataset_dir",
    "ensure_dataset",
    "format_summary",
    "prepare_dataset",
    "read_manifest",
    "register_dropblock_digits",
]

logger = logging.getLogger(__name__)

DATASET_DIRNAME = "dropblock_digits"
DEFAULT_PREFIX = "dropblock_digits"
TRAIN_DATASET = f"{DEFAULT_PREFIX}_train"
VAL_DATASET = f"{DEFAULT_PREFIX}_val"
MANIFEST = "manifest.json"
# Generous: waiting ranks sit behind one generation, which takes seconds for the default sizes.
LOCK_TIMEOUT_S = 1800

# Registered name -> (dataset folder, DatasetSpec), for ensure_dataset().
_REGISTERED = {}


def default_dataset_dir():
    """Returns: str, ``$DETECTRON2_DATASETS/dropblock_digits`` (``datasets/...`` when unset)."""
    root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(root, DATASET_DIRNAME)


def read_manifest(dataset_dir):
    """Read a dataset folder's manifest.

    Args:
        dataset_dir (str): dataset folder.

    Returns:
        dict or None: the manifest; None when the file does not exist.

    Raises:
        ValueError: naming the file, when it exists but is not a manifest this package wrote.
    """
    path = os.path.join(dataset_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is unreadable ({e}); delete {dataset_dir} to regenerate it."
        ) from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("spec"), dict):
        raise ValueError(
            f"{path} is not a dropblock_digits manifest; delete {dataset_dir} to regenerate it."
        )
    return manifest


def _spec_matches(manifest, spec):
    # A json round trip makes tuples lists, as in the stored manifest.
    return manifest is not None and manifest["spec"] == json.loads(json.dumps(spec.to_dict()))


def _spec_differences(manifest, spec):
    stored, wanted = manifest["spec"], json.loads(json.dumps(spec.to_dict()))
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _unique_sibling(parent, base, kind):
    """A fresh hidden path beside the dataset folder, matched by :func:`_remove_leftovers`."""
    return os.path.join(parent, f".{base}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove_leftovers(parent, base):
    """Delete temporary folders of interrupted generations (call only while holding the lock)."""
    for pattern in (f".{base}.tmp-*", f".{base}.old-*"):
        for path in glob.glob(os.path.join(parent, pattern)):
            logger.info("Removing %s, left by an interrupted generation.", path)
            shutil.rmtree(path, ignore_errors=True)


def prepare_dataset(dataset_dir=None, spec=None, force=False, progress=None):
    """Make sure ``dataset_dir`` holds the dataset of ``spec``, generating it if missing or stale.

    Safe to call from many processes at once: one generates while the others wait on a file lock
    (``.<folder name>.lock`` beside the folder), then find it current. An interrupted generation
    leaves no folder at ``dataset_dir`` (only a temporary sibling, removed by the next one), and
    a failed regeneration leaves the previous dataset in place.

    Args:
        dataset_dir (str or None): dataset folder; None for :func:`default_dataset_dir`.
        spec (DatasetSpec or None): what it must contain; None for the defaults.
        force (bool): regenerate even when the folder is current.
        progress (callable or None): ``progress(split, done, total)``, called during generation.

    Returns:
        dict: the manifest of the (possibly new) dataset.

    Raises:
        FileExistsError: when ``dataset_dir`` exists, is not empty and has no manifest (it was not
            generated here; it is left untouched).
        ValueError: when its manifest is unreadable.
        portalocker.exceptions.LockException: when the lock is not acquired within LOCK_TIMEOUT_S.
    """
    dataset_dir = os.path.abspath(dataset_dir or default_dataset_dir())
    spec = spec if spec is not None else DatasetSpec()
    if not force:
        manifest = read_manifest(dataset_dir)  # fast path, no lock: manifests appear atomically
        if _spec_matches(manifest, spec):
            return manifest

    parent, base = os.path.split(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    with portalocker.Lock(os.path.join(parent, f".{base}.lock"), timeout=LOCK_TIMEOUT_S):
        # Another process may have generated it while this one waited for the lock.
        manifest = read_manifest(dataset_dir)
        if not force and _spec_matches(manifest, spec):
            return manifest
        if manifest is None and os.path.lexists(dataset_dir):
            if not os.path.isdir(dataset_dir) or os.listdir(dataset_dir):
                raise FileExistsError(
                    f"{dataset_dir} exists but has no {MANIFEST}, so it was not generated by "
                    "dropblock_det.tools.data; move it away or choose another folder (for the registered "
                    "datasets: the DETECTRON2_DATASETS environment variable)."
                )
            os.rmdir(dataset_dir)  # an empty folder, e.g. made by hand: nothing to lose
        _remove_leftovers(parent, base)
        if manifest is not None and not force:
            logger.warning(
                "Regenerating stale dataset %s (differs in: %s).",
                dataset_dir,
                ", ".join(_spec_differences(manifest, spec)),
            )
        else:
            logger.info(
                "Generating dataset %s (%d train, %d val images).",
                dataset_dir,
                spec.num_train,
                spec.num_val,
            )

        staging = _unique_sibling(parent, base, "tmp")
        os.makedirs(staging)  # not tempfile.mkdtemp: its 0700 mode would stick to the dataset
        retired = None
        try:
            manifest = write_dataset(staging, spec, progress)
            if os.path.exists(dataset_dir):
                # Two renames, not one: a folder cannot be renamed over a non-empty one. Between
                # them there is briefly no dataset, never a partial one.
                retired = _unique_sibling(parent, base, "old")
                os.rename(dataset_dir, retired)
            os.rename(staging, dataset_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
    return manifest


def format_summary(manifest, dataset_dir=None):
    """Human-readable summary of a manifest: images, boxes, per-class counts, box heights.

    Args:
        manifest (dict): as returned by :func:`prepare_dataset`.
        dataset_dir (str or None): printed as the location when given.

    Returns:
        str: several lines, no trailing newline.
    """
    spec = manifest["spec"]
    lines = []
    if dataset_dir:
        lines.append(f"dataset: {dataset_dir}")
    lines.append(
        f"seed {spec['seed']}, generator v{spec['generator_version']}, "
        f"content sha256 {manifest['content_sha256'][:16]}…"
    )
    for split, info in manifest["summary"].items():
        per_image = info["boxes"] / info["images"] if info["images"] else 0.0
        heights = info.get("box_height_px") or {}
        lines.append(
            f"{split:>5}: {info['images']} images, {info['boxes']} boxes ({per_image:.1f}/image), "
            f"{info['source_digits']} source digits, box height "
            f"{heights.get('min', '-')}..{heights.get('max', '-')} px "
            f"(median {heights.get('median', '-')})"
        )
        counts = "  ".join(f"{name}:{count}" for name, count in info["boxes_per_class"].items())
        lines.append(f"       per class  {counts}")
    return "\n".join(lines)


def _load_split(name, dataset_dir, spec, split):
    """The DatasetCatalog function: generate on first use, then load the COCO json."""
    prepare_dataset(dataset_dir, spec)
    return load_coco_json(
        os.path.join(dataset_dir, "annotations", f"instances_{split}.json"),
        os.path.join(dataset_dir, split),
        name,
    )


def register_dropblock_digits(prefix=DEFAULT_PREFIX, dataset_dir=None, spec=None):
    """Register ``<prefix>_train`` and ``<prefix>_val`` in Detectron2's catalogs, lazily.

    Nothing is generated here: ``DatasetCatalog.get`` generates on first use, and
    :func:`ensure_dataset` does so for code that reads ``metadata.json_file`` directly. A name that
    is already registered is left as it is (importing twice is harmless).

    Args:
        prefix (str): dataset names are ``f"{prefix}_train"`` and ``f"{prefix}_val"``.
        dataset_dir (str or None): dataset folder, made absolute now; None for
            :func:`default_dataset_dir` as the environment says now.
        spec (DatasetSpec or None): what to generate; None for the defaults.

    Returns:
        tuple[str, str]: the train and val dataset names.
    """
    dataset_dir = os.path.abspath(dataset_dir or default_dataset_dir())
    spec = spec if spec is not None else DatasetSpec()
    names = []
    for split in SPLITS:
        name = f"{prefix}_{split}"
        names.append(name)
        json_file = os.path.join(dataset_dir, "annotations", f"instances_{split}.json")
        if name in DatasetCatalog.list():
            registered_json = getattr(MetadataCatalog.get(name), "json_file", None)
            if registered_json == json_file:
                _REGISTERED.setdefault(name, (dataset_dir, spec))
            else:
                logger.warning(
                    "Dataset %r is already registered (json_file %s); keeping it.",
                    name,
                    registered_json,
                )
            continue
        DatasetCatalog.register(
            name, lambda name=name, split=split: _load_split(name, dataset_dir, spec, split)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=os.path.join(dataset_dir, split),
            evaluator_type="coco",
            thing_classes=list(CLASS_NAMES),
            # What load_coco_json derives from the json; set now so that an evaluator built before
            # the first DatasetCatalog.get maps class indices back to category ids.
            thing_dataset_id_to_contiguous_id={
                digit + CATEGORY_ID_OFFSET: digit for digit in range(len(CLASS_NAMES))
            },
            dataset_dir=dataset_dir,
        )
        _REGISTERED[name] = (dataset_dir, spec)
    return tuple(names)


def ensure_dataset(name):
    """Generate a registered digits dataset now if it is missing or stale.

    Call it before anything reads ``MetadataCatalog.get(name).json_file`` without going through
    ``DatasetCatalog.get`` first (COCOEvaluator opens that file in its constructor).

    Args:
        name (str): a dataset name; any registered name is accepted, and names this package did
            not register are left alone.

    Returns:
        str or None: the dataset folder, or None for a dataset this package does not generate.

    Raises:
        KeyError: naming the registered datasets, when ``name`` is not registered at all.
    """
    if name in _REGISTERED:
        dataset_dir, spec = _REGISTERED[name]
        prepare_dataset(dataset_dir, spec)
        return dataset_dir
    if name in DatasetCatalog.list():
        return None
    raise KeyError(
        f"Dataset {name!r} is not registered; dropblock_det.tools.data registered "
        f"{sorted(_REGISTERED)}."
    )
