"""Tests of the embedded digits dataset (dropblock_det.tools.data): rendering, files, registration."""

import contextlib
import importlib
import importlib.util
import io
import json
import os
import threading

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from helpers import REPO_ROOT
from PIL import Image

import dropblock_det.tools.data as data
from dropblock_det.tools.data import datasets as datasets_module
from dropblock_det.tools.data import synthetic

# Small specs keep every generation well under a second.
SMALL = data.DatasetSpec(seed=3, num_train=6, num_val=4)
# One digit on the flat background: what is not background in the PNG is that digit.
CLEAN_SCENE = data.SceneParams(digits_per_image=(1, 1), min_contrast=0.4)


def _hidden_siblings(dataset_dir):
    """Hidden entries beside a dataset folder other than its lock file (i.e. leftovers)."""
    parent, base = os.path.split(dataset_dir)
    return sorted(n for n in os.listdir(parent) if n.startswith(".") and n != f".{base}.lock")


def _load_json(dataset_dir, split):
    with open(os.path.join(dataset_dir, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


@pytest.fixture
def unique_prefix(request, catalog):
    """A dataset-name prefix of this test; its registrations are removed afterwards."""
    prefix = f"test_digits_{request.node.name}"
    yield prefix
    for split in ("train", "val"):
        datasets_module._REGISTERED.pop(f"{prefix}_{split}", None)


# --- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", 16),
        ("digits_per_image", (3, 2)),
        ("digit_height", (10, 100)),  # taller than half the default 128 px image
        ("min_contrast", "0.4"),
    ],
)
def test_scene_params_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"SceneParams.{field}"):
        data.SceneParams(**{field: value})


@pytest.mark.parametrize(
    "field, value", [("num_train", -1), ("seed", 1.5), ("val_source_fraction", 1.0)]
)
def test_dataset_spec_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"DatasetSpec.{field}"):
        data.DatasetSpec(**{field: value})


# --- rendering -------------------------------------------------------------------------------


def test_source_split_is_disjoint_covering_and_has_every_class_in_both():
    _, labels = synthetic.load_source_digits()
    pools = synthetic.split_source_indices(labels, seed=0, val_fraction=0.3)
    train, val = set(pools["train"].tolist()), set(pools["val"].tolist())
    assert not train & val
    assert train | val == set(range(len(labels)))
    for pool in pools.values():
        assert set(labels[pool].tolist()) == set(range(10))
    # About 30% of each class goes to val (rounding moves at most one digit per class).
    assert abs(len(val) - 0.3 * len(labels)) <= 10


@pytest.mark.parametrize(
    "params", [data.SceneParams(), data.SceneParams(digits_per_image=(4, 8), digit_height=(8, 24))]
)
def test_rendered_boxes_are_tight_around_ink_disjoint_and_inside_the_image(params):
    images, labels = synthetic.load_source_digits()
    pool = np.arange(len(labels))
    num_objects = 0
    for index in range(15):
        scene = synthetic.render_scene(
            synthetic.scene_rng(0, "train", index), params, images, labels, pool
        )
        size = params.image_size
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert len(scene.boxes) <= params.digits_per_image[1]
        assert np.array_equal(scene.labels, labels[scene.source_indices])
        for (x, y, w, h), mask in zip(scene.boxes, scene.ink_masks, strict=True):
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= size and y + h <= size
            ys, xs = np.nonzero(mask)
            # Tight: the box is exactly the extent of the digit's ink.
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            # The ink box height follows the sampled height; the upscaling and the opacity
            # threshold move each edge by at most ~1.5 px.
            assert params.digit_height[0] - 3 <= h <= params.digit_height[1] + 3
        # Disjoint: no pixel lies in two boxes.
        covered = np.zeros((size, size), dtype=int)
        for x, y, w, h in scene.boxes:
            covered[y : y + h, x : x + w] += 1
        assert covered.max() <= 1
        num_objects += len(scene.boxes)
    assert num_objects >= 15 * params.digits_per_image[0] // 2  # placement rarely gives up


