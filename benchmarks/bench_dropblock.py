"""DropBlock operator speed: forward + backward against the floor and peer implementations.

The floor is the least any DropBlock can cost: ``x * mask`` forward and backward with a ready
mask of the same size. Every implementation runs on the RetinaNet res3/res4/res5 maps of a batch
of two 800x608 images, keep_prob 0.9, block 7; the reported time is the median over repetitions,
with the implementations interleaved inside each repetition so that load from other processes
hits them alike. Peers (torchvision, timm, the ``dropblock`` package) are optional: a missing one
is skipped with a note (``pip install -e .[bench]`` installs them).

Usage:
    python benchmarks/bench_dropblock.py                      # CPU, fp32, 2 threads
    python benchmarks/bench_dropblock.py --device cuda        # fp32, fp16 and bf16
    python benchmarks/bench_dropblock.py --markdown           # also print a Markdown table
"""

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import date

import torch

from dropblock_det.layers import auto_backend, drop_block_2d
from dropblock_det.layers._backend import resolve_backend

RETINANET_SHAPES = ((2, 512, 100, 76), (2, 1024, 50, 38), (2, 2048, 25, 19))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _load_operator(path):
    """An older operator, for side-by-side runs: a ``drop_block.py`` or a ``layers`` package folder.

    A folder is imported as a package of its own (its relative imports stay inside it), e.g. one
    written by ``git archive REV dropblock_det/layers | tar -x -C /tmp/before``.
    """
    if os.path.isdir(path):
        init = os.path.join(path, "__init__.py")
        spec = importlib.util.spec_from_file_location(
            "dropblock_before", init, submodule_search_locations=[path]
        )
    else:
        spec = importlib.util.spec_from_file_location("dropblock_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the package's submodules import it by name
    spec.loader.exec_module(module)
    return module


def build_implementations(keep_prob, block_size, device=None, before=None):
    """Name -> (callable taking x, kind) for ours and every importable peer.

    Args:
        device (torch.device or None): where the benchmark runs (default CPU); every backend of
            ours that serves it gets its own rows, besides "auto" (the unlabelled rows).
        before (str or None): an older operator (file or package folder) to time side by side.

    Returns:
        tuple(dict, list[str]): the implementations, and notes on skipped peers.
    """
    device = device or torch.device("cpu")
    impls = {
        "ours per-channel": (
            lambda x: drop_block_2d(x, keep_prob, block_size),
            "per-channel",
        ),
        "ours per-channel exact": (
            lambda x: drop_block_2d(x, keep_prob, block_size, gamma="exact"),
            "per-channel",
        ),
        "ours shared": (
            lambda x: drop_block_2d(x, keep_prob, block_size, share_channels=True),
            "shared",
        ),
    }
    notes = []
    probe = torch.empty(2, 4, 25, 19, device=device)
    for backend in ("sparse", "dense", "triton"):
        if backend == auto_backend(device):
            continue  # the unlabelled rows
        if resolve_backend(backend, probe, block_size, False) != backend:
            notes.append(f"backend {backend!r} does not serve {device.type} here: skipped")
            continue
        impls[f"ours per-channel [{backend}]"] = (
            lambda x, b=backend: drop_block_2d(x, keep_prob, block_size, backend=b),
            "per-channel",
        )
        impls[f"ours shared [{backend}]"] = (
            lambda x, b=backend: drop_block_2d(
                x, keep_prob, block_size, share_channels=True, backend=b
            ),
            "shared",
        )
    if before:
        old = _load_operator(before)
        impls["before per-channel"] = (
            lambda x: old.drop_block_2d(x, keep_prob, block_size),
            "per-channel",
        )
        impls["before shared"] = (
            lambda x: old.drop_block_2d(x, keep_prob, block_size, share_channels=True),
            "shared",
        )
        impls["before per-channel [dense]"] = (
            lambda x: old.drop_block_2d(x, keep_prob, block_size, backend="dense"),
            "per-channel",
        )
    try:
        from torchvision.ops import drop_block2d

        impls["torchvision"] = (
            lambda x: drop_block2d(x, 1 - keep_prob, block_size, training=True),
            "per-channel",
        )
    except ImportError as error:
        notes.append(f"torchvision skipped ({error})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from timm.layers import DropBlock2d as TimmDropBlock2d

        timm_channel = TimmDropBlock2d(1 - keep_prob, block_size, couple_channels=False)
        timm_shared = TimmDropBlock2d(1 - keep_prob, block_size, couple_channels=True)
        impls["timm per-channel"] = (timm_channel, "per-channel")
        impls["timm shared"] = (timm_shared, "shared")
    except ImportError as error:
        notes.append(f"timm skipped ({error}); pip install timm")
    try:
        from dropblock import DropBlock2D

        impls["dropblock pkg (shared)"] = (DropBlock2D(1 - keep_prob, block_size), "shared")
    except ImportError as error:
        notes.append(f"dropblock skipped ({error}); pip install dropblock")
    return impls, notes


def make_timer(device):
    """Return ``timer(fn) -> seconds`` that waits for the device around ``fn``."""
    if device.type == "cuda":

        def timer(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3

        return timer

    def timer(fn):
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return timer


def bench_shape(shape, dtype, device, impls, reps, warmup):
    """Median forward+backward seconds per implementation (and the floor) on one shape."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator).requires_grad_()
    grad = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    ready_mask = (torch.rand(shape, device=device, generator=generator) > 0.1).to(dtype) / 0.9

    def floor():
        (x * ready_mask).backward(grad)
        x.grad = None

    def run(module):
        def step():
            out = module(x)
            out.backward(grad)
            x.grad = None

        return step

    steps = {"floor": floor}
    for name, (module, _) in impls.items():
        if isinstance(module, torch.nn.Module):
            module.train()
        steps[name] = run(module)
    timer = make_timer(device)
    samples = {name: [] for name in steps}
    for rep in range(warmup + reps):
        for name, step in steps.items():  # interleaved: background load hits all alike
            seconds = timer(step)
            if rep >= warmup:
                samples[name].append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def format_table(results, impls, markdown=False):
    """Rows: implementations; columns: ms per shape, total ms and total / floor."""
    shapes = list(results)
    names = ["floor"] + list(impls)
    header = ["implementation", "kind"] + ["x".join(map(str, s)) + " ms" for s in shapes]
    header += ["total ms", "x floor"]
    floor_total = sum(results[s]["floor"] for s in shapes)
    rows = []
    for name in names:
        kind = "ready mask" if name == "floor" else impls[name][1]
        times = [results[s][name] * 1e3 for s in shapes]
        total = sum(times)
        rows.append(
            [name, kind]
            + [f"{t:.2f}" for t in times]
            + [f"{total:.2f}"]
            + [f"{total / (floor_total * 1e3):.2f}"]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtypes",
        default=None,
        help="comma list of fp32,fp16,bf16 (default: fp32 on cpu, all on cuda)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)"
    )
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--keep-prob", type=float, default=0.9)
    parser.add_argument("--block-size", type=int, default=7)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="shrink the channel counts by this factor (quick smoke runs)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument(
        "--before",
        default=None,
        help="an older operator to time side by side (rows 'before ...'): a drop_block.py, or a "
        "layers package folder from `git archive <commit> dropblock_det/layers | tar -x -C DIR`",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma list of implementation names to run (default: all); the floor always runs",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    dtype_names = (args.dtypes or ("fp32,fp16,bf16" if device.type == "cuda" else "fp32")).split(
        ","
    )
    for name in dtype_names:
        if name not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    shapes = [(b, max(1, int(c * args.scale)), h, w) for b, c, h, w in RETINANET_SHAPES]
    impls, notes = build_implementations(args.keep_prob, args.block_size, device, args.before)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(impls))
        if unknown:
            parser.error(f"--only: unknown {unknown}; choose from {sorted(impls)}")
        impls = {name: impl for name, impl in impls.items() if name in wanted}

    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    print(
        f"# DropBlock forward+backward, {date.today().isoformat()}, torch {torch.__version__}, "
        f"device {device} ({device_name}), threads {torch.get_num_threads()}, "
        f"keep_prob {args.keep_prob}, block {args.block_size}, median of {args.reps}"
    )
    for note in notes:
        print(f"# note: {note}")
    for dtype_name in dtype_names:
        results = {}
        for shape in shapes:
            results[shape] = bench_shape(
                shape, DTYPES[dtype_name], device, impls, args.reps, args.warmup
            )
        print(f"\n## {dtype_name}")
        print(format_table(results, impls))
        if args.markdown:
            print()
            print(format_table(results, impls, markdown=True))


if __name__ == "__main__":
    main()
