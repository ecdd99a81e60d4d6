"""COCO evaluation with faster-coco-eval's C++ COCOeval when it is installed.

The registry build of Detectron2 ships without its compiled ``COCOeval_opt``, so its
:class:`~detectron2.evaluation.COCOEvaluator` falls back to pycocotools' pure-Python ``COCOeval``,
which takes minutes on val2017-sized output. :class:`FasterCOCOEvaluator` is that evaluator with
faster-coco-eval's ``COCOeval_faster`` (same numbers, see ``benchmarks/bench_coco_eval.py``) plugged
in where Detectron2 would use ``COCOeval_opt``. ``cfg.TEST.FAST_COCO_EVAL`` (default True; on the
command line ``TEST.FAST_COCO_EVAL False``) switches it off.
"""

import contextlib
import logging
import threading

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from pycocotools.cocoeval import COCOeval

__all__ = [
    "FASTER_COCO_EVAL_IOU_TYPES",
    "FasterCOCOEvaluator",
    "build_coco_evaluator",
    "faster_cocoeval",
    "faster_coco_eval_version",
]

logger = logging.getLogger(__name__)

# COCOeval_faster accepts pycocotools' COCO objects (the ground truth COCOEvaluator loads and the
# detections its loadRes builds) for these tasks and gives pycocotools' numbers (checked in
# tests/test_evaluation.py). Its keypoint path needs faster-coco-eval's own COCO class
# (``cat_img_map``) and other default maxDets, so keypoints keep pycocotools' COCOeval.
FASTER_COCO_EVAL_IOU_TYPES = ("bbox", "segm")

_INSTALL_HINT = "pip install faster-coco-eval"
# The fallback warning is logged once per process: an evaluator is built for every evaluation.
_warned_missing_package = False
# Serialises the temporary swap of Detectron2's module-level COCOeval_opt (see _use_cocoeval_fn).
_SWAP_LOCK = threading.Lock()


def faster_coco_eval_version():
    """Return the installed faster-coco-eval version, or None when it cannot be imported.

    Returns:
        str or None: e.g. ``"1.8.0"``.
    """
    try:
        import faster_coco_eval
    except ImportError:
        return None
    return faster_coco_eval.__version__


def faster_cocoeval(coco_gt, coco_dt, iou_type):
    """Build the COCOeval for one task, with Detectron2's ``cocoeval_fn`` signature.

    Args:
        coco_gt (pycocotools.coco.COCO): ground truth.
        coco_dt (pycocotools.coco.COCO): detections, from ``coco_gt.loadRes``.
        iou_type (str): "bbox", "segm" or "keypoints".

    Returns:
        COCOeval: faster-coco-eval's ``COCOeval_faster`` for the tasks in
        :data:`FASTER_COCO_EVAL_IOU_TYPES`, pycocotools' ``COCOeval`` otherwise.

    Raises:
        ImportError: when faster-coco-eval is not installed and ``iou_type`` would use it.
    """
    if iou_type not in FASTER_COCO_EVAL_IOU_TYPES:
        return COCOeval(coco_gt, coco_dt, iou_type)
    from faster_coco_eval import COCOeval_faster

    return COCOeval_faster(coco_gt, coco_dt, iou_type)


@contextlib.contextmanager
def _use_cocoeval_fn(cocoeval_fn):
    """Make Detectron2's COCOEvaluator build ``cocoeval_fn`` where it would build ``COCOeval_opt``.

    ``COCOEvaluator._eval_predictions`` reads the module global ``COCOeval_opt`` (when
    ``_use_fast_impl`` is set) and offers no argument for it; swapping the global for the duration
    of the call avoids copying that method. The lock keeps two evaluators in this process from
    interleaving their swaps; the original is restored even when evaluation raises.

    Args:
        cocoeval_fn (callable): ``(coco_gt, coco_dt, iou_type) -> COCOeval``.
    """
    with _SWAP_LOCK:
        original = d2_coco_evaluation.COCOeval_opt
        d2_coco_evaluation.COCOeval_opt = cocoeval_fn
        try:
            yield
        finally:
            d2_coco_evaluation.COCOeval_opt = original


class FasterCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator computing bbox/segm AP with faster-coco-eval when installed.

    Everything else (gathering predictions across processes, the dumped files, the returned
    metrics and their names, per-category AP) is Detectron2's. The backend in use is logged at
    construction and kept in :attr:`backend`.
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        use_faster_coco_eval=True,
        **kwargs,
    ):
        """
        Args:
            dataset_name (str): a dataset registered in Detectron2's DatasetCatalog.
            tasks (tuple[str] or None): as for COCOEvaluator; None infers them from predictions.
            distributed (bool): as for COCOEvaluator.
            output_dir (str or None): as for COCOEvaluator.
            use_faster_coco_eval (bool): use faster-coco-eval when it imports. When False or
                missing, Detectron2's own choice applies: its ``COCOeval_opt`` if ``use_fast_impl``
                (default True) and its C++ extension is built, pycocotools otherwise.
            **kwargs: other keyword arguments of COCOEvaluator (``max_dets_per_image``,
                ``use_fast_impl``, ``kpt_oks_sigmas``, ``allow_cached_coco``).
        """
        global _warned_missing_package
        version = faster_coco_eval_version() if use_faster_coco_eval else None
        if version is not None:
            # Tell COCOEvaluator not to use COCOeval_opt, which would log "Fast COCO eval is not
            # built" when its C++ extension is missing; the fast path is switched on below.
            kwargs["use_fast_impl"] = False
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)

        self._cocoeval_fn = faster_cocoeval if version is not None else None
        if self._cocoeval_fn is not None:
            self._use_fast_impl = True
            self.backend = f"faster-coco-eval {version}"
        elif self._use_fast_impl:
            self.backend = "detectron2 COCOeval_opt"
        else:
            self.backend = "pycocotools"

        if use_faster_coco_eval and version is None and not _warned_missing_package:
            _warned_missing_package = True
            logger.warning(
                f"COCO evaluation backend: {self.backend}, because faster-coco-eval is not "
                f"installed (TEST.FAST_COCO_EVAL is True). Run `{_INSTALL_HINT}` for the fast "
                "backend (same AP, many times faster than pycocotools' pure-Python COCOeval), or "
                "set TEST.FAST_COCO_EVAL False to choose pycocotools and silence this warning."
            )
        elif self._cocoeval_fn is not None:
            logger.info(
                f"COCO evaluation backend: {self.backend} (set TEST.FAST_COCO_EVAL False for "
                "pycocotools' official COCOeval)."
            )
        else:
            logger.info(
                f"COCO evaluation backend: {self.backend} (TEST.FAST_COCO_EVAL True with "
                f"`{_INSTALL_HINT}` selects faster-coco-eval)."
            )
        max_dets = self._max_dets_per_image[2]
        if self._cocoeval_fn is not None and max_dets != 100:
            # _evaluate_predictions_on_coco swaps in its pure-Python COCOevalMaxDets then.
            logger.info(
                f"max_dets_per_image={max_dets} != 100: Detectron2 evaluates it with pycocotools' "
                "COCOevalMaxDets, not faster-coco-eval."
            )

    def _eval_predictions(self, predictions, img_ids=None):
        """Evaluate as COCOEvaluator does, with faster-coco-eval's COCOeval when selected."""
        if self._cocoeval_fn is None:
            return super()._eval_predictions(predictions, img_ids=img_ids)
        with _use_cocoeval_fn(self._cocoeval_fn):
            return super()._eval_predictions(predictions, img_ids=img_ids)


def build_coco_evaluator(cfg, dataset_name, output_dir=None):
    """Build the COCO evaluator of ``dataset_name``, on the backend cfg.TEST.FAST_COCO_EVAL picks.

    True (the default added by :func:`dropblock_det.add_dropblock_config`) uses faster-coco-eval
    when installed and otherwise falls back, with a one-time warning, to Detectron2's default.
    False uses pycocotools' official COCOeval.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        dataset_name (str): a registered dataset, e.g. one of ``cfg.DATASETS.TEST``.
        output_dir (str or None): where COCOEvaluator writes its prediction dumps and, for a
            dataset registered without a COCO json, the converted json it then needs; None writes
            no dumps.

    Returns:
        FasterCOCOEvaluator: a Detectron2 DatasetEvaluator.

    Raises:
        ValueError: when ``cfg.TEST.FAST_COCO_EVAL`` is missing or not a bool.
    """
    if "FAST_COCO_EVAL" not in cfg.TEST:
        raise ValueError(
            "cfg.TEST.FAST_COCO_EVAL is missing: call dropblock_det.add_dropblock_config(cfg) "
            "before merge_from_file."
        )
    use_faster = cfg.TEST.FAST_COCO_EVAL
    if not isinstance(use_faster, bool):
        raise ValueError(
            f"cfg.TEST.FAST_COCO_EVAL = {use_faster!r} is invalid: expected True or False."
        )
    return FasterCOCOEvaluator(
        dataset_name,
        output_dir=output_dir,
        use_faster_coco_eval=use_faster,
        # False means "the official pycocotools COCOeval", even where Detectron2's C++ is built.
        use_fast_impl=use_faster,
    )
