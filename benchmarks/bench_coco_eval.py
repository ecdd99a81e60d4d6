"""COCO bbox evaluation: pycocotools' COCOeval against faster-coco-eval, side by side.

Generates, from a fixed seed, a val2017-sized detection problem in memory (5,000 images of COCO
sizes, ~36,000 ground-truth boxes over COCO's 80 category ids with COCO's small/medium/large mix
and ~1% crowd regions, and 100 detections per image from a noisy "detector"), runs both COCOeval
backends on identical copies of it through Detectron2's ``_evaluate_predictions_on_coco`` (the
code path of :class:`dropblock_det.tools.evaluation.FasterCOCOEvaluator`: ``loadRes``, then
``evaluate``/``accumulate``/``summarize``), and prints AP, AP50, AP75, APs, APm, APl of each, their
largest absolute difference and the wall time and speed-up.

Usage::

    python benchmarks/bench_coco_eval.py                   # full val2017 size (minutes)
    python benchmarks/bench_coco_eval.py --num-images 500  # quick run

The script exits with status 1 when the two backends differ by more than ``--tolerance`` (on
the 0-100 scale COCOEvaluator reports) on any of the six AP metrics or any per-category AP.
Timings are wall clock and process CPU time of one run each; on a shared machine the CPU times
are the steadier figures.
"""

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import io
import os
import platform
import sys
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dropblock_det.tools.evaluation import COCO_METRICS as AP_METRICS

# The COCO category ids of the 80 "thing" classes (1..90 with ten ids unused), so that the
# evaluation sees the same non-contiguous ids as on val2017.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

# val2017 has 36,781 boxes on 5,000 images; ~7.2 per image gives ~36,000.
_MEAN_BOXES_PER_IMAGE = 7.2
# val2017 images with no annotation: 48 of 5,000.
_EMPTY_IMAGE_FRACTION = 0.01
# val2017 box size mix by area: 41% small (< 32^2), 34% medium, 24% large (> 96^2). A log-normal
# side sqrt(area) with these quantiles: ln 32 = mu + sigma * Phi^-1(0.41) and
# ln 96 = mu + sigma * Phi^-1(0.76), i.e. sigma = 1.176 and mu = 3.734.
_LOG_SIDE_MEAN, _LOG_SIDE_STD = 3.734, 1.176
_CROWD_FRACTION = 0.01
# Probability that the detector fires on an object, per COCO size class (small objects are hard).
_HIT_PROBABILITY = {"small": 0.55, "medium": 0.85, "large": 0.95}
DETECTIONS_PER_IMAGE = 100


def _category_probabilities(num_categories):
    """Long-tailed class frequencies; the first class (person) gets ~30% of boxes, as in COCO."""
    weights = 1.0 / np.arange(1, num_categories + 1) ** 0.9
    weights[0] *= 2.5
    return weights / weights.sum()


def _clip_xywh(boxes, width, height):
    """Clip [N, 4] xywh boxes to the image, keeping at least one pixel per side."""
    x0 = np.clip(boxes[:, 0], 0, width - 1)
    y0 = np.clip(boxes[:, 1], 0, height - 1)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], x0 + 1, width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], y0 + 1, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def _iou_xywh(a, b):
    """Element-wise IoU of two [N, 4] xywh box arrays."""
    ix = np.clip(
        np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None
    )
    inter = ix * iy
    return inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)


