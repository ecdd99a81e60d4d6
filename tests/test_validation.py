"""Tests of dropblock_det.tools.validation: every bad input gets one InputError naming its key or file."""

import json
import os
import re

import pytest
import torch
from conftest import TINY_DROPBLOCK_CONFIG
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers import TRAIN_NET, run_tool, write_coco
from PIL import Image

import dropblock_det
from dropblock_det.tools import annotations as annotation_checks
from dropblock_det.tools.config import add_training_config
from dropblock_det.tools.train_net import parse_command_line
from dropblock_det.tools.trainer import check_inputs
from dropblock_det.tools.validation import InputError, check_head_batch_norm, check_training_inputs

CATEGORIES = [{"id": 1, "name": "one"}, {"id": 7, "name": "seven"}]


def _coco_content(num_images=2):
    images = [
        {"id": i, "file_name": f"img_{i}.png", "width": 8, "height": 8} for i in range(num_images)
    ]
    annotations = [
        {
            "id": i,
            "image_id": i,
            "category_id": CATEGORIES[i % 2]["id"],
            "bbox": [1, 1, 4, 4],
            "area": 16,
            "iscrowd": 0,
        }
        for i in range(num_images)
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


@pytest.fixture
def registry(catalog):
    """Registers datasets under unique names (removed from both catalogs by ``catalog``)."""

    def register(name_prefix="validation_test", **kwargs):
        name = catalog.unique_name(name_prefix)
        if "loader" in kwargs:
            DatasetCatalog.register(name, kwargs["loader"])
            MetadataCatalog.get(name).set(**kwargs.get("metadata", {}))
        else:
            register_coco_instances(name, {}, kwargs["json_file"], kwargs["image_root"])
        return name

    return register


@pytest.fixture
def coco_dataset(tmp_path, registry):
    """A valid tiny COCO dataset (json + images) in tmp_path; returns (name, json_path, root)."""

    def make(content=None, *, json_text=None):
        image_root = tmp_path / "images"
        content = _coco_content() if content is None else content
        json_path = tmp_path / "instances.json"
        write_coco(json_path, content, image_root=image_root)
        if json_text is not None:
            json_path.write_text(json_text)
        name = registry(json_file=str(json_path), image_root=str(image_root))
        return name, json_path, image_root

    return make


def _cfg(train=(), test=(), num_classes=None):
    cfg = get_cfg()
    dropblock_det.add_dropblock_config(cfg)
    add_training_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RETINANET.NUM_CLASSES = len(CATEGORIES) if num_classes is None else num_classes
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TEST = tuple(test)
    return cfg


def _tree_state(root):
    """Every path under root with its size and modification time, to detect any write."""
    state = {}
    for folder, _, files in os.walk(root):
        state[folder] = os.stat(folder).st_mtime_ns
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            state[path] = (stat.st_size, stat.st_mtime_ns)
    return state


def test_valid_inputs_pass(coco_dataset):
    name, _, _ = coco_dataset()
    check_training_inputs(_cfg(train=[name], test=[name]))


def test_invalid_dropblock_value_names_key():
    cfg = _cfg()
    cfg.MODEL.DROPBLOCK.KEEP_PROB = 1.5
    with pytest.raises(InputError, match=r"MODEL\.DROPBLOCK\.KEEP_PROB") as info:
        check_training_inputs(cfg)
    assert "(0, 1]" in str(info.value) and "command line" in str(info.value)


def test_unknown_meta_architecture_suggests_close_match():
    cfg = _cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNett"
    with pytest.raises(InputError, match=r"MODEL\.META_ARCHITECTURE = 'RetinaNett'.*'RetinaNet'"):
        check_training_inputs(cfg, check_train=False)


def test_unregistered_train_dataset_names_key_and_close_match():
    with pytest.raises(InputError, match=r"DATASETS\.TRAIN .*'coco_2017_trian'") as info:
        check_training_inputs(_cfg(train=["coco_2017_trian"]))
    message = str(info.value)
    assert "Did you mean 'coco_2017_train'" in message
    assert "register_coco_instances" in message


def test_unregistered_test_dataset_names_its_key(coco_dataset):
    name, _, _ = coco_dataset()
    cfg = _cfg(train=[name], test=["no_such_dataset"])
    with pytest.raises(InputError, match=r"DATASETS\.TEST names dataset 'no_such_dataset'"):
        check_training_inputs(cfg)
    check_training_inputs(cfg, check_test=False)


def test_empty_train_list():
    with pytest.raises(InputError, match=r"DATASETS\.TRAIN is empty.*DATASETS\.TRAIN \""):
        check_training_inputs(_cfg(train=[]))
    check_training_inputs(_cfg(train=[]), check_train=False)


def _head_bn_cfg(train, ims_per_batch, max_size=96):
    cfg = _cfg(train=[train])
    cfg.MODEL.RETINANET.NORM = "BN"
    cfg.SOLVER.IMS_PER_BATCH = ims_per_batch
    cfg.INPUT.MIN_SIZE_TRAIN = (max_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = max_size
    return cfg


def test_one_image_per_process_with_head_bn_on_a_1x1_level_is_refused(coco_dataset):
    name, _, _ = coco_dataset()
    model = build_model(_head_bn_cfg(name, 1))
    with pytest.raises(
        InputError, match=r"SOLVER\.IMS_PER_BATCH = 1 over 1 process.*p7 level.*96 px"
    ):
        check_head_batch_norm(_head_bn_cfg(name, 1), model)
    # Two processes sharing a batch of 2: still one image each.
    with pytest.raises(InputError, match=r"`SOLVER\.IMS_PER_BATCH 4`"):
        check_head_batch_norm(_head_bn_cfg(name, 2), model, world_size=2)
    check_head_batch_norm(_head_bn_cfg(name, 2), model)  # two images per process
    check_head_batch_norm(_head_bn_cfg(name, 1, max_size=160), model)  # p7 is 2x2 on the long side
    group_norm = _head_bn_cfg(name, 1)
    group_norm.MODEL.RETINANET.NORM = "GN"
    check_head_batch_norm(group_norm, build_model(group_norm))


def test_train_net_refuses_the_head_bn_batch_for_training_only():
    argv = ["--config-file", TINY_DROPBLOCK_CONFIG, "MODEL.DEVICE", "cpu"]
    argv += ["SOLVER.IMS_PER_BATCH", "1", "DATASETS.TEST", "()"]
    with pytest.raises(InputError, match=r"SOLVER\.IMS_PER_BATCH = 1 over 1 process"):
        check_inputs(parse_command_line(argv))
    check_inputs(parse_command_line(["--eval-only", *argv]))  # evaluation only


def test_the_refused_head_bn_batch_really_fails_in_training(tiny_cfg):
    """The check above is not spurious: the same setting breaks the first forward pass."""
    cfg = tiny_cfg()
    assert cfg.MODEL.RETINANET.NORM == "BN" and cfg.INPUT.MAX_SIZE_TRAIN <= 128
    model = build_model(cfg).train()
    image = {"image": torch.zeros(3, 96, 96), "instances": _one_box_instances(96)}
    with EventStorage(0), pytest.raises(ValueError, match="more than 1 value per channel"):
        model([image])
    with EventStorage(0):
        model([image, image])


def _one_box_instances(size):
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0]]))
    instances.gt_classes = torch.tensor([3])
    return instances


