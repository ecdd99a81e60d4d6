"""The command line of ``tools/lazyconfig_train_net.py``: Detectron2's LazyConfig training, with
DropBlock's schedule hook and the checks, logs and evaluator of ``tools/train_net.py``.

Detectron2's LazyConfig template (``do_train``/``do_test`` over ``SimpleTrainer``) with what the
yaml tool has: ``--coco-dataset``; the input checks of :func:`~.validation.check_training_inputs`
and a first build of the model, before ``launch``, so that a bad setting exits with status 2 and
one message before anything is written; :class:`~dropblock_det.DropBlockSchedule` before the LR
scheduler, its one line per DropBlock group and keep_prob on the console; Detectron2's
``COCOEvaluator`` nodes evaluated by :func:`~.evaluation.build_evaluator` (faster-coco-eval), and
``eval_results.json``. The config needs ``model``, ``dataloader``, ``optimizer``,
``lr_multiplier`` and ``train``; ``dropblock`` (see :func:`dropblock_det.lazyconfig.add_dropblock`)
is optional: without it the run is the stock model's.
"""

import logging
import os
import re
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from ..config import add_dropblock_config, dropblock_settings_of
from ..hooks import DropBlockSchedule
from ..lazyconfig import DROPBLOCK_KEY
from ..modeling import check_placements
from .config import add_training_config
from .evaluation import build_evaluator
from .train_net import launch_on_every_rank, parse_command_line
from .trainer import (
    KeepProbOnConsole,
    check_model_builds,
    create_ddp_model_on_device,
    register_datasets,
    trained_iterations,
    write_eval_results,
)
from .validation import InputError, check_training_inputs

__all__ = ["build_model", "check_inputs", "cli", "do_test", "do_train", "load_config", "main"]

logger = logging.getLogger(__name__)

# The yaml keys the shared checks name, and the LazyConfig keys that hold the same values.
_LAZY_KEYS = (
    ("MODEL.DROPBLOCK.", f"{DROPBLOCK_KEY}."),
    ("DATASETS.TRAIN", "dataloader.train.dataset.names"),
    ("DATASETS.TEST", "dataloader.test.dataset.names"),
    ("MODEL.RETINANET.NUM_CLASSES", "model.num_classes"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", "model.roi_heads.num_classes"),
    ("MODEL.DEVICE", "train.device"),
    ("SOLVER.IMS_PER_BATCH", "dataloader.train.total_batch_size"),
)
# CommonMetricPrinter's default window_size, in iterations (also DefaultTrainer's writer period).
_PRINTER_WINDOW = 20


def load_config(args):
    """Load ``--config-file`` and apply the ``key=value`` overrides.

    Args:
        args (argparse.Namespace): the command line.

    Returns:
        DictConfig: the LazyConfig.

    Raises:
        InputError: for a missing config file.
    """
    if not args.config_file or not os.path.isfile(args.config_file):
        raise InputError(
            f"--config-file {args.config_file!r} does not exist or is not a file; give a "
            "LazyConfig, e.g. --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.py."
        )
    return LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts or [])


def checked_dropblock_settings(cfg):
    """The config's DropBlock settings (``cfg.dropblock`` instantiated), None without the node.

    Args:
        cfg (DictConfig): the LazyConfig.

    Returns:
        CfgNode or None: the settings.

    Raises:
        InputError: for an invalid value, or overrides of a ``dropblock`` node the config lacks.
    """
    node = cfg.get(DROPBLOCK_KEY)
    if node is None:
        return None
    if "_target_" not in node:
        # LazyConfig.apply_overrides creates the keys it is given.
        raise InputError(
            f"{DROPBLOCK_KEY}.* overrides given, but the config has no {DROPBLOCK_KEY!r} node: "
            "add it in the config file with dropblock_det.lazyconfig.add_dropblock(cfg, ...)."
        )
    try:
        return dropblock_settings_of(cfg)
    except (KeyError, ValueError) as error:
        raise InputError(_lazy_message(error)) from error


def _checks_view(cfg, model):
    """The yaml keys the shared checks and evaluator read, filled from a LazyConfig and its model.

    The placements are judged on the built model (``check_placements``), so the view names
    builders that pass the name-based checks.
    """
    view = get_cfg()
    add_dropblock_config(view)
    add_training_config(view)
    settings = checked_dropblock_settings(cfg)
    if settings is not None:
        view.MODEL.DROPBLOCK = settings
    view.OUTPUT_DIR = cfg.train.output_dir
    view.MODEL.DEVICE = cfg.train.device
    view.MODEL.BACKBONE.NAME = "build_resnet_dropblock_backbone"
    view.MODEL.ROI_BOX_HEAD.NAME = "DropBlockFastRCNNConvFCHead"
    view.MODEL.META_ARCHITECTURE = _meta_architecture_name(model)
    if isinstance(model, RetinaNet):
        view.MODEL.RETINANET.NUM_CLASSES = model.num_classes
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        view.MODEL.ROI_HEADS.NUM_CLASSES = roi_heads.num_classes
        view.MODEL.MASK_ON = bool(getattr(roi_heads, "mask_on", False))
    view.DATASETS.TRAIN = _dataset_names(cfg.dataloader.get("train"))
    view.DATASETS.TEST = _dataset_names(cfg.dataloader.get("test"))
    if "total_batch_size" in cfg.dataloader.get("train", {}):
        view.SOLVER.IMS_PER_BATCH = cfg.dataloader.train.total_batch_size
    evaluator = cfg.dataloader.get("evaluator")
    if evaluator is not None and _target(evaluator) is COCOEvaluator:
        # COCOEvaluator's use_fast_impl=False asks for pycocotools, as TEST.FAST_COCO_EVAL False.
        view.TEST.FAST_COCO_EVAL = bool(evaluator.get("use_fast_impl", True))
    return view


