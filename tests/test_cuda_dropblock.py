"""DropBlock on a CUDA GPU: no host sync, torch.compile, CUDA graphs, the Triton kernels.

Every test here needs a GPU and is skipped without one (CI has none; benchmarks/gpu_check.sh runs
this file on a GPU machine). The Triton kernels' logic is also checked without a GPU, under
Triton's interpreter, in tests/test_triton_interpreter.py.
"""

import math

import numpy as np
import pytest
import torch
from helpers import seeded_generator
from torch import nn

from dropblock_det.layers import DropBlock2d, drop_block_2d, seed_rate, share_keep_prob
from dropblock_det.layers._backend import resolve_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_BACKENDS = ["dense", "triton"]


class _DropBlockNet(nn.Module):
    """Conv-BN-ReLU-DropBlock blocks in three groups of four, like res3-res5 in-block placement."""

    def __init__(self, backend, **dropblock_kwargs):
        super().__init__()
        layers, self.groups = [], {"res3": [], "res4": [], "res5": []}
        channels = 8
        for group in self.groups:
            for _ in range(4):
                dropblock = DropBlock2d(0.9, 3, backend=backend, **dropblock_kwargs)
                layers += [nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
                layers.append(dropblock)
                self.groups[group].append(dropblock)
                channels = 16
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gamma": "exact", "normalize": "sample"},
        {"share_channels": True, "normalize": "expected"},
    ],
)
def test_training_steps_with_a_changing_keep_prob_never_sync_with_the_host(backend, kwargs):
    model = _DropBlockNet(backend, **kwargs).cuda().train()
    groups = {name: share_keep_prob(modules) for name, modules in model.groups.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, 8, 64, 48, device="cuda")

    def step(keep_prob, amp):
        # What the schedule hook does: one fill per group before the step, back to 1 after it.
        for scale, keep in zip((0.25, 0.5, 1.0), groups.values(), strict=False):
            keep.fill(1.0 - (1.0 - keep_prob) * scale)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = model(x).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for keep in groups.values():
            keep.fill(1.0)

    step(0.9, amp=False)  # kernels compiled and caches filled before the sync check
    step(0.9, amp=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for keep_prob in (0.95, 0.9, 0.8):
            step(keep_prob, amp=False)
            step(keep_prob, amp=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def _paper_backbone(device):
    """R50-FPN backbone of the paper config, DropBlock in every res3-res5 bottleneck (52)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from dropblock_det import add_dropblock_config
    from dropblock_det.tools.config import add_training_config

    cfg = get_cfg()
    add_dropblock_config(cfg)
    add_training_config(cfg)  # the paper config sets INPUT.SCALE_JITTER
    cfg.merge_from_file("configs/COCO-Paper/Base-RetinaNet-Paper.yaml")
    cfg.MODEL.DROPBLOCK.ENABLED = True
    cfg.MODEL.DROPBLOCK.STAGES = ["res3", "res4", "res5"]
    cfg.MODEL.DROPBLOCK.PLACEMENT = "block"
    cfg.MODEL.DEVICE = device
    return build_backbone(cfg).to(device).train()


def _run_scheduled_steps(backbone, device, iterations, sync_check):
    """Steps as the trainer runs them: the schedule hook's before_step, forward, backward, after."""
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    from dropblock_det import DropBlockSchedule

    hook = DropBlockSchedule(keep_prob=0.9, stages=["res3", "res4", "res5"], model=backbone)
    hook.trainer = SimpleNamespace(iter=0, max_iter=iterations, storage=EventStorage(0))
    x = torch.randn(2, 3, 256, 256, device=device)
    with hook.trainer.storage:
        hook.before_train()
        for iteration in range(iterations):
            hook.trainer.iter = iteration
            if iteration == 1 and sync_check:  # after one step: kernels compiled, caches full
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                hook.before_step()
                sum(feature.float().mean() for feature in backbone(x).values()).backward()
                hook.after_step()
            finally:
                if sync_check:
                    torch.cuda.set_sync_debug_mode("default")
    return hook


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_the_paper_backbone_steps_with_the_schedule_hook_never_sync(backend):
    backbone = _paper_backbone("cuda")
    dropblocks = [m for m in backbone.modules() if isinstance(m, DropBlock2d)]
    assert len(dropblocks) == 52
    for module in dropblocks:
        module.backend = backend
    _run_scheduled_steps(backbone, "cuda", iterations=4, sync_check=True)
    assert all(m.keep_prob == 1.0 for m in dropblocks)  # after_step switched DropBlock off


def test_triton_masks_are_the_philox_replay_on_the_gpu():
    from test_triton_interpreter import _reference_kept, _unpack

    x = torch.ones(2, 3, 37, 53, device="cuda")
    seed = torch.tensor([12345], dtype=torch.int64, device="cuda")
    gamma = torch.tensor(0.05, device="cuda")
    mask, counts = torch.ops.dropblock_det.triton_mask(x, seed, gamma, 7, 7, 3)
    kept = _unpack(mask.cpu(), 37, 53)
    reference = _reference_kept(12345, np.float32(0.05), 6, 37, 53, 7, 7)
    assert np.array_equal(kept, reference)
    assert counts.cpu().tolist() == reference.reshape(2, -1).sum(1).tolist()


@pytest.mark.parametrize("gamma", ["paper", "exact"])
@pytest.mark.parametrize("share_channels", [False, True])
def test_triton_drop_rate_matches_the_analytic_expectation(gamma, share_channels):
    from test_drop_block import _mean_and_sd

    height, width, block, keep_prob, maps = 25, 42, 7, 0.9, 4096
    x = torch.ones(maps, 1, height, width, device="cuda")
    out = drop_block_2d(
        x, keep_prob, block, gamma=gamma, share_channels=share_channels, backend="triton"
    )
    mean, sd = _mean_and_sd(height, width, block, seed_rate(height, width, block, keep_prob, gamma))
    assert abs(float((out == 0).float().mean()) - mean) < 5.0 * sd / math.sqrt(maps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_half_dtypes_are_the_float32_product_rounded_once(dtype, backend):
    x32 = torch.rand(2, 16, 40, 52, device="cuda") * 3e4
    x = x32.to(dtype).requires_grad_()
    kwargs = dict(normalize="sample", backend=backend)
    out = drop_block_2d(x, 0.6, 5, generator=seeded_generator(3, "cuda"), **kwargs)
    ones = torch.ones(x.shape, device="cuda")
    factor = drop_block_2d(ones, 0.6, 5, generator=seeded_generator(3, "cuda"), **kwargs)
    assert out.dtype == dtype and (factor == 0).any()
    assert torch.equal(out, (x.detach().float() * factor).to(dtype))
    grad = torch.randn(x.shape, device="cuda").to(dtype)
    out.backward(grad)
    assert torch.equal(x.grad, (grad.float() * factor).to(dtype))


def test_triton_serves_cuda_and_falls_back_for_float64():
    assert resolve_backend("triton", torch.ones(1, 1, 8, 8, device="cuda"), 3, False) == "triton"
    x = torch.ones(2, 2, 8, 8, device="cuda", dtype=torch.float64)
    assert resolve_backend("triton", x, 3, False) == "dense"
    assert drop_block_2d(x, 0.7, 3, backend="triton").dtype == torch.float64


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compiled_module_takes_a_new_keep_prob_without_recompiling(backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = DropBlock2d(0.9, 5, gamma="exact", backend=backend).cuda().train()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    x = torch.ones(64, 8, 25, 42, device="cuda", requires_grad=True)
    rates = []
    for keep_prob in (0.9, 0.8, 0.7):
        module.keep_prob = keep_prob
        out = compiled(x)
        out.sum().backward()
        rates.append(float((out == 0).float().mean()))
        assert torch.equal(x.grad, out.detach())  # ones in: the gradient is mask x factor
        x.grad = None
    assert counter.frame_count == 1
    # 512 maps; a map's dropped fraction has sd < 0.5, so 5 sd of the mean is < 0.11.
    assert all(
        abs(rate - (1 - kp)) < 5 * 0.5 / math.sqrt(512)
        for rate, kp in zip(rates, (0.9, 0.8, 0.7), strict=False)
    )
    assert rates == sorted(rates)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_forward_and_backward_can_be_captured_in_a_cuda_graph(backend):
    module = DropBlock2d(0.8, 5, backend=backend).cuda().train()
    x = torch.ones(4, 8, 25, 42, device="cuda", requires_grad=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as CUDA graphs require
        for _ in range(2):
            module(x).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(x)
        out.sum().backward()
    masks = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        masks.append((out == 0).clone())
        assert torch.equal(x.grad, out)  # ones in: the gradient is the applied mask x factor
    # Each replay draws a new mask (the generator's offset advances), at the target rate.
    assert not torch.equal(masks[0], masks[1])
    assert all(abs(float(m.float().mean()) - 0.2) < 0.1 for m in masks)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_captured_cuda_graph_follows_the_schedules_fill_on_replay(backend):
    # During capture the module passes its keep_prob tensor: replays read the filled value.
    module = DropBlock2d(0.9, 5, gamma="exact", backend=backend).cuda().train()
    x = torch.ones(8, 16, 40, 40, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            module(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(x)
    rates = {}
    for keep_prob in (0.9, 0.5, 1.0):
        module.keep_prob = keep_prob
        graph.replay()
        torch.cuda.synchronize()
        rates[keep_prob] = float((out == 0).float().mean())
    # 204800 units in maps of 40 x 40, block 5: the dropped fraction's sd is well under 0.01.
    assert abs(rates[0.9] - 0.1) < 0.03 and abs(rates[0.5] - 0.5) < 0.05
    assert rates[1.0] == 0.0 and torch.equal(out, x)
