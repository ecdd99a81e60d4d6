"""Training-step overhead of DropBlock: RetinaNet R50-FPN iterations with and without it.

Three models are built with Detectron2's ``build_model`` from one config, weights off. The
default is the paper's R50-FPN (``configs/COCO-Paper/Base-RetinaNet-Paper.yaml``: BN after every
conv, nothing frozen, trained from random initialisation, as the weights-off models here are).
Detectron2's ImageNet fine-tuning recipe (``configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml``:
FrozenBN, stem and res2 frozen) does less work per step, so DropBlock weighs more there; from random
initialisation its loss diverges within two steps at any useful learning rate, so run it with
``--lr 0`` (the SGD step does the same arithmetic). The variants:

- ``off``: MODEL.DROPBLOCK.ENABLED False, i.e. stock RetinaNet;
- ``res4+res5``: PLACEMENT "block" (four DropBlocks in every bottleneck) in res4 and res5;
- ``res3+res4+res5``: the same in res3 too.

They share their initial weights (built under one seed, then the stock model's state_dict is
loaded into the others) and train on the same synthetic batch (two images of ``--size`` px with a
few random boxes each). Each training iteration is what Detectron2's trainer runs: the
:class:`~dropblock_det.DropBlockSchedule` hook's ``before_step`` (which sets every DropBlock's
keep_prob, here held at the target KEEP_PROB with its per-stage group scaling: the most dropping,
the worst case), ``SimpleTrainer.run_step`` (forward, losses, backward, Detectron2's SGD step) or
``AMPTrainer.run_step`` with ``--amp``, as ``DefaultTrainer`` picks for SOLVER.AMP.ENABLED, and the
hooks' ``after_step``.

The variants run round-robin, one iteration each per round, the order rotating from round to round,
so that load from other processes hits them alike. After ``--warmup`` rounds, each variant's
iterations are compared with ``off``'s: "x off" is the ratio of the medians of the wall-clock times,
"x off (min)" that of the fastest iterations (on a machine shared with other jobs, load only ever
adds time, so the minimum is the least disturbed figure) and, on the CPU, "x off (CPU)" that of the
medians of the process CPU time (time.process_time: all threads; not inflated by waiting for a
core, but it counts OpenMP spin-waits). "hooks ms" is the host time of the hooks' ``before_step``
and ``after_step`` (the DropBlock schedule sets every DropBlock's keep_prob before the step and
resets it to 1 after it), part of the step time.

With ``--profile`` (CPU) each DropBlock variant then runs one more iteration under torch.profiler,
with every DropBlock2d forward inside a ``record_function`` range. "DropBlock ms" is the time
spent in those ranges plus in the backward nodes of the operator's autograd Functions; "x off
(profile)" is ``step / (step - DropBlock ms)`` for that iteration: DropBlock's direct cost as a
ratio, which load that slows the whole step alike does not change.

Usage:
    python benchmarks/bench_train_step.py --profile                # CPU, fp32, 2 threads
    python benchmarks/bench_train_step.py --device cuda            # fp32
    python benchmarks/bench_train_step.py --device cuda --amp      # SOLVER.AMP.ENABLED
    python benchmarks/bench_train_step.py --lr 0 \
        --config-file configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml
"""

import argparse
import contextlib
import importlib.util
import itertools
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import date

import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import dropblock_det  # noqa: F401  (registers the backbone and meta-architecture)
from dropblock_det import DropBlock2d, DropBlockSchedule, add_dropblock_config
from dropblock_det.layers import BACKENDS
from dropblock_det.tools.config import add_training_config
from dropblock_det.tools.trainer import Trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join("configs", "COCO-Paper", "Base-RetinaNet-Paper.yaml")
# Variant name -> MODEL.DROPBLOCK.STAGES (None: DropBlock off).
VARIANTS = {
    "off": None,
    "res4+res5": ["res4", "res5"],
    "res3+res4+res5": ["res3", "res4", "res5"],
}
# Random ground-truth boxes per synthetic image.
BOXES_PER_IMAGE = 5


def build_variant_cfg(config_file, stages, device, lr, amp, keep_prob=None):
    """The config of one variant: ``config_file`` with DropBlock set as the benchmark needs.

    Args:
        config_file (str): a yaml config of this repository.
        stages (list[str] or None): MODEL.DROPBLOCK.STAGES with PLACEMENT "block", or None for
            DropBlock off.
        device (str): MODEL.DEVICE.
        lr (float): SOLVER.BASE_LR (the step costs the same whatever its value).
        amp (bool): SOLVER.AMP.ENABLED.
        keep_prob (float or None): MODEL.DROPBLOCK.KEEP_PROB; None keeps the file's value.

    Returns:
        CfgNode: the frozen config.
    """
    cfg = get_cfg()
    add_dropblock_config(cfg)
    add_training_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.SOLVER.BASE_LR = lr
    cfg.SOLVER.AMP.ENABLED = amp
    d = cfg.MODEL.DROPBLOCK
    d.ENABLED = stages is not None
    if stages is not None:
        d.STAGES = list(stages)
        d.PLACEMENT = "block"
        if keep_prob is not None:
            d.KEEP_PROB = keep_prob
        # No ramp: the hook sets the target keep_prob (with its per-stage scaling) every step.
        d.SCHEDULE.RAMP = 0.0
    cfg.freeze()
    return cfg


