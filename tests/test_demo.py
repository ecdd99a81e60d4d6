"""The demo path end to end, seconds-long: dataset -> both trainings -> evaluation -> report + pictures.

Runs ``tools/demo.py`` exactly as ``make demo`` does, with 4 iterations instead of the full schedule.
"""

import os
import subprocess
import sys

from conftest import REPO_ROOT
from PIL import Image

DEMO = os.path.join(REPO_ROOT, "tools", "demo.py")


def test_demo_trains_both_runs_and_writes_the_report_and_pictures(tmp_path):
    out = tmp_path / "demo"
    cmd = [
        sys.executable, DEMO, "--out", str(out), "--max-iter", "4",
        # Few-iteration models: keep every candidate so that there are detections to score, and a
        # small batch to keep the test short.
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "SOLVER.IMS_PER_BATCH", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # Detectron2's progress lines of both runs are streamed with the run's prefix.
    assert "[ baseline]" in proc.stdout and "[dropblock]" in proc.stdout
    assert "Starting training from iteration 0" in proc.stdout

    # Both runs were evaluated by the COCOEvaluator (eval_results.json) and trained to the end.
    for run in ("baseline", "dropblock"):
        assert (out / run / "eval_results.json").is_file(), run
        assert (out / run / "model_final.pth").is_file(), run
        assert (out / f"{run}.log").is_file(), run

    report = (out / "report" / "report.md").read_text()
    # One row per run, the paper's rows, and every COCO metric as a column.
    for needle in ("baseline", "dropblock", "36.8", "38.4", "AP50", "AP75", "APs", "APm", "APl"):
        assert needle in report, needle
    assert "not evaluated" not in report
    # The printed table is the report's, with the paper beside it.
    assert "36.8" in proc.stdout and "38.4" in proc.stdout
    # A single pair is labelled as such, with a pointer to the seed study.
    assert "[demo] one seed (SEED 0)" in proc.stdout

    for picture in ("ap.png", "keep_prob.png", "loss.png", "dropblock_masks.png"):
        path = out / "report" / picture
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        assert path.stat().st_size > 5_000, picture  # a drawn figure, not an empty canvas
    assert "[demo] done in" in proc.stdout
