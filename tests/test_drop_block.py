"""Tests of the DropBlock operator (dropblock_det.layers.drop_block).

Statistical tests compare measured drop rates with the analytic expectation of valid-corner
seeding, computed here independently of the operator (brute-force corner enumeration in NumPy).
Their tolerance is Z_TOL standard deviations of the measured mean, the standard deviation coming
from the exact covariance of the dropped indicators (see `_dropped_stats`); the seeds are fixed,
so a pass or a failure is reproducible, and Z_TOL = 5 keeps a correct operator's false-alarm
probability per check under 1e-6 should the seeds or the RNG ever change.
"""

import math

import numpy as np
import pytest
import torch
from helpers import seeded_generator
from torch import nn

from dropblock_det import DropBlock2d, drop_block_2d
from dropblock_det.layers import seed_rate
from dropblock_det.layers._seed_rate import seed_rate_tensor as _seed_rate_tensor

Z_TOL = 5.0
# Every behavioural test runs on CPU, and again on CUDA where a GPU is present (the sampling and
# the rescaling run as device code there; CI has no GPU, so those cases only run on GPU machines).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
# Maps of every statistical case (height, width, block): the list.
RATE_CASES = [(25, 42, 7), (13, 21, 7), (7, 7, 7), (14, 14, 7), (5, 40, 7), (12, 20, 4)]


# ----------------------------------------------------------------------------------------------
# Independent analytic model of valid-corner seeding.


def _axis_cover(size, block):
    """(corners, units) bool: corner a's block covers unit i (a <= i <= a + block - 1)."""
    corner = np.arange(size - block + 1)[:, None]
    unit = np.arange(size)[None, :]
    return (corner <= unit) & (unit <= corner + block - 1)


def _dropped_stats(height, width, block, gamma):
    """Per-unit drop probabilities and the covariance of the dropped indicators of one map.

    Unit u survives iff none of the K_u corners whose block covers it is a seed: probability
    (1 - gamma) ** K_u. Two units both survive iff none of the union of their corner sets is a
    seed; corner sets are rectangles, so |S_u & S_v| = (row overlap) * (column overlap).

    Returns:
        tuple(ndarray (H*W,), ndarray (H*W, H*W)): drop probabilities and covariance matrix.
    """
    rows = _axis_cover(height, min(block, height)).astype(float)
    cols = _axis_cover(width, min(block, width)).astype(float)
    covered_by = np.outer(rows.sum(0), cols.sum(0)).ravel()
    shared = np.kron(rows.T @ rows, cols.T @ cols)
    keep = (1.0 - gamma) ** covered_by
    both_kept = (1.0 - gamma) ** (covered_by[:, None] + covered_by[None, :] - shared)
    return 1.0 - keep, both_kept - np.outer(keep, keep)


def _drop_probabilities(height, width, block, gamma):
    """Per-unit drop probabilities only (cheap for large maps)."""
    rows = _axis_cover(height, min(block, height)).sum(0)
    cols = _axis_cover(width, min(block, width)).sum(0)
    return 1.0 - (1.0 - gamma) ** np.outer(rows, cols).astype(float)


def _paper_gamma(height, width, block, keep_prob):
    bh, bw = min(block, height), min(block, width)
    return (1 - keep_prob) * height * width / (bh * bw * (height - bh + 1) * (width - bw + 1))


def _mean_and_sd(height, width, block, gamma):
    """Expected dropped fraction of one map and its standard deviation."""
    prob, cov = _dropped_stats(height, width, block, gamma)
    return prob.mean(), math.sqrt(cov.sum()) / (height * width)


