"""Tests of DropBlockSchedule: the keep_prob it sets, what it logs, and resuming."""

import itertools
import os

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer, hooks
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from dropblock_det import DropBlock2d, DropBlockSchedule, check_placements

GROUPS = ("res3", "res4", "res5", "p3", "head")


class _Net(nn.Module):
    """A tiny model with one DropBlock per group; records their keep_prob at each step."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.dropblocks = nn.ModuleDict()
        for group in GROUPS:
            self.dropblocks[group] = DropBlock2d(keep_prob=0.5, block_size=3, group=group)
        self.seen = []

    def forward(self, x):
        self.seen.append({g: m.keep_prob for g, m in self.dropblocks.items()})
        y = self.conv(x)
        for module in self.dropblocks.values():
            y = module(y)
        return {"loss": y.square().mean()}


class _Wrapper(nn.Module):
    """Holds the model as ``.module``, as DistributedDataParallel does."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def _trainer(model, *extra_hooks, **schedule_kwargs):
    data = itertools.repeat(torch.ones(2, 1, 8, 8))
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.01))
    schedule = DropBlockSchedule(
        **{"keep_prob": 0.9, "stages": ["res3", "res4", "res5"], **schedule_kwargs}
    )
    trainer.register_hooks([schedule, *extra_hooks])
    return trainer, schedule


def _expected_keep_prob(iteration, max_iter, keep_prob, start, ramp):
    """The schedule written out independently of fvcore: linear over the first ramp, then flat.

    The ramp spans the steps 0 .. max_iter - 1, so the last step runs at keep_prob.
    """
    if ramp == 0 or max_iter == 1:
        return keep_prob
    progress = min(1.0, iteration / (ramp * (max_iter - 1)))
    return start + (keep_prob - start) * progress


@pytest.mark.parametrize(
    "keep_prob, start, ramp",
    [(0.9, 1.0, 1.0), (0.9, 1.0, 0.5), (0.75, 0.95, 0.3), (0.9, 1.0, 0.0), (1.0, 1.0, 1.0)],
)
def test_keep_prob_follows_the_linear_ramp(keep_prob, start, ramp):
    schedule = DropBlockSchedule(keep_prob=keep_prob, start=start, ramp=ramp)
    max_iter = 200
    for iteration in (0, 1, 29, 30, 59, 60, 99, 100, 101, 150, 199):
        expected = _expected_keep_prob(iteration, max_iter, keep_prob, start, ramp)
        assert schedule.keep_prob_at(iteration, max_iter) == pytest.approx(expected, abs=1e-12)


def test_known_values_of_the_paper_schedule():
    schedule = DropBlockSchedule(keep_prob=0.9)
    assert schedule.keep_prob_at(0, 101) == 1.0
    assert schedule.keep_prob_at(50, 101) == pytest.approx(0.95)
    assert schedule.keep_prob_at(100, 101) == pytest.approx(0.9, abs=1e-12)


def test_group_scaling_divides_the_drop_rate_by_four_per_stage_below_the_last():
    scaled = DropBlockSchedule(keep_prob=0.9, stages=["res3", "res4", "res5"], group_scaling=True)
    flat = DropBlockSchedule(keep_prob=0.9, stages=["res3", "res4", "res5"], group_scaling=False)
    # At the middle of the run the unscaled keep_prob is 0.95, a drop rate of 0.05.
    expected = {
        "res5": 0.95,
        "res4": 1 - 0.05 / 4,
        "res3": 1 - 0.05 / 16,
        "p3": 0.95,
        "head": 0.95,
        None: 0.95,
    }
    for group, value in expected.items():
        assert scaled.keep_prob_at(50, 101, group) == pytest.approx(value)
        assert flat.keep_prob_at(50, 101, group) == pytest.approx(0.95)
    # The distance counts stage numbers, not positions in STAGES.
    gapped = DropBlockSchedule(keep_prob=0.9, stages=["res3", "res5"], group_scaling=True)
    assert gapped.keep_prob_at(50, 101, "res3") == pytest.approx(1 - 0.05 / 16)


