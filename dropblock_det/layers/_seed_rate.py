"""Seed-rate math of DropBlock: block clipping, the paper's gamma and the exact gamma.

The host functions work on Python floats (cached per map shape); :func:`seed_rate_tensor` is the
same math as tensor ops on a keep_prob tensor, for compiled graphs where keep_prob is data.
"""

import collections
import functools
import math

import torch

# Newton steps of the tensor form of the exact seed rate (a fixed count keeps the graph static).
# From a lower bound the iteration rises monotonically to the root; 12 steps reach float64
# round-off for every keep_prob in [1e-6, 1) on the maps a detector produces (checked in tests).
COMPILED_NEWTON_STEPS = 12


def clip_block(block_size: int, height: int, width: int) -> tuple[int, int]:
    """The block's (height, width) on an ``height x width`` map: clipped per axis to the map."""
    return min(block_size, height), min(block_size, width)


@functools.cache
def coverage_terms(height: int, width: int, block_h: int, block_w: int):
    """How many units are covered by how many possible blocks.

    Returns:
        tuple(tuple[int], tuple[float]): distinct coverage counts ``k = r_i * c_j`` and the
        fraction of the map's units that have each.
    """

    def per_axis(size, block):
        # Corners a in [0, size - block] cover unit i when a <= i <= a + block - 1.
        return [min(i, size - block) - max(0, i - block + 1) + 1 for i in range(size)]

    row_counts = collections.Counter(per_axis(height, block_h))
    col_counts = collections.Counter(per_axis(width, block_w))
    terms = collections.Counter()
    for r, nr in row_counts.items():
        for c, nc in col_counts.items():
            terms[r * c] += nr * nc
    area = height * width
    exponents = tuple(sorted(terms))
    return exponents, tuple(terms[k] / area for k in exponents)


def paper_gamma(height: int, width: int, block_h: int, block_w: int, keep_prob: float) -> float:
    """The paper's seed rate with separate height and width (overlaps counted twice)."""
    # Never above 1 - keep_prob: bh * (H - bh + 1) >= H for every 1 <= bh <= H.
    valid = (height - block_h + 1) * (width - block_w + 1)
    return (1.0 - keep_prob) * height * width / (block_h * block_w * valid)


@functools.lru_cache(maxsize=4096)
def exact_gamma(height: int, width: int, block_h: int, block_w: int, keep_prob: float) -> float:
    """Seed rate whose expected dropped fraction is exactly ``1 - keep_prob`` (float64 Newton).

    The dropped fraction ``f(g) = 1 - sum_k w_k (1 - g) ** k`` is increasing and concave on [0, 1]
    with f(1) = 1, so Newton's iteration started below the root rises monotonically to it.
    """
    if keep_prob >= 1.0:
        return 0.0
    exponents, weights = coverage_terms(height, width, block_h, block_w)
    # Two lower bounds of the root: the paper's rate (f <= expected coverage, a union bound) and
    # the rate at which even the most covered unit alone would reach the target.
    gamma = max(
        paper_gamma(height, width, block_h, block_w, keep_prob),
        -math.expm1(math.log(keep_prob) / exponents[-1]),
    )
    for _ in range(200):
        keep = 1.0 - gamma
        survive = sum(w * keep**k for k, w in zip(exponents, weights, strict=False))
        slope = sum(w * k * keep ** (k - 1) for k, w in zip(exponents, weights, strict=False))
        step = (survive - keep_prob) / slope  # = (target - f(gamma)) / f'(gamma) >= 0
        if not step > 1e-17 * max(gamma, 1e-300) or gamma + step >= 1.0:
            break
        gamma += step
    return min(gamma, 1.0)


def host_gamma(mode: str, height: int, width: int, block_h: int, block_w: int, keep_prob: float):
    """The seed rate of ``mode`` ("paper" or "exact") as a Python float."""
    rate = paper_gamma if mode == "paper" else exact_gamma
    return rate(height, width, block_h, block_w, keep_prob)


def _coverage_tensors(height, width, block_h, block_w, device):
    """:func:`coverage_terms` as float64 tensors on ``device``, built there (no host copy).

    On an axis of ``size`` units and blocks of ``block``, with ``m = min(block, size - block + 1)``,
    the coverage counts 1 .. m - 1 occur twice each and m occurs ``size - 2 m + 2`` times; a unit's
    count is the product of its two axes' counts. Building them with device ops keeps the rate
    computable inside a CUDA graph capture, where a host-to-device copy is not allowed.
    """

    def axis(size, block):
        most = min(block, size - block + 1)
        values = torch.arange(1, most + 1, dtype=torch.float64, device=device)
        counts = torch.full_like(values, 2.0).masked_fill(values == most, size - 2 * most + 2)
        return values, counts

    rows, row_counts = axis(height, block_h)
    cols, col_counts = axis(width, block_w)
    exponents = (rows[:, None] * cols[None, :]).flatten()
    weights = (row_counts[:, None] * col_counts[None, :]).flatten() / (height * width)
    return exponents, weights


def seed_rate_tensor(keep_prob, height, width, block_h, block_w, gamma_mode, device):
    """The seed rate as float32 tensor math on a keep_prob tensor (for compiled graphs).

    Exact mode runs a fixed number of float64 Newton steps, so a new keep_prob value is new data
    for the same graph, never a recompilation.
    """
    keep_prob = torch.as_tensor(keep_prob, dtype=torch.float64, device=device)
    valid = (height - block_h + 1) * (width - block_w + 1)
    paper = (1.0 - keep_prob) * (height * width / (block_h * block_w * valid))
    if gamma_mode == "paper":
        return paper.float()
    k, w = _coverage_tensors(height, width, block_h, block_w, device)
    most = min(block_h, height - block_h + 1) * min(block_w, width - block_w + 1)
    gamma = torch.maximum(paper, -torch.expm1(torch.log(keep_prob) / most))
    for _ in range(COMPILED_NEWTON_STEPS):
        keep = 1.0 - gamma
        survive = (w * keep**k).sum()
        slope = (w * k * keep ** (k - 1)).sum().clamp_min(1e-300)
        gamma = (gamma + (survive - keep_prob) / slope).clamp(0.0, 1.0)
    return torch.where(keep_prob >= 1.0, torch.zeros_like(gamma), gamma).float()