def _dropped_fraction(
    height, width, block, keep_prob, gamma_mode, num_maps, seed, device="cpu", **kwargs
):
    """Measured fraction of zeros over num_maps independent maps (chunks of <= 2**22 units)."""
    generator = seeded_generator(seed, device)
    maps_per_call = max(1, (1 << 22) // (height * width))
    zeros, done = 0, 0
    while done < num_maps:
        count = min(maps_per_call, num_maps - done)
        ones = torch.ones((), dtype=torch.float16, device=device).expand(count, 1, height, width)
        out = drop_block_2d(ones, keep_prob, block, gamma=gamma_mode, generator=generator, **kwargs)
        zeros += int((out == 0).sum())
        done += count
    return zeros / (num_maps * height * width)


def _assert_block_geometry(dropped, block):
    """Every dropped unit lies in an all-dropped bh x bw block lying inside the map."""
    height, width = dropped.shape[-2:]
    bh, bw = min(block, height), min(block, width)
    flat = dropped.reshape(-1, 1, height, width).float()
    # Corners whose whole block is dropped (min-pool over valid positions only, no padding).
    full_blocks = -nn.functional.max_pool2d(-flat, (bh, bw), stride=1)
    padded = nn.functional.pad(full_blocks, (bw - 1, bw - 1, bh - 1, bh - 1))
    covered = nn.functional.max_pool2d(padded, (bh, bw), stride=1)
    assert torch.equal(covered, flat), "a dropped unit is not inside an all-dropped block"


# ----------------------------------------------------------------------------------------------
# Drop-rate statistics.


@pytest.mark.parametrize("height,width,block", RATE_CASES)
@pytest.mark.parametrize("gamma_mode", ["paper", "exact"])
@pytest.mark.parametrize("device", DEVICES)
def test_drop_rate_matches_analytic_expectation(height, width, block, gamma_mode, device):
    keep_prob = 0.9
    paper_gamma = _paper_gamma(height, width, block, keep_prob)
    gamma = seed_rate(height, width, block, keep_prob, gamma_mode)
    if gamma_mode == "paper":
        assert gamma == pytest.approx(paper_gamma, rel=1e-12)
    expected, sd_map = _mean_and_sd(height, width, block, gamma)
    if gamma_mode == "exact":
        assert expected == pytest.approx(1 - keep_prob, abs=1e-12)
    # Enough maps that the paper and exact expectations are >= 2 tolerances apart (so the test
    # tells the modes apart), or a tolerance of 0.005 where they coincide (no overlap possible).
    paper_expected, _ = _mean_and_sd(height, width, block, paper_gamma)
    gap = (1 - keep_prob) - paper_expected
    target_tol = gap / 2 if gap > 1e-6 else 0.005
    num_maps = math.ceil((Z_TOL * sd_map / target_tol) ** 2)
    tolerance = Z_TOL * sd_map / math.sqrt(num_maps)
    assert tolerance <= target_tol
    measured = _dropped_fraction(
        height, width, block, keep_prob, gamma_mode, num_maps, seed=1, device=device
    )
    assert abs(measured - expected) <= tolerance, (measured, expected, tolerance)


def test_paper_gamma_lands_under_target_and_exact_on_it():
    # The claim: the paper's formula drops about 5% less than asked on detector maps.
    for height, width, block in [(25, 42, 7), (50, 84, 7), (13, 21, 7), (100, 136, 7)]:
        paper_gamma = _paper_gamma(height, width, block, 0.9)
        paper_expected = _drop_probabilities(height, width, block, paper_gamma).mean()
        assert 0.03 < 1 - paper_expected / 0.1 < 0.09
        exact = seed_rate(height, width, block, 0.9, "exact")
        assert _drop_probabilities(height, width, block, exact).mean() == pytest.approx(
            0.1, abs=1e-12
        )


@pytest.mark.parametrize("keep_prob", [1e-6, 0.01, 0.3, 0.75, 0.9, 0.999])
def test_exact_gamma_solves_the_target_and_compiled_form_agrees(keep_prob):
    for height, width, block in RATE_CASES + [(100, 76, 7), (1, 1, 7), (3, 200, 5)]:
        gamma = seed_rate(height, width, block, keep_prob, "exact")
        prob = _drop_probabilities(height, width, block, gamma)
        assert prob.mean() == pytest.approx(1 - keep_prob, abs=1e-12)
        bh, bw = min(block, height), min(block, width)
        keep_prob_tensor = torch.tensor(keep_prob, dtype=torch.float64)
        as_tensor = _seed_rate_tensor(keep_prob_tensor, height, width, bh, bw, "exact", "cpu")
        assert float(as_tensor) == pytest.approx(gamma, rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_channel_shared_masks_rate_and_sharing(device):
    height, width, block, keep_prob = 25, 42, 7, 0.9
    gamma = seed_rate(height, width, block, keep_prob, "exact")
    expected, sd_map = _mean_and_sd(height, width, block, gamma)
    generator = seeded_generator(3, device)
    num_samples = 4000
    ones = torch.ones(num_samples, 3, height, width, device=device)
    out = drop_block_2d(
        ones, keep_prob, block, share_channels=True, gamma="exact", generator=generator
    )
    dropped = out == 0
    assert torch.equal(dropped[:, 0], dropped[:, 1]) and torch.equal(dropped[:, 0], dropped[:, 2])
    # Samples are independent; channels of a sample are copies: num_samples independent maps.
    tolerance = Z_TOL * sd_map / math.sqrt(num_samples)
    assert abs(dropped[:, 0].float().mean().item() - expected) <= tolerance
    # Per-channel masks differ between channels of a sample.
    per_channel = drop_block_2d(ones[:8], keep_prob, block, generator=generator)
    assert not torch.equal(per_channel[:, 0] == 0, per_channel[:, 1] == 0)


# ----------------------------------------------------------------------------------------------
# Geometry and borders.


@pytest.mark.parametrize(
    "shape,block",
    [
        ((4, 8, 25, 42), 7),
        ((4, 8, 12, 20), 4),  # even block
        ((4, 8, 5, 40), 7),  # block taller than the map
        ((16, 8, 3, 2), 7),  # block larger than the map on both axes
        ((16, 8, 1, 1), 7),  # 1x1 maps
        ((1, 8, 9, 6), 2),  # batch 1, even block
    ],
)
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_dropped_units_form_whole_blocks_inside_the_map(shape, block, share_channels, device):
    generator = seeded_generator(0, device)
    x = torch.rand(shape, generator=generator, device=device) + 0.5  # no zeros of its own
    out = drop_block_2d(x, 0.7, block, share_channels=share_channels, generator=generator)
    dropped = out == 0
    assert dropped.any() and not dropped.all()  # non-vacuous
    _assert_block_geometry(dropped, block)
    kept = ~dropped
    scale = out[kept] / x[kept]
    assert torch.allclose(scale, scale[0].expand_as(scale))  # one batch-wide factor


def test_even_block_anchoring_is_tf_same():
    # Seen from the seed, an even block spans bs // 2 units before and (bs - 1) // 2 after: on a
    # 1 x 4 map with block 4 (one corner) every unit is dropped; on 1 x 5 with block 2 the
    # blocks cover columns (c, c + 1) for corners c in 0..3, never the mirror image.
    generator = seeded_generator(0)
    out = drop_block_2d(torch.ones(64, 1, 1, 4), 0.5, 4, generator=generator)
    per_map = (out == 0).reshape(64, 4)
    assert torch.equal(per_map.all(1), per_map.any(1))  # all-or-nothing per map
    out = drop_block_2d(torch.ones(256, 1, 1, 5), 0.5, 2, generator=generator)
    _assert_block_geometry(out == 0, 2)


@pytest.mark.parametrize("height,width,block", [(20, 20, 5), (12, 20, 4)])
@pytest.mark.parametrize("device", DEVICES)
def test_border_density_follows_valid_corner_seeding(height, width, block, device):
    keep_prob, num_maps = 0.8, 8192
    gamma = seed_rate(height, width, block, keep_prob, "paper")
    prob, cov = _dropped_stats(height, width, block, gamma)
    ones = torch.ones(num_maps, 1, height, width, device=device)
    out = drop_block_2d(ones, keep_prob, block, generator=seeded_generator(5, device))
    dropped = (out == 0).double().mean(0)[0].cpu().numpy()
    for axis, size in ((0, height), (1, width)):  # per-row, then per-column densities
        measured = dropped.mean(axis=1 - axis)
        weights = np.zeros((size, height * width))
        for index in range(size):
            line = np.zeros((height, width))
            if axis == 0:
                line[index, :] = 1.0 / width
            else:
                line[:, index] = 1.0 / height
            weights[index] = line.ravel()
        expected = weights @ prob
        sd = np.sqrt(np.einsum("iu,uv,iv->i", weights, cov, weights) / num_maps)
        assert np.all(np.abs(measured - expected) <= Z_TOL * sd), (axis, measured, expected)
        # Mirror symmetry (the even block is not skewed), and borders drop less than the centre.
        assert np.allclose(expected, expected[::-1])
        mirrored_sd = np.sqrt(2) * sd
        assert np.all(np.abs(measured - measured[::-1]) <= Z_TOL * mirrored_sd)
        centre = size // 2
        assert measured[0] + Z_TOL * (sd[0] + sd[centre]) < measured[centre]


# ----------------------------------------------------------------------------------------------
# Normalisation, gradient, dtypes.


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_normalisation_preserves_the_total(share_channels, device):
    x = torch.ones(3, 5, 13, 21, device=device)
    out = drop_block_2d(
        x, 0.8, 7, share_channels=share_channels, generator=seeded_generator(0, device)
    )
    kept = int((out != 0).sum())
    assert 0 < kept < x.numel()
    assert torch.allclose(out[out != 0], torch.tensor(x.numel() / kept, device=device))


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_sample_normalisation_preserves_each_sample_total(share_channels, device):
    x = torch.ones(4, 3, 13, 21, device=device)
    out = drop_block_2d(
        x,
        0.7,
        5,
        normalize="sample",
        share_channels=share_channels,
        generator=seeded_generator(0, device),
    )
    for sample in out:
        kept = int((sample != 0).sum())
        assert 0 < kept < sample.numel()
        expected = torch.tensor(sample.numel() / kept, device=device)
        assert torch.allclose(sample[sample != 0], expected)
    factors = {round(float(s[s != 0][0]), 5) for s in out}
    assert len(factors) > 1  # the factors really are per sample


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_expected_normalisation_is_one_over_keep_prob(share_channels, device):
    x = torch.ones(2, 4, 13, 21, device=device)
    out = drop_block_2d(
        x,
        0.8,
        3,
        normalize="expected",
        share_channels=share_channels,
        generator=seeded_generator(0, device),
    )
    assert (out == 0).any()
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.8, device=device))