def _place_boxes(rng, box_w, box_h, width, height):
    """Put boxes of the given sizes at uniformly random positions inside the image."""
    x0 = rng.random(len(box_w)) * (width - box_w)
    y0 = rng.random(len(box_h)) * (height - box_h)
    return _clip_xywh(np.stack([x0, y0, box_w, box_h], axis=1), width, height)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_synthetic_coco(num_images=5000, seed=0):
    """Generate a COCO-format ground truth and noisy detections for it, deterministically.

    The "detector" finds each object with a size-dependent probability and places a jittered box
    on it (small objects are localised worse) whose score grows with its IoU; it also emits
    looser duplicates, some with the wrong class, and fills every image up to
    ``DETECTIONS_PER_IMAGE`` with low-scoring false positives. With the defaults AP lands in the
    ~30-50 range of real COCO detectors.

    Args:
        num_images (int): number of images (val2017 has 5,000).
        seed (int): seed of the numpy generator; the same seed gives the same data.

    Returns:
        tuple[dict, list[dict]]: the ground truth as a COCO json dict (``images``,
        ``annotations``, ``categories``) and the detections in COCO result format (``image_id``,
        ``category_id``, ``bbox`` as xywh, ``score``), as Detectron2's COCOEvaluator produces them.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    rng = np.random.default_rng(seed)
    category_ids = np.array(COCO_CATEGORY_IDS)
    category_probabilities = _category_probabilities(len(category_ids))
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        # COCO images: longer side 640, shorter side 360-480, two thirds landscape.
        short_side = int(rng.integers(360, 481))
        width, height = (640, short_side) if rng.random() < 2 / 3 else (short_side, 640)
        images.append(
            {"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"}
        )

        num_boxes = (
            0
            if rng.random() < _EMPTY_IMAGE_FRACTION
            else int(rng.geometric(1 / _MEAN_BOXES_PER_IMAGE))
        )
        side = np.exp(rng.normal(_LOG_SIDE_MEAN, _LOG_SIDE_STD, num_boxes))
        crowd = rng.random(num_boxes) < _CROWD_FRACTION
        side[crowd] *= 3.0  # crowd regions cover groups of objects
        aspect = np.exp(rng.normal(0.0, 0.5, num_boxes))
        box_w = np.clip(side * np.sqrt(aspect), 2, width)
        box_h = np.clip(side / np.sqrt(aspect), 2, height)
        gt = _place_boxes(rng, box_w, box_h, width, height)
        gt_classes = rng.choice(category_ids, size=num_boxes, p=category_probabilities)
        for box, category_id, is_crowd in zip(gt, gt_classes, crowd, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(is_crowd),
                }
            )

        # Hits: one box per found object, jittered by a fraction of its size (more when small).
        area = gt[:, 2] * gt[:, 3]
        hit_probability = np.where(
            area < 32**2,
            _HIT_PROBABILITY["small"],
            np.where(area < 96**2, _HIT_PROBABILITY["medium"], _HIT_PROBABILITY["large"]),
        )
        hit = rng.random(num_boxes) < hit_probability
        jitter_scale = np.where(area < 32**2, 0.12, 0.06)[:, None]
        # Each hit may come with a looser duplicate (what NMS leaves behind).
        duplicate = hit & (rng.random(num_boxes) < 0.3)
        source = np.concatenate([np.flatnonzero(hit), np.flatnonzero(duplicate)])
        scale = np.concatenate([jitter_scale[hit], 2.5 * jitter_scale[duplicate]])
        wh = gt[source, 2:4]
        noise = rng.normal(0.0, 1.0, (len(source), 4)) * scale
        found = np.concatenate(
            [gt[source, :2] + noise[:, :2] * wh, wh * np.exp(noise[:, 2:])], axis=1
        )
        found = _clip_xywh(found, width, height)
        iou = _iou_xywh(found, gt[source])
        found_scores = _sigmoid(8.0 * (iou - 0.5) + rng.normal(0.0, 1.0, len(source)))
        found_classes = gt_classes[source].copy()
        confused = rng.random(len(source)) < 0.1
        found_classes[confused] = rng.choice(
            category_ids, size=int(confused.sum()), p=category_probabilities
        )

        # Background false positives fill the image up to the per-image limit.
        num_background = max(DETECTIONS_PER_IMAGE - len(source), 0)
        bg_side = np.exp(rng.normal(_LOG_SIDE_MEAN, _LOG_SIDE_STD, num_background))
        bg_w = np.clip(bg_side, 2, width)
        bg_h = np.clip(bg_side * np.exp(rng.normal(0.0, 0.5, num_background)), 2, height)
        background = _place_boxes(rng, bg_w, bg_h, width, height)
        background_scores = _sigmoid(rng.normal(-3.0, 1.5, num_background))
        background_classes = rng.choice(category_ids, size=num_background, p=category_probabilities)

        boxes = np.concatenate([found, background])
        scores = np.concatenate([found_scores, background_scores])
        classes = np.concatenate([found_classes, background_classes])
        keep = np.argsort(-scores, kind="stable")[:DETECTIONS_PER_IMAGE]
        for index in keep:
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(classes[index]),
                    "bbox": [float(v) for v in boxes[index]],
                    "score": float(scores[index]),
                }
            )
    categories = [
        {"id": int(c), "name": f"class_{c}", "supercategory": "thing"} for c in category_ids
    ]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, detections


def _ground_truth_api(ground_truth):
    """Index a private copy of the ground truth with pycocotools' COCO, as COCOEvaluator does."""
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(ground_truth)  # COCOeval marks annotations in place
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt


def per_category_ap(precision):
    """Per-category AP on the 0-100 scale, as COCOEvaluator derives it from ``eval["precision"]``.

    Args:
        precision (np.ndarray): COCOeval's [IoU, recall, category, area, maxDets] precision.

    Returns:
        np.ndarray: one AP per category, NaN where a category has no ground truth.
    """
    per_category = precision[:, :, :, 0, -1]
    valid = per_category > -1
    sums = np.where(valid, per_category, 0.0).sum(axis=(0, 1))
    counts = valid.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts * 100, np.nan)


