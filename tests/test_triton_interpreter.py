"""The Triton backend on CPU tensors, through Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when it decorates the kernels, so the cases run in a pytest
subprocess that sets it before anything imports them; in the main test session this file holds
one test, which runs that subprocess and fails with its output when any case fails. The cases
compare the kernels with a NumPy replay of Triton's Philox stream (bit-identical masks, exact
counts and factors), check the kept fraction against its variance, the gradient, the dtypes and
the fallbacks. The interpreter runs a kernel's scans element by element: shapes stay small.
"""

import math
import os

import numpy as np
import pytest
import torch
from helpers import run_tool, seeded_generator

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the subprocess itself")
def test_triton_backend_cases_pass_under_the_interpreter():
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    command += ["-k", "not cases_pass_under_the_interpreter"]
    done = run_tool(command, env={"TRITON_INTERPRET": "1"}, timeout=600)
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


cases = pytest.mark.skipif(not INTERPRETED, reason="runs in the interpreter subprocess above")

# ----------------------------------------------------------------------------------------------
# NumPy replay of Triton's Philox 4x32-10 (triton/language/random.py) and of the seed layout.

_KEY_A, _KEY_B = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_LOW = np.uint64(0xFFFFFFFF)


def _philox(seed: int, offsets: np.ndarray) -> np.ndarray:
    """tl.randint4x: the four output words for counter (offset lo, offset hi, 0, 0), key seed."""
    offsets = offsets.astype(np.uint64)
    c0, c1 = offsets & _LOW, offsets >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    for _ in range(10):
        prev0, prev2 = c0, c2
        c0 = ((_ROUND_B * prev2) >> np.uint64(32)) ^ c1 ^ k0
        c2 = ((_ROUND_A * prev0) >> np.uint64(32)) ^ c3 ^ k1
        c1 = (_ROUND_B * prev2) & _LOW
        c3 = (_ROUND_A * prev0) & _LOW
        k0, k1 = (k0 + _KEY_A) & _LOW, (k1 + _KEY_B) & _LOW
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _threshold(gamma) -> np.uint64:
    """The kernel's seed threshold: a 32-bit word below it is a seed."""
    return np.uint64(min(np.floor(np.float64(np.float32(gamma)) * 2.0**32), 2.0**32 - 1))


def _reference_seeds(seed, gamma, planes, corners_h, corners_w):
    """(planes, Hc, Wc) bool: corner word k of plane p from calls 8 (p * SW + k) .. + 7."""
    words = (corners_h * corners_w + 31) // 32
    draws = _philox(seed, np.arange(planes * words * 8, dtype=np.int64))
    draws = draws.reshape(planes, words * 32)[:, : corners_h * corners_w]
    return (draws.astype(np.uint64) < _threshold(gamma)).reshape(planes, corners_h, corners_w)


def _reference_kept(seed, gamma, planes, height, width, block_h, block_w):
    """(planes, H, W) bool: the units the mask kernel keeps for this seed and float32 gamma."""
    corners_h, corners_w = height - block_h + 1, width - block_w + 1
    seeds = _reference_seeds(seed, gamma, planes, corners_h, corners_w)
    dropped = np.zeros((planes, height, width), dtype=bool)
    for di in range(block_h):
        for dj in range(block_w):
            dropped[:, di : di + corners_h, dj : dj + corners_w] |= seeds
    return ~dropped


if INTERPRETED:
    from dropblock_det.layers import _triton as backend
    from dropblock_det.layers import drop_block_2d, seed_rate
    from dropblock_det.layers._backend import resolve_backend


