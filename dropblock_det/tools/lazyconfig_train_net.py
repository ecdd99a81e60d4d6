"""``tools/lazyconfig_train_net.py``: Detectron2's LazyConfig template with DropBlock's hook.

Detectron2's ``do_train``/``do_test`` over ``SimpleTrainer``, plus what the yaml tool has: the
input checks and a first model build before ``launch`` (exit status 2 before anything is written),
:class:`~dropblock_det.DropBlockSchedule` with keep_prob on the console, the evaluator of
:func:`~.evaluation.build_evaluator` for ``COCOEvaluator`` nodes, and ``eval_results.json``.
"""

import os
import re
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from detectron2.utils.logger import setup_logger

from ..config import add_dropblock_config, dropblock_settings_of
from ..hooks import DropBlockSchedule
from ..lazyconfig import DROPBLOCK_KEY, lazy_target
from ..modeling import check_placements
from . import train_net
from .config import add_training_config
from .errors import path_problem
from .evaluation import build_evaluator
from .trainer import (
    KeepProbOnConsole,
    check_model_builds,
    create_ddp_model_on_device,
    error_message,
    record_eval_results,
    register_datasets,
)
from .validation import InputError, check_training_inputs

__all__ = ["build_model", "check_inputs", "cli", "do_test", "do_train", "load_config", "main"]

# The yaml keys the shared checks name, and the LazyConfig keys that hold the same values.
_LAZY_KEYS = (
    ("MODEL.DROPBLOCK.", f"{DROPBLOCK_KEY}."),
    ("DATASETS.TRAIN", "dataloader.train.dataset.names"),
    ("DATASETS.TEST", "dataloader.test.dataset.names"),
    ("MODEL.RETINANET.NUM_CLASSES", "model.num_classes"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", "model.roi_heads.num_classes"),
    ("MODEL.DEVICE", "train.device"),
)
# CommonMetricPrinter's default window_size, in iterations (also DefaultTrainer's writer period).
_PRINTER_WINDOW = 20


def load_config(args):
    """Load ``--config-file`` and apply the ``key=value`` overrides; InputError without the file."""
    problem = path_problem(args.config_file) if args.config_file else "is required"
    if problem:
        raise InputError(
            f"--config-file {problem}; give a LazyConfig, e.g. "
            "--config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.py."
        )
    return LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts or [])


def _checks_view(cfg, model):
    """The yaml keys the shared checks and evaluator read, filled from a LazyConfig and its model.

    Raises:
        InputError: for an invalid ``dropblock`` value, or overrides of a node the config lacks.
    """
    view = get_cfg()
    add_dropblock_config(view)
    add_training_config(view)
    node = cfg.get(DROPBLOCK_KEY)
    if node is not None and "_target_" not in node:
        # LazyConfig.apply_overrides creates the keys it is given.
        raise InputError(
            f"{DROPBLOCK_KEY}.* overrides given, but the config has no {DROPBLOCK_KEY!r} node: "
            "add it in the config file with dropblock_det.lazyconfig.add_dropblock(cfg, ...)."
        )
    try:
        settings = dropblock_settings_of(cfg)
    except (KeyError, ValueError) as error:
        raise InputError(_lazy_message(error)) from error
    if settings is not None:
        view.MODEL.DROPBLOCK = settings
    view.OUTPUT_DIR = cfg.train.output_dir
    view.MODEL.DEVICE = cfg.train.device
    # The registered name of the model's class (or a base), which the class-count check reads.
    registered = {obj: name for name, obj in META_ARCH_REGISTRY}
    view.MODEL.META_ARCHITECTURE = next(
        (registered[c] for c in type(model).__mro__ if c in registered), "ProposalNetwork"
    )
    if isinstance(model, RetinaNet):
        view.MODEL.RETINANET.NUM_CLASSES = model.num_classes
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        view.MODEL.ROI_HEADS.NUM_CLASSES = roi_heads.num_classes
        view.MODEL.MASK_ON = bool(getattr(roi_heads, "mask_on", False))
    view.DATASETS.TRAIN = _dataset_names(cfg.dataloader.get("train"))
    view.DATASETS.TEST = _dataset_names(cfg.dataloader.get("test"))
    evaluator = cfg.dataloader.get("evaluator")
    if evaluator is not None and lazy_target(evaluator) is COCOEvaluator:
        # COCOEvaluator's use_fast_impl=False asks for pycocotools, as TEST.FAST_COCO_EVAL False.
        view.TEST.FAST_COCO_EVAL = bool(evaluator.get("use_fast_impl", True))
    return view


