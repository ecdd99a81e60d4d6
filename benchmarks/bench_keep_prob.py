"""Host time of the keep_prob schedule per training step: per-module setters against group fills.

The schedule hook sets keep_prob before every step and resets it to 1 after it. This times that
work for ``--modules`` DropBlock2d (52: res3-res5 in-block placement) in ``--groups`` groups
(res3, res4, res5), three ways: every module's ``keep_prob`` setter (what the hook does today), one
:meth:`~dropblock_det.layers.KeepProb.fill` per group after :func:`share_keep_prob`, and, with
``--before``, the setter of an older single-file operator.

Usage:
    python benchmarks/bench_keep_prob.py
    python benchmarks/bench_keep_prob.py --device cuda
    python benchmarks/bench_keep_prob.py --before /tmp/drop_block_before.py
"""

import argparse
import importlib.util
import statistics
import time

import torch

from dropblock_det.layers import DropBlock2d, share_keep_prob


def _median_step_us(step, reps, inner=50):
    """Median microseconds of one ``step()`` call over ``reps`` batches of ``inner`` calls."""
    samples = []
    for _ in range(reps):
        begin = time.perf_counter()
        for _ in range(inner):
            step()
        samples.append((time.perf_counter() - begin) / inner * 1e6)
    return statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modules", type=int, default=52)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--before", default=None, help="an older single-file drop_block.py")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    values = [1.0 - 0.1 / 4**g for g in range(args.groups)]

    def build(module_class):
        modules = [module_class(0.9, 7).to(device) for _ in range(args.modules)]
        return [modules[g :: args.groups] for g in range(args.groups)]

    def setters(groups):
        def step():
            for value, group in zip(values, groups, strict=False):
                for module in group:
                    module.keep_prob = value
            for group in groups:
                for module in group:
                    module.keep_prob = 1.0

        return step

    shared = [share_keep_prob(group) for group in build(DropBlock2d)]

    def fills():
        for value, keep_prob in zip(values, shared, strict=False):
            keep_prob.fill(value)
        for keep_prob in shared:
            keep_prob.fill(1.0)

    steps = {"per-module setters": setters(build(DropBlock2d)), "group fills": fills}
    if args.before:
        spec = importlib.util.spec_from_file_location("dropblock_before", args.before)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        steps["per-module setters, before"] = setters(build(old.DropBlock2d))
    for step in steps.values():
        step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(
        f"# keep_prob schedule host time per step, {args.modules} modules in {args.groups} "
        f"groups, device {device}, torch {torch.__version__}, median of {args.reps}"
    )
    print("| method | us per step | calls per step |")
    print("|---|---:|---:|")
    for name, step in steps.items():
        calls = 2 * (args.groups if name == "group fills" else args.modules)
        print(f"| {name} | {_median_step_us(step, args.reps):.1f} | {calls} |")


if __name__ == "__main__":
    main()
