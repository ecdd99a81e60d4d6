"""Distributed training: two CPU processes through tools/train_net.py and Detectron2's launch.

``--num-gpus 2`` on a machine without GPUs makes ``launch`` spawn two worker
processes joined by the gloo backend; the model is wrapped in DistributedDataParallel (which
dropblock_det.tools.trainer.Trainer allows for CPU models). Every rank records its steps (conftest's
TrainingRecorder). The run is a subprocess with a timeout that kills every rank: a hang fails.
"""

import math
import os

import pytest
import torch
from conftest import read_recording, recorded_run_argv, run_recorded_train_net
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from dropblock_det import add_dropblock_config
from dropblock_det.tools.config import add_training_config

# Every test here trains through tools/train_net.py in a subprocess.
pytestmark = pytest.mark.slow

MAX_ITER = 4
WORLD_SIZE = 2


def test_two_cpu_processes_share_the_schedule_but_not_the_masks(tmp_path):
    out = str(tmp_path / "ddp")
    argv = [
        "--num-gpus", str(WORLD_SIZE),
        # A free port: the parser's default is fixed per user, so concurrent runs would collide.
        "--dist-url", "auto",
        *recorded_run_argv(
            out,
            "SOLVER.MAX_ITER", str(MAX_ITER),
            # Two images per process: BN in the head cannot train on the 1x1 p7 map of one image.
            "SOLVER.IMS_PER_BATCH", str(2 * WORLD_SIZE),
            # Larger than MAX_ITER: model_final.pth is the only checkpoint due.
            "SOLVER.CHECKPOINT_PERIOD", "1000",
        ),
    ]  # fmt: skip
    run_recorded_train_net(argv, timeout=420)

    ranks = [read_recording(out, rank) for rank in range(WORLD_SIZE)]
    steps = [rank_steps for rank_steps, _ in ranks]
    for rank_steps in steps:
        assert sorted(rank_steps) == list(range(MAX_ITER))
    dropping_steps = 0
    for it in range(MAX_ITER):
        first, second = steps[0][it], steps[1][it]
        assert first["replay_ok"] and second["replay_ok"], f"iteration {it}"
        # One schedule: every DropBlock call of every rank used the same keep_prob.
        assert first["keep_probs"] and first["keep_probs"] == second["keep_probs"]
        assert first["lr"] == second["lr"]
        assert math.isfinite(first["loss"]) and math.isfinite(second["loss"])
        if first["dropped"] and second["dropped"]:
            # Each rank draws its own blocks (default_setup seeds each with SEED + rank).
            assert first["masks"] != second["masks"], f"iteration {it}"
            dropping_steps += 1
    # keep_prob starts at 1 (nothing dropped at step 0) and falls below it afterwards.
    assert dropping_steps == MAX_ITER - 1
    # Data parallel for real: the ranks' gradients were averaged, so their weights agree.
    final_params = [params for _, params in ranks]
    assert final_params[0] is not None and final_params[0] == final_params[1]

    # Exactly one checkpoint, written by rank 0 only, and it loads.
    checkpoints = sorted(name for name in os.listdir(out) if name.endswith(".pth"))
    assert checkpoints == ["model_final.pth"]
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    cfg = get_cfg()
    add_dropblock_config(cfg)
    add_training_config(cfg)
    cfg.merge_from_file(os.path.join(out, "config.yaml"))
    model = build_model(cfg)
    loaded = DetectionCheckpointer(model).load(os.path.join(out, "model_final.pth"))
    assert loaded["iteration"] == MAX_ITER - 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