def test_saved_png_shows_the_digit_exactly_inside_its_json_box(tmp_path):
    spec = data.DatasetSpec(seed=5, num_train=12, num_val=0, scene=CLEAN_SCENE)
    out = str(tmp_path / "clean")
    data.prepare_dataset(out, spec)
    coco = _load_json(out, "train")
    assert len(coco["annotations"]) == 12  # one digit per image
    for info, ann in zip(coco["images"], coco["annotations"], strict=True):
        assert ann["image_id"] == info["id"]
        pixels = np.asarray(Image.open(os.path.join(out, "train", info["file_name"])), np.float64)
        luma = pixels @ np.array([0.299, 0.587, 0.114])
        difference = np.abs(luma - np.median(luma))  # the flat background is the majority
        # A pixel of opacity a differs from the background by a times the digit's full contrast
        # (the largest difference, >= 0.4 * 255 levels); ink is a >= 0.5. Rounding to uint8 moves
        # a difference by at most 1 luma level (0.5 for the pixel, 0.5 for the background), so
        # pixels 1.5 levels above half the contrast are surely ink and those 1.5 below surely not.
        half = 0.5 * difference.max()
        surely_ink, maybe_ink = difference >= half + 1.5, difference >= half - 1.5
        x, y, w, h = ann["bbox"]
        assert ann["area"] == w * h and ann["iscrowd"] == 0
        inside = np.zeros_like(surely_ink)
        inside[y : y + h, x : x + w] = True
        assert not (surely_ink & ~inside).any(), "ink outside the box"
        # Tight: each edge row and column of the box holds ink.
        box = maybe_ink[y : y + h, x : x + w]
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()


# --- files -----------------------------------------------------------------------------------


def test_generation_is_deterministic_to_the_byte(tmp_path):
    first = synthetic.write_dataset(str(tmp_path / "a"), SMALL)
    second = synthetic.write_dataset(str(tmp_path / "b"), SMALL)
    assert first == second
    for relpath in [
        "annotations/instances_train.json",
        "annotations/instances_val.json",
        "train/000005.png",
        "val/000003.png",
    ]:
        with open(tmp_path / "a" / relpath, "rb") as fa, open(tmp_path / "b" / relpath, "rb") as fb:
            assert fa.read() == fb.read(), relpath
    assert data.hash_dataset_files(str(tmp_path / "a")) == first["content_sha256"]
    assert data.hash_dataset_files(str(tmp_path / "b")) == first["content_sha256"]
    other_seed = synthetic.write_dataset(
        str(tmp_path / "c"), data.DatasetSpec(seed=4, num_train=6, num_val=4)
    )
    assert other_seed["content_sha256"] != first["content_sha256"]


def test_growing_a_split_appends_images_without_changing_earlier_ones(tmp_path):
    synthetic.write_dataset(str(tmp_path / "small"), SMALL)
    synthetic.write_dataset(str(tmp_path / "big"), data.DatasetSpec(seed=3, num_train=9, num_val=4))
    for name in sorted(os.listdir(tmp_path / "small" / "train")):
        assert (tmp_path / "small" / "train" / name).read_bytes() == (
            tmp_path / "big" / "train" / name
        ).read_bytes()


def test_json_is_valid_coco_with_disjoint_train_and_val_sources(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = str(tmp_path / "d")
    manifest = data.prepare_dataset(out, SMALL)
    sources = {}
    for split, count in (("train", 6), ("val", 4)):
        json_file = os.path.join(out, "annotations", f"instances_{split}.json")
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(json_file)
        assert len(coco.getImgIds()) == count
        assert sorted(coco.getCatIds()) == list(range(1, 11))
        assert [coco.cats[i]["name"] for i in range(1, 11)] == list(data.CLASS_NAMES)
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) == manifest["summary"][split]["boxes"] > 0
        for ann in anns:
            image = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            assert os.path.isfile(os.path.join(out, split, image["file_name"]))
        sources[split] = {ann["source_index"] for ann in anns}
        # Valid enough to evaluate: the ground truth as detections scores a perfect AP.
        detections = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "score": 1.0,
            }
            for a in anns
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0)
    assert not sources["train"] & sources["val"]


