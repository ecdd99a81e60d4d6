"""Training and evaluation with Detectron2's DefaultTrainer: config setup, checks, Trainer, main.

What ``tools/train_net.py`` runs, here so that tests and the other tools reuse it.
"""

import json
import logging
import os
import tempfile
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import build_augmentation
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_setup,
    hooks,
)
from detectron2.evaluation import verify_results
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, get_event_storage
from detectron2.utils.logger import setup_logger

from ..config import add_dropblock_config
from ..hooks import KEEP_PROB_METRIC, DropBlockSchedule
from ..modeling import check_placements
from .config import add_training_config, validate_training_config
from .data import TRAIN_DATASET, VAL_DATASET, register_dropblock_digits
from .errors import path_problem
from .evaluation import build_evaluator
from .validation import InputError, check_head_batch_norm, check_training_inputs

__all__ = [
    "EVAL_RESULTS_FILE",
    "KeepProbOnConsole",
    "Trainer",
    "build_cfg",
    "check_inputs",
    "check_model",
    "check_model_builds",
    "create_ddp_model_on_device",
    "error_message",
    "main",
    "record_eval_results",
    "register_datasets",
    "write_eval_results",
]

logger = logging.getLogger(__name__)

# Written to OUTPUT_DIR after every evaluation; tools/compare.py reads it.
EVAL_RESULTS_FILE = "eval_results.json"
# keep_prob's name on the console metrics line (see KeepProbOnConsole).
CONSOLE_KEEP_PROB = "keep_prob[metric]"
# What the model builders raise for a setting they refuse: ValueError (ours, naming the key),
# AssertionError and KeyError (Detectron2's argument checks and registry look-ups).
MODEL_BUILD_ERRORS = (ValueError, AssertionError, KeyError)


def build_cfg(args):
    """The frozen config of a run: get_cfg, our keys, ``--config-file``, the options; no side effect.

    Raises:
        InputError: when ``--config-file`` is missing or names no file.
    """
    if not args.config_file:
        raise InputError("--config-file is required, e.g. --config-file configs/tiny/<name>.yaml.")
    problem = path_problem(args.config_file)
    if problem:
        raise InputError(f"--config-file {problem}.")
    cfg = get_cfg()
    add_dropblock_config(cfg)
    add_training_config(cfg)
    for source, merge, values in (
        (f"--config-file {args.config_file!r}", cfg.merge_from_file, args.config_file),
        ("command-line options", cfg.merge_from_list, args.opts or []),
    ):
        # yacs reports an unknown key (KeyError), a value of the wrong type (ValueError) or an
        # odd number of command-line options (AssertionError) with the key in the message.
        try:
            merge(values)
        except (KeyError, ValueError, AssertionError) as error:
            raise InputError(f"{source}: {error_message(error)}") from error
    cfg.freeze()
    return cfg


def error_message(error):
    """An exception's message; for a KeyError, not the repr ``str()`` gives."""
    return error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)


def register_datasets(args):
    """Register the embedded datasets and each ``--coco-dataset`` (``register_coco_instances``).

    Called before ``launch`` and in every training process; the same NAME with the same files
    again is a no-op.

    Raises:
        InputError: naming ``--coco-dataset`` and the value when JSON_FILE is not a file,
            IMAGE_ROOT not a folder, or NAME is an embedded dataset's or taken by other files.
    """
    register_dropblock_digits()
    for name, json_file, image_root in getattr(args, "coco_dataset", None) or ():
        flag = f"--coco-dataset {name} {json_file} {image_root}"
        if not name:
            raise InputError(f"{flag}: NAME is empty; give the dataset a name, e.g. 'my_train'.")
        if name in (TRAIN_DATASET, VAL_DATASET):
            raise InputError(
                f"{flag}: NAME {name!r} is the name of an embedded dataset of dropblock_det; "
                "choose another NAME, e.g. 'my_train', and use it in DATASETS.TRAIN/TEST."
            )
        problem = path_problem(json_file)
        if problem:
            raise InputError(
                f"{flag}: JSON_FILE {problem}. Give the path of a COCO instances json."
            )
        problem = path_problem(image_root, folder=True)
        if problem:
            raise InputError(
                f"{flag}: IMAGE_ROOT {problem}. Give the folder that the json's 'file_name' "
                "entries are relative to."
            )
        json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
        if name in DatasetCatalog:
            metadata = MetadataCatalog.get(name)
            registered = (metadata.get("json_file"), metadata.get("image_root"))
            if registered == (json_file, image_root):
                continue  # this command line, registered again in the same process
            raise InputError(
                f"{flag}: NAME {name!r} is already registered in Detectron2's DatasetCatalog "
                f"(json_file {registered[0]!r}, image_root {registered[1]!r}), by Detectron2's "
                "builtin datasets, an earlier --coco-dataset or imported code. Choose another NAME."
            )
        register_coco_instances(name, {}, json_file, image_root)


def check_inputs(args):
    """Check the config, its datasets and model once per machine before ``launch``: InputError."""
    register_datasets(args)
    cfg = build_cfg(args)
    check_training_inputs(cfg, check_train=not args.eval_only)
    model = check_model(cfg)
    if not args.eval_only:
        check_head_batch_norm(cfg, model, world_size=args.num_gpus * args.num_machines)


def check_model(cfg):
    """Build the model of ``cfg`` once on the CPU, as the training will: :func:`check_model_builds`."""
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"  # the GPUs are the training processes'
    cpu_cfg.freeze()
    return check_model_builds(lambda: Trainer.build_model(cpu_cfg))


