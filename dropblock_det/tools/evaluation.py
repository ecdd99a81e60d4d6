"""COCO box and mask AP with faster-coco-eval's C++ COCOeval, through Detectron2's public API.

Detectron2's registry build lacks its compiled ``COCOeval_opt``, so ``COCOEvaluator`` falls back
to pycocotools' pure-Python ``COCOeval`` (minutes on val2017). :class:`FasterCOCOEvaluator` is a
``DatasetEvaluator`` scoring Detectron2's ``instances_to_coco_json`` output with faster-coco-eval's
``COCOeval_faster`` (same numbers) and returning COCOEvaluator's dict; ``TEST.FAST_COCO_EVAL``
chooses it or COCOEvaluator in :func:`build_evaluator`.
"""

import contextlib
import io
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .config import validate_training_config

__all__ = [
    "FASTER_COCO_EVAL_IOU_TYPES",
    "FasterCOCOEvaluator",
    "check_evaluator_type",
    "build_coco_evaluator",
    "build_evaluator",
    "coco_eval_backend",
    "faster_cocoeval",
    "faster_coco_eval_version",
]

logger = logging.getLogger(__name__)

# COCOeval_faster accepts pycocotools' COCO objects for these tasks and gives pycocotools' numbers
# (checked in tests/test_evaluation.py). Its keypoint path needs faster-coco-eval's own COCO class
# (``cat_img_map``) and other default maxDets, so keypoints keep pycocotools' COCOeval.
FASTER_COCO_EVAL_IOU_TYPES = ("bbox", "segm")
# The box/mask AP metrics of COCOeval.stats[:6], as Detectron2 names them.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_INSTALL_HINT = "pip install faster-coco-eval"
# The fallback warning is logged once per process: an evaluator is built for every evaluation.
_warned_missing_package = False


def faster_coco_eval_version():
    """Return the installed faster-coco-eval version (e.g. ``"1.8.0"``), None when it won't import."""
    try:
        import faster_coco_eval
    except ImportError:
        return None
    return faster_coco_eval.__version__


def faster_cocoeval(coco_gt, coco_dt, iou_type):
    """The COCOeval of one task: ``COCOeval_faster`` for bbox/segm, pycocotools' otherwise."""
    if iou_type not in FASTER_COCO_EVAL_IOU_TYPES:
        return COCOeval(coco_gt, coco_dt, iou_type)
    from faster_coco_eval import COCOeval_faster

    return COCOeval_faster(coco_gt, coco_dt, iou_type)


class FasterCOCOEvaluator(DatasetEvaluator):
    """Box/mask AP with faster-coco-eval: COCOEvaluator's dict and files; :attr:`backend` names it.

    ``{task: {"AP", ..., "APl", "AP-<class>"...}}`` on the 0-100 scale, NaN where COCO cannot
    compute a metric, ``{}`` without predictions and off the main process.
    """

    def __init__(
        self,
        dataset_name,
        tasks=("bbox",),
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=None,
    ):
        """COCOEvaluator's arguments, ``tasks`` a subset of :data:`FASTER_COCO_EVAL_IOU_TYPES`.

        ``output_dir`` also holds the converted COCO json of a dataset registered without
        ``json_file``. ImportError without faster-coco-eval; ValueError for an unsupported task or
        limit, or neither json_file nor output_dir.
        """
        version = faster_coco_eval_version()
        if version is None:
            raise ImportError(f"FasterCOCOEvaluator needs faster-coco-eval: {_INSTALL_HINT}")
        self.backend = f"faster-coco-eval {version}"
        if not set(tasks) <= set(FASTER_COCO_EVAL_IOU_TYPES):
            raise ValueError(f"tasks={tasks!r}: FasterCOCOEvaluator evaluates bbox and segm only.")
        max_dets = 100 if max_dets_per_image is None else max_dets_per_image
        if max_dets < 10:
            # COCOeval_faster sorts maxDets and takes AP at the largest, here 10, not max_dets.
            raise ValueError(
                f"max_dets_per_image={max_dets}: faster-coco-eval needs >= 10; set "
                "TEST.FAST_COCO_EVAL False for Detectron2's COCOEvaluator."
            )
        self._tasks, self._distributed, self._output_dir = sorted(tasks), distributed, output_dir
        self._max_dets = [1, 10, max_dets]
        self._metadata = MetadataCatalog.get(dataset_name)
        self._json_file = self._metadata.get("json_file")
        if self._json_file is None:
            if output_dir is None:
                raise ValueError(
                    f"Dataset {dataset_name!r} has no json_file: pass output_dir to convert it "
                    "to COCO json there."
                )
            self._json_file = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, self._json_file, allow_cached=True)
        self.reset()

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs, strict=True):
            if "instances" in output:
                instances = output["instances"].to(torch.device("cpu"))
                coco_json = instances_to_coco_json(instances, input["image_id"])
                self._predictions.append({"image_id": input["image_id"], "instances": coco_json})

    def evaluate(self, img_ids=None):
        """Score the processed predictions; ``img_ids`` restricts to those images (None: all)."""
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("[FasterCOCOEvaluator] Did not receive valid predictions.")
            return {}
        coco_results = [dict(r) for p in predictions for r in p["instances"]]  # copies: ids change
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if mapping is not None:
            reverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
            for result in coco_results:
                if result["category_id"] not in reverse:
                    raise ValueError(
                        f"Predicted class {result['category_id']} is not in {sorted(reverse)}."
                    )
                result["category_id"] = reverse[result["category_id"]]
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(
                os.path.join(self._output_dir, "instances_predictions.pth"), "wb"
            ) as f:
                torch.save(predictions, f)
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                json.dump(coco_results, f)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while loading
            coco_gt = COCO(PathManager.get_local_path(self._json_file))
        if "annotations" not in coco_gt.dataset:  # a test split, scored by the COCO server
            logger.info("Annotations are not available for evaluation.")
            return OrderedDict()
        logger.info(f"Evaluating predictions with {self.backend} ...")
        return OrderedDict(
            (task, self._task_results(coco_gt, coco_results, task, img_ids)) for task in self._tasks
        )

    def _task_results(self, coco_gt, coco_results, task, img_ids):
        """COCOEvaluator's metrics of one task."""
        if not coco_results:
            logger.warning("No predictions from the model!")
            return {metric: float("nan") for metric in COCO_METRICS}
        if task == "segm":
            # As Detectron2 does: with a bbox, COCO would size instances by box, not mask, area.
            coco_results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
        coco_eval = faster_cocoeval(coco_gt, coco_gt.loadRes(coco_results), task)
        coco_eval.params.maxDets = self._max_dets
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        stats = coco_eval.stats
        results = {
            m: float(stats[i] * 100 if stats[i] >= 0 else "nan") for i, m in enumerate(COCO_METRICS)
        }
        logger.info(f"Evaluation results for {task}: \n" + create_small_table(results))
        class_names = self._metadata.get("thing_classes")
        if class_names is None or len(class_names) <= 1:
            return results
        # (iou, recall, class, area range, max dets): area "all", the largest max dets.
        precisions = coco_eval.eval["precision"]
        if len(class_names) != precisions.shape[2]:
            raise ValueError(f"{len(class_names)} thing_classes, {precisions.shape[2]} categories.")
        for idx, name in enumerate(class_names):
            precision = precisions[:, :, idx, 0, -1]
            precision = precision[precision > -1]
            ap = np.mean(precision) if precision.size else float("nan")
            results[f"AP-{name}"] = float(ap * 100)
        per_class = ", ".join(f"{n} {results[f'AP-{n}']:.3f}" for n in class_names)
        logger.info(f"Per-category {task} AP: {per_class}")
        return results


