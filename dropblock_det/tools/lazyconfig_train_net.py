"""The command line of ``tools/lazyconfig_train_net.py``: Detectron2's LazyConfig training, with
DropBlock's schedule hook.

Detectron2's own ``tools/lazyconfig_train_net.py`` (its template for LazyConfig training) with two
additions: the embedded datasets are registered, and when the config's ``dropblock`` node has
ENABLED on, :class:`~dropblock_det.DropBlockSchedule` is registered before the LR scheduler, as
the yaml trainer does. The config needs ``model``, ``dropblock``, ``dataloader``, ``optimizer``,
``lr_multiplier`` and ``train`` (see ``configs/tiny/*.py``).
"""

import logging
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..hooks import DropBlockSchedule
from .data import register_dropblock_digits
from .train_net import launch_on_every_rank

__all__ = ["cli", "do_test", "do_train", "main"]

logger = logging.getLogger(__name__)


def do_test(cfg, model):
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    Args:
        cfg (DictConfig): the LazyConfig.
        model (nn.Module): the model.

    Returns:
        dict or None: the evaluator's results; None without an evaluator.
    """
    # No evaluator (absent, or `dataloader.evaluator=null` on the command line): no inference.
    if cfg.dataloader.get("evaluator") is None:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def _ddp(model, ddp_options, device):
    # CPU processes (launch without GPUs uses gloo) must not pass device_ids to DDP.
    options = dict(ddp_options)
    if device == "cpu":
        options["device_ids"] = None
    return create_ddp_model(model, **options)


def do_train(args, cfg):
    """Train as Detectron2's LazyConfig template does, with the DropBlock schedule hook.

    Args:
        args (argparse.Namespace): the command line (``--resume``).
        cfg (DictConfig): the LazyConfig.
    """
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = _ddp(model, cfg.train.ddp, cfg.train.device)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    dropblock = instantiate(cfg.dropblock)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            # Before the LR scheduler, on every rank, as in the yaml trainer.
            DropBlockSchedule(dropblock) if dropblock.ENABLED else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
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


def main(args):
    """Train (or with ``--eval-only`` evaluate) one LazyConfig run; ``launch`` runs it per rank.

    Args:
        args (argparse.Namespace): from Detectron2's ``default_argument_parser``.

    Returns:
        dict or None: the evaluation results under ``--eval-only``.
    """
    register_dropblock_digits()
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    if not args.eval_only:
        return do_train(args, cfg)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = _ddp(model, {}, cfg.train.device)
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    return do_test(cfg, model)


def cli(argv=None):
    """Parse the command line and run :func:`main` on every rank.

    Args:
        argv (list[str] or None): the arguments; None reads ``sys.argv``.

    Returns:
        int: the exit status.
    """
    launch_on_every_rank(main, default_argument_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
