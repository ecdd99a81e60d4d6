"""Tests of dropblock_det.tools.evaluation: the faster-coco-eval COCO evaluator and its switch."""

import contextlib
import copy
import importlib.util
import io
import json
import logging
import math
import sys
import types
from pathlib import Path

import faster_coco_eval
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from helpers import write_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dropblock_det import add_dropblock_config
from dropblock_det.tools import evaluation
from dropblock_det.tools.config import add_training_config
from dropblock_det.tools.evaluation import (
    FasterCOCOEvaluator,
    build_coco_evaluator,
    build_evaluator,
    coco_eval_backend,
    faster_cocoeval,
)

# On the 0-100 scale COCOEvaluator reports. pycocotools and faster-coco-eval do the same float64
# arithmetic (IoU, greedy matching, 101-point interpolated precision) and may differ only in the
# order of the final sums; 1e-6 is far above that noise and far below a meaningful AP change.
TOLERANCE = 1e-6
BENCHMARK_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_coco_eval.py"
HEIGHT, WIDTH = 160, 200
FAST_BACKEND = f"faster-coco-eval {faster_coco_eval.__version__}"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script as a module: its synthetic data set and its evaluation code path."""
    spec = importlib.util.spec_from_file_location("bench_coco_eval", BENCHMARK_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def evaluation_log(caplog):
    """Capture the evaluation module's log, even if a logger setup stopped its propagation."""
    module_logger = logging.getLogger(evaluation.__name__)
    previous = module_logger.level, module_logger.propagate
    module_logger.addHandler(caplog.handler)
    module_logger.setLevel(logging.INFO)
    module_logger.propagate = False  # caplog's handler also sits on the root logger: record once
    yield caplog
    module_logger.removeHandler(caplog.handler)
    module_logger.level, module_logger.propagate = previous


def _polygon(box):
    """The box with one corner cut off: polygon and box area differ, as real masks' do."""
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h - 3, x + w - 3, y + h, x, y + h]]


@pytest.fixture
def tiny_dataset(tmp_path, catalog):
    """4 images, boxes and polygons, non-contiguous category ids, one category without objects."""
    boxes_per_image = {
        1: [(7, [10, 10, 20, 15]), (3, [50, 40, 120, 90])],
        2: [(3, [5, 5, 40, 40]), (3, [60, 70, 30, 25])],
        3: [(7, [100, 20, 60, 80])],
        4: [(7, [0, 0, 8, 8]), (3, [30, 30, 150, 120])],
    }
    images = [
        {"id": i, "width": WIDTH, "height": HEIGHT, "file_name": f"{i}.jpg"}
        for i in boxes_per_image
    ]
    annotations = []
    for image_id, boxes in boxes_per_image.items():
        for category_id, box in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": box,
                    "segmentation": _polygon(box),
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}, {"id": 9, "name": "nine"}]
    json_file = write_coco(
        tmp_path / "tiny.json",
        {"images": images, "annotations": annotations, "categories": categories},
    )
    name = catalog.unique_name("test_evaluation")
    register_coco_instances(name, {}, json_file, str(tmp_path))
    DatasetCatalog.get(name)  # loading fills thing_dataset_id_to_contiguous_id, as training does
    return name, annotations


def _cfg(fast, mask_on=False):
    cfg = get_cfg()
    add_dropblock_config(cfg)
    add_training_config(cfg)
    cfg.TEST.FAST_COCO_EVAL = fast
    cfg.MODEL.MASK_ON = mask_on
    return cfg