def test_missing_json_names_file(coco_dataset):
    name, json_path, _ = coco_dataset()
    json_path.unlink()
    with pytest.raises(InputError, match="does not exist") as info:
        check_training_inputs(_cfg(train=[name]))
    assert str(json_path) in str(info.value) and "register_coco_instances" in str(info.value)


def test_empty_json_names_file(coco_dataset):
    name, json_path, _ = coco_dataset(json_text="")
    with pytest.raises(InputError, match=r"is empty \(0 bytes\)") as info:
        check_training_inputs(_cfg(train=[name]))
    assert str(json_path) in str(info.value) and "regenerate" in str(info.value)


def test_json_syntax_error_reports_line_and_column(coco_dataset):
    name, json_path, _ = coco_dataset(json_text='{\n  "images": [,]\n}')
    with pytest.raises(InputError, match="not valid JSON.*line 2 column 14") as info:
        check_training_inputs(_cfg(train=[name]))
    assert str(json_path) in str(info.value)


def test_binary_file_is_not_json(coco_dataset):
    name, json_path, _ = coco_dataset()
    json_path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InputError, match="not (valid )?JSON") as info:
        check_training_inputs(_cfg(train=[name]))
    assert str(json_path) in str(info.value)


def test_json_that_is_not_an_object(coco_dataset):
    name, _, _ = coco_dataset(json_text="[1, 2]")
    with pytest.raises(InputError, match="holds a list, not an object.*'categories'"):
        check_training_inputs(_cfg(train=[name]))


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_json_lacking_a_key_names_it(coco_dataset, missing):
    content = _coco_content()
    name, json_path, _ = coco_dataset({k: v for k, v in content.items() if k != missing})
    with pytest.raises(InputError, match=f"lacks the key '{missing}'") as info:
        check_training_inputs(_cfg(train=[name]))
    assert str(json_path) in str(info.value) and "regenerate" in str(info.value)