@pytest.mark.parametrize("normalize", ["batch", "sample"])
@pytest.mark.parametrize("device", DEVICES)
def test_everything_dropped_gives_zeros_not_nan(normalize, device):
    # Block == map and keep_prob 1e-6: every channel is dropped with probability 1 - 1e-6.
    out = drop_block_2d(
        torch.ones(2, 4, 7, 7, device=device),
        1e-6,
        7,
        normalize=normalize,
        generator=seeded_generator(0, device),
    )
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"normalize": "sample"},
        {"share_channels": True},
        {"gamma": "exact"},
        {"share_channels": True, "normalize": "expected"},
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_is_mask_times_scale(kwargs, device):
    generator = seeded_generator(0, device)
    x = (torch.rand(3, 4, 11, 17, generator=generator, device=device) + 0.5).requires_grad_()
    grad = torch.randn(3, 4, 11, 17, generator=generator, device=device)
    out = drop_block_2d(x, 0.7, 5, generator=generator, **kwargs)
    out.backward(grad)
    mask_times_scale = (out / x).detach()  # x has no zeros: the applied mask and factor
    assert (mask_times_scale == 0).any()
    assert torch.allclose(x.grad, grad * mask_times_scale, rtol=1e-6, atol=0)


@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_cache_blocked_cpu_pass_equals_the_plain_one(monkeypatch, normalize):
    # With one intra-op thread the CPU scales and zeroes chunk by chunk. Tiny chunks (100 floats)
    # put many blocks across chunk borders; the result must equal the one-pass result exactly.
    from dropblock_det.layers import _sparse as module

    def run(threads, chunk_bytes):
        monkeypatch.setattr(module, "_CPU_CHUNK_BYTES", chunk_bytes)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            x = (torch.rand(3, 4, 13, 21, generator=seeded_generator(1)) + 0.5).requires_grad_()
            out = drop_block_2d(x, 0.7, 5, normalize=normalize, generator=seeded_generator(2))
            out.backward(torch.arange(out.numel(), dtype=torch.float32).view_as(out))
            return out.detach(), x.grad
        finally:
            torch.set_num_threads(previous)

    chunked_out, chunked_grad = run(1, 400)
    plain_out, plain_grad = run(2, 1 << 40)
    assert (chunked_out == 0).any()
    assert torch.equal(chunked_out, plain_out) and torch.equal(chunked_grad, plain_grad)


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("normalize", ["batch", "sample", "expected"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_accelerator_bookkeeping_equals_host_bookkeeping(
    monkeypatch, share_channels, normalize, dtype
):
    # On GPUs the counts and factors stay on the device (torch ops instead of NumPy and Python
    # floats). Run that branch on CPU tensors: same generator, same result, so CI checks the
    # GPU branch's logic without a GPU.
    from dropblock_det.layers import _sparse as module

    def run():
        x = torch.rand(3, 4, 13, 21, generator=seeded_generator(1)).add_(0.5).to(dtype)
        x.requires_grad_()
        out = drop_block_2d(
            x,
            0.7,
            5,
            normalize=normalize,
            share_channels=share_channels,
            generator=seeded_generator(2),
        )
        out.backward(torch.ones_like(out))
        return out.detach(), x.grad

    host_out, host_grad = run()
    monkeypatch.setattr(module, "_on_host", lambda device: False)
    device_out, device_grad = run()
    assert (host_out == 0).any()
    assert torch.equal(host_out == 0, device_out == 0)
    # Identical for float32/float64. For float16 channel-shared masks the host rounds the factor
    # into float16 toward zero first (up to one ulp, so that it never overflows a representable
    # product), then the product (half an ulp); the device path rounds the float32 product once.
    rel = 0 if dtype != torch.float16 else 2 * torch.finfo(dtype).eps
    assert torch.allclose(host_out, device_out, rtol=rel, atol=0)
    assert torch.allclose(host_grad, device_grad, rtol=rel, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_half_dtypes_match_float32_on_the_same_mask(dtype, share_channels, device):
    x32 = torch.rand(2, 6, 19, 23, generator=seeded_generator(0, device), device=device) + 0.5
    x = x32.to(dtype).requires_grad_()
    out = drop_block_2d(
        x, 0.8, 5, share_channels=share_channels, generator=seeded_generator(7, device)
    )
    ref = drop_block_2d(
        x.detach().float(),
        0.8,
        5,
        share_channels=share_channels,
        generator=seeded_generator(7, device),
    )
    assert out.dtype == dtype
    assert torch.equal(out == 0, ref == 0)  # sampling does not depend on the dtype
    assert (out == 0).any()
    # At most one rounding of the float32 product (plus the factor's own, for shared masks).
    ulps = 1 if not share_channels else 2
    rel = torch.finfo(dtype).eps * ulps
    assert torch.allclose(out.float(), ref, rtol=rel, atol=0)
    out.float().sum().backward()
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_float16_large_map_does_not_overflow_to_zeros(device):
    # torchvision counts kept units in float16: the count overflows and the output is all zeros.
    x = torch.ones(2, 256, 100, 136, dtype=torch.float16, device=device)
    out = drop_block_2d(x, 0.9, 7, generator=seeded_generator(0, device))
    assert out.dtype == torch.float16
    kept = int((out != 0).sum())
    assert 0.85 * x.numel() < kept < 0.95 * x.numel()
    # Sum ~ numel: each kept value is the factor rounded once (relative error <= 2**-11).
    assert out.double().sum().item() == pytest.approx(x.numel(), rel=2**-10)


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_float16_huge_factor_is_exact_where_representable(share_channels, device):
    # normalize="expected" with keep_prob 1e-5 rescales by 1e5 > float16's max (65504): kept
    # units of 1e-3 must become 100 (representable), not inf or NaN; dropped ones exactly 0.
    x = torch.full((4, 1, 256, 256), 1e-3, dtype=torch.float16, device=device)
    out = drop_block_2d(
        x,
        1e-5,
        1,
        normalize="expected",
        share_channels=share_channels,
        generator=seeded_generator(0, device),
    )
    kept = out != 0
    assert kept.any()
    assert torch.isfinite(out).all()
    expected = (x.float() * 1e5).to(torch.float16)
    assert torch.equal(out[kept], expected[kept])
    # Where the product is not representable the result is inf, still never NaN.
    big = torch.full((4, 1, 256, 256), 60000.0, dtype=torch.float16, device=device)
    out = drop_block_2d(
        big,
        0.5,
        3,
        normalize="expected",
        share_channels=share_channels,
        generator=seeded_generator(0, device),
    )
    assert not torch.isnan(out).any()
    assert torch.isinf(out).any() and (out == 0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_float64_is_supported(device):
    x = torch.ones(2, 3, 13, 21, dtype=torch.float64, device=device)
    out = drop_block_2d(x, 0.8, 5, generator=seeded_generator(0, device))
    assert out.dtype == torch.float64 and (out == 0).any()


# ----------------------------------------------------------------------------------------------
# Identity, determinism, shapes, errors.


def test_identity_cases_return_the_input_itself():
    x = torch.randn(2, 3, 8, 8)
    assert drop_block_2d(x, 1.0, 3) is x
    assert drop_block_2d(x, 0.5, 3, training=False) is x
    empty = torch.randn(0, 3, 8, 8)
    assert drop_block_2d(empty, 0.5, 3) is empty
    module = DropBlock2d(0.5, 3).eval()
    assert module(x) is x
    module.train()
    module.keep_prob = 1.0
    assert module(x) is x


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_no_seed_drawn_keeps_every_value(share_channels, device):
    # keep_prob 1 - 1e-9 on 4 small maps: P(any seed) < 1e-6. Nothing dropped, factor exactly 1.
    x = torch.rand(2, 2, 9, 9, device=device)
    out = drop_block_2d(
        x, 1 - 1e-9, 3, share_channels=share_channels, generator=seeded_generator(0, device)
    )
    assert out is not x and torch.equal(out, x)


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_determinism(device):
    x = torch.ones(2, 8, 25, 42, device=device)

    def draw(seed, **kwargs):
        return drop_block_2d(x, 0.9, 7, generator=seeded_generator(seed, device), **kwargs)

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(4, share_channels=True), draw(4, share_channels=True))
    module = DropBlock2d(0.9, 7).train()
    torch.manual_seed(11)
    first = module(x)
    torch.manual_seed(11)
    assert torch.equal(first, module(x))


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (1, 3, 1, 9), (2, 2, 6, 1), (1, 4, 100, 3), (3, 2, 2, 2)]
)
@pytest.mark.parametrize("block", [1, 2, 7, 8])
@pytest.mark.parametrize("device", DEVICES)
def test_odd_shapes_run_forward_and_backward(shape, block, device):
    x = (torch.rand(shape, device=device) + 0.5).requires_grad_()
    out = drop_block_2d(x, 0.6, block, generator=seeded_generator(0, device))
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    _assert_block_geometry(out == 0, block)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input_and_gradient(device):
    x = torch.rand(2, 5, 9, 11, device=device).add_(0.5).to(memory_format=torch.channels_last)
    x.requires_grad_()
    out = drop_block_2d(x, 0.7, 3, generator=seeded_generator(0, device))
    grad = torch.ones(1, 1, 1, 1, device=device).expand_as(out)  # stride-0 gradient
    out.backward(grad)
    assert torch.allclose(x.grad, (out / x).detach())


@pytest.mark.parametrize("keep_prob", [0.0, -0.1, 1.5, float("nan"), "0.9", True])
def test_bad_keep_prob_raises_naming_it(keep_prob):
    x = torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match="keep_prob"):
        drop_block_2d(x, keep_prob, 3)
    with pytest.raises(ValueError, match="keep_prob"):
        DropBlock2d(keep_prob, 3)
    module = DropBlock2d(0.9, 3)
    with pytest.raises(ValueError, match="keep_prob"):
        module.keep_prob = keep_prob
    assert module.keep_prob == 0.9  # unchanged by the failed assignment