def synthetic_batch(num_images, size, num_classes, seed):
    """Detectron2 training inputs: ``size`` x ``size`` uint8 images with random boxes.

    Args:
        num_images (int): images in the batch.
        size (int): image side in pixels.
        num_classes (int): MODEL.RETINANET.NUM_CLASSES.
        seed (int): seed of the images and boxes.

    Returns:
        list[dict]: one ``{"image", "instances", "height", "width"}`` dict per image, on the CPU
        (the model moves them to its device, as with a real data loader).
    """
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        corners = torch.rand(BOXES_PER_IMAGE, 2, 2, generator=generator) * size
        boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 16).clamp(max=size)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(
            0, num_classes, (BOXES_PER_IMAGE,), generator=generator
        )
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


class _VariantRun:
    """One model with its optimizer, Detectron2 trainer, hooks and EventStorage.

    :meth:`step` runs one iteration as ``TrainerBase.train`` does: the hooks' ``before_step``,
    ``run_step``, the hooks' ``after_step``.
    """

    def __init__(self, name, cfg, model, batch, max_iter):
        self.name = name
        self.cfg = cfg
        self.model = model
        optimizer = Trainer.build_optimizer(cfg, model)
        # What DefaultTrainer builds; the data loader repeats the one synthetic batch.
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self.trainer = trainer_class(model, itertools.repeat(batch), optimizer)
        if cfg.MODEL.DROPBLOCK.ENABLED:
            self.trainer.register_hooks([DropBlockSchedule(cfg)])
        self.trainer.iter = self.trainer.start_iter = 0
        self.trainer.max_iter = max_iter
        self.trainer.storage = EventStorage(0)
        with self.trainer.storage:
            self.trainer.before_train()
        self.dropblocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]

    def step(self):
        """Run one iteration.

        Returns:
            float: host seconds spent in the hooks' ``before_step`` and ``after_step`` (here
            the DropBlock schedule's, which sets every DropBlock's keep_prob twice per step).
        """
        trainer = self.trainer
        with trainer.storage:
            trainer.storage.iter = trainer.iter
            begin = time.perf_counter()
            trainer.before_step()
            hook_seconds = time.perf_counter() - begin
            trainer.run_step()
            begin = time.perf_counter()
            trainer.after_step()
            hook_seconds += time.perf_counter() - begin
        trainer.iter += 1
        return hook_seconds

    def keep_probs(self):
        """The keep_prob of each DropBlock during a step, by ResNet stage (hook's values)."""
        hook = next((h for h in self.trainer._hooks if isinstance(h, DropBlockSchedule)), None)
        if hook is None:
            return {}
        stages = sorted({m.group or "?" for m in self.dropblocks})
        return {s: hook.keep_prob_at(0, self.trainer.max_iter, s) for s in stages}


def make_synchronizer(device):
    """Return a function that waits for ``device`` to finish its queued work."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _load_operator(path):
    """An operator module from a file (an older ``drop_block.py``), for side-by-side runs."""
    spec = importlib.util.spec_from_file_location("dropblock_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _older_forward(module, operator):
    """``module``'s forward computed by an older operator module (same keep_prob and options)."""

    def forward(x):
        if not module.training:
            return x
        return operator.drop_block_2d(
            x,
            module.keep_prob,
            module.block_size,
            share_channels=module.share_channels,
            gamma=module.gamma,
            normalize=module.normalize,
        )

    return forward


def build_runs(args, device):
    """Build the variants' models (same initial weights), trainers and the shared batch."""
    runs = []
    reference_state = None
    # Room for the profiled iterations after the timed ones (the schedule needs iter < max_iter).
    max_iter = args.warmup + args.iters + 1
    before_operator = _load_operator(args.before) if args.before else None
    plan = []
    for name, stages in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        if stages is None or (len(args.backends) == 1 and not args.before):
            plan.append((name, stages, None if stages is None else args.backends[0]))
        else:
            plan += [(f"{name} [{backend}]", stages, backend) for backend in args.backends]
            if args.before:
                plan.append((f"{name} [before]", stages, "before"))
    for name, stages, backend in plan:
        cfg = build_variant_cfg(
            args.config_file, stages, args.device, args.lr, args.amp, args.keep_prob
        )
        torch.manual_seed(args.seed)
        model = build_model(cfg)
        if reference_state is None:
            reference_state = model.state_dict()
            batch = synthetic_batch(
                args.batch, args.size, cfg.MODEL.RETINANET.NUM_CLASSES, args.seed
            )
        else:
            # DropBlock adds no state_dict key, so every variant loads the first one's weights.
            model.load_state_dict(reference_state)
        for module in model.modules():
            if not isinstance(module, DropBlock2d):
                continue
            if backend == "before":
                module.forward = _older_forward(module, before_operator)
            else:
                # The operator's backend= (MODEL.DROPBLOCK.BACKEND once the config has it).
                module.backend = backend
        runs.append(_VariantRun(name, cfg, model, batch, max_iter))
    return runs