def test_test_set_without_annotations_is_accepted(coco_dataset, registry, tmp_path):
    # COCO test-dev has no annotations: COCOEvaluator then writes predictions without scoring.
    train_name, _, _ = coco_dataset()
    content = _coco_content()
    del content["annotations"]
    test_json = tmp_path / "test.json"
    write_coco(test_json, content)
    test_name = registry(json_file=str(test_json), image_root=str(tmp_path / "images"))
    check_training_inputs(_cfg(train=[train_name], test=[test_name]))


@pytest.mark.parametrize("empty", ["images", "annotations", "categories"])
def test_json_with_an_empty_list(coco_dataset, empty):
    content = dict(_coco_content(), **{empty: []})
    name, _, _ = coco_dataset(content)
    with pytest.raises(InputError, match=f"empty '{empty}' list"):
        check_training_inputs(_cfg(train=[name]))


def _problem(message, fragment):
    """The report line of ``message`` that contains ``fragment``, parsed.

    Returns:
        dict: ``annotation_id`` and ``image_id`` (str, or None where the line names no such id)
        and ``more`` (how many more annotations or ids have the same problem).
    """
    lines = [line for line in message.splitlines() if fragment in line]
    assert len(lines) == 1, message
    line = lines[0]
    annotation = re.search(r"annotation id (\S+?)\b", line)
    image = re.search(r"image ids? (\S+?)\b", line)
    more = re.search(r"; (\d+) more like it\.", line)
    assert more or "; no other like it." in line, line
    return {
        "annotation_id": annotation and annotation.group(1),
        "image_id": image and image.group(1),
        "more": int(more.group(1)) if more else 0,
    }


def _annotation_error(coco_dataset, content, cfg=None):
    """The message check_training_inputs raises for ``content``; asserts it names the json."""
    name, json_path, _ = coco_dataset(content)
    with pytest.raises(InputError) as info:
        check_training_inputs(cfg or _cfg(train=[name]))
    message = str(info.value)
    assert f"annotation file {str(json_path)!r}" in message and "not changed" in message
    return message


def test_annotation_with_unknown_category(coco_dataset):
    content = _coco_content(num_images=4)
    content["annotations"][1]["category_id"] = 99
    content["annotations"][3]["category_id"] = 3
    message = _annotation_error(coco_dataset, content)
    problem = _problem(message, "is not in 'categories'")
    assert problem == {"annotation_id": "1", "image_id": "1", "more": 1}
    assert "category_id 99" in message and "(ids 1, 7)" in message


