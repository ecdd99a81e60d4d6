"""Training on one's own COCO files from the command line: ``tools/train_net.py --coco-dataset``."""

import json
import os
import re

import numpy as np
import pytest
from conftest import TINY_DROPBLOCK_CONFIG
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from helpers import TRAIN_NET, run_tool, write_coco

from dropblock_det.tools.train_net import build_parser, cli
from dropblock_det.tools.trainer import register_datasets

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]
IMAGE_SIZE = 96


def write_coco_dataset(folder, num_images, *, first_id=0):
    """Write ``num_images`` PNGs with one bright box each and their COCO json into ``folder``.

    Returns:
        tuple(str, str): the json file and the image folder.
    """
    image_root = os.path.join(folder, "images")
    rng = np.random.default_rng(first_id)
    images, annotations = [], []
    for image_id in range(first_id, first_id + num_images):
        category = CATEGORIES[image_id % 2]
        width, height = (30, 30) if category["name"] == "square" else (50, 16)
        x, y = (int(v) for v in rng.integers(4, IMAGE_SIZE - 54, size=2))
        file_name = f"scene_{image_id}.png"
        images.append(
            {"id": image_id, "file_name": file_name, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
        )
        annotations.append(
            {
                "id": 100 + image_id,
                "image_id": image_id,
                "category_id": category["id"],
                "bbox": [x, y, width, height],
                "area": width * height,
                "iscrowd": 0,
            }
        )
    json_file = os.path.join(folder, f"instances_{first_id}.json")
    content = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    return write_coco(json_file, content, image_root=image_root), image_root


def tiny_opts(output_dir, train, test, max_iter):
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.RETINANET.NUM_CLASSES", len(CATEGORIES),
        "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", max_iter,
        "INPUT.MIN_SIZE_TRAIN", "(96,)",
        "INPUT.MAX_SIZE_TRAIN", 96,
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{test}',)",
        "OUTPUT_DIR", output_dir,
    ]  # fmt: skip


def read_eval_results(output_dir):
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_train_eval_only_and_resume_on_coco_files_given_on_the_command_line(tmp_path):
    train_json, train_root = write_coco_dataset(str(tmp_path / "own"), 4)
    val_json, val_root = write_coco_dataset(str(tmp_path / "own"), 2, first_id=10)
    out = str(tmp_path / "run")
    flags = [
        "--config-file", TINY_DROPBLOCK_CONFIG,
        "--coco-dataset", "own_train", train_json, train_root,
        "--coco-dataset", "own_val", val_json, val_root,
    ]  # fmt: skip

    run_tool([TRAIN_NET, *flags, *tiny_opts(out, "own_train", "own_val", max_iter=2)], timeout=120)
    after_training = read_eval_results(out)
    assert after_training["iteration"] == 2
    assert "AP" in after_training["results"]["bbox"]

    weights = os.path.join(out, "model_final.pth")
    run_tool(
        [
            TRAIN_NET,
            *flags,
            "--eval-only",
            *tiny_opts(out, "own_train", "own_val", max_iter=2),
            "MODEL.WEIGHTS",
            weights,
        ],
        timeout=120,
    )
    # The same weights: the same iteration and the same scores as the evaluation after training.
    assert read_eval_results(out) == after_training

    run_tool(
        [TRAIN_NET, *flags, "--resume", *tiny_opts(out, "own_train", "own_val", max_iter=4)],
        timeout=120,
    )
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Starting training from iteration 2" in log
    assert read_eval_results(out)["iteration"] == 4


@pytest.fixture
def dataset_name(catalog):
    """A unique dataset name, removed from both catalogs afterwards."""
    return catalog.unique_name("own_data_test")


def parse(*argv):
    return build_parser().parse_args(["--config-file", TINY_DROPBLOCK_CONFIG, *argv])


