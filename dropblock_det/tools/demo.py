"""The main job: train RetinaNet without and with DropBlock on the embedded dataset, then compare.

Both runs go through ``python -m dropblock_det.tools.train_net`` with the tiny configs (same seed,
same iterations), side by side with one thread each, which on a 2-core machine beats one after the
other with two threads each (README.md has the times); ``--sequential`` runs them in turn. Their
progress lines are streamed with a ``[ baseline]`` / ``[dropblock]`` prefix. Then the report tool
writes ``report.md`` and the pictures.

Usage (from the repository root, which holds ``configs/``):
    python tools/demo.py [--out demo_output] [--max-iter N] [--seed S] [--sequential] [-- KEY VALUE ...]
"""

import argparse
import os
import subprocess
import sys
import threading
import time

from .data import prepare_dataset
from .reporting import write_report
from .visualize_dropblock import main as visualize_dropblock

# The two runs and their configs, relative to the repository root.
RUNS = (
    ("baseline", "configs/tiny/tiny_retinanet_R18_FPN_baseline.yaml"),
    ("dropblock", "configs/tiny/tiny_retinanet_R18_FPN_dropblock.yaml"),
)


def _stream(name, proc, log_path):
    # The run's output to the console with a prefix, and to its log file.
    with open(log_path, "w", encoding="utf-8") as log:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(f"[{name:>9}] {line}")
            sys.stdout.flush()


def run_trainings(out_root, seed, max_iter, extra_opts, sequential):
    """Train both configs; return their output folders. Raises SystemExit naming a failed log."""
    threads = "2" if sequential else "1"
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    procs = []
    for name, config_file in RUNS:
        out_dir = os.path.join(out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "dropblock_det.tools.train_net"]
        cmd += ["--config-file", os.path.abspath(config_file), "MODEL.DEVICE", "cpu"]
        cmd += ["OUTPUT_DIR", out_dir, "SEED", str(seed)]
        cmd += ["SOLVER.MAX_ITER", str(max_iter)] if max_iter is not None else []
        proc = subprocess.Popen(
            cmd + list(extra_opts),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log_path = os.path.join(out_root, f"{name}.log")
        streamer = threading.Thread(target=_stream, args=(name, proc, log_path), daemon=True)
        streamer.start()
        procs.append((name, proc, streamer, log_path, out_dir))
        if sequential:
            proc.wait()
            streamer.join()
    for name, proc, streamer, log_path, _ in procs:
        proc.wait()
        streamer.join()
        if proc.returncode != 0:
            raise SystemExit(
                f"demo: the {name} run failed (exit {proc.returncode}); see {log_path} for its full output."
            )
    return [out_dir for *_, out_dir in procs]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="SEED of both runs")
    parser.add_argument("--max-iter", type=int, default=None, help="override SOLVER.MAX_ITER")
    parser.add_argument("--sequential", action="store_true", help="one run after the other")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options for both runs")
    args = parser.parse_args(argv)
    extra_opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts

    missing = [config for _, config in RUNS if not os.path.isfile(config)]
    if missing:
        parser.error(f"{missing[0]} not found: run the demo from the repository root.")
    start = time.time()
    out_root = os.path.abspath(args.out)
    os.makedirs(out_root, exist_ok=True)

    print("[demo] preparing the embedded dataset (generated once, then reused)", flush=True)
    prepare_dataset()  # the folder and spec that the runs' registered datasets use

    print(f"[demo] training baseline and DropBlock side by side, outputs in {out_root}", flush=True)
    run_dirs = run_trainings(out_root, args.seed, args.max_iter, extra_opts, args.sequential)

    report_dir = os.path.join(out_root, "report")
    result = write_report(run_dirs, report_dir, names=[name for name, _ in RUNS])
    masks_png = os.path.join(report_dir, "dropblock_masks.png")
    # Upscaled to the paper's 640 px, so that res3/res4 are 80x80/40x40 maps as in its figures.
    visualize_dropblock(["--out", masks_png, "--strides", "8", "16", "--min-size", "640"])

    print(result.table_text)
    print(
        f"[demo] one seed (SEED {args.seed}): at this scale val AP moves by several points between "
        "seeds, so one pair cannot tell a real gain from noise. README.md, 'How to read it', has "
        "five seeds; run more with tools/demo.py --seed N --out DIR."
    )
    minutes, seconds = divmod(int(time.time() - start), 60)
    figures = [str(path) for path in result.figures.values()] + [masks_png]
    print(f"[demo] report: {result.report_path}")
    print(f"[demo] pictures: {', '.join(figures)}")
    print(f"[demo] done in {minutes} min {seconds:02d} s")