def test_sets_every_dropblock_before_each_step_and_logs_the_unscaled_value():
    net = _Net()
    trainer, schedule = _trainer(net)
    max_iter = 11
    trainer.train(0, max_iter)

    assert len(net.seen) == max_iter
    for iteration, seen in enumerate(net.seen):
        for group in GROUPS:
            expected = schedule.keep_prob_at(iteration, max_iter, group)
            assert seen[group] == pytest.approx(expected, abs=1e-7)  # float32 buffer
    history = trainer.storage.history("dropblock/keep_prob").values()
    assert [it for _, it in history] == list(range(max_iter))
    assert [v for v, _ in history] == [schedule.keep_prob_at(i, max_iter) for i in range(max_iter)]
    assert trainer.storage.smoothing_hints()["dropblock/keep_prob"] is False
    # Spot check against the paper's formula: step 5 of 0..10 runs at 1 - 0.5 * 0.1.
    assert net.seen[5]["res5"] == pytest.approx(0.95)
    assert net.seen[5]["res4"] == pytest.approx(1 - 0.05 / 4)
    assert net.seen[-1]["res5"] == pytest.approx(0.9) and net.seen[0]["res5"] == 1.0


def test_dropblock_is_off_between_steps_for_the_hooks_after_it():
    class AfterStepRecorder(hooks.HookBase):
        def __init__(self, net):
            self.net = net
            self.seen = []

        def after_step(self):
            self.seen.append({m.keep_prob for m in self.net.dropblocks.values()})

    net = _Net()
    recorder = AfterStepRecorder(net)
    trainer, _ = _trainer(net, recorder)
    trainer.train(0, 5)
    assert recorder.seen == [{1.0}] * 5
    assert net.seen[3]["res5"] < 1.0  # while the steps themselves ran with the schedule


def test_resumed_run_continues_the_schedule_exactly(tmp_path):
    max_iter, period = 12, 6
    net = _Net()
    trainer, _ = _trainer(net)
    checkpointer = Checkpointer(net, str(tmp_path), trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period)])
    trainer.train(0, max_iter)
    uninterrupted = trainer.storage.history("dropblock/keep_prob").values()
    # The schedule keeps no state of its own in the trainer's checkpoint.
    assert "DropBlockSchedule" not in trainer.state_dict().get("hooks", {})

    resumed_net = _Net()
    resumed, _ = _trainer(resumed_net)
    Checkpointer(resumed_net, str(tmp_path), trainer=resumed).load(
        os.path.join(tmp_path, f"model_{period - 1:07d}.pth")
    )
    assert resumed.iter == period - 1  # the last finished iteration
    resumed.train(resumed.iter + 1, max_iter)

    assert resumed_net.seen == net.seen[period:]
    assert resumed.storage.history("dropblock/keep_prob").values() == uninterrupted[period:]


def test_reaches_dropblocks_inside_a_ddp_style_wrapper():
    net = _Net()
    trainer, schedule = _trainer(_Wrapper(net))
    trainer.train(0, 4)
    assert [s["res5"] for s in net.seen] == pytest.approx(
        [schedule.keep_prob_at(i, 4) for i in range(4)], abs=1e-7
    )


def test_reaches_dropblocks_inside_distributed_data_parallel(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        net = _Net()
        ddp = nn.parallel.DistributedDataParallel(net)
        trainer, schedule = _trainer(ddp)
        trainer.train(0, 4)
    finally:
        dist.destroy_process_group()
    assert [s["res4"] for s in net.seen] == pytest.approx(
        [schedule.keep_prob_at(i, 4, "res4") for i in range(4)], abs=1e-7
    )


@pytest.mark.parametrize("ramp", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("max_iter", [1, 2, 6, 8, 10])
def test_the_last_training_step_runs_at_the_target_keep_prob(max_iter, ramp):
    net = _Net()
    trainer, _ = _trainer(net, keep_prob=0.9, ramp=ramp)
    trainer.train(0, max_iter)
    assert len(net.seen) == max_iter
    # float32 buffers: the unscaled groups hold 0.9 to float32 precision.
    assert net.seen[-1]["res5"] == pytest.approx(0.9, abs=1e-7)
    assert net.seen[-1]["head"] == pytest.approx(0.9, abs=1e-7)
    assert net.seen[-1]["res4"] == pytest.approx(1 - 0.1 / 4, abs=1e-7)
    assert net.seen[-1]["res3"] == pytest.approx(1 - 0.1 / 16, abs=1e-7)
    history = trainer.storage.history("dropblock/keep_prob").values()
    assert history[-1] == (pytest.approx(0.9, abs=1e-12), max_iter - 1)
    if max_iter > 1 and ramp > 0:
        assert net.seen[0]["res5"] == 1.0  # and the first runs at START
    keep = [seen["res5"] for seen in net.seen]
    assert all(a >= b for a, b in itertools.pairwise(keep))


def test_a_resumed_short_run_still_ends_at_the_target(tmp_path):
    max_iter, period = 6, 3
    net = _Net()
    trainer, _ = _trainer(net, ramp=0.5)
    checkpointer = Checkpointer(net, str(tmp_path), trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period)])
    trainer.train(0, max_iter)
    resumed_net = _Net()
    resumed, _ = _trainer(resumed_net, ramp=0.5)
    Checkpointer(resumed_net, str(tmp_path), trainer=resumed).load(
        os.path.join(tmp_path, f"model_{period - 1:07d}.pth")
    )
    resumed.train(resumed.iter + 1, max_iter)
    assert resumed_net.seen == net.seen[period:]
    assert resumed_net.seen[-1]["res5"] == pytest.approx(0.9, abs=1e-7)