def _checked_step(run):
    try:
        return run.step()
    except FloatingPointError as error:
        raise SystemExit(
            f"{run.name}: the loss became non-finite ({error}); a random-initialised model "
            f"without BN needs a smaller --lr (--lr 0 times the same arithmetic)"
        ) from error


def time_runs(runs, warmup, iters, device):
    """Round-robin timing.

    Returns:
        dict: ``{"wall" | "cpu" | "hooks": {name: [seconds per timed iteration]}}``: wall-clock
        time, process CPU time and host time in the hooks.
    """
    synchronize = make_synchronizer(device)
    samples = {kind: {run.name: [] for run in runs} for kind in ("wall", "cpu", "hooks")}
    for round_index in range(warmup + iters):
        times = {}
        shift = round_index % len(runs)
        for run in runs[shift:] + runs[:shift]:  # rotated: no variant always goes first
            synchronize()
            begin, cpu_begin = time.perf_counter(), time.process_time()
            hook_seconds = _checked_step(run)
            synchronize()
            seconds = time.perf_counter() - begin
            if round_index >= warmup:
                samples["wall"][run.name].append(seconds)
                samples["cpu"][run.name].append(time.process_time() - cpu_begin)
                samples["hooks"][run.name].append(hook_seconds)
            times[run.name] = seconds
        kind = "warm-up" if round_index < warmup else "timed"
        progress = ", ".join(f"{run.name} {times[run.name] * 1e3:.0f} ms" for run in runs)
        print(f"# {kind} round {round_index + 1}/{warmup + iters}: {progress}", file=sys.stderr)
    return samples


# Backward nodes of the DropBlock operator's autograd Functions (the per-channel scale-and-zero and
# the mixed-precision channel-shared multiply); a same-dtype channel-shared mask's backward is a
# plain MulBackward0 that the profile cannot tell from the model's own.
_DROPBLOCK_BACKWARD_NODES = ("_ScaleAndDropBlocksBackward", "_MixedDtypeMultiplyBackward")
_DROPBLOCK_FORWARD_RANGE = "DropBlock2d.forward"