@pytest.mark.parametrize("block_size", [0, -1, 2.5, True])
def test_bad_block_size_raises_naming_it(block_size):
    with pytest.raises(ValueError, match="block_size"):
        drop_block_2d(torch.ones(1, 1, 4, 4), 0.9, block_size)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock2d(0.9, block_size)


def test_other_bad_arguments_raise_naming_them():
    x = torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match="gamma"):
        drop_block_2d(x, 0.9, 3, gamma="tf")
    with pytest.raises(ValueError, match="normalize"):
        drop_block_2d(x, 0.9, 3, normalize="channel")
    with pytest.raises(ValueError, match="x must be"):
        drop_block_2d(torch.ones(4, 4, 4), 0.9, 3)
    with pytest.raises(ValueError, match="x must be"):
        drop_block_2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 0.9, 3)
    with pytest.raises(ValueError, match="gamma"):
        DropBlock2d(gamma="tf")


# ----------------------------------------------------------------------------------------------
# Module: buffer, state_dict, compile, export.


def test_keep_prob_lives_in_a_non_persistent_buffer():
    module = DropBlock2d(0.9, 7)
    assert module.state_dict() == {}
    with_dropblock = nn.Sequential(nn.Conv2d(3, 4, 3), DropBlock2d(), nn.ReLU())
    without = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.ReLU())
    assert list(with_dropblock.state_dict()) == list(without.state_dict())
    without.load_state_dict(with_dropblock.state_dict())  # and back: strict load works
    module.keep_prob = 0.75
    assert module.keep_prob == 0.75
    assert module._keep_prob.dim() == 0 and float(module._keep_prob) == pytest.approx(0.75)
    # Writing the buffer directly (as a broadcast from another process would) is seen too.
    module._keep_prob.fill_(0.5)
    assert module.keep_prob == 0.5
    assert "keep_prob=0.5" in repr(module)