def test_a_model_without_the_requested_dropblock_is_refused_by_the_model_check(tiny_cfg):
    class NoDropBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", True, "MODEL.DROPBLOCK.STAGES", ["res5"])
    with pytest.raises(
        ValueError, match=r"MODEL\.DROPBLOCK\.STAGES asks for DropBlock in \['res5'\]"
    ):
        check_placements(NoDropBlock(), cfg)
    check_placements(_Net(), cfg)  # res5 is there


def test_builds_from_the_config(tiny_cfg):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.KEEP_PROB", 0.8,
        "MODEL.DROPBLOCK.STAGES", ["res4", "res5"],
        "MODEL.DROPBLOCK.SCHEDULE.START", 0.96,
        "MODEL.DROPBLOCK.SCHEDULE.RAMP", 0.5,
    )  # fmt: skip
    schedule = DropBlockSchedule(cfg)
    assert schedule.keep_prob_at(0, 101) == pytest.approx(0.96)
    assert schedule.keep_prob_at(25, 101) == pytest.approx(0.88)
    assert schedule.keep_prob_at(75, 101) == pytest.approx(0.8)
    assert schedule.keep_prob_at(25, 101, "res4") == pytest.approx(1 - 0.12 / 4)


class _Capture:
    """Records what dropblock_det.hooks logs, whatever logger set-up ran before."""

    def __init__(self):
        import logging

        self.records = []
        self._logger = logging.getLogger("dropblock_det.hooks")
        self._handler = logging.Handler()
        self._handler.emit = self.records.append
        self._logger.addHandler(self._handler)
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)

    def messages(self, level):
        return [r.getMessage() for r in self.records if r.levelname == level]

    def close(self):
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)


@pytest.fixture
def hook_log():
    capture = _Capture()
    yield capture
    capture.close()


def test_logs_one_summary_line_per_group_at_start(hook_log):
    trainer, _ = _trainer(_Net(), keep_prob=0.8, ramp=0.5)
    trainer.train(0, 10)
    lines = hook_log.messages("INFO")
    # res5 is the deepest stage: unscaled; res4 a quarter of its drop rate, res3 a sixteenth.
    expected = {
        "ResNet stage res3": "1 -> 0.9875",
        "ResNet stage res4": "1 -> 0.95",
        "ResNet stage res5": "1 -> 0.8",
        "FPN level p3": "1 -> 0.8",
        "RetinaNet head": "1 -> 0.8",
    }
    assert len(lines) == len(expected)
    for where, ramp in expected.items():
        (line,) = [line for line in lines if line.startswith(f"DropBlock {where}:")]
        assert f"1 module(s), block [3], keep_prob {ramp} from iteration 0 to 5 of 0..9" in line


@pytest.mark.parametrize("block_size, warned", [(9, True), (8, False), (3, False)])
def test_warns_once_when_the_block_is_larger_than_every_map(hook_log, block_size, warned):
    model = _Net()
    for module in model.dropblocks.values():
        module.block_size = block_size
    trainer, _ = _trainer(model)
    trainer.train(0, 3)  # the maps are 8x8
    warnings = hook_log.messages("WARNING")
    if warned:
        (warning,) = warnings
        assert f"MODEL.DROPBLOCK.BLOCK_SIZE = {block_size}" in warning
        assert "res3 8x8" in warning and "head 8x8" in warning
    else:
        assert warnings == []
