"""Determinism: two CPU runs of the tiny DropBlock config with the same SEED agree exactly.

The two runs of conftest.py's fixtures are separate processes started through
tools/train_net.py with the config's SEED 42 (Detectron2's default_setup seeds torch, NumPy and
Python with SEED + rank; the training sampler's shuffle seed derives from it). One was killed
before step 6; their first six steps must draw the same DropBlock masks and give the same losses.
"""

import math

import pytest
from conftest import SCHEDULED_RUN_KILLED_AT, read_recording

# Every test here runs a tool in a subprocess (or reads the runs of conftest.py that do).
pytestmark = pytest.mark.slow


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