@pytest.mark.parametrize("device", DEVICES)
def test_keep_prob_changes_do_not_recompile(device):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    module = DropBlock2d(0.9, 5, gamma="exact").train().to(device)
    counter = CompileCounter()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    x = torch.ones(16, 8, 13, 21, device=device)
    rates = []
    for keep_prob in (1.0, 0.9, 0.8, 0.7, 0.5):
        module.keep_prob = keep_prob
        out = compiled(x)
        rates.append((out == 0).float().mean().item())
        _assert_block_geometry(out == 0, 5)
    assert counter.frame_count == 1
    # The compiled (dense) path follows keep_prob: exact gamma hits 1 - keep_prob. Per-map sd of
    # the dropped fraction is < 0.5 (a [0, 1] variable), over 128 maps: 5 sd < 0.23; the
    # observed rates must also be strictly ordered.
    assert rates[0] == 0.0
    assert all(
        abs(rate - (1 - kp)) < Z_TOL * 0.5 / math.sqrt(128)
        for rate, kp in zip(rates[1:], (0.9, 0.8, 0.7, 0.5), strict=False)
    )
    assert rates == sorted(rates)


def test_export_of_eval_module():
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), DropBlock2d(0.9, 3)).eval()
    x = torch.randn(2, 3, 10, 12)
    exported = torch.export.export(module, (x,))
    assert torch.equal(exported.module()(x), module(x))