def _instances(boxes, scores, classes, mask_boxes=None):
    """Predicted Instances; ``mask_boxes`` (XYXY) gives each mask's filled rectangle."""
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if mask_boxes is not None:
        pred_masks = torch.zeros((len(boxes), HEIGHT, WIDTH), dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(pred_masks, mask_boxes, strict=True):
            mask[int(y0) : int(y1), int(x0) : int(x1)] = True
        instances.pred_masks = pred_masks
    return instances


def _model_outputs(dataset_name, annotations, masks=False, background=12, background_score=0.6):
    """Detectron2 inputs/outputs: jittered ground truth, a confused class, background boxes."""
    mapping = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for image_id in sorted({a["image_id"] for a in annotations}):
        boxes, scores, classes = [], [], []
        for annotation in (a for a in annotations if a["image_id"] == image_id):
            x, y, w, h = annotation["bbox"]
            dx, dy = rng.normal(0, 0.08, 2) * (w, h)
            boxes.append([x + dx, y + dy, x + dx + w, y + dy + h])
            scores.append(rng.uniform(0.3, 1.0))
            classes.append(mapping[annotation["category_id"]])
        mask_boxes = list(boxes)
        for k in range(background):  # false positives of every class ("nine" has no objects)
            boxes.append([120 + k, 100, 180 + k, 150])
            # A medium box around a small mask: mask AP must size it by its mask, not its box.
            mask_boxes.append([120 + k, 100, 150 + k, 125])
            scores.append(background_score)
            classes.append((image_id + k) % 3)
        if image_id == 1:
            classes[0] = 1 - classes[0]  # a confused class
        inputs.append({"image_id": image_id, "height": HEIGHT, "width": WIDTH})
        instances = _instances(boxes, scores, classes, mask_boxes if masks else None)
        outputs.append({"instances": instances})
    return inputs, outputs


def _assert_close_dicts(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert abs(a[key] - b[key]) <= TOLERANCE, (key, a[key], b[key])


def _assert_identical(a, b):
    """Same keys in the same order, the same floats bit for bit, NaN where the other has NaN."""
    assert list(a) == list(b)
    for task in a:
        assert list(a[task]) == list(b[task]), task
        for key, value in a[task].items():
            other = b[task][key]
            assert type(value) is float and type(other) is float, (task, key)
            assert (math.isnan(value) and math.isnan(other)) or value == other, (task, key)


def _run(evaluator, inputs, outputs, **evaluate_kwargs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its summary
        return evaluator.evaluate(**evaluate_kwargs)


@pytest.fixture
def stock_on_faster_coco_eval(monkeypatch):
    """Detectron2's COCOEvaluator computing with faster-coco-eval: the reference for our dict.

    The test swaps Detectron2's module global, which production code no longer does, so that both
    evaluators run the same COCOeval and must agree bit for bit.
    """
    monkeypatch.setattr(d2_coco_evaluation, "COCOeval_opt", faster_cocoeval)

    def build(name, tasks, **kwargs):
        return COCOEvaluator(name, tasks, use_fast_impl=True, **kwargs)

    return build


def test_backends_agree_on_synthetic_detections(bench):
    ground_truth, detections = bench.make_synthetic_coco(num_images=25, seed=0)
    assert any(a["iscrowd"] for a in ground_truth["annotations"])  # crowd matching is exercised
    slow = bench.evaluate_backend(COCOeval, ground_truth, detections)
    fast = bench.evaluate_backend(faster_cocoeval, ground_truth, detections)
    # Not vacuous: the generated detector sits in the AP range of real COCO detectors.
    assert 20.0 < slow["stats"][0] < 60.0
    assert np.all(slow["stats"][3:6] > 0)  # every size class has ground truth and hits
    np.testing.assert_allclose(fast["stats"], slow["stats"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        fast["per_category_ap"], slow["per_category_ap"], rtol=0, atol=TOLERANCE, equal_nan=True
    )


def test_synthetic_detections_are_deterministic_and_val2017_like(bench):
    ground_truth, detections = bench.make_synthetic_coco(num_images=40, seed=3)
    again = bench.make_synthetic_coco(num_images=40, seed=3)
    other = bench.make_synthetic_coco(num_images=40, seed=4)
    assert (ground_truth, detections) == again
    assert (ground_truth, detections) != other
    per_image = np.bincount([d["image_id"] for d in detections])[1:]
    assert np.all(per_image == bench.DETECTIONS_PER_IMAGE)
    assert {c["id"] for c in ground_truth["categories"]} == set(bench.COCO_CATEGORY_IDS)
    with pytest.raises(ValueError, match="num_images"):
        bench.make_synthetic_coco(num_images=0)


def test_segm_backends_agree():
    """faster-coco-eval scores masks on pycocotools' COCO objects with pycocotools' numbers."""
    rng = np.random.default_rng(0)
    height, width = 60, 80
    images, annotations, results = [], [], []
    for image_id in range(1, 9):
        images.append({"id": image_id, "height": height, "width": width})
        for _ in range(3):
            x, y = int(rng.integers(0, 40)), int(rng.integers(0, 30))
            w, h = int(rng.integers(8, 40)), int(rng.integers(8, 30))
            category_id = int(rng.integers(1, 3))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": _polygon([x, y, w, h]),
                    "bbox": [x, y, w, h],
                    "area": w * h / 2,
                    "iscrowd": 0,
                }
            )
            mask = np.zeros((height, width), dtype=np.uint8, order="F")
            dx, dy = rng.integers(-3, 4, 2)
            mask[max(y + dy, 0) : y + dy + h, max(x + dx, 0) : x + dx + w] = 1
            rle = mask_util.encode(np.asfortranarray(mask[:, :, None]))[0]
            rle["counts"] = rle["counts"].decode("utf-8")  # as instances_to_coco_json stores it
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": rle,
                    "score": float(rng.random()),
                }
            )
    ground_truth = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    stats = []
    for cocoeval_fn in (COCOeval, faster_cocoeval):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt.createIndex()
            coco_eval = cocoeval_fn(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats.append(np.asarray(coco_eval.stats[:12]) * 100)
    assert stats[0][0] > 20.0  # most masks match: the comparison is not between empty results
    np.testing.assert_allclose(stats[1], stats[0], rtol=0, atol=TOLERANCE)


def test_faster_cocoeval_dispatches_by_task(tiny_dataset):
    coco_gt = COCO(MetadataCatalog.get(tiny_dataset[0]).json_file)
    assert isinstance(faster_cocoeval(coco_gt, coco_gt, "bbox"), faster_coco_eval.COCOeval_faster)
    assert isinstance(faster_cocoeval(coco_gt, coco_gt, "segm"), faster_coco_eval.COCOeval_faster)
    keypoints = faster_cocoeval(coco_gt, coco_gt, "keypoints")
    assert isinstance(keypoints, COCOeval) and not isinstance(
        keypoints, faster_coco_eval.COCOeval_faster
    )


@pytest.mark.parametrize("mask_on", [False, True])
@pytest.mark.parametrize("img_ids", [None, [3]], ids=["all_images", "one_image_without_s_l"])
def test_same_dict_as_detectron2_cocoevaluator_bit_for_bit(
    tiny_dataset, stock_on_faster_coco_eval, mask_on, img_ids
):
    name, annotations = tiny_dataset
    inputs, outputs = _model_outputs(name, annotations, masks=mask_on)
    tasks = ("bbox", "segm") if mask_on else ("bbox",)
    ours = _run(FasterCOCOEvaluator(name, tasks), inputs, outputs, img_ids=img_ids)
    stock = _run(stock_on_faster_coco_eval(name, tasks), inputs, outputs, img_ids=img_ids)
    _assert_identical(ours, stock)

    metrics = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-three", "AP-seven", "AP-nine"}
    assert set(ours) == set(tasks)
    for task in tasks:
        assert set(ours[task]) == metrics
        assert 0.0 < ours[task]["AP"] < 100.0  # the confused class and false positives cost AP
        assert math.isnan(ours[task]["AP-nine"])  # a category without ground truth
        # Image 3 holds one medium object: COCO gives -1 for small and large, reported as NaN.
        assert math.isnan(ours[task]["APs"]) == (img_ids is not None)
        assert math.isnan(ours[task]["APl"]) == (img_ids is not None)


def test_empty_predictions_give_detectron2s_results(tiny_dataset, stock_on_faster_coco_eval):
    name, _ = tiny_dataset
    ours, stock = FasterCOCOEvaluator(name), stock_on_faster_coco_eval(name, ("bbox",))
    assert _run(ours, [], []) == _run(stock, [], []) == {}  # no image processed

    inputs = [{"image_id": i, "height": HEIGHT, "width": WIDTH} for i in (1, 2)]
    outputs = [{"instances": _instances([], [], [])} for _ in inputs]
    result = _run(ours, inputs, outputs)
    _assert_identical(result, _run(stock, inputs, outputs))
    assert list(result["bbox"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert all(math.isnan(v) for v in result["bbox"].values())


def test_max_dets_per_image_limits_ap_like_detectron2(tiny_dataset):
    name, annotations = tiny_dataset
    # COCO limits detections per image and category: 12 confident false positives of each class
    # per image rank above every true positive.
    inputs, outputs = _model_outputs(name, annotations, background=36, background_score=1.5)
    top10 = _run(FasterCOCOEvaluator(name, max_dets_per_image=10), inputs, outputs)
    stock = COCOEvaluator(name, ("bbox",), max_dets_per_image=10, use_fast_impl=False)
    _assert_close_dicts(top10["bbox"], _run(stock, inputs, outputs)["bbox"])
    assert top10["bbox"]["AP"] == 0.0  # the true positives are beyond the 10 counted
    assert _run(FasterCOCOEvaluator(name), inputs, outputs)["bbox"]["AP"] > 0.0

    with pytest.raises(ValueError, match=r"max_dets_per_image=5.*TEST\.FAST_COCO_EVAL False"):
        FasterCOCOEvaluator(name, max_dets_per_image=5)


def test_evaluator_rejects_tasks_other_than_bbox_and_segm(tiny_dataset):
    with pytest.raises(ValueError, match="bbox and segm only"):
        FasterCOCOEvaluator(tiny_dataset[0], ("bbox", "keypoints"))


def test_a_predicted_class_outside_the_dataset_is_rejected(tiny_dataset):
    name, _ = tiny_dataset
    evaluator = FasterCOCOEvaluator(name)
    evaluator.process([{"image_id": 1}], [{"instances": _instances([[0, 0, 5, 5]], [0.9], [3])}])
    with pytest.raises(ValueError, match=r"class 3 is not in \[0, 1, 2\]"):
        evaluator.evaluate()


def test_evaluating_twice_gives_the_same_results(tiny_dataset):
    name, annotations = tiny_dataset
    evaluator = FasterCOCOEvaluator(name)
    evaluator.process(*_model_outputs(name, annotations))
    with contextlib.redirect_stdout(io.StringIO()):
        first, second = evaluator.evaluate(), evaluator.evaluate()
    _assert_identical(first, second)  # category ids are mapped on copies, not in place


def test_writes_detectron2s_prediction_files(tiny_dataset, tmp_path):
    name, annotations = tiny_dataset
    inputs, outputs = _model_outputs(name, annotations, masks=True)
    ours_dir, stock_dir = tmp_path / "ours", tmp_path / "stock"
    _run(FasterCOCOEvaluator(name, ("bbox", "segm"), output_dir=str(ours_dir)), inputs, outputs)
    stock = COCOEvaluator(name, ("bbox", "segm"), output_dir=str(stock_dir), use_fast_impl=False)
    _run(stock, inputs, outputs)

    results = json.loads((ours_dir / "coco_instances_results.json").read_text())
    assert results == json.loads((stock_dir / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in results} == {3, 7, 9}  # the dataset's ids, not contiguous
    assert len(results) == sum(len(o["instances"]) for o in outputs)
    ours_pth = torch.load(ours_dir / "instances_predictions.pth", weights_only=False)
    assert ours_pth == torch.load(stock_dir / "instances_predictions.pth", weights_only=False)


def test_dataset_without_json_file_is_converted_into_output_dir(tiny_dataset, tmp_path, catalog):
    name, annotations = tiny_dataset
    dicts = DatasetCatalog.get(name)
    plain = f"{name}_no_json"
    DatasetCatalog.register(plain, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(plain).set(thing_classes=["three", "seven", "nine"])
    with pytest.raises(ValueError, match=f"{plain}.*no json_file.*output_dir"):
        FasterCOCOEvaluator(plain)
    inputs, outputs = _model_outputs(name, annotations)
    ours = _run(FasterCOCOEvaluator(plain, output_dir=str(tmp_path / "ours")), inputs, outputs)
    assert (tmp_path / "ours" / f"{plain}_coco_format.json").is_file()
    assert not MetadataCatalog.get(plain).get("json_file")  # no global state changed
    stock = COCOEvaluator(plain, ("bbox",), output_dir=str(tmp_path / "stock"))
    _assert_close_dicts(ours["bbox"], _run(stock, inputs, outputs)["bbox"])
    assert 0.0 < ours["bbox"]["AP"] < 100.0


def test_predictions_of_all_processes_are_evaluated_on_the_main_one(tiny_dataset, monkeypatch):
    name, annotations = tiny_dataset
    inputs, outputs = _model_outputs(name, annotations)
    single = _run(FasterCOCOEvaluator(name), inputs, outputs)

    sent = []  # what each rank hands to gather, in rank order: rank 1 first, then rank 0

    def fake_gather(data, dst=0):
        sent.append(data)
        return list(reversed(sent)) if len(sent) == 2 else []

    monkeypatch.setattr(comm, "gather", fake_gather)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert _run(FasterCOCOEvaluator(name), inputs[2:], outputs[2:]) == {}
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    _assert_identical(_run(FasterCOCOEvaluator(name), inputs[:2], outputs[:2]), single)


def test_build_honours_switch(tiny_dataset, evaluation_log):
    fast = build_coco_evaluator(_cfg(True), tiny_dataset[0])
    assert isinstance(fast, FasterCOCOEvaluator)
    assert fast.backend == coco_eval_backend(_cfg(True)) == FAST_BACKEND
    assert (
        f"COCO evaluation backend: {FAST_BACKEND} (TEST.FAST_COCO_EVAL is True; False selects "
        "pycocotools)." in evaluation_log.text
    )

    evaluation_log.clear()
    slow = build_coco_evaluator(_cfg(False), tiny_dataset[0])
    assert type(slow) is COCOEvaluator
    assert coco_eval_backend(_cfg(False)) == "pycocotools"
    assert "COCO evaluation backend: pycocotools (TEST.FAST_COCO_EVAL is False;" in (
        evaluation_log.text
    )


def test_backend_log_line_states_the_flag_value_in_force(tiny_dataset, evaluation_log):
    for fast in (True, False):
        evaluation_log.clear()
        build_coco_evaluator(_cfg(fast), tiny_dataset[0])
        (line,) = [m for m in evaluation_log.text.splitlines() if "COCO evaluation backend" in m]
        assert f"TEST.FAST_COCO_EVAL is {fast}" in line
        assert f"TEST.FAST_COCO_EVAL {not fast}:" not in line  # no other value reads as in force


def test_build_rejects_missing_or_bad_key(tiny_dataset):
    with pytest.raises(ValueError, match=r"cfg\.TEST\.FAST_COCO_EVAL is missing"):
        build_coco_evaluator(get_cfg(), tiny_dataset[0])
    with pytest.raises(ValueError, match=r"cfg\.TEST\.FAST_COCO_EVAL = 'false'"):
        build_coco_evaluator(_cfg("false"), tiny_dataset[0])


def test_missing_package_falls_back_with_one_warning(tiny_dataset, evaluation_log, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # `import faster_coco_eval` fails
    monkeypatch.setattr(evaluation, "_warned_missing_package", False)
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        FasterCOCOEvaluator(tiny_dataset[0])
    evaluator = build_coco_evaluator(_cfg(True), tiny_dataset[0])
    assert type(evaluator) is COCOEvaluator
    backend = coco_eval_backend(_cfg(True))
    assert backend in ("pycocotools", "detectron2 COCOeval_opt")
    if d2_coco_evaluation.COCOeval_opt is COCOeval:  # Detectron2 without its C++ extension
        assert backend == "pycocotools"
    warnings = [r for r in evaluation_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "TEST.FAST_COCO_EVAL" in message and "pip install faster-coco-eval" in message
    assert backend in message

    evaluation_log.clear()
    build_coco_evaluator(_cfg(True), tiny_dataset[0])
    assert not [r for r in evaluation_log.records if r.levelno == logging.WARNING]  # once only
    assert f"COCO evaluation backend: {backend} (TEST.FAST_COCO_EVAL is True;" in (
        evaluation_log.text
    )


def test_fallback_uses_detectron2s_cpp_cocoeval_only_where_built_and_asked_for(
    tiny_dataset, monkeypatch
):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    built = types.ModuleType("detectron2.evaluation.fast_eval_api")
    built.COCOeval_opt = COCOeval  # stands for the compiled class: only its import matters here
    monkeypatch.setitem(sys.modules, built.__name__, built)
    monkeypatch.setattr(evaluation, "COCOEvaluator", lambda *args, **kwargs: kwargs)
    assert coco_eval_backend(_cfg(True)) == "detectron2 COCOeval_opt"
    assert build_coco_evaluator(_cfg(True), tiny_dataset[0])["use_fast_impl"] is True
    assert coco_eval_backend(_cfg(False)) == "pycocotools"
    assert build_coco_evaluator(_cfg(False), tiny_dataset[0])["use_fast_impl"] is False


def _count_calls(monkeypatch, cls, method):
    calls = []
    original = getattr(cls, method)

    def spy(self, *args, **kwargs):
        calls.append(type(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)
    return calls


@pytest.mark.parametrize("mask_on", [False, True], ids=["retinanet_like", "mask_rcnn"])
def test_end_to_end_gives_pycocotools_numbers(tiny_dataset, monkeypatch, mask_on):
    name, annotations = tiny_dataset
    inputs, outputs = _model_outputs(name, annotations, masks=mask_on)
    fast_calls = _count_calls(monkeypatch, faster_coco_eval.COCOeval_faster, "evaluate")
    slow_calls = _count_calls(monkeypatch, COCOeval, "evaluate")
    detectron2_globals = dict(vars(d2_coco_evaluation))

    fast = _run(build_evaluator(_cfg(True, mask_on), name), inputs, outputs)
    tasks = {"bbox", "segm"} if mask_on else {"bbox"}
    assert len(fast_calls) == len(tasks) and not slow_calls
    assert vars(d2_coco_evaluation) == detectron2_globals  # nothing of Detectron2's is swapped

    slow = _run(build_evaluator(_cfg(False, mask_on), name), inputs, outputs)
    assert len(fast_calls) == len(tasks) and len(slow_calls) == len(tasks)

    assert set(fast) == set(slow) == tasks
    for task in tasks:
        assert 0.0 < fast[task]["AP"] < 100.0
        _assert_close_dicts(fast[task], slow[task])


@pytest.mark.parametrize("evaluator_type", ["lvis", None])
def test_build_evaluator_rejects_datasets_that_are_not_coco(tiny_dataset, evaluator_type, catalog):
    name = f"{tiny_dataset[0]}_other"
    DatasetCatalog.register(name, lambda: [])
    if evaluator_type is not None:
        MetadataCatalog.get(name).evaluator_type = evaluator_type
    with pytest.raises(ValueError) as error:
        build_evaluator(_cfg(True), name)
    message = str(error.value)
    assert repr(name) in message and repr(evaluator_type) in message
    assert "'coco'" in message and "register_coco_instances" in message
