"""Backend choice and the dense backend's semantics on CPU; keep_prob shared by a group.

tests/test_drop_block.py checks the semantics through backend "auto" (the sparse path on CPU);
here the dense path (CUDA's "auto") gets the same checks on CPU, and the Triton backend's
fallback. The Triton kernels themselves are tested in tests/test_triton_interpreter.py.
"""

import copy
import math
import pickle

import pytest
import torch
from helpers import seeded_generator
from test_drop_block import _assert_block_geometry, _mean_and_sd
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import dropblock_det
from dropblock_det.layers import (
    AUTO_BACKEND,
    BACKENDS,
    GAMMA_MODES,
    NORMALIZE_MODES,
    DropBlock2d,
    KeepProb,
    auto_backend,
    drop_block_2d,
    seed_rate,
    share_keep_prob,
)
from dropblock_det.layers._backend import resolve_backend

# ----------------------------------------------------------------------------------------------
# Backends: the constants, "auto", the fallbacks.


def test_constants_and_names_are_importable_from_the_package():
    assert BACKENDS == ("auto", "sparse", "dense", "triton")
    assert GAMMA_MODES == ("paper", "exact") and NORMALIZE_MODES == ("batch", "sample", "expected")
    assert dropblock_det.DropBlock2d is DropBlock2d and dropblock_det.drop_block_2d is drop_block_2d


def test_auto_is_sparse_on_cpu_and_triton_on_cuda():
    assert AUTO_BACKEND == {"cpu": "sparse", "cuda": "triton"}
    assert auto_backend(torch.device("cpu")) == "sparse"
    assert auto_backend(torch.device("cuda")) == "triton"
    assert auto_backend(torch.device("meta")) == "dense"  # no host bookkeeping elsewhere
    assert resolve_backend("auto", torch.ones(1, 1, 5, 5), 3, False) == "sparse"


def test_triton_outside_cuda_and_the_interpreter_falls_back_to_dense():
    x = torch.ones(2, 3, 9, 9)
    assert resolve_backend("triton", x, 3, False) == "dense"
    out = drop_block_2d(x, 0.7, 3, backend="triton", generator=seeded_generator(0))
    dense = drop_block_2d(x, 0.7, 3, backend="dense", generator=seeded_generator(0))
    assert torch.equal(out, dense)