def test_module_carries_its_group_and_shows_it():
    module = DropBlock2d(keep_prob=0.8, block_size=3, group="res4")
    assert module.group == "res4"
    assert "group='res4'" in repr(module)
    assert DropBlock2d().group is None and "group" not in repr(DropBlock2d())
    # Parameter-free and out of the state_dict, group or not.
    assert module.state_dict() == {} and list(module.parameters()) == []


def test_adopt_keep_prob_shares_one_value_and_refuses_another_dtype():
    from dropblock_det.layers import KeepProb

    a, b = DropBlock2d(keep_prob=0.7), DropBlock2d(keep_prob=0.9)
    shared = KeepProb(a.keep_prob_tensor, a.keep_prob, shared=True)
    a.adopt_keep_prob(shared)
    b.adopt_keep_prob(shared)
    shared.fill(0.6)
    assert a.keep_prob == pytest.approx(0.6) and b.keep_prob == pytest.approx(0.6)
    assert a.keep_prob_tensor is b.keep_prob_tensor
    b.keep_prob = 0.95  # a value of its own again; a keeps the shared one
    assert b.keep_prob == pytest.approx(0.95) and a.keep_prob == pytest.approx(0.6)
    with pytest.raises(ValueError, match="dtypes"):
        DropBlock2d().half().adopt_keep_prob(shared)