def check_model_builds(build):
    """``build()`` the model; a setting only the builders can judge refused as :class:`InputError`."""
    try:
        return build()
    except InputError:
        raise
    except MODEL_BUILD_ERRORS as error:
        message = error_message(error)
        if isinstance(error, KeyError) and " " not in message:
            # A bare KeyError holds only the missing name (a feature, a registry entry): say so.
            message = f"no {message!r} (KeyError)"
        raise InputError(f"the model cannot be built from this config: {message}") from error


def create_ddp_model_on_device(model, **kwargs):
    """Detectron2's ``create_ddp_model``; for a CPU model (gloo) ``device_ids=None``, as DDP needs.

    ``create_ddp_model`` passes ``device_ids=[local rank]`` by default. Shared by both tools.
    """
    if all(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


def write_eval_results(output_dir, results, iteration=None):
    """Write ``{"iteration", "results"}`` to ``output_dir/eval_results.json`` atomically; its path."""
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


def record_eval_results(output_dir, results, iteration, max_iter):
    """On the main process, write ``eval_results.json`` and log its path; shared by both tools.

    ``iteration``: the training steps the weights have had; None reads those of the running
    training (EvalHook runs after step ``i``: ``i + 1`` done, ``max_iter`` in ``after_train``).
    """
    if iteration is None:
        try:
            iteration = min(get_event_storage().iter + 1, max_iter)
        except AssertionError:  # Detectron2's answer when no EventStorage is open
            pass
    if comm.is_main_process():
        path = write_eval_results(output_dir, results, iteration)
        logger.info("Evaluation results written to %s", path)


class KeepProbOnConsole(EventWriter):
    """Puts keep_prob on the console line: ``CommonMetricPrinter`` prints ``*[metric]*`` scalars.

    Listed before it, it copies the step's ``dropblock/keep_prob`` to :data:`CONSOLE_KEEP_PROB`.
    """

    def write(self):
        storage = get_event_storage()
        latest = storage.latest()
        if KEEP_PROB_METRIC not in latest:
            return
        value, iteration = latest[KEEP_PROB_METRIC]
        # Only for the step that logged it: the writers also run once after training, when a
        # copy would open a metrics.json row of its own.
        if iteration == storage.iter:
            storage.put_scalar(CONSOLE_KEEP_PROB, value, smoothing_hint=False)


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer with the COCO evaluator and the DropBlock schedule hook."""

    def __init__(self, cfg):
        """DefaultTrainer's ``__init__``; with several CPU processes, its copy below."""
        if comm.get_world_size() == 1 or cfg.MODEL.DEVICE != "cpu":
            super().__init__(cfg)
            return
        # DefaultTrainer.__init__ wraps the model with create_ddp_model(model,
        # broadcast_buffers=False), whose device_ids=[local rank] DDP refuses for a CPU model, and
        # has no method to override there: the same steps, wrapped by create_ddp_model_on_device.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model_on_device(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, checked by :func:`~dropblock_det.check_placements`."""
        model = super().build_model(cfg)
        check_placements(model, cfg)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or AdamW on the same groups (SOLVER.OPTIMIZER); both clip gradients.

        Raises:
            ValueError: naming SOLVER.OPTIMIZER when it is neither "SGD" nor "ADAMW".
        """
        validate_training_config(cfg)
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        # The fused kernel (CPU and CUDA) is many times faster than the per-tensor loop on CPU
        # (BENCHMARKS.md, "Optimizer step").
        fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
        optimizer = torch.optim.AdamW(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader; with INPUT.SCALE_JITTER, the paper's (§4.3), then the flip."""
        jitter = cfg.INPUT.SCALE_JITTER
        if not jitter.ENABLED:
            return super().build_train_loader(cfg)
        size = jitter.TARGET_SIZE
        mapper_args = DatasetMapper.from_config(cfg, is_train=True)
        mapper_args["augmentations"] = [
            T.ResizeScale(jitter.MIN_SCALE, jitter.MAX_SCALE, size, size),
            T.FixedSizeCrop((size, size), pad=True),
            # Detectron2's training augmentations after its ResizeShortestEdge: INPUT.RANDOM_FLIP.
            *build_augmentation(cfg, is_train=True)[1:],
        ]
        return build_detection_train_loader(cfg, mapper=DatasetMapper(**mapper_args))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """:func:`~.evaluation.build_evaluator`'s, writing to ``OUTPUT_DIR/inference/<name>``."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        """Detectron2's default hooks, with :class:`DropBlockSchedule` when DropBlock is on."""
        ret = super().build_hooks()
        if self.cfg.MODEL.DROPBLOCK.ENABLED:
            index = next(
                (i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)), len(ret)
            )
            ret.insert(index, DropBlockSchedule(self.cfg))
        return ret

    def build_writers(self):
        """Detectron2's writers, with keep_prob on the console line when DropBlock is on."""
        writers = super().build_writers()
        return [KeepProbOnConsole(), *writers] if self.cfg.MODEL.DROPBLOCK.ENABLED else writers

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, iteration=None):
        """Evaluate as DefaultTrainer does, then :func:`record_eval_results` (``iteration``)."""
        results = super().test(cfg, model, evaluators)
        record_eval_results(cfg.OUTPUT_DIR, results, iteration, cfg.SOLVER.MAX_ITER)
        return results


def main(args, trainer_class=Trainer):
    """Train (or with ``--eval-only`` evaluate and return the results) one run, on every rank."""
    register_datasets(args)
    cfg = build_cfg(args)  # its values were checked by check_inputs before launch
    default_setup(cfg, args)
    # The package's own lines (evaluation backend, files written) on the console and in log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dropblock_det")
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        # A checkpoint stores the index of the last finished iteration.
        trained = checkpoint.get("iteration")
        results = trainer_class.test(cfg, model, iteration=None if trained is None else trained + 1)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