def evaluate_backend(cocoeval_fn, ground_truth, detections):
    """Run one COCOeval backend on private copies of the inputs through Detectron2's code path.

    Args:
        cocoeval_fn (callable): ``(coco_gt, coco_dt, iou_type) -> COCOeval``.
        ground_truth (dict): COCO json dict.
        detections (list[dict]): COCO results; copied, because ``loadRes`` edits them.

    Returns:
        dict: ``stats`` (the 12 COCO summary numbers on the 0-100 scale), ``per_category_ap``,
        ``cocoeval_s`` and ``cocoeval_cpu_s`` (wall and process CPU seconds of COCOeval
        construction, evaluate, accumulate and summarize) and ``total_s`` (wall seconds of the
        same plus pycocotools' ``loadRes``, which both backends share).
    """
    from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco

    coco_gt = _ground_truth_api(ground_truth)
    results = copy.deepcopy(detections)
    marks = {}

    def timed_cocoeval(*args):
        marks["wall"], marks["cpu"] = time.perf_counter(), time.process_time()
        return cocoeval_fn(*args)

    gc.collect()
    start = time.perf_counter()
    # pycocotools prints progress and the summary table; the comparison table below replaces them.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = _evaluate_predictions_on_coco(
            coco_gt, results, "bbox", cocoeval_fn=timed_cocoeval
        )
    end, end_cpu = time.perf_counter(), time.process_time()
    return {
        "stats": np.asarray(coco_eval.stats[:12], dtype=np.float64) * 100,
        "per_category_ap": per_category_ap(coco_eval.eval["precision"]),
        "cocoeval_s": end - marks["wall"],
        "cocoeval_cpu_s": end_cpu - marks["cpu"],
        "total_s": end - start,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=5000, help="images (val2017: 5,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |difference| of AP, AP50, AP75, APs, APm, APl and per-category AP, "
        "on the 0-100 scale COCOEvaluator reports",
    )
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images must be >= 1, got {args.num_images}")

    from dropblock_det.tools.evaluation import faster_coco_eval_version, faster_cocoeval

    fast_version = faster_coco_eval_version()
    if fast_version is None:
        sys.exit("faster-coco-eval is not installed: pip install faster-coco-eval")
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pycocotools "
        f"{importlib.metadata.version('pycocotools')}, faster-coco-eval {fast_version}; "
        f"{os.cpu_count()} CPUs, load average {load_at_start:.2f} at start",
        flush=True,
    )

    start = time.perf_counter()
    ground_truth, detections = make_synthetic_coco(args.num_images, args.seed)
    annotations = ground_truth["annotations"]
    areas = np.array([a["area"] for a in annotations])
    print(
        f"generated in {time.perf_counter() - start:.1f} s (seed {args.seed}): "
        f"{len(ground_truth['images'])} images, {len(annotations)} ground-truth boxes "
        f"({np.mean(areas < 32**2):.0%} small, {np.mean((areas >= 32**2) & (areas < 96**2)):.0%} "
        f"medium, {np.mean(areas >= 96**2):.0%} large, "
        f"{sum(a['iscrowd'] for a in annotations)} crowd), "
        f"{len(detections)} detections over {len(ground_truth['categories'])} categories",
        flush=True,
    )

    results = {}
    for name, cocoeval_fn in (("pycocotools", COCOeval), ("faster-coco-eval", faster_cocoeval)):
        print(f"evaluating with {name} ...", flush=True)
        results[name] = evaluate_backend(cocoeval_fn, ground_truth, detections)
    slow, fast = results["pycocotools"], results["faster-coco-eval"]

    ap_diff = np.abs(slow["stats"][:6] - fast["stats"][:6])
    ar_diff = np.abs(slow["stats"][6:] - fast["stats"][6:])
    both = ~np.isnan(slow["per_category_ap"])
    same_nan = np.array_equal(both, ~np.isnan(fast["per_category_ap"]))
    category_diff = np.abs(slow["per_category_ap"][both] - fast["per_category_ap"][both])

    print()
    print(
        "| backend | " + " | ".join(AP_METRICS) + " | COCOeval wall s | COCOeval CPU s "
        "| wall s with loadRes |"
    )
    print("|---|" + "---:|" * (len(AP_METRICS) + 3))
    for name, result in results.items():
        cells = " | ".join(f"{value:.4f}" for value in result["stats"][:6])
        print(
            f"| {name} | {cells} | {result['cocoeval_s']:.2f} | {result['cocoeval_cpu_s']:.2f} "
            f"| {result['total_s']:.2f} |"
        )
    cells = " | ".join(f"{value:.1e}" for value in ap_diff)
    print(f"| abs diff | {cells} | | | |")
    print()
    print(
        f"max |diff|, 0-100 scale: six APs {ap_diff.max():.2e}, per-category AP "
        f"{category_diff.max():.2e} ({both.sum()} categories), six ARs {ar_diff.max():.2e}"
    )
    print(
        f"speed-up: {slow['cocoeval_s'] / fast['cocoeval_s']:.1f}x wall, "
        f"{slow['cocoeval_cpu_s'] / fast['cocoeval_cpu_s']:.1f}x CPU on COCOeval "
        f"(evaluate+accumulate+summarize); {slow['total_s'] / fast['total_s']:.1f}x wall including "
        "the shared pycocotools loadRes"
    )
    worst = max(ap_diff.max(), category_diff.max() if category_diff.size else 0.0)
    if not same_nan or worst > args.tolerance:
        print(f"FAIL: the backends differ by {worst:.2e} > {args.tolerance:.0e} (or in NaN)")
        return 1
    print(f"OK: identical within {args.tolerance:.0e} on the 0-100 scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