def test_unknown_backend_raises_naming_it():
    with pytest.raises(ValueError, match="backend"):
        drop_block_2d(torch.ones(1, 1, 4, 4), 0.9, 3, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        DropBlock2d(backend="fast")
    assert "backend='dense'" in repr(DropBlock2d(backend="dense"))


def test_sparse_inside_a_compiled_graph_runs_dense_without_graph_breaks():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()

    @torch.compile(backend=counter, fullgraph=True)
    def run(x, keep_prob):
        return drop_block_2d(x, keep_prob, 3, backend="sparse")

    out = run(torch.ones(8, 4, 11, 13), torch.tensor(0.8))
    assert counter.frame_count == 1 and (out == 0).any()
    _assert_block_geometry(out == 0, 3)


# ----------------------------------------------------------------------------------------------
# The dense backend: the semantics of every backend.


@pytest.mark.parametrize("gamma", ["paper", "exact"])
@pytest.mark.parametrize("shape,block", [((256, 1, 13, 21), 7), ((256, 1, 12, 20), 4)])
def test_dense_drop_rate_matches_the_analytic_expectation(gamma, shape, block):
    maps, _, height, width = shape
    out = drop_block_2d(torch.ones(shape), 0.8, block, gamma=gamma, backend="dense")
    mean, sd = _mean_and_sd(height, width, block, seed_rate(height, width, block, 0.8, gamma))
    assert abs(float((out == 0).float().mean()) - mean) < 5.0 * sd / math.sqrt(maps)


@pytest.mark.parametrize(
    "shape,block,share_channels",
    [((2, 3, 9, 14), 4, False), ((2, 3, 5, 40), 7, True), ((3, 2, 1, 1), 3, False)],
)
def test_dense_blocks_are_whole_and_inside_the_map(shape, block, share_channels):
    out = drop_block_2d(
        torch.ones(shape), 0.5, block, share_channels=share_channels, backend="dense"
    )
    _assert_block_geometry(out == 0, block)
    if share_channels:
        assert torch.equal(out == 0, (out[:, :1] == 0).expand_as(out))


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected"])
@pytest.mark.parametrize("share_channels", [False, True])
def test_dense_factors_are_exact_and_gradient_is_mask_times_factor(normalize, share_channels):
    x = (torch.rand(3, 4, 11, 17, generator=seeded_generator(1)) + 0.5).requires_grad_()
    out = drop_block_2d(
        x,
        0.7,
        5,
        normalize=normalize,
        share_channels=share_channels,
        generator=seeded_generator(2),
        backend="dense",
    )
    mask = torch.ones_like(x)
    mask = drop_block_2d(
        mask,
        0.7,
        5,
        normalize=normalize,
        share_channels=share_channels,
        generator=seeded_generator(2),
        backend="dense",
    )
    kept = mask != 0
    if normalize == "expected":
        expected = torch.full((3,), 1 / 0.7)
    elif normalize == "sample":
        expected = kept[0].numel() / kept.flatten(1).sum(1).double()
    else:
        expected = torch.full((3,), kept.numel() / kept.sum().double())
    factors = torch.stack([mask[n][kept[n]].unique() for n in range(3)]).flatten()
    assert torch.equal(factors, expected.float())
    grad = torch.randn(x.shape, generator=seeded_generator(3))
    out.backward(grad)
    assert torch.equal(x.grad, grad * mask) and torch.equal(out.detach(), x.detach() * mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dense_keeps_the_dtype_and_rounds_the_float32_product_once(dtype):
    x = (torch.rand(2, 3, 9, 10, generator=seeded_generator(0)) * 3e4).to(dtype)
    out = drop_block_2d(x, 0.6, 3, generator=seeded_generator(5), backend="dense")
    ones = torch.ones(x.shape)
    factor = drop_block_2d(ones, 0.6, 3, generator=seeded_generator(5), backend="dense")
    assert out.dtype == dtype
    if dtype != torch.float64:
        assert torch.equal(out, (x.float() * factor).to(dtype))


@pytest.mark.parametrize("share_channels", [False, True])
def test_dense_autograd_saves_a_byte_a_unit_not_a_float32_mask(share_channels):
    x = (torch.rand(2, 8, 9, 10) + 0.5).half().requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = drop_block_2d(x, 0.6, 3, share_channels=share_channels, backend="dense")
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    if share_channels:
        # One float32 keep x factor map per sample: 4 bytes a unit of one channel.
        assert saved_bytes == 4 * 2 * 9 * 10
    else:
        # The bool keep mask and one float32 factor for the batch.
        assert {t.dtype for t in saved} == {torch.bool, torch.float32}
        assert saved_bytes == x.numel() + 4
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad == 0, out == 0)


def test_dense_empty_batch_all_dropped_and_identity_cases():
    empty = torch.ones(0, 3, 5, 5)
    assert drop_block_2d(empty, 0.5, 3, backend="dense") is empty
    x = torch.ones(2, 2, 4, 4)
    assert drop_block_2d(x, 1.0, 3, backend="dense") is x
    out = drop_block_2d(x, 1e-6, 4, backend="dense")
    assert torch.equal(out, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# keep_prob shared by a group.


class _CountOps(TorchDispatchMode):
    """Counts the aten ops run inside it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_one_fill_sets_a_whole_group_with_one_op_whatever_its_size():
    for size in (2, 52):
        modules = [DropBlock2d(0.9, 3) for _ in range(size)]
        keep_prob = share_keep_prob(modules)
        assert isinstance(keep_prob, KeepProb)
        with _CountOps() as counter:
            keep_prob.fill(0.75)
        assert len(counter.ops) == 1  # one in-place fill, no copy, no read-back
        assert all(m.keep_prob == 0.75 for m in modules)
        assert all(m._keep_prob is keep_prob.tensor for m in modules)
        assert float(keep_prob.tensor) == 0.75 and keep_prob.value == 0.75


def test_a_module_setter_is_one_fill_and_reads_nothing_back():
    module = DropBlock2d(0.9, 3)
    with _CountOps() as counter:
        module.keep_prob = 0.5
        assert module.keep_prob == 0.5
    assert len(counter.ops) == 1


def test_group_value_drives_the_forward_of_every_member():
    modules = [DropBlock2d(0.9, 3) for _ in range(3)]
    keep_prob = share_keep_prob(modules)
    x = torch.ones(64, 2, 12, 12)
    keep_prob.fill(1.0)
    assert all(m(x) is x for m in modules)
    keep_prob.fill(0.5)
    torch.manual_seed(0)
    out = modules[2](x)
    torch.manual_seed(0)
    assert torch.equal(out, drop_block_2d(x, 0.5, 3))


def test_sharing_survives_dtype_and_device_moves_and_deepcopy():
    model = nn.Sequential(*[DropBlock2d(0.9, 3) for _ in range(3)])
    keep_prob = share_keep_prob(model)
    keep_prob.fill(0.8)
    model.to(torch.float16)
    tensors = {id(m._keep_prob) for m in model}
    assert len(tensors) == 1 and keep_prob.tensor.dtype == torch.float16
    held = float(torch.tensor(0.8, dtype=torch.float16))
    assert all(m.keep_prob == held for m in model)
    keep_prob.fill(0.6)
    assert all(m.keep_prob == float(torch.tensor(0.6, dtype=torch.float16)) for m in model)
    model.float()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert len({id(m._keep_prob) for m in twin}) == 1
        assert twin[0]._keep_prob_cell is twin[2]._keep_prob_cell is not keep_prob
        assert twin[1].keep_prob == float(torch.tensor(0.6, dtype=torch.float16))


def test_setting_one_member_gives_it_its_own_value_again():
    modules = [DropBlock2d(0.9, 3) for _ in range(3)]
    keep_prob = share_keep_prob(modules)
    modules[0].keep_prob = 0.4
    keep_prob.fill(0.7)
    assert modules[0].keep_prob == 0.4 and modules[1].keep_prob == modules[2].keep_prob == 0.7
    assert modules[0]._keep_prob is not keep_prob.tensor


def test_a_direct_write_to_the_shared_tensor_is_seen_by_every_member():
    # As a DDP buffer broadcast writes it.
    modules = [DropBlock2d(0.9, 3) for _ in range(2)]
    keep_prob = share_keep_prob(modules)
    with torch.no_grad():
        modules[0]._keep_prob.fill_(0.3)
    assert keep_prob.value == pytest.approx(0.3) and modules[1].keep_prob == pytest.approx(0.3)


def test_share_keep_prob_rejects_no_modules_and_mixed_dtypes():
    with pytest.raises(ValueError, match="at least one"):
        share_keep_prob([])
    with pytest.raises(ValueError, match="dtypes"):
        share_keep_prob([DropBlock2d(), DropBlock2d().half()])
    with pytest.raises(ValueError, match="keep_prob"):
        share_keep_prob([DropBlock2d()]).fill(1.5)


def test_compiled_group_takes_new_values_without_recompiling():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = nn.Sequential(DropBlock2d(0.9, 3, gamma="exact"), DropBlock2d(0.9, 3, gamma="exact"))
    keep_prob = share_keep_prob(model)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.ones(32, 4, 12, 12)
    rates = []
    for value in (0.9, 0.7, 0.5):
        keep_prob.fill(value)
        rates.append(float((compiled(x) == 0).float().mean()))
    assert counter.frame_count == 1
    # Two DropBlocks in a row drop 1 - kp**2 of the units; 128 maps, each with sd < 0.5.
    assert all(
        abs(r - (1 - v * v)) < 5 * 0.5 / math.sqrt(128)
        for r, v in zip(rates, (0.9, 0.7, 0.5), strict=False)
    )
