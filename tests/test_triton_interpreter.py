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
# NumPy replay of Triton's Philox 4x32-10 (triton/language/random.py) and of tl.rand.

_KEY_A, _KEY_B = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_LOW = np.uint64(0xFFFFFFFF)


def _philox_first_word(seed: int, offsets: np.ndarray) -> np.ndarray:
    """First output word of Philox for counter (offset, 0, 0, 0) and key (seed lo, seed hi)."""
    c0 = offsets.astype(np.uint64) & _LOW
    c1 = np.zeros_like(c0)
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
    return c0.astype(np.uint32)


def _uniform(words: np.ndarray) -> np.ndarray:
    """tl.rand's conversion of a 32-bit word to a float32 in [0, 1)."""
    signed = words.view(np.int32)
    signed = np.where(signed < 0, ~signed, signed)
    return signed.astype(np.float32) * np.float32(4.6566127342e-10)


def _reference_kept(seed, gamma, planes, height, width, block_h, block_w):
    """(planes, H, W) bool: the units the mask kernel keeps for this seed and float32 gamma."""
    corners_h, corners_w = height - block_h + 1, width - block_w + 1
    offsets = np.arange(planes * corners_h * corners_w, dtype=np.int64)
    seeds = (_uniform(_philox_first_word(seed, offsets)) < np.float32(gamma)).reshape(
        planes, corners_h, corners_w
    )
    dropped = np.zeros((planes, height, width), dtype=bool)
    for di in range(block_h):
        for dj in range(block_w):
            dropped[:, di : di + corners_h, dj : dj + corners_w] |= seeds
    return ~dropped


if INTERPRETED:
    from dropblock_det.layers import _triton as backend
    from dropblock_det.layers import drop_block_2d, seed_rate
    from dropblock_det.layers._backend import resolve_backend


def _unpack(mask: torch.Tensor, width: int) -> np.ndarray:
    return np.unpackbits(mask.numpy(), axis=-1, bitorder="little")[..., :width].astype(bool)


def _kernel_mask(x, seed, gamma, block_h, block_w, mask_channels):
    seed_t = torch.tensor([seed], dtype=torch.int64)
    mask, counts = torch.ops.dropblock_det.triton_mask(
        x, seed_t, torch.tensor(gamma, dtype=torch.float32), block_h, block_w, mask_channels
    )
    return _unpack(mask, x.shape[-1]), counts


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
def test_mask_does_not_depend_on_the_row_tiling(monkeypatch):
    # Small tiles put several row tiles (each with its bh - 1 halo rows) on one map.
    x = torch.ones(2, 2, 23, 9)
    whole, whole_counts = _kernel_mask(x, 9, 0.2, 3, 3, 2)
    monkeypatch.setattr(backend, "_TILE_UNITS", 64)
    assert backend._tile(23, 9, 3)[0] < 23
    tiled, tiled_counts = _kernel_mask(x, 9, 0.2, 3, 3, 2)
    assert np.array_equal(whole, tiled) and torch.equal(whole_counts, tiled_counts)
    assert np.array_equal(whole, _reference_kept(9, 0.2, 4, 23, 9, 3, 3))


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
def test_output_is_input_times_replayed_mask_times_exact_factor(normalize, share_channels, gamma):
    batch, channels, height, width = 3, 2, 11, 14
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
    inverse_keep = torch.tensor(1.25)

    def apply(inp):
        return torch.ops.dropblock_det.triton_apply(inp, mask, counts, inverse_keep, 0)

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
def test_float64_and_too_wide_maps_fall_back_to_the_dense_path():
    assert resolve_backend("triton", torch.ones(1, 1, 8, 8), 3, False) == "triton"
    assert (
        resolve_backend("triton", torch.ones(1, 1, 8, 8, dtype=torch.float64), 3, False) == "dense"
    )
    assert resolve_backend("triton", torch.ones(1, 1, 4, 1 << 17), 3, False) == "dense"
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