def _dataset_names(loader):
    dataset = loader.get("dataset") if loader is not None else None
    names = (dataset.get("names") if hasattr(dataset, "get") else None) or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _lazy_message(error):
    """An error of the shared checks, with the LazyConfig's keys and override syntax."""
    message = error_message(error)
    for yaml_key, lazy_key in _LAZY_KEYS:
        message = re.sub(rf"`{re.escape(yaml_key)} ([^`]+)`", rf"`{lazy_key}=\1`", message)
        message = message.replace(yaml_key, lazy_key)
    return message.replace("after the other arguments", "as an override")


def build_model(cfg):
    """Instantiate ``cfg.model`` (on the CPU), :func:`~dropblock_det.check_placements` checked.

    Returns:
        tuple(nn.Module, CfgNode): the model and the yaml view the shared checks and evaluator read.
    """
    model = instantiate(cfg.model)
    view = _checks_view(cfg, model)
    check_placements(model, cfg)
    return model, view


def check_inputs(args):
    """Check the config, the model it builds and the datasets it names; InputError naming them."""
    register_datasets(args)
    cfg = load_config(args)
    try:
        _, view = check_model_builds(lambda: build_model(cfg))
        check_training_inputs(view, check_train=not args.eval_only and bool(view.DATASETS.TRAIN))
    except InputError as error:
        raise InputError(_lazy_message(error)) from error


def do_test(cfg, model, view, iteration=None):
    """Evaluate on ``cfg.dataloader.test``, write ``eval_results.json``; None without an evaluator.

    A ``COCOEvaluator`` node becomes :func:`~.evaluation.build_evaluator`'s evaluator, as in the
    yaml tool. ``iteration`` as for :func:`~.trainer.record_eval_results`.
    """
    # No evaluator (absent, or `dataloader.evaluator=null` on the command line): no inference.
    node = cfg.dataloader.get("evaluator")
    if node is None:
        return None
    if lazy_target(node) is COCOEvaluator:
        name = node.dataset_name
        output_dir = node.get("output_dir") or os.path.join(cfg.train.output_dir, "inference", name)
        evaluator = build_evaluator(view, name, output_dir)
    else:
        evaluator = instantiate(node)
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    print_csv_format(results)
    record_eval_results(cfg.train.output_dir, results, iteration, cfg.train.max_iter)
    return results


def do_train(args, cfg):
    """Train as Detectron2's LazyConfig template does, with the DropBlock schedule hook."""
    model, view = build_model(cfg)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model_on_device(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    dropblock = view.MODEL.DROPBLOCK.ENABLED
    writers = _writers(cfg.train.output_dir, cfg.train.max_iter, cfg.train.log_period)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            # Before the LR scheduler, on every rank, as in the yaml trainer.
            DropBlockSchedule(view) if dropblock else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model, view)),
            (
                hooks.PeriodicWriter(
                    [KeepProbOnConsole(), *writers] if dropblock else writers,
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished.
    resumed = args.resume and checkpointer.has_checkpoint()
    trainer.train(trainer.iter + 1 if resumed else 0, cfg.train.max_iter)


def _writers(output_dir, max_iter, period):
    """Detectron2's ``default_writers``, the console printer's window no longer than the period.

    The printer shows each ``[metric]`` scalar's median over its window: over a longer window, a
    median of keep_probs instead of the printed iteration's value.
    """
    window = min(period, _PRINTER_WINDOW)
    return [
        (
            CommonMetricPrinter(max_iter, window_size=window)
            if isinstance(w, CommonMetricPrinter)
            else w
        )
        for w in default_writers(output_dir, max_iter)
    ]


def main(args):
    """Train (or with ``--eval-only`` evaluate and return the results) one run, on every rank."""
    register_datasets(args)
    cfg = load_config(args)
    default_setup(cfg, args)
    # The package's own lines (DropBlock groups, evaluation backend) on the console and in log.txt.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="dropblock_det")
    if not args.eval_only:
        return do_train(args, cfg)
    model, view = build_model(cfg)
    model.to(cfg.train.device)
    model = create_ddp_model_on_device(model)
    checkpoint = DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    trained = checkpoint.get("iteration")
    return do_test(cfg, model, view, iteration=None if trained is None else trained + 1)


def cli(argv=None):
    """``train_net.cli`` with this tool's :func:`check_inputs` and :func:`main`."""
    return train_net.cli(argv, main=main, check_inputs=check_inputs, tool="lazyconfig_train_net.py")


if __name__ == "__main__":
    sys.exit(cli())
