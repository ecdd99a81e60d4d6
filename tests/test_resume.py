"""Resume and determinism, on two runs of the tiny DropBlock config (the fixtures of conftest.py).

Both runs go through tools/train_net.py with the config's SEED 42 (Detectron2's default_setup
seeds torch, NumPy and Python with SEED + rank; the training sampler's shuffle seed derives from
it); the interrupted one is SIGKILLed before step 6, two steps after its checkpoint of step 3 was
written. Their first six steps must draw the same DropBlock masks and give the same losses; resumed
with --resume, the interrupted run must redo steps 4 and 5 from that checkpoint and at every later
iteration apply the keep_prob and use the learning rate of the uninterrupted run.
"""

import json
import math
import os
import shutil

import pytest
import torch
from conftest import (
    SCHEDULED_RUN_KILLED_AT,
    SCHEDULED_RUN_OPTS,
    read_recording,
    recorded_run_argv,
    run_recorded_train_net,
)

# Every test here runs a tool in a subprocess (or reads the runs of conftest.py that do).
pytestmark = pytest.mark.slow

MAX_ITER = int(SCHEDULED_RUN_OPTS[SCHEDULED_RUN_OPTS.index("SOLVER.MAX_ITER") + 1])
CHECKPOINT_ITER = 3  # CHECKPOINT_PERIOD 4: saved after step 3 as model_0000003.pth


def _last_metrics_row(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()][-1]


def test_resumed_run_follows_the_uninterrupted_keep_prob_and_lr(
    uninterrupted_run, interrupted_run, tmp_path
):
    # The interrupted run stopped where it should: its last checkpoint is step 3's and steps
    # after it were trained but lost.
    with open(os.path.join(interrupted_run, "last_checkpoint")) as f:
        assert f.read().strip() == f"model_{CHECKPOINT_ITER:07d}.pth"
    interrupted_steps, _ = read_recording(interrupted_run)
    assert max(interrupted_steps) == SCHEDULED_RUN_KILLED_AT - 1 > CHECKPOINT_ITER
    assert not os.path.exists(os.path.join(interrupted_run, "model_final.pth"))

    # Resume a copy: the session's interrupted run stays as it was for the determinism test.
    resumed_run = str(tmp_path / "resumed")
    shutil.copytree(interrupted_run, resumed_run)
    run_recorded_train_net(["--resume", *recorded_run_argv(resumed_run, *SCHEDULED_RUN_OPTS)])

    reference, _ = read_recording(uninterrupted_run)
    # The resumed process's steps overwrite the killed process's steps 4 and 5 in this dict.
    resumed, final_params = read_recording(resumed_run)
    assert final_params is not None  # the resumed process trained to the end
    assert sorted(reference) == list(range(MAX_ITER))
    assert sorted(resumed) == list(range(MAX_ITER))
    for it in range(CHECKPOINT_ITER + 1, MAX_ITER):
        assert resumed[it]["keep_probs"] == reference[it]["keep_probs"], f"iteration {it}"
        assert resumed[it]["lr"] == reference[it]["lr"], f"iteration {it}"
    # The comparison is not vacuous: both schedules move over the resumed steps (keep_prob falls
    # every step; the LR steps down at SOLVER.STEPS 5).
    resumed_keep = [resumed[it]["keep_probs"][0] for it in range(CHECKPOINT_ITER + 1, MAX_ITER)]
    resumed_lr = [resumed[it]["lr"][0] for it in range(CHECKPOINT_ITER + 1, MAX_ITER)]
    assert all(a > b for a, b in zip(resumed_keep, resumed_keep[1:], strict=False))
    assert len(set(resumed_lr)) > 1
    # The killed process recorded steps 0-5; the resumed one started at 4, not 0, and finished.
    with open(os.path.join(resumed_run, "recording_rank0.jsonl")) as f:
        iterations = [json.loads(line).get("iter") for line in f]
    killed = list(range(SCHEDULED_RUN_KILLED_AT))
    assert iterations == killed + list(range(CHECKPOINT_ITER + 1, MAX_ITER)) + [None]

    # What users read: the last metrics row and the final weights' iteration agree too.
    for key in ("lr", "dropblock/keep_prob", "iteration"):
        assert _last_metrics_row(resumed_run)[key] == _last_metrics_row(uninterrupted_run)[key]
    final = torch.load(
        os.path.join(resumed_run, "model_final.pth"), map_location="cpu", weights_only=False
    )
    assert final["iteration"] == MAX_ITER - 1


def test_same_seed_gives_identical_masks_and_losses(uninterrupted_run, interrupted_run):
    first, _ = read_recording(uninterrupted_run)
    second, _ = read_recording(interrupted_run)
    compared = range(SCHEDULED_RUN_KILLED_AT)
    assert all(it in first and it in second for it in compared)
    for it in compared:
        # The recorder's replayed masks explain the real outputs' zeros, so the hashes are the
        # masks the model applied.
        assert first[it]["replay_ok"] and second[it]["replay_ok"], f"iteration {it}"
        assert second[it]["keep_probs"] == first[it]["keep_probs"], f"iteration {it}"
        assert second[it]["masks"] == first[it]["masks"], f"iteration {it}"
        assert second[it]["dropped"] == first[it]["dropped"], f"iteration {it}"
        # Bitwise equality: same data, same masks, same single-threaded (OMP_NUM_THREADS=1)
        # kernels in the same order.
        assert second[it]["loss"] == first[it]["loss"], f"iteration {it}"
        assert math.isfinite(first[it]["loss"])
    # Not vacuous: DropBlock dropped units at every step after the first (keep_prob starts at 1).
    assert first[0]["dropped"] == 0
    assert all(first[it]["dropped"] > 0 for it in compared if it > 0)