def test_annotation_without_bbox(coco_dataset):
    content = _coco_content()
    del content["annotations"][1]["bbox"]
    message = _annotation_error(coco_dataset, content)
    problem = _problem(message, "bbox None is not 4 numbers")
    assert problem == {"annotation_id": "1", "image_id": "1", "more": 0}


def test_box_with_non_positive_width_or_height(coco_dataset):
    # The box: a negative width, as from [x1, y1, x2, y2] mistaken for [x, y, w, h].
    content = _coco_content(num_images=4)
    content["annotations"][2]["bbox"] = [5, 1, -3, 4]
    content["annotations"][3]["bbox"] = [1, 1, 4, 0]
    message = _annotation_error(coco_dataset, content)
    problem = _problem(message, "has a width or height <= 0")
    assert problem == {"annotation_id": "2", "image_id": "2", "more": 1}
    assert "[5, 1, -3, 4]" in message and "[x, y, width, height]" in message


def test_box_wholly_outside_its_image(coco_dataset):
    content = _coco_content(num_images=4)  # 8x8 images
    content["annotations"][1]["bbox"] = [8, 1, 4, 4]  # starts at the right edge
    content["annotations"][2]["bbox"] = [-5, 1, 4, 4]  # ends left of the image
    content["annotations"][3]["bbox"] = [6, 6, 4, 4]  # partly inside: Detectron2 clips it
    message = _annotation_error(coco_dataset, content)
    problem = _problem(message, "lies wholly outside its 8x8 image")
    assert problem == {"annotation_id": "1", "image_id": "1", "more": 1}
    assert "[8, 1, 4, 4]" in message and "annotation id 3" not in message


def test_duplicate_image_ids(coco_dataset):
    content = _coco_content(num_images=5)
    content["images"][3]["id"] = 1
    content["images"][4]["id"] = 2
    message = _annotation_error(coco_dataset, content)
    problem = _problem(message, "entries of 'images'")
    assert problem == {"annotation_id": None, "image_id": "1", "more": 1}
    assert "is used by 2 entries of 'images' (images[1], images[3])" in message


def test_duplicate_annotation_ids(coco_dataset):
    content = _coco_content(num_images=4)
    content["annotations"][2]["id"] = 0
    message = _annotation_error(coco_dataset, content)
    problem = _problem(message, "is used by 2 annotations")
    assert problem == {"annotation_id": "0", "image_id": "0", "more": 0}
    assert "(image ids 0, 2)" in message


def test_missing_segmentation_is_refused_where_masks_are_trained(coco_dataset):
    content = _coco_content(num_images=3)
    content["annotations"][0]["segmentation"] = [[1, 1, 5, 1, 5, 5]]
    content["annotations"][2]["segmentation"] = []
    name, _, _ = coco_dataset(content)
    check_training_inputs(_cfg(train=[name]))  # boxes only: no segmentation needed
    masks = _cfg(train=[name])
    masks.MODEL.MASK_ON = True
    message = _annotation_error(coco_dataset, content, cfg=masks)
    problem = _problem(message, "has no 'segmentation'")
    assert problem == {"annotation_id": "1", "image_id": "1", "more": 1}
    assert "MODEL.MASK_ON False" in message


def test_every_kind_of_annotation_problem_is_reported_at_once(coco_dataset):
    content = _coco_content(num_images=4)
    content["annotations"][0]["category_id"] = 99
    content["annotations"][1]["bbox"] = [1, 1, 0, 4]
    content["annotations"][2]["bbox"] = [20, 20, 4, 4]
    message = _annotation_error(coco_dataset, content)
    assert [line.split(":")[0] for line in message.splitlines()[1:]] == [
        "  - annotation id 0 (image id 0)",
        "  - annotation id 1 (image id 1)",
        "  - annotation id 2 (image id 2)",
    ]