def _unpack(mask: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(planes, H, W) bool from the kernel's (planes, words) int32 flat bit strings."""
    bits = np.unpackbits(mask.numpy().view(np.uint8), axis=-1, bitorder="little")
    return bits[:, : height * width].reshape(-1, height, width).astype(bool)


def _kernel_mask(x, seed, gamma, block_h, block_w, mask_channels):
    seed_t = torch.tensor([seed], dtype=torch.int64)
    mask, counts = torch.ops.dropblock_det.triton_mask(
        x, seed_t, torch.tensor(gamma, dtype=torch.float32), block_h, block_w, mask_channels
    )
    return _unpack(mask, *x.shape[-2:]), counts


# ----------------------------------------------------------------------------------------------
# Mask: bit-identical to the Philox replay, whatever the tiling.


@cases
@pytest.mark.parametrize(
    "shape,block,mask_channels,seed",
    [
        ((2, 3, 13, 21), (5, 5), 3, 7),  # per channel
        ((3, 2, 9, 11), (4, 4), 1, 2**40 + 3),  # shared, even block, seed past 32 bits
        ((1, 2, 6, 17), (6, 7), 2, 11),  # block as tall as the map
        ((2, 1, 1, 1), (1, 1), 1, 5),  # 1x1 map
        ((1, 2, 5, 40), (5, 7), 2, 3),  # H != W, block clipped to H
    ],
)
def test_mask_is_the_philox_replay(shape, block, mask_channels, seed):
    x = torch.ones(shape)
    batch, _, height, width = shape
    block_h, block_w = block
    kept, counts = _kernel_mask(x, seed, 0.3, block_h, block_w, mask_channels)
    reference = _reference_kept(seed, 0.3, batch * mask_channels, height, width, block_h, block_w)
    assert np.array_equal(kept, reference)
    per_sample = reference.reshape(batch, -1).sum(1)
    assert counts.tolist() == per_sample.tolist()


@cases
def test_mask_does_not_depend_on_how_planes_are_split_among_programs(monkeypatch):
    x = torch.ones(2, 8, 23, 9)
    whole, whole_counts = _kernel_mask(x, 9, 0.2, 3, 3, 8)
    # Many planes per program, each program's words in several chunks.
    monkeypatch.setattr(backend, "_MIN_PROGRAMS", 1)
    monkeypatch.setattr(backend, "_MASK_BLOCK", 32)
    assert backend.mask_launch(2, 8, 23, 9, 3, 3)[1] == 8
    split, split_counts = _kernel_mask(x, 9, 0.2, 3, 3, 8)
    assert np.array_equal(whole, split) and torch.equal(whole_counts, split_counts)
    assert np.array_equal(whole, _reference_kept(9, 0.2, 16, 23, 9, 3, 3))


@cases
def test_the_seed_rate_is_gamma_to_32_bits():
    # Corners are seeds exactly when their Philox word is below floor(gamma * 2**32).
    x = torch.ones(1, 4, 30, 30)
    kept, _ = _kernel_mask(x, 21, 0.0, 1, 1, 4)
    assert kept.all()
    draws = _philox(21, np.arange(4 * 29 * 8)).reshape(4, -1)[:, :900].reshape(4, 30, 30)
    gamma = float(np.float32(0.25))
    kept, _ = _kernel_mask(x, 21, gamma, 1, 1, 4)
    assert np.array_equal(~kept, draws.astype(np.uint64) < np.uint64(gamma * 2**32))


@cases
def test_more_than_65535_planes_launch_on_grid_axis_0(monkeypatch):
    # CUDA caps grid axes 1 and 2 at 65535; both kernels put planes on axis 0 (up to 2**31 - 1).
    for mask_channels in (2048, 1):  # per-channel and shared masks
        grid, per_program, _, _ = backend.mask_launch(33, mask_channels, 80, 80, 7, 7)
        assert len(grid) == 1 and grid[0] * per_program >= 33 * mask_channels
    grid, per_program, *_ = backend.apply_launch(33, 2048, 6400)
    assert len(grid) == 1 and grid[0] * per_program >= 33 * 2048 > 65535
    # The mask kernel run on 67584 tiny planes; few programs of one wide chunk each keep the
    # interpreter quick.
    monkeypatch.setattr(backend, "_MIN_PROGRAMS", 1)
    monkeypatch.setattr(backend, "_MASK_WORDS_PER_PROGRAM", 2048)
    monkeypatch.setattr(backend, "_MASK_BLOCK", 2048)
    x = torch.ones(33, 2048, 1, 32)
    kept, counts = _kernel_mask(x, 5, 0.3, 1, 2, 2048)
    reference = _reference_kept(5, 0.3, 33 * 2048, 1, 32, 1, 2)
    assert np.array_equal(kept, reference)
    assert counts.tolist() == reference.reshape(33, -1).sum(1).tolist()


@cases
def test_planes_past_int32_elements_are_served_and_planes_past_int32_units_are_not():
    # Offsets of a plane's start are int64 in the kernels; inside a plane they are int32.
    many_planes = torch.ones(1, 1, 1, 1).expand(1, 40000, 300, 300)
    assert many_planes.numel() > 2**31
    assert resolve_backend("triton", many_planes, 7, False) == "triton"
    huge_plane = torch.ones(1, 1, 1, 1).expand(1, 1, 50000, 50000)
    assert resolve_backend("triton", huge_plane, 7, False) == "dense"


# ----------------------------------------------------------------------------------------------
# Through drop_block_2d: factors, gradients, rates, dtypes, fallbacks.


def _seed_of(generator_seed):
    """The Philox seed drop_block_2d draws from a generator seeded with ``generator_seed``."""
    generator = seeded_generator(generator_seed)
    return int(torch.randint(2**62, (1,), dtype=torch.int64, generator=generator))


@cases
@pytest.mark.parametrize("normalize", ["batch", "sample", "expected"])
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("gamma", ["paper", "exact"])
# Apply per plane (154 units: no multiple of 8), and flat: programs of 4 planes of 160 units in
# blocks of 256 that straddle the planes.
@pytest.mark.parametrize("shape,flat", [((3, 2, 11, 14), False), ((2, 4, 10, 16), True)])
def test_output_is_input_times_replayed_mask_times_exact_factor(
    normalize, share_channels, gamma, shape, flat, monkeypatch
):
    batch, channels, height, width = shape
    monkeypatch.setattr(backend, "_MIN_PROGRAMS", 1)
    _, per_program, block, _, is_flat = backend.apply_launch(batch, channels, height * width)
    assert is_flat == flat and (not flat or per_program * height * width > block)
    x = torch.rand(batch, channels, height, width, generator=seeded_generator(1))
    x = (x + 0.5).requires_grad_()
    keep_prob, block = 0.7, 5
    out = drop_block_2d(
        x,
        keep_prob,
        block,
        share_channels=share_channels,
        gamma=gamma,
        normalize=normalize,
        generator=seeded_generator(4),
        backend="triton",
    )
    mask_channels = 1 if share_channels else channels
    rate = np.float32(seed_rate(height, width, block, keep_prob, gamma))
    kept = _reference_kept(_seed_of(4), rate, batch * mask_channels, height, width, block, block)
    kept = kept.reshape(batch, mask_channels, height, width)
    units = mask_channels * height * width
    if normalize == "expected":
        factors = [np.float32(1.0 / np.float32(keep_prob))] * batch
    elif normalize == "sample":
        factors = [np.float32(units / kept[n].sum()) for n in range(batch)]
    else:
        factors = [np.float32(batch * units / kept.sum())] * batch
    expected = (
        np.broadcast_to(kept, x.shape) * np.array(factors, dtype=np.float32)[:, None, None, None]
    )
    expected = torch.from_numpy(np.ascontiguousarray(expected))
    assert 0 < kept.mean() < 1
    assert torch.equal(out.detach(), x.detach() * expected)
    grad = torch.randn(x.shape, generator=seeded_generator(2))
    out.backward(grad)
    assert torch.equal(x.grad, grad * expected)


@cases
def test_gradcheck_on_a_fixed_mask():
    # The op is linear in x for a fixed mask; float32 with a loose tolerance (no float64 kernel).
    x = torch.rand(2, 2, 7, 9, dtype=torch.float32) + 0.5
    seed = torch.tensor([3], dtype=torch.int64)
    mask, counts = torch.ops.dropblock_det.triton_mask(x, seed, torch.tensor(0.2), 3, 3, 2)
    keep_prob = torch.tensor(0.8)

    def apply(inp):
        return torch.ops.dropblock_det.triton_apply(inp, mask, counts, keep_prob, 0)

    assert torch.autograd.gradcheck(
        apply, (x.requires_grad_(),), eps=1e-2, atol=1e-3, rtol=1e-3, fast_mode=True
    )


@cases
@pytest.mark.parametrize("gamma", ["paper", "exact"])
def test_kept_fraction_is_within_the_variance_of_the_target(gamma):
    # Block 3, keep_prob 0.8 on 12x12 maps. Per map, the dropped fraction's sd follows from the
    # unit covariances (the analytic model of tests/test_drop_block.py); the mean of M independent
    # maps lies within 5 sd / sqrt(M) of its expectation. The kernel runs 16 maps (the
    # interpreter is slow); its Philox stream, replayed in NumPy (bit-identical, tested above),
    # runs 4096 for a 16x tighter bound.
    from test_drop_block import _mean_and_sd

    size, keep_prob, block = 12, 0.8, 3
    rate = seed_rate(size, size, block, keep_prob, gamma)
    mean, sd = _mean_and_sd(size, size, block, rate)
    generator = seeded_generator(0)
    out = drop_block_2d(
        torch.ones(1, 16, size, size),
        keep_prob,
        block,
        gamma=gamma,
        generator=generator,
        backend="triton",
    )
    assert abs(float((out == 0).float().mean()) - mean) < 5.0 * sd / math.sqrt(16)
    replayed = _reference_kept(_seed_of(1), np.float32(rate), 4096, size, size, block, block)
    assert abs((1 - replayed.mean()) - mean) < 5.0 * sd / math.sqrt(4096)
    if gamma == "exact":
        assert mean == pytest.approx(1 - keep_prob, abs=1e-9)


@cases
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_are_the_float32_product_rounded_once(dtype):
    x32 = torch.rand(2, 3, 9, 10, generator=seeded_generator(0)) * 1000
    x = x32.to(dtype)
    kwargs = dict(normalize="sample", backend="triton")
    out = drop_block_2d(x, 0.6, 3, generator=seeded_generator(5), **kwargs)
    ones = torch.ones(x.shape)
    factor = drop_block_2d(ones, 0.6, 3, generator=seeded_generator(5), **kwargs)
    assert out.dtype == dtype and (factor == 0).any()
    reference = (x.float() * factor).to(dtype)
    if dtype == torch.float16:
        assert torch.equal(out, reference)
    else:
        # The interpreter converts float32 to bfloat16 by truncation (NumPy has no bfloat16; the
        # GPU rounds to nearest, checked in tests/test_cuda_dropblock.py): within one ulp here.
        assert torch.allclose(out.float(), reference.float(), rtol=torch.finfo(dtype).eps, atol=0)


@cases
def test_float16_products_past_the_range_overflow_and_the_rest_stay_exact():
    # keep_prob 0.5, "expected": factor 2. 60000 * 2 is past float16's range, 30000 * 2 is not.
    x = torch.full((1, 2, 16, 16), 30000.0, dtype=torch.float16)
    x[:, :, :, ::2] = 60000.0
    kwargs = dict(normalize="expected", backend="triton")
    out = drop_block_2d(x, 0.5, 3, generator=seeded_generator(0), **kwargs)
    kept = out != 0
    assert kept.any() and not torch.isnan(out).any()
    assert torch.isinf(out[kept & (x == 60000)]).all()
    assert torch.equal(out[kept & (x == 30000)], torch.full_like(out[kept & (x == 30000)], 60000))


@cases
def test_everything_dropped_gives_zeros_and_empty_batches_pass_through():
    x = torch.ones(2, 2, 4, 4)
    out = drop_block_2d(x, 1e-6, 4, backend="triton", generator=seeded_generator(0))
    assert torch.equal(out, torch.zeros_like(x))
    empty = torch.ones(0, 3, 5, 5)
    assert drop_block_2d(empty, 0.5, 3, backend="triton") is empty


@cases
def test_float64_and_too_wide_blocks_fall_back_to_the_dense_path():
    assert resolve_backend("triton", torch.ones(1, 1, 8, 8), 3, False) == "triton"
    assert (
        resolve_backend("triton", torch.ones(1, 1, 8, 8, dtype=torch.float64), 3, False) == "dense"
    )
    assert resolve_backend("triton", torch.ones(1, 1, 4, 1 << 17), 3, False) == "triton"
    wide = torch.ones(1, 1, 40, 40)
    assert resolve_backend("triton", wide, 33, False, block_w=33) == "triton"
    assert resolve_backend("triton", wide, 34, False, block_w=34) == "dense"
    # 64 maps of 7 x 7 corners at gamma ~0.0085: some block drops (P(none) ~ 1e-11).
    wide = torch.ones(16, 4, 40, 40)
    out = drop_block_2d(wide, 0.7, 34, backend="triton", generator=torch.Generator().manual_seed(0))
    assert (out == 0).any()
    out = drop_block_2d(torch.ones(2, 2, 8, 8, dtype=torch.float64), 0.7, 3, backend="triton")
    assert out.dtype == torch.float64 and (out == 0).any()


@cases
def test_same_generator_state_gives_the_same_result():
    x = torch.rand(2, 2, 10, 12)
    first = drop_block_2d(x, 0.7, 3, backend="triton", generator=seeded_generator(3))
    again = drop_block_2d(x, 0.7, 3, backend="triton", generator=seeded_generator(3))
    torch.manual_seed(8)
    default = drop_block_2d(x, 0.7, 3, backend="triton")
    torch.manual_seed(8)
    assert torch.equal(first, again) and torch.equal(
        default, drop_block_2d(x, 0.7, 3, backend="triton")
    )


@cases
def test_module_runs_the_triton_backend_with_a_shared_keep_prob():
    from dropblock_det.layers import DropBlock2d, share_keep_prob

    modules = [DropBlock2d(0.9, 3, backend="triton") for _ in range(2)]
    keep_prob = share_keep_prob(modules)
    keep_prob.fill(0.6)
    x = torch.ones(2, 3, 9, 9)
    torch.manual_seed(0)
    out = modules[1](x)
    torch.manual_seed(0)
    assert torch.equal(out, drop_block_2d(x, 0.6, 3, backend="triton"))


@cases
def test_a_device_keep_prob_is_read_at_every_call_so_a_captured_graph_follows_fill():
    # The launches of a tensor keep_prob take only tensors (seed rate, keep_prob) and the shape:
    # a CUDA graph that captured them computes with the values the tensors hold at replay.
    from dropblock_det.layers import KeepProb
    from dropblock_det.layers._triton import drop_block_triton

    cell = KeepProb(torch.tensor(0.9), 0.9)
    x = torch.ones(2, 8, 16, 16)

    def call():
        generator = torch.Generator().manual_seed(0)
        return drop_block_triton(x, cell.tensor, 3, 3, False, "exact", "batch", generator)

    first = call()
    cell.fill(0.5)
    second = call()
    cell.fill(1.0)
    third = call()
    # Exact gamma: the dropped fraction's expectation is 1 - keep_prob; 2048 units, block 3.
    assert 0.0 < float((first == 0).float().mean()) < 0.2
    assert 0.35 < float((second == 0).float().mean()) < 0.65
    assert torch.equal(third, x)


@cases
def test_a_module_follows_fill_through_its_keep_prob_tensor():
    from dropblock_det.layers import DropBlock2d

    module = DropBlock2d(0.9, 3, gamma="exact", backend="triton")
    x = torch.ones(2, 8, 16, 16)
    module.keep_prob = 0.5
    torch.manual_seed(1)
    out = module(x)
    torch.manual_seed(1)
    assert torch.equal(out, drop_block_2d(x, 0.5, 3, gamma="exact", backend="triton"))


@cases
def test_channels_last_input_gives_the_values_of_the_contiguous_one():
    # The kernels index NCHW planes: a channels_last x is copied to NCHW first (one more read and
    # write of x and of dy), and the result is NCHW.
    x = torch.rand(2, 4, 9, 10, generator=torch.Generator().manual_seed(0)).requires_grad_()
    strided = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    kwargs = dict(backend="triton", normalize="sample")
    out = drop_block_2d(x, 0.7, 3, generator=torch.Generator().manual_seed(2), **kwargs)
    out_cl = drop_block_2d(strided, 0.7, 3, generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.equal(out, out_cl)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    out_cl.backward(grad.to(memory_format=torch.channels_last))
    assert torch.equal(x.grad, strided.grad)


@cases
def test_output_does_not_depend_on_how_planes_are_split_among_apply_programs(monkeypatch):
    x = torch.rand(2, 8, 12, 20, generator=torch.Generator().manual_seed(0))
    kwargs = dict(backend="triton", normalize="sample")
    whole = drop_block_2d(x, 0.7, 3, generator=torch.Generator().manual_seed(4), **kwargs)
    monkeypatch.setattr(backend, "_MIN_PROGRAMS", 1)
    assert backend.apply_launch(2, 8, 240)[1] == 8
    split = drop_block_2d(x, 0.7, 3, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(whole, split)
