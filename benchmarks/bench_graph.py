"""DropBlock forward+backward timed as CUDA-graph replays against the true floor, on one GPU.

The goal shapes (8 x 512 x 80 x 80, 8 x 1024 x 40 x 40, 8 x 2048 x 20 x 20) in fp16, bf16 and
fp32, for our backends (per-channel and shared masks) and for torchvision's and timm's DropBlock.
Each step (forward, then backward with a fixed output gradient) is captured ``--calls`` times in
one CUDA graph, so host launch time drops out; the graph is replayed ``--reps`` times and the
median replay divided by ``--calls`` is the time of one call. The floor is the multiply by a
constant forward (y = x * c) and backward (dx = dy * c): 4 element sizes per element, 8 B in
fp16. The copy bandwidth (``dst.copy_(src)``, same bytes) is measured in the same run, so the
floor's own efficiency shows. A step that cannot be captured (a host sync) is timed eagerly and
marked "eager".

Writes a Markdown table to ``--out`` (default ``$OUT/summary_operator.md`` when $OUT is set) and
prints it.

Usage:
    python benchmarks/bench_graph.py                # needs a CUDA GPU
"""

import argparse
import os
import statistics
import sys
import warnings

import torch

from dropblock_det.layers import drop_block_2d

SHAPES = ((8, 512, 80, 80), (8, 1024, 40, 40), (8, 2048, 20, 20))
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KEEP_PROB, BLOCK_SIZE = 0.9, 7


def implementations():
    """Name -> function of x (ours per backend and mask kind, and the importable peers)."""
    impls = {}
    for backend in ("triton", "dense"):
        for shared in (False, True):
            kind = "shared" if shared else "per-channel"
            impls[f"ours {backend} {kind}"] = lambda x, b=backend, s=shared: drop_block_2d(
                x, KEEP_PROB, BLOCK_SIZE, share_channels=s, gamma="exact", backend=b
            )
    try:
        from torchvision.ops import drop_block2d

        impls["torchvision"] = lambda x: drop_block2d(x, 1 - KEEP_PROB, BLOCK_SIZE, training=True)
    except ImportError as error:
        print(f"torchvision skipped ({error})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from timm.layers import DropBlock2d

        for shared in (False, True):
            module = DropBlock2d(1 - KEEP_PROB, BLOCK_SIZE, couple_channels=shared).train()
            impls[f"timm {'shared' if shared else 'per-channel'}"] = module
    except ImportError as error:
        print(f"timm skipped ({error})")
    return impls


def time_graph(step, calls, reps):
    """Seconds per call of ``step`` replayed in a CUDA graph, or eagerly if capture fails."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            step()
    torch.cuda.current_stream().wait_stream(stream)
    mode = "graph"
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                step()
        run = graph.replay
    except Exception as error:  # a host sync or an uncapturable op: time it eagerly
        mode = f"eager ({type(error).__name__})"
        torch.cuda.synchronize()

        def run():
            for _ in range(calls):
                step()

    samples = []
    for _ in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples[2:]), mode


def bench(shape, dtype, impls, calls, reps):
    """(floor seconds, copy GB/s, {name: (seconds, mode)}) on one shape and dtype."""
    x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn(shape, device="cuda", dtype=dtype)
    y, dx = torch.empty_like(dy), torch.empty_like(dy)
    factor = 1.0 / KEEP_PROB

    def floor():
        torch.mul(x.detach(), factor, out=y)
        torch.mul(dy, factor, out=dx)

    def copy():
        y.copy_(dy)
        dx.copy_(y)

    floor_s, _ = time_graph(floor, calls, reps)
    copy_s, _ = time_graph(copy, calls, reps)
    copy_gbs = 4 * x.numel() * x.element_size() / copy_s / 1e9
    results = {}
    for name, fn in impls.items():

        def step(fn=fn):
            (grad,) = torch.autograd.grad(fn(x), x, dy)
            return grad

        try:
            results[name] = time_graph(step, calls, reps)
        except Exception as error:  # noqa: BLE001 (a peer that fails on this shape)
            results[name] = (float("nan"), f"failed: {type(error).__name__}: {error}"[:60])
    return floor_s, copy_gbs, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls captured in one graph")
    parser.add_argument("--reps", type=int, default=10, help="timed replays (median)")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32")
    default_out = (
        os.path.join(os.environ["OUT"], "summary_operator.md") if "OUT" in os.environ else ""
    )
    parser.add_argument("--out", default=default_out, help="Markdown table file ('' = none)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_graph: needs a CUDA GPU")
        return 2
    impls = implementations()
    names = list(impls)
    lines = [
        f"# DropBlock fwd+bwd, CUDA-graph replays ({args.calls} calls a graph, median of "
        f"{args.reps}), {torch.cuda.get_device_name()}, keep_prob {KEEP_PROB}, block {BLOCK_SIZE}",
        "",
        "| shape | dtype | floor µs | floor GB/s (copy GB/s) | "
        + " | ".join(f"{name} (x floor)" for name in names)
        + " |",
        "|" + "---|" * (4 + len(names)),
    ]
    modes = set()
    for dtype_name in args.dtypes.split(","):
        for shape in SHAPES:
            floor_s, copy_gbs, results = bench(
                shape, DTYPES[dtype_name], impls, args.calls, args.reps
            )
            floor_gbs = 4 * torch.Size(shape).numel() * DTYPES[dtype_name].itemsize / floor_s / 1e9
            cells = []
            for name in names:
                seconds, mode = results[name]
                cells.append(f"{seconds / floor_s:.2f}x" + ("" if mode == "graph" else " *"))
                if mode != "graph":
                    modes.add(f"{name} {shape} {dtype_name}: {mode}")
            shape_text = "x".join(map(str, shape))
            lines.append(
                f"| {shape_text} | {dtype_name} | {floor_s * 1e6:.1f} | {floor_gbs:.0f} "
                f"({copy_gbs:.0f}) | " + " | ".join(cells) + " |"
            )
            print(lines[-1], flush=True)
    lines += ["", *(f"* {mode}" for mode in sorted(modes))]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