def test_flag_registers_absolute_paths_with_coco_evaluator_and_again_is_harmless(
    tmp_path, dataset_name, monkeypatch
):
    json_file, image_root = write_coco_dataset(str(tmp_path), 2)
    monkeypatch.chdir(tmp_path)
    args = parse("--coco-dataset", dataset_name, os.path.basename(json_file), "images")
    register_datasets(args)
    register_datasets(args)  # every rank's main registers again, in the same process for one
    metadata = MetadataCatalog.get(dataset_name)
    assert metadata.json_file == json_file and metadata.image_root == image_root
    assert metadata.evaluator_type == "coco"
    assert [d["image_id"] for d in DatasetCatalog.get(dataset_name)] == [0, 1]


def test_detectron2_flags_and_config_options_still_parse(tmp_path, dataset_name):
    args = parse(
        "--num-gpus", "2", "--resume", "--coco-dataset", dataset_name, "a.json", "imgs",
        "--coco-dataset", "other", "b.json", "imgs", "SOLVER.MAX_ITER", "3",
    )  # fmt: skip
    assert args.num_gpus == 2 and args.resume
    assert args.coco_dataset == [[dataset_name, "a.json", "imgs"], ["other", "b.json", "imgs"]]
    assert args.opts == ["SOLVER.MAX_ITER", "3"]
    assert parse().coco_dataset == []


def cli_error(capsys, tmp_path, *argv):
    """Run the command line in this process; return its stderr after asserting exit status 2."""
    out = tmp_path / "never_written"
    status = cli(["--config-file", TINY_DROPBLOCK_CONFIG, *argv, "OUTPUT_DIR", str(out)])
    assert status == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_missing_json_file_is_an_input_error_naming_flag_and_value(tmp_path, capsys, dataset_name):
    _, image_root = write_coco_dataset(str(tmp_path), 2)
    missing = str(tmp_path / "nope.json")
    err = cli_error(capsys, tmp_path, "--coco-dataset", dataset_name, missing, image_root)
    assert f"--coco-dataset {dataset_name} {missing} {image_root}" in err
    assert re.search(rf"JSON_FILE '{re.escape(missing)}' does not exist", err)
    assert dataset_name not in DatasetCatalog


def test_missing_image_root_is_an_input_error_naming_flag_and_value(tmp_path, capsys, dataset_name):
    json_file, _ = write_coco_dataset(str(tmp_path), 2)
    missing = str(tmp_path / "no_images")
    err = cli_error(capsys, tmp_path, "--coco-dataset", dataset_name, json_file, missing)
    assert re.search(rf"IMAGE_ROOT '{re.escape(missing)}' does not exist", err)
    assert dataset_name not in DatasetCatalog


def test_name_registered_to_other_files_is_refused(tmp_path, capsys, dataset_name):
    json_file, image_root = write_coco_dataset(str(tmp_path), 2)
    register_coco_instances(dataset_name, {}, "/elsewhere/instances.json", "/elsewhere/images")
    err = cli_error(capsys, tmp_path, "--coco-dataset", dataset_name, json_file, image_root)
    assert f"NAME '{dataset_name}' is already registered" in err
    assert "/elsewhere/instances.json" in err
    # Detectron2's builtin datasets are just as taken.
    err = cli_error(capsys, tmp_path, "--coco-dataset", "coco_2017_train", json_file, image_root)
    assert "NAME 'coco_2017_train' is already registered" in err


def test_name_of_an_embedded_dataset_is_refused(tmp_path, capsys):
    json_file, image_root = write_coco_dataset(str(tmp_path), 2)
    err = cli_error(
        capsys, tmp_path, "--coco-dataset", "dropblock_digits_train", json_file, image_root
    )
    assert "NAME 'dropblock_digits_train' is the name of an embedded dataset" in err


def test_flag_after_the_config_options_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--config-file", TINY_DROPBLOCK_CONFIG, "SOLVER.MAX_ITER", "2", "--coco-dataset", "a"])
    assert info.value.code == 2
    assert "--coco-dataset must come before the config options" in capsys.readouterr().err