def test_changed_parameters_regenerate_and_unchanged_ones_reuse(tmp_path, monkeypatch):
    out = str(tmp_path / "digits")
    first = data.prepare_dataset(out, SMALL)
    harder = data.DatasetSpec(
        seed=3, num_train=6, num_val=4, scene=data.SceneParams(min_contrast=0.3)
    )
    second = data.prepare_dataset(out, harder)
    assert second["spec"]["scene"]["min_contrast"] == 0.3
    assert second["content_sha256"] != first["content_sha256"]
    assert data.read_manifest(out) == second
    assert data.hash_dataset_files(out) == second["content_sha256"]
    assert _hidden_siblings(out) == []

    def fail(*args, **kwargs):
        raise AssertionError("a current dataset was regenerated")

    monkeypatch.setattr(datasets_module, "write_dataset", fail)
    assert data.prepare_dataset(out, harder) == second


def _fail_after(monkeypatch, num_scenes):
    """Make rendering raise after ``num_scenes`` scenes, as a crash mid-generation would."""
    real_render = synthetic.render_scene
    calls = []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) > num_scenes:
            raise RuntimeError("simulated crash")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", render)


def test_failure_mid_generation_leaves_no_partial_dataset(tmp_path, monkeypatch):
    out = str(tmp_path / "digits")
    with monkeypatch.context() as patch:
        _fail_after(patch, 3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            data.prepare_dataset(out, SMALL)
    assert not os.path.exists(out)
    assert _hidden_siblings(out) == []
    manifest = data.prepare_dataset(out, SMALL)  # and a later call succeeds
    assert data.hash_dataset_files(out) == manifest["content_sha256"]


def test_failed_regeneration_keeps_the_previous_dataset(tmp_path, monkeypatch):
    out = str(tmp_path / "digits")
    previous = data.prepare_dataset(out, SMALL)
    with monkeypatch.context() as patch:
        _fail_after(patch, 2)
        with pytest.raises(RuntimeError, match="simulated crash"):
            data.prepare_dataset(out, data.DatasetSpec(seed=9, num_train=6, num_val=4))
    assert data.read_manifest(out) == previous
    assert data.hash_dataset_files(out) == previous["content_sha256"]
    assert _hidden_siblings(out) == []


def test_leftovers_of_a_killed_generation_are_removed(tmp_path):
    out = str(tmp_path / "digits")
    leftover = tmp_path / ".digits.tmp-12345-deadbeef" / "train"
    leftover.mkdir(parents=True)
    (leftover / "000000.png").write_bytes(b"partial")
    data.prepare_dataset(out, SMALL)
    assert _hidden_siblings(out) == []


def test_foreign_folder_or_file_is_left_untouched(tmp_path):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="manifest.json"):
        data.prepare_dataset(str(out), SMALL)
    assert (out / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "digits.txt"
    a_file.write_text("also mine")
    with pytest.raises(FileExistsError, match="digits.txt"):
        data.prepare_dataset(str(a_file), SMALL)
    assert a_file.read_text() == "also mine"


def test_corrupt_manifest_is_reported_not_overwritten(tmp_path):
    out = str(tmp_path / "digits")
    data.prepare_dataset(out, SMALL)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        f.write("{truncated")
    with pytest.raises(ValueError, match="manifest.json is unreadable"):
        data.prepare_dataset(out, SMALL)
    assert os.path.isfile(os.path.join(out, "train", "000000.png"))


def test_concurrent_callers_generate_once(tmp_path, monkeypatch):
    # portalocker's flock locks are per open file, so threads contend like processes do.
    out = str(tmp_path / "digits")
    real_write = datasets_module.write_dataset
    writes = []

    def counting_write(*args, **kwargs):
        writes.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(datasets_module, "write_dataset", counting_write)
    barrier = threading.Barrier(3)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(data.prepare_dataset(out, SMALL))
        except Exception as e:  # reported below; a thread's exception would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(writes) == 1
    assert len(results) == 3 and all(r == results[0] for r in results)


# --- Detectron2 registration -----------------------------------------------------------------


def test_default_datasets_are_registered_on_import_idempotently():
    for name, split in ((data.TRAIN_DATASET, "train"), (data.VAL_DATASET, "val")):
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert metadata.evaluator_type == "coco"
        assert metadata.thing_classes == [str(d) for d in range(10)]
        assert metadata.json_file.endswith(
            os.path.join("dropblock_digits", "annotations", f"instances_{split}.json")
        )
        assert metadata.image_root.endswith(os.path.join("dropblock_digits", split))
    assert (data.TRAIN_DATASET, data.VAL_DATASET) == (
        "dropblock_digits_train",
        "dropblock_digits_val",
    )
    importlib.reload(data)  # registers again: must neither raise nor change anything
    assert data.register_dropblock_digits() == ("dropblock_digits_train", "dropblock_digits_val")


def test_catalog_get_generates_on_first_use_and_loads_dicts(tmp_path, monkeypatch, unique_prefix):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2data"))
    train, val = data.register_dropblock_digits(prefix=unique_prefix, spec=SMALL)
    dataset_dir = str(tmp_path / "d2data" / "dropblock_digits")
    assert not os.path.exists(dataset_dir)  # registration alone generates nothing

    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 6
    assert os.path.isfile(os.path.join(dataset_dir, "manifest.json"))
    num_boxes = 0
    for record in dicts:
        assert os.path.isfile(record["file_name"])
        assert (record["height"], record["width"]) == (128, 128)
        for obj in record["annotations"]:
            assert obj["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= obj["category_id"] <= 9  # contiguous ids, as the model predicts them
            num_boxes += 1
    assert num_boxes == data.read_manifest(dataset_dir)["summary"]["train"]["boxes"]
    metadata = MetadataCatalog.get(train)
    assert metadata.thing_classes == list(data.CLASS_NAMES)
    assert metadata.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(10)}
    assert os.path.isfile(MetadataCatalog.get(val).json_file)


def test_ensure_dataset_makes_the_json_exist_before_any_catalog_get(tmp_path, unique_prefix):
    dataset_dir = str(tmp_path / "elsewhere")
    _, val = data.register_dropblock_digits(
        prefix=unique_prefix, dataset_dir=dataset_dir, spec=SMALL
    )
    json_file = MetadataCatalog.get(val).json_file
    assert not os.path.exists(json_file)
    assert data.ensure_dataset(val) == dataset_dir
    assert os.path.isfile(json_file)


def test_ensure_dataset_ignores_foreign_datasets_and_rejects_unknown_names():
    assert data.ensure_dataset("coco_2017_val") is None  # registered by Detectron2 itself
    with pytest.raises(KeyError, match="not registered"):
        data.ensure_dataset("no_such_dataset")


# --- command line ----------------------------------------------------------------------------


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "generate_dataset", os.path.join(REPO_ROOT, "tools", "generate_dataset.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_generates_summarizes_verifies_and_previews(tmp_path, capsys):
    cli = _load_cli()
    out = tmp_path / "cli"
    argv = [
        "--out",
        str(out),
        "--seed",
        "2",
        "--num-train",
        "5",
        "--num-val",
        "3",
        "--verify",
        "--preview",
        str(tmp_path / "preview.png"),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert f"wrote {out}" in printed.out and "verify: ok" in printed.out
    assert "train: 5 images" in printed.out and "per class" in printed.out
    assert "generating train: 5/5" in printed.err
    with Image.open(tmp_path / "preview.png") as preview:
        assert preview.size[0] > 200 and preview.size[1] > 200
    assert data.read_manifest(str(out))["spec"]["seed"] == 2

    assert cli.main(argv[:-2]) == 0  # same options: reused, not regenerated
    assert "already holds this dataset" in capsys.readouterr().out

    (out / "val" / "000000.png").write_bytes(b"tampered")
    assert cli.main(argv[:-2]) == 1
    assert "verify: MISMATCH" in capsys.readouterr().out


def test_cli_reports_bad_options_by_name(tmp_path, capsys):
    cli = _load_cli()
    assert cli.main(["--out", str(tmp_path / "x"), "--num-train", "-3"]) == 2
    assert "DatasetSpec.num_train" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