def test_annotation_problems_of_detectron2_builtin_datasets_are_only_logged(
    coco_dataset, monkeypatch, caplog
):
    # COCO train2017 itself has two boxes of height 0, which Detectron2 drops: training on it
    # must not be refused.
    assert {"coco_2017_train", "coco_2014_minival"} <= annotation_checks.detectron2_builtin_names()
    content = _coco_content()
    content["annotations"][1]["bbox"] = [1, 1, 4, 0]
    name, _, _ = coco_dataset(content)
    monkeypatch.setattr(annotation_checks, "detectron2_builtin_names", lambda: {name})
    check_training_inputs(_cfg(train=[name]))
    assert "annotation id 1 (image id 1)" in caplog.text and "builtin" in caplog.text


@pytest.mark.slow
def test_bad_annotations_stop_the_command_line_before_anything_is_written(tmp_path):
    image_root = tmp_path / "images"
    content = _coco_content(num_images=4)
    content["annotations"][2]["bbox"] = [53, 5, -15, 48]
    content["annotations"][3]["bbox"] = [1, 1, -1, 4]
    json_path = tmp_path / "instances.json"
    write_coco(json_path, content, image_root=image_root)
    before = json_path.read_bytes()
    output_dir = tmp_path / "output"
    proc = run_tool(
        [
            TRAIN_NET,
            "--config-file", TINY_DROPBLOCK_CONFIG,
            "--coco-dataset", "mine", str(json_path), str(image_root),
            "MODEL.DEVICE", "cpu",
            "MODEL.RETINANET.NUM_CLASSES", "2",
            "DATASETS.TRAIN", "('mine',)",
            "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(output_dir),
        ],  # fmt: skip
        timeout=120,
        returncode=2,
    )
    assert f"annotation file {str(json_path)!r}" in proc.stderr
    problem = _problem(proc.stderr, "has a width or height <= 0")
    assert problem == {"annotation_id": "2", "image_id": "2", "more": 1}
    assert "Traceback" not in proc.stderr
    assert not output_dir.exists()
    assert json_path.read_bytes() == before


def test_missing_images_are_counted_and_listed(coco_dataset):
    name, json_path, image_root = coco_dataset(_coco_content(num_images=5))
    (image_root / "img_1.png").unlink()
    (image_root / "img_3.png").unlink()
    with pytest.raises(InputError, match="2 of the 5 image files") as info:
        check_training_inputs(_cfg(train=[name]))
    message = str(info.value)
    assert str(image_root / "img_1.png") in message and str(image_root / "img_3.png") in message
    assert str(json_path) in message and "Put the images there" in message


def test_missing_image_root_names_it(coco_dataset):
    name, _, image_root = coco_dataset()
    for path in image_root.iterdir():
        path.unlink()
    image_root.rmdir()
    with pytest.raises(InputError, match="image_root .* is not a folder, so all 2 images"):
        check_training_inputs(_cfg(train=[name]))


def test_num_classes_mismatch_names_key_and_both_numbers(coco_dataset):
    name, _, _ = coco_dataset()
    with pytest.raises(InputError, match=r"NUM_CLASSES = 80 but DATASETS\.TRAIN dataset") as info:
        check_training_inputs(_cfg(train=[name], num_classes=80))
    message = str(info.value)
    assert name in message and "has 2 categories" in message
    assert "MODEL.RETINANET.NUM_CLASSES 2" in message


def test_num_classes_checked_against_test_set_in_eval_only(coco_dataset):
    name, _, _ = coco_dataset()
    with pytest.raises(InputError, match=r"NUM_CLASSES = 3 but DATASETS\.TEST dataset"):
        check_training_inputs(_cfg(test=[name], num_classes=3), check_train=False)


