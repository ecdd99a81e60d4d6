"""Training and evaluation with Detectron2's DefaultTrainer: config setup, Trainer and main.

``tools/train_net.py`` is a thin command line over :func:`check_inputs`, :func:`main` and
Detectron2's ``launch``; everything it runs lives here so that tests and other tools reuse it.
"""

import json
import logging
import os
import tempfile
from unittest import mock

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer, create_ddp_model, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import hooks
from detectron2.evaluation import verify_results
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .config import add_dropblock_config, validate_dropblock_config
from .evaluation import build_coco_evaluator
from .hooks import DropBlockSchedule
from .layers import DropBlock2d
from .validation import InputError, check_training_inputs

__all__ = [
    "EVAL_RESULTS_FILE",
    "Trainer",
    "build_cfg",
    "check_inputs",
    "main",
    "setup_cfg",
    "write_eval_results",
]

logger = logging.getLogger(__name__)

# Written to OUTPUT_DIR after every evaluation; tools/compare.py reads it.
EVAL_RESULTS_FILE = "eval_results.json"
_OPTIMIZERS = ("SGD", "ADAMW")


def build_cfg(args):
    """Build the frozen config of a run, without side effects.

    get_cfg → add_dropblock_config → merge ``args.config_file`` → merge ``args.opts`` → freeze.

    Args:
        args (argparse.Namespace): from Detectron2's ``default_argument_parser``.

    Returns:
        CfgNode: the frozen config.

    Raises:
        InputError: when ``--config-file`` is missing or names no file.
    """
    if not args.config_file:
        raise InputError("--config-file is required, e.g. --config-file configs/tiny/<name>.yaml.")
    if not os.path.isfile(args.config_file):
        raise InputError(f"--config-file {args.config_file!r} does not exist or is not a file.")
    cfg = get_cfg()
    add_dropblock_config(cfg)
    # yacs reports an unknown key (KeyError), a value of the wrong type (ValueError) or an odd
    # number of command-line options (AssertionError) with the key in the message.
    try:
        cfg.merge_from_file(args.config_file)
    except (KeyError, ValueError, AssertionError) as error:
        raise InputError(f"--config-file {args.config_file!r}: {_yacs_message(error)}") from error
    try:
        cfg.merge_from_list(args.opts or [])
    except (KeyError, ValueError, AssertionError) as error:
        raise InputError(f"command-line options: {_yacs_message(error)}") from error
    cfg.freeze()
    return cfg


def _yacs_message(error):
    # str() of a KeyError is the repr of its argument; show the plain message.
    return error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)


def setup_cfg(args):
    """Build the config (see :func:`build_cfg`), then run Detectron2's ``default_setup``.

    ``default_setup`` sets up logging, seeds the RNGs from ``cfg.SEED`` and writes
    ``OUTPUT_DIR/config.yaml`` on the main process.

    Args:
        args (argparse.Namespace): from Detectron2's ``default_argument_parser``.

    Returns:
        CfgNode: the frozen config.
    """
    cfg = build_cfg(args)
    validate_dropblock_config(cfg)
    default_setup(cfg, args)
    return cfg


def check_inputs(args):
    """Check the config and the datasets it names before anything is written.

    Run once per machine, before ``launch`` (the dataset checks parse the annotation files, which
    takes a while for COCO and need not be repeated on every rank).

    Args:
        args (argparse.Namespace): from Detectron2's ``default_argument_parser``.

    Raises:
        InputError: naming the flag, config key or file at fault.
    """
    cfg = build_cfg(args)
    check_training_inputs(
        cfg, check_train=not args.eval_only, world_size=args.num_gpus * args.num_machines
    )


def _current_iteration():
    """The iteration of the running training loop, or None outside training."""
    try:
        return get_event_storage().iter
    except AssertionError:  # no EventStorage: evaluation outside a training loop
        return None


