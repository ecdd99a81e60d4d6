"""One short CUDA run: the DropBlock operator table and the training-step overhead.

Prints, on one GPU:

1. the operator table of ``bench_dropblock.py`` (floor, peers, ours; forward + backward on the
   RetinaNet res3-res5 maps) in fp32, fp16 and bf16;
2. the training-step overhead of ``bench_train_step.py`` (the paper's RetinaNet R50-FPN,
   DropBlock off / res4+res5 / res3+res4+res5, every backend) at batch 2 x 512 px in fp32 and
   with AMP (SOLVER.AMP.ENABLED: Detectron2's AMPTrainer), and at 8 x 640 px with AMP.

Everything printed is also written to ``--out`` (default: ``$OUT`` when set) as ``bench_cuda.txt``.
About two to three minutes on an H100.

Usage:
    python benchmarks/bench_cuda.py                 # needs a CUDA GPU
    python benchmarks/bench_cuda.py --cpu-smoke     # the same steps on the CPU, tiny, to check the
                                                    # script itself (AMP skipped; figures meaningless)
"""

import argparse
import contextlib
import gc
import os
import sys
import time
import traceback

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

# The sibling script (this folder is sys.path[0] when a benchmark runs as a script).
import bench_dropblock  # noqa: E402
import bench_train_step  # noqa: E402

PAPER_CONFIG = os.path.join(bench_train_step.REPO_ROOT, bench_train_step.DEFAULT_CONFIG)


class _Tee:
    """A text stream that writes to several streams."""

    def __init__(self, *streams):
        self._streams = streams

    def write(self, text):
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self._streams:
            stream.flush()


def plan(cpu_smoke):
    """The steps to run: (title, function, argv) triples."""
    if cpu_smoke:
        operator_argv = ["--device", "cpu", "--dtypes", "fp32,bf16", "--scale", "0.02"]
        operator_argv += ["--reps", "1", "--warmup", "0", "--threads", "1"]
        train_common = ["--device", "cpu", "--threads", "1", "--iters", "1", "--warmup", "0"]
        train_common += ["--backends", "sparse,dense"]
        # (title, batch, size, AMP): Detectron2's AMPTrainer needs CUDA.
        step_shapes = [("2 x 128 px, fp32", 2, 128, False)]
    else:
        operator_argv = ["--device", "cuda", "--dtypes", "fp32,fp16,bf16", "--markdown"]
        train_common = ["--device", "cuda", "--iters", "20", "--warmup", "5", "--markdown"]
        train_common += ["--backends", "dense,triton,sparse"]
        step_shapes = [
            ("2 x 512 px, fp32", 2, 512, False),
            ("2 x 512 px, AMP", 2, 512, True),
            ("8 x 640 px, AMP (a realistic batch)", 8, 640, True),
        ]
    steps = [("DropBlock operator", bench_dropblock.main, operator_argv)]
    for title, batch, size, amp in step_shapes:
        argv = train_common + ["--batch", str(batch), "--size", str(size)]
        if batch * size * size > 2 * 512 * 512 and not cpu_smoke:
            # Larger steps vary less; fewer rounds keep the whole check within its time limit.
            argv += ["--iters", "12", "--warmup", "3"]
        argv += (["--amp"] if amp else []) + ["--config-file", PAPER_CONFIG]
        steps.append(
            (
                f"training step, paper R50-FPN (BN, from scratch), {title}",
                bench_train_step.main,
                argv,
            )
        )
    return steps


def main(argv=None):
    """Run every step, printing (and writing) their tables; a failed step does not stop the rest.

    Args:
        argv (list[str] or None): command-line arguments; None reads ``sys.argv``.

    Returns:
        int: 0 when every step ran, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the same steps tiny on the CPU"
    )
    parser.add_argument(
        "--out", default=os.environ.get("OUT"), help="folder for bench_cuda.txt (default: $OUT)"
    )
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA device is available (use --cpu-smoke to check the script on a CPU)")

    log_file = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        log_file = open(os.path.join(args.out, "bench_cuda.txt"), "w")
    stream = _Tee(sys.stdout, *([log_file] if log_file else []))
    failures = 0
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        if torch.cuda.is_available() and not args.cpu_smoke:
            props = torch.cuda.get_device_properties(0)
            print(
                f"# GPU: {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}"
            )
        else:
            print(f"# CPU smoke run of the CUDA benchmark script, torch {torch.__version__}")
        for title, function, step_argv in plan(args.cpu_smoke):
            print(f"\n# === {title}\n# argv: {' '.join(step_argv)}", flush=True)
            begin = time.perf_counter()
            try:
                function(step_argv)
            except (Exception, SystemExit) as error:  # keep going: one short run on the GPU
                failures += 1
                print(f"# FAILED: {error!r}")
                traceback.print_exc(file=sys.stdout)
            print(f"# ({time.perf_counter() - begin:.0f} s)", flush=True)
            # Free the previous step's models before the next one builds its own.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if log_file:
        log_file.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