def test_loader_dataset_errors_name_the_dataset(registry):
    def broken_loader():
        raise FileNotFoundError("datasets/voc/Annotations/0001.xml")

    name = registry(loader=broken_loader)
    with pytest.raises(
        InputError, match=f"{name}.*FileNotFoundError.*0001.xml.*DETECTRON2_DATASETS"
    ):
        check_training_inputs(_cfg(train=[name]))


def test_loader_dataset_missing_image_and_class_count(registry, tmp_path):
    present = tmp_path / "present.png"
    Image.new("RGB", (8, 8)).save(present)
    dicts = [{"file_name": str(present)}, {"file_name": str(tmp_path / "absent.png")}]
    name = registry(loader=lambda: dicts, metadata={"thing_classes": ["a", "b"]})
    with pytest.raises(InputError, match="1 of the 2 image files.*absent.png"):
        check_training_inputs(_cfg(train=[name]))
    dicts.pop()
    check_training_inputs(_cfg(train=[name]))
    with pytest.raises(InputError, match="NUM_CLASSES = 5 .* has 2 categories"):
        check_training_inputs(_cfg(train=[name], num_classes=5))


def test_generated_dataset_is_generated_before_its_files_are_checked(
    monkeypatch, registry, tmp_path
):
    json_path = tmp_path / "generated" / "instances.json"
    image_root = tmp_path / "generated" / "images"
    name = registry(
        "dropblock_digits_testonly", json_file=str(json_path), image_root=str(image_root)
    )
    generated = []

    def ensure_dataset(dataset_name):
        generated.append(dataset_name)
        write_coco(json_path, _coco_content(), image_root=image_root)

    monkeypatch.setattr(dropblock_det.tools.data, "ensure_dataset", ensure_dataset, raising=False)
    check_training_inputs(_cfg(train=[name]))
    assert generated == [name]


def test_generation_failure_names_dataset(monkeypatch, registry, tmp_path):
    name = registry(
        "dropblock_digits_testonly", json_file=str(tmp_path / "a.json"), image_root=str(tmp_path)
    )

    def ensure_dataset(dataset_name):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(dropblock_det.tools.data, "ensure_dataset", ensure_dataset, raising=False)
    with pytest.raises(InputError, match=f"{name}.*could not be generated.*read-only"):
        check_training_inputs(_cfg(train=[name]))


def test_each_json_is_parsed_once(coco_dataset, registry, monkeypatch):
    name, json_path, image_root = coco_dataset()
    second_name = registry(json_file=str(json_path), image_root=str(image_root))
    parses = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda raw: parses.append(1) or real_loads(raw))
    check_training_inputs(_cfg(train=[name, second_name], test=[name]))
    assert len(parses) == 1


def test_nothing_is_written_or_removed(coco_dataset, tmp_path, monkeypatch):
    name, _, _ = coco_dataset()
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    (output_dir / "model_final.pth").write_bytes(b"weights")
    (output_dir / "metrics.json").write_text('{"iteration": 9}\n')
    monkeypatch.chdir(tmp_path)
    before = _tree_state(tmp_path)
    check_training_inputs(_cfg(train=[name]))
    with pytest.raises(InputError):
        check_training_inputs(_cfg(train=[name], num_classes=80))
    with pytest.raises(InputError):
        check_training_inputs(_cfg(train=["not_registered"]))
    assert _tree_state(tmp_path) == before


@pytest.mark.parametrize("evaluator_type", [None, "lvis"])
def test_a_test_dataset_we_cannot_evaluate_is_refused_naming_its_evaluator_type(
    registry, evaluator_type
):
    metadata = {} if evaluator_type is None else {"evaluator_type": evaluator_type}
    name = registry(loader=lambda: [], metadata=metadata)
    with pytest.raises(
        InputError, match=rf"DATASETS\.TEST.*{name}.*evaluator_type {evaluator_type!r}"
    ):
        check_training_inputs(_cfg(test=[name]), check_train=False)