def write_eval_results(output_dir, results, iteration=None):
    """Write ``output_dir/eval_results.json`` atomically (temporary file, then ``os.replace``).

    Args:
        output_dir (str): the run's OUTPUT_DIR.
        results (dict): what :meth:`Trainer.test` returns, e.g. ``{"bbox": {"AP": ...}}``.
        iteration (int or None): the training iteration evaluated; None when unknown.

    Returns:
        str: the path written.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, EVAL_RESULTS_FILE)
    payload = {"iteration": iteration, "results": results}
    fd, tmp_path = tempfile.mkstemp(prefix=f".{EVAL_RESULTS_FILE}.", dir=output_dir)
    try:
        with os.fdopen(fd, "w") as f:
            # NaN (an AP without predictions) is written as NaN, as Detectron2's metrics.json does;
            # numpy scalars become floats.
            json.dump(payload, f, indent=2, default=float)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    return path


def _create_ddp_model_on_any_device(model, **kwargs):
    """Detectron2's ``create_ddp_model``, which also wraps a model that lives on the CPU.

    Detectron2 passes ``device_ids=[local rank]``, which DistributedDataParallel accepts only for
    a model on one accelerator: CPU processes (``launch`` without GPUs uses gloo) must pass none.

    Args:
        model (nn.Module): the model of this rank.
        **kwargs: DistributedDataParallel's keyword arguments.

    Returns:
        nn.Module: the model, wrapped in DistributedDataParallel when there are several processes.
    """
    if "device_ids" not in kwargs and all(p.device.type == "cpu" for p in model.parameters()):
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer with the COCO evaluator and the DropBlock schedule hook.

    Multi-process training also runs on CPUs (gloo), e.g. to test it on a machine without GPUs.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): the run's config.
        """
        # DefaultTrainer.__init__ wraps the model with its module's create_ddp_model, which
        # cannot wrap a CPU model; only that call changes, for the duration of the constructor.
        with mock.patch.object(d2_defaults, "create_ddp_model", _create_ddp_model_on_any_device):
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """Build the model and check that MODEL.DROPBLOCK.ENABLED actually inserted DropBlock.

        Args:
            cfg (CfgNode): the run's config.

        Returns:
            nn.Module: the model.

        Raises:
            ValueError: when ENABLED is on but the model holds no DropBlock2d.
        """
        model = super().build_model(cfg)
        d = cfg.MODEL.DROPBLOCK
        if d.ENABLED and not any(isinstance(m, DropBlock2d) for m in model.modules()):
            raise ValueError(
                "cfg.MODEL.DROPBLOCK.ENABLED is True but the model has no DropBlock: choose some "
                f"of MODEL.DROPBLOCK.STAGES (now {list(d.STAGES)}), FPN (now {list(d.FPN)}) or "
                f"HEAD (now {d.HEAD}), with MODEL.BACKBONE.NAME = "
                "'build_retinanet_resnet_fpn_dropblock_backbone' and MODEL.META_ARCHITECTURE = "
                "'DropBlockRetinaNet'."
            )
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or AdamW when ``cfg.SOLVER.OPTIMIZER`` is "ADAMW".

        AdamW gets the same parameter groups as Detectron2's SGD (SOLVER.WEIGHT_DECAY_NORM,
        BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS) and the same gradient clipping.

        Args:
            cfg (CfgNode): the run's config.
            model (nn.Module): the model to optimise.

        Returns:
            torch.optim.Optimizer: the optimizer.

        Raises:
            ValueError: naming SOLVER.OPTIMIZER when it is neither "SGD" nor "ADAMW".
        """
        name = cfg.SOLVER.get("OPTIMIZER", "SGD")
        if name not in _OPTIMIZERS:
            raise ValueError(
                f"cfg.SOLVER.OPTIMIZER = {name!r} is invalid: expected one of {list(_OPTIMIZERS)}."
            )
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        # The fused kernel (CPU and CUDA) is ~6x faster than the default per-tensor loop on CPU:
        # 20 ms instead of 130 ms per step for R-18 on one thread, ~10% of a tiny-config iteration.
        fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
        optimizer = torch.optim.AdamW(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader, with the paper's scale jitter when INPUT.SCALE_JITTER is on.

        The jitter (DropBlock paper §4.3, tensorflow/tpu ``resize_and_crop``): resize so that the
        image fits in ``TARGET_SIZE * s`` with ``s`` uniform in [MIN_SCALE, MAX_SCALE], keeping
        the aspect ratio, then take a random ``TARGET_SIZE`` square crop, padding what is missing;
        then INPUT.RANDOM_FLIP. Boxes cut away by the crop are dropped. Off, it is Detectron2's
        ResizeShortestEdge from INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN.

        Args:
            cfg (CfgNode): the run's config.

        Returns:
            iterable: the training data loader.
        """
        jitter = cfg.INPUT.get("SCALE_JITTER")
        if jitter is None or not jitter.ENABLED:
            return super().build_train_loader(cfg)
        size = jitter.TARGET_SIZE
        augmentations = [
            T.ResizeScale(jitter.MIN_SCALE, jitter.MAX_SCALE, size, size),
            T.FixedSizeCrop((size, size), pad=True),
        ]
        if cfg.INPUT.RANDOM_FLIP != "none":
            augmentations.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                    vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                )
            )
        mapper_args = DatasetMapper.from_config(cfg, is_train=True)
        mapper_args["augmentations"] = augmentations
        return build_detection_train_loader(cfg, mapper=DatasetMapper(**mapper_args))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The COCO evaluator of :func:`dropblock_det.evaluation.build_coco_evaluator`.

        Args:
            cfg (CfgNode): the run's config.
            dataset_name (str): one of ``cfg.DATASETS.TEST``.
            output_folder (str or None): where the predictions are written; defaults to
                ``OUTPUT_DIR/inference/<dataset_name>``.

        Returns:
            DatasetEvaluator: the evaluator.
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        """Detectron2's default hooks, plus :class:`DropBlockSchedule` when DropBlock is on.

        The schedule goes before the LRScheduler hook, on every rank: it acts in ``before_step``,
        so each step runs with the keep_prob of its own iteration.

        Returns:
            list[HookBase]: the hooks.
        """
        ret = super().build_hooks()
        if self.cfg.MODEL.DROPBLOCK.ENABLED:
            index = next(
                (i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)), len(ret)
            )
            ret.insert(index, DropBlockSchedule(self.cfg))
        return ret

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, iteration=None):
        """Evaluate as DefaultTrainer does, then write ``OUTPUT_DIR/eval_results.json``.

        Args:
            cfg (CfgNode): the run's config.
            model (nn.Module): the model to evaluate.
            evaluators (list[DatasetEvaluator] or None): see ``DefaultTrainer.test``.
            iteration (int or None): the iteration the weights come from; by default the
                running training loop's iteration, or None outside training.

        Returns:
            dict: Detectron2's results, e.g. ``{"bbox": {"AP": ...}}`` for one test dataset.
        """
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process():
            if iteration is None:
                iteration = _current_iteration()
            path = write_eval_results(cfg.OUTPUT_DIR, results, iteration)
            logger.info("Evaluation results written to %s", path)
        return results


def main(args):
    """Train (or with ``--eval-only`` evaluate) one run; the function ``launch`` runs per rank.

    Args:
        args (argparse.Namespace): from Detectron2's ``default_argument_parser``.

    Returns:
        dict or None: the last evaluation results, None when nothing was evaluated.
    """
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model, iteration=checkpoint.get("iteration"))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    # DefaultTrainer.train returns the results only when TEST.EXPECTED_RESULTS is set.
    return results if results is not None else getattr(trainer, "_last_eval_results", None)