def coco_eval_backend(cfg):
    """Name the COCOeval :func:`build_coco_evaluator` uses here; ValueError for a bad TEST key.

    ``"faster-coco-eval <version>"``, ``"detectron2 COCOeval_opt"`` (TEST.FAST_COCO_EVAL True,
    faster-coco-eval missing, Detectron2's C++ built) or ``"pycocotools"``.
    """
    validate_training_config(cfg)
    if not cfg.TEST.FAST_COCO_EVAL:
        return "pycocotools"
    version = faster_coco_eval_version()
    if version is not None:
        return f"faster-coco-eval {version}"
    try:  # where COCOEvaluator's default (use_fast_impl=True) finds its C++ COCOeval
        from detectron2.evaluation.fast_eval_api import COCOeval_opt  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "detectron2 COCOeval_opt"


def build_coco_evaluator(cfg, dataset_name, output_dir=None):
    """The COCO evaluator of ``dataset_name`` on :func:`coco_eval_backend`'s backend.

    Without faster-coco-eval, TEST.FAST_COCO_EVAL True warns once. Tasks: bbox, plus segm with
    ``cfg.MODEL.MASK_ON``; predictions are dumped in ``output_dir`` (None: nowhere).
    """
    global _warned_missing_package
    backend = coco_eval_backend(cfg)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    fast = cfg.TEST.FAST_COCO_EVAL
    in_force = f"COCO evaluation backend: {backend} (TEST.FAST_COCO_EVAL is {fast}"
    if backend.startswith("faster-coco-eval"):
        logger.info(f"{in_force}; False selects pycocotools).")
        return FasterCOCOEvaluator(dataset_name, tasks, output_dir=output_dir)
    if fast and not _warned_missing_package:
        _warned_missing_package = True
        logger.warning(
            f"{in_force}, but faster-coco-eval is not installed). Run `{_INSTALL_HINT}` for the "
            "fast backend (same AP, many times faster than pycocotools' pure-Python COCOeval), "
            "or set TEST.FAST_COCO_EVAL False to choose pycocotools and silence this warning."
        )
    elif fast:
        logger.info(f"{in_force}; faster-coco-eval is not installed).")
    else:
        logger.info(f"{in_force}; True with `{_INSTALL_HINT}` selects faster-coco-eval).")
    # TEST.FAST_COCO_EVAL False asks for the official COCOeval even where COCOeval_opt is built.
    use_fast_impl = backend == "detectron2 COCOeval_opt"
    return COCOEvaluator(dataset_name, tasks, output_dir=output_dir, use_fast_impl=use_fast_impl)


def build_evaluator(cfg, dataset_name, output_dir=None):
    """:func:`build_coco_evaluator` for a dataset of evaluator_type "coco", else ValueError."""
    check_evaluator_type(dataset_name)
    return build_coco_evaluator(cfg, dataset_name, output_dir)


def check_evaluator_type(dataset_name):
    """Raise ValueError, naming the dataset, for an ``evaluator_type`` other than "coco"."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type == "coco":
        return
    raise ValueError(
        f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; dropblock_det evaluates "
        "COCO-format datasets only (evaluator_type 'coco'). Register yours with "
        "detectron2.data.datasets.register_coco_instances(name, {}, json_file, image_root), "
        "which sets it."
    )