def profile_dropblock(run):
    """One iteration under torch.profiler (CPU): its wall seconds and the seconds in DropBlock.

    DropBlock time is the total time of the ``DropBlock2d.forward`` ranges (sampling, bookkeeping
    and the scaled copy) plus that of the operator's backward nodes, each counted once at its
    outermost event (``autograd::engine::evaluate_function: <node>``, which also holds the
    engine's handling of the node's outputs).

    Args:
        run (_VariantRun): a variant with DropBlock.

    Returns:
        tuple(float, float): the iteration's wall seconds and DropBlock's seconds within it.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    def enter(module, inputs):
        module._bench_range = record_function(_DROPBLOCK_FORWARD_RANGE)
        module._bench_range.__enter__()

    def leave(module, inputs, output):
        module._bench_range.__exit__(None, None, None)
        del module._bench_range

    handles = []
    for module in run.dropblocks:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            begin = time.perf_counter()
            _checked_step(run)
            seconds = time.perf_counter() - begin
    finally:
        for handle in handles:
            handle.remove()
    dropblock_us = 0.0
    for event in prof.key_averages():
        if event.key == _DROPBLOCK_FORWARD_RANGE or any(
            event.key == f"autograd::engine::evaluate_function: {node}"
            for node in _DROPBLOCK_BACKWARD_NODES
        ):
            dropblock_us += event.cpu_time_total
    return seconds, dropblock_us / 1e6


def summarize(samples, runs, profiles=None):
    """Rows of the result table (dicts), the first variant being the reference.

    Args:
        samples (dict): from :func:`time_runs`.
        runs (list[_VariantRun]): the variants.
        profiles (dict or None): ``{name: (step seconds, DropBlock seconds)}`` from
            :func:`profile_dropblock`.
    """
    reference = runs[0].name
    wall, cpu = samples["wall"], samples["cpu"]
    rows = []
    for run in runs:
        times, cpu_times = wall[run.name], cpu[run.name]
        row = {
            "variant": run.name,
            "dropblocks": len(run.dropblocks),
            "keep_prob": ", ".join(f"{s} {p:.4g}" for s, p in run.keep_probs().items()) or "-",
            "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "ratio": statistics.median(times) / statistics.median(wall[reference]),
            "ratio_min": min(times) / min(wall[reference]),
            "cpu_ms": statistics.median(cpu_times) * 1e3,
            "ratio_cpu": statistics.median(cpu_times) / statistics.median(cpu[reference]),
            "hooks_ms": statistics.median(samples["hooks"][run.name]) * 1e3,
        }
        if profiles is not None:
            step, dropblock = profiles.get(run.name, (None, 0.0))
            row["dropblock_ms"] = dropblock * 1e3
            row["ratio_profile"] = step / (step - dropblock) if step else 1.0
        rows.append(row)
    return rows


def format_table(rows, reference, markdown=False, with_cpu=True):
    """The result rows as aligned text, or as a Markdown table."""
    columns = [
        ("variant", "variant", "{}"),
        ("DropBlocks", "dropblocks", "{}"),
        ("keep_prob per stage", "keep_prob", "{}"),
        ("median ms", "median_ms", "{:.1f}"),
        ("min ms", "min_ms", "{:.1f}"),
        (f"x {reference}", "ratio", "{:.3f}"),
        (f"x {reference} (min)", "ratio_min", "{:.3f}"),
        ("hooks ms", "hooks_ms", "{:.2f}"),
    ]
    if with_cpu:
        columns += [("CPU ms", "cpu_ms", "{:.1f}"), (f"x {reference} (CPU)", "ratio_cpu", "{:.3f}")]
    if "dropblock_ms" in rows[0]:
        columns += [
            ("DropBlock ms", "dropblock_ms", "{:.1f}"),
            (f"x {reference} (profile)", "ratio_profile", "{:.3f}"),
        ]
    header = [title for title, _, _ in columns]
    cells = [[fmt.format(row[key]) for _, key, fmt in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in cells]
    return "\n".join(lines)


def device_description(device):
    """The GPU's name, or the CPU model and the load average."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs{load}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=os.path.join(REPO_ROOT, DEFAULT_CONFIG))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--amp", action="store_true", help="SOLVER.AMP.ENABLED: Detectron2's AMPTrainer (CUDA)"
    )
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: 2 on cpu, torch's on cuda)"
    )
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument(
        "--keep-prob",
        type=float,
        default=None,
        help="MODEL.DROPBLOCK.KEEP_PROB (default: the file's)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="SOLVER.BASE_LR (does not change the step's cost)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        help="subset of the variants (the first one is the reference)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="CPU: also measure DropBlock's own time in one profiled iteration per variant",
    )
    parser.add_argument(
        "--backends",
        default="auto",
        help="comma list of DropBlock backends (auto, sparse, dense, triton); with several, every "
        "DropBlock variant runs once per backend",
    )
    parser.add_argument(
        "--before",
        default=None,
        help="an older single-file drop_block.py: every DropBlock variant also runs with it "
        "(rows '[before]'), side by side with the current operator",
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown} (choose from {', '.join(BACKENDS)})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.profile and device.type != "cpu":
        parser.error("--profile attributes CPU time: use it with --device cpu")
    if args.amp and device.type != "cuda":
        parser.error("--amp: Detectron2's AMPTrainer needs --device cuda")
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file!r} does not exist")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    """Run the benchmark and print its table.

    Args:
        argv (list[str] or None): command-line arguments; None reads ``sys.argv``.

    Returns:
        list[dict]: the result rows (see :func:`summarize`).
    """
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 2)
    # Detectron2's deprecation warnings (torch.cuda.amp) and its per-step logging are noise here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("detectron2").setLevel(logging.WARNING)

    runs = build_runs(args, device)
    samples = time_runs(runs, args.warmup, args.iters, device)
    profiles = None
    if args.profile:
        profiles = {run.name: profile_dropblock(run) for run in runs if run.dropblocks}
    rows = summarize(samples, runs, profiles)

    print(
        f"# RetinaNet training step, {date.today().isoformat()}, torch {torch.__version__}, "
        f"device {device} ({device_description(device)}), threads {torch.get_num_threads()}, "
        f"{'AMP (fp16 autocast)' if args.amp else 'fp32'}, batch {args.batch} x "
        f"{args.size}x{args.size}, config {os.path.relpath(args.config_file, REPO_ROOT)}, "
        f"lr {args.lr:g}, {args.iters} timed rounds after {args.warmup} warm-up rounds"
    )
    with_cpu = device.type == "cpu"
    print(format_table(rows, runs[0].name, with_cpu=with_cpu))
    if args.markdown:
        print()
        print(format_table(rows, runs[0].name, markdown=True, with_cpu=with_cpu))
    return rows


if __name__ == "__main__":
    main()