def _meta_architecture_name(model):
    if isinstance(model, RetinaNet):
        return "DropBlockRetinaNet"  # the checks' name for any RetinaNet
    if isinstance(model, GeneralizedRCNN):
        return "GeneralizedRCNN"
    registered = {obj: name for name, obj in META_ARCH_REGISTRY}
    return next((registered[c] for c in type(model).__mro__ if c in registered), "ProposalNetwork")


def _dataset_names(loader):
    dataset = loader.get("dataset") if loader is not None else None
    names = dataset.get("names") if hasattr(dataset, "get") else None
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _target(node):
    target = node.get("_target_")
    return locate(target) if isinstance(target, str) else target


def _lazy_message(error):
    """An error of the shared checks, with the LazyConfig's keys and override syntax."""
    message = (
        error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    )
    for yaml_key, lazy_key in _LAZY_KEYS:
        message = re.sub(rf"`{re.escape(yaml_key)} ([^`]+)`", rf"`{lazy_key}=\1`", message)
        message = message.replace(yaml_key, lazy_key)
    return message.replace("after the other arguments", "as an override")


def build_model(cfg):
    """Instantiate ``cfg.model`` and check that it holds every DropBlock the config asks for.

    Args:
        cfg (DictConfig): the LazyConfig.

    Returns:
        tuple(nn.Module, CfgNode): the model (on the CPU) and the yaml view of the config that the
        shared checks and the evaluator read.

    Raises:
        ValueError: naming the key, when a requested placement is missing from the model.
    """
    model = instantiate(cfg.model)
    view = _checks_view(cfg, model)
    check_placements(model, view)
    return model, view


def check_inputs(args):
    """Check the config, the model it builds and the datasets it names before anything is written.

    Args:
        args (argparse.Namespace): the command line.

    Raises:
        InputError: naming the flag, config key or file at fault.
    """
    register_datasets(args)
    cfg = load_config(args)
    try:
        _, view = check_model_builds(lambda: build_model(cfg))
        check_training_inputs(view, check_train=not args.eval_only and bool(view.DATASETS.TRAIN))
    except InputError as error:
        raise InputError(_lazy_message(error)) from error


def do_test(cfg, model, view, iteration=None):
    """Evaluate ``model`` on ``cfg.dataloader.test`` and write ``eval_results.json``.

    A Detectron2 ``COCOEvaluator`` node is evaluated by :func:`~.evaluation.build_evaluator` (as
    in the yaml tool); any other evaluator node is instantiated as it is.

    Args:
        cfg (DictConfig): the LazyConfig.
        model (nn.Module): the model.
        view (CfgNode): :func:`build_model`'s view of the config.
        iteration (int or None): the training steps the weights have had; None reads them from
            the running training.

    Returns:
        dict or None: the evaluator's results; None without an evaluator.
    """
    # No evaluator (absent, or `dataloader.evaluator=null` on the command line): no inference.
    node = cfg.dataloader.get("evaluator")
    if node is None:
        return None
    if _target(node) is COCOEvaluator:
        name = node.dataset_name
        output_dir = node.get("output_dir") or os.path.join(cfg.train.output_dir, "inference", name)
        evaluator = build_evaluator(view, name, output_dir)
    else:
        evaluator = instantiate(node)
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    print_csv_format(results)
    if iteration is None:
        iteration = trained_iterations(cfg.train.max_iter)
    if comm.is_main_process():
        path = write_eval_results(cfg.train.output_dir, results, iteration)
        logger.info("Evaluation results written to %s", path)
    return results


def do_train(args, cfg):
    """Train as Detectron2's LazyConfig template does, with the DropBlock schedule hook.

    Args:
        args (argparse.Namespace): the command line (``--resume``).
        cfg (DictConfig): the LazyConfig.
    """
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

    The printer shows the median of each ``[metric]`` scalar over the iterations of its window;
    the yaml trainer writes once per window. With the same window over a shorter
    ``train.log_period``, keep_prob would be the median of several prints, not the value of the
    printed iteration.
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
    """Train (or with ``--eval-only`` evaluate) one LazyConfig run; ``launch`` runs it per rank.

    Args:
        args (argparse.Namespace): the command line.

    Returns:
        dict or None: the evaluation results under ``--eval-only``.
    """
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
    """Parse the command line, check the inputs, then run :func:`main` on every rank.

    Args:
        argv (list[str] or None): the arguments; None reads ``sys.argv``.

    Returns:
        int: the exit status (2 for a bad flag, config value or dataset file).
    """
    args = parse_command_line(argv)
    try:
        check_inputs(args)
    except InputError as error:
        print(f"lazyconfig_train_net.py: error: {error}", file=sys.stderr)
        return 2
    launch_on_every_rank(main, args)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
