"""The tests' shared tools: the tool runner, the COCO writer and the catalog fixture."""

import json
import os

import numpy as np
import pytest
from conftest import CatalogEntries
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import BACKGROUND, INK, REPO_ROOT, TESTS_DIR, run_tool, write_coco
from PIL import Image

# Prints what run_tool's environment promises, then exits with the status given as argument.
REPORTING_CHILD = """
import json, os, sys
print(json.dumps({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                  "PYTHONPATH")} | {"cwd": os.getcwd()}))
print("stderr-marker", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.slow
def test_run_tool_runs_on_the_cpu_with_one_thread_from_this_tree(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    proc = run_tool(["-c", REPORTING_CHILD, 0], env={"EXTRA": "1"})
    seen = json.loads(proc.stdout)
    assert seen["OMP_NUM_THREADS"] == "1" and seen["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["PYTHONPATH"].split(os.pathsep)[:2] == [TESTS_DIR, REPO_ROOT]
    assert seen["cwd"] == REPO_ROOT
    assert proc.stderr.strip() == "stderr-marker"


@pytest.mark.slow
def test_run_tool_asserts_the_exit_status_quoting_both_streams():
    assert run_tool(["-c", REPORTING_CHILD, 3], returncode=3).returncode == 3
    assert run_tool(["-c", REPORTING_CHILD, 4], returncode=None).returncode == 4
    with pytest.raises(AssertionError, match="exited 3, expected 0") as failure:
        run_tool(["-c", REPORTING_CHILD, 3])
    assert "OMP_NUM_THREADS" in str(failure.value) and "stderr-marker" in str(failure.value)


@pytest.mark.slow
def test_run_tool_kills_a_hung_tool_and_fails_the_test():
    with pytest.raises(pytest.fail.Exception, match="hung for 1 s"):
        run_tool(["-c", "import time; print('started', flush=True); time.sleep(60)"], timeout=1)


def test_write_coco_writes_the_json_and_paints_each_clipped_box(tmp_path):
    content = {
        "images": [{"id": 5, "file_name": "a.png", "width": 12, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 5, "bbox": [2, 3, 4, 2]},
            {"id": 2, "image_id": 5, "bbox": [9, 8, 10, 10]},  # clipped at the corner
            {"id": 3, "image_id": 5, "bbox": [1, 1, -3, 4]},  # malformed: not painted
            {"id": 4, "image_id": 6, "bbox": [0, 0, 12, 10]},  # another image's box
        ],
        "categories": [],
    }
    json_path = write_coco(tmp_path / "x.json", content, image_root=tmp_path / "images")
    assert json_path == str(tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == content
    pixels = np.asarray(Image.open(tmp_path / "images" / "a.png"))
    expected = np.full((10, 12, 3), BACKGROUND, dtype=np.uint8)
    expected[3:5, 2:6] = INK
    expected[8:10, 9:12] = INK
    np.testing.assert_array_equal(pixels, expected)


def test_write_coco_without_image_root_writes_only_the_json(tmp_path):
    write_coco(tmp_path / "x.json", {"images": [{"id": 1, "file_name": "a.png"}]})
    assert os.listdir(tmp_path) == ["x.json"]


def test_catalog_entries_remove_what_was_registered_since_and_only_that():
    before = CatalogEntries()
    name = before.unique_name("helpers_test")
    assert name.startswith("helpers_test_") and name not in DatasetCatalog.list()
    DatasetCatalog.register(name, list)
    MetadataCatalog.get(f"{name}_metadata_only").set(thing_classes=["a"])
    kept = set(DatasetCatalog.list()) - {name}
    before.remove_added()
    assert set(DatasetCatalog.list()) == kept
    assert f"{name}_metadata_only" not in MetadataCatalog.list()
    assert "coco_2017_val" in DatasetCatalog.list()  # registered before: left alone
