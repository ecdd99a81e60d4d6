"""DropBlock (Ghiasi, Lin, Le, NeurIPS 2018, Algorithm 1) for NCHW feature maps.

Geometry. A block of ``bh x bw`` units (``block_size`` clipped per axis to the map) is placed by its
top-left corner, drawn only where the whole block fits: the ``(H - bh + 1) x (W - bw + 1)`` "valid
centres" of the paper. Seen from the seed (the unit the paper calls the block centre), a block
covers ``bs // 2`` units before the seed and ``(bs - 1) // 2`` after it on each axis: the centre for
odd sizes, and for even sizes the extra unit before the seed, which is exactly the anchoring of the
TF reference's SAME-padded min-pool. Every corner is a seed independently with probability gamma.

Seed rate. ``gamma="paper"`` is the paper's formula with separate height and width,
``(1 - keep_prob) * H * W / (bh * bw * (H - bh + 1) * (W - bw + 1))``, which counts overlapping
blocks twice and so drops about 5% less than ``1 - keep_prob``. ``gamma="exact"`` solves for the
rate whose expected dropped fraction is exactly ``1 - keep_prob``: unit ``(i, j)`` is covered by
``r_i * c_j`` possible blocks, so it survives with probability ``(1 - gamma) ** (r_i * c_j)``.

Speed. At keep_prob 0.9 and block 7 only ~0.3% of the corners are seeds, so the seeds are drawn
sparsely (Bernoulli successes as a cumulative sum of geometric gaps) instead of as dense noise,
and the blocks are written with index fills instead of a dense max-pool over the whole tensor. The
number of dropped units (for the rescaling) comes from the seed list alone: the blocks are unions
of equal-length row segments, whose union length is a sum over the sorted segment starts.
"""

import functools
import math
import numbers
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["drop_block_2d", "DropBlock2d", "seed_rate"]

GAMMA_MODES = ("paper", "exact")
NORMALIZE_MODES = ("batch", "sample", "expected")
# Newton steps of the compiled path's exact seed rate (a fixed count keeps the graph static). From
# a lower bound the iteration rises monotonically to the root; 12 steps reach float64 round-off
# for every keep_prob in [1e-6, 1) on the maps a detector produces (checked in the tests).
_COMPILED_NEWTON_STEPS = 12
# Single-threaded CPU work unit of the scale-and-zero pass: the chunk scaled last is still in
# cache when its blocks are zeroed. Measured on a 1 MiB-L2, 32 MiB-L3 CPU: 4 MiB chunks make
# DropBlock's forward+backward ~20% faster with one thread. With several intra-op threads every
# extra op is a thread-pool round trip, which on a loaded machine costs far more than it saves.
_CPU_CHUNK_BYTES = 4 << 20


def _check_keep_prob(keep_prob) -> float:
    """Return keep_prob as a float, raising ValueError unless it lies in (0, 1]."""
    if isinstance(keep_prob, torch.Tensor):
        if keep_prob.numel() != 1:
            raise ValueError(
                f"keep_prob must be a number or a one-element tensor, got shape "
                f"{tuple(keep_prob.shape)}"
            )
        keep_prob = keep_prob.item()
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, numbers.Real):
        raise ValueError(f"keep_prob must be a number in (0, 1], got {keep_prob!r}")
    keep_prob = float(keep_prob)
    if not 0.0 < keep_prob <= 1.0:  # also rejects NaN
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    return keep_prob


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return int(block_size)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an (N, C, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")


@functools.lru_cache(maxsize=None)
def _coverage_terms(height: int, width: int, block_h: int, block_w: int):
    """How many units are covered by how many possible blocks.

    Returns:
        tuple(tuple[int], tuple[float]): distinct coverage counts ``k = r_i * c_j`` and the
        fraction of the map's units that have each.
    """

    def per_axis(size, block):
        # Corners a in [0, size - block] cover unit i when a <= i <= a + block - 1.
        return [min(i, size - block) - max(0, i - block + 1) + 1 for i in range(size)]

    row_counts, col_counts = {}, {}
    for r in per_axis(height, block_h):
        row_counts[r] = row_counts.get(r, 0) + 1
    for c in per_axis(width, block_w):
        col_counts[c] = col_counts.get(c, 0) + 1
    terms = {}
    for r, nr in row_counts.items():
        for c, nc in col_counts.items():
            terms[r * c] = terms.get(r * c, 0) + nr * nc
    area = height * width
    exponents = tuple(sorted(terms))
    return exponents, tuple(terms[k] / area for k in exponents)


def _paper_gamma(height: int, width: int, block_h: int, block_w: int, keep_prob: float) -> float:
    # Never above 1 - keep_prob: bh * (H - bh + 1) >= H for every 1 <= bh <= H.
    valid = (height - block_h + 1) * (width - block_w + 1)
    return (1.0 - keep_prob) * height * width / (block_h * block_w * valid)


@functools.lru_cache(maxsize=4096)
def _exact_gamma(height: int, width: int, block_h: int, block_w: int, keep_prob: float) -> float:
    """Seed rate whose expected dropped fraction is exactly ``1 - keep_prob`` (float64 Newton).

    The dropped fraction ``f(g) = 1 - sum_k w_k (1 - g) ** k`` is increasing and concave on [0, 1]
    with f(1) = 1, so Newton's iteration started below the root rises monotonically to it.
    """
    if keep_prob >= 1.0:
        return 0.0
    exponents, weights = _coverage_terms(height, width, block_h, block_w)
    # Two lower bounds of the root: the paper's rate (f <= expected coverage, a union bound) and
    # the rate at which even the most covered unit alone would reach the target.
    gamma = max(
        _paper_gamma(height, width, block_h, block_w, keep_prob),
        -math.expm1(math.log(keep_prob) / exponents[-1]),
    )
    for _ in range(200):
        keep = 1.0 - gamma
        survive = sum(w * keep**k for k, w in zip(exponents, weights))
        slope = sum(w * k * keep ** (k - 1) for k, w in zip(exponents, weights))
        step = (survive - keep_prob) / slope  # = (target - f(gamma)) / f'(gamma) >= 0
        if not step > 1e-17 * max(gamma, 1e-300) or gamma + step >= 1.0:
            break
        gamma += step
    return min(gamma, 1.0)


def seed_rate(height: int, width: int, block_size: int, keep_prob: float, gamma: str = "paper"):
    """Per-corner seed probability that :func:`drop_block_2d` uses on an ``height x width`` map.

    Args:
        height (int): map height.
        width (int): map width.
        block_size (int): requested block side (clipped per axis to the map).
        keep_prob (float): target fraction of kept units, in (0, 1].
        gamma (str): "paper" or "exact" (see the module docstring).

    Returns:
        float: the seed probability gamma.
    """
    keep_prob = _check_keep_prob(keep_prob)
    block_size = _check_block_size(block_size)
    _check_choice("gamma", gamma, GAMMA_MODES)
    block_h, block_w = min(block_size, height), min(block_size, width)
    if gamma == "paper":
        return _paper_gamma(height, width, block_h, block_w, keep_prob)
    return _exact_gamma(height, width, block_h, block_w, keep_prob)


def _seed_rate_tensor(keep_prob, height, width, block_h, block_w, gamma_mode, device):
    """:func:`seed_rate` as float32 tensor math on a keep_prob tensor (for compiled graphs).

    Exact mode runs a fixed number of float64 Newton steps, so a new keep_prob value is new data
    for the same graph, never a recompilation.
    """
    keep_prob = torch.as_tensor(keep_prob, dtype=torch.float64, device=device)
    valid = (height - block_h + 1) * (width - block_w + 1)
    paper = (1.0 - keep_prob) * (height * width / (block_h * block_w * valid))
    if gamma_mode == "paper":
        return paper.float()
    # Dynamo traces the plain function (cheap integer loops) rather than the lru_cache wrapper.
    terms = _coverage_terms.__wrapped__ if torch.compiler.is_compiling() else _coverage_terms
    exponents, weights = terms(height, width, block_h, block_w)
    k = torch.tensor(exponents, dtype=torch.float64, device=device)
    w = torch.tensor(weights, dtype=torch.float64, device=device)
    gamma = torch.maximum(paper, -torch.expm1(torch.log(keep_prob) / exponents[-1]))
    for _ in range(_COMPILED_NEWTON_STEPS):
        keep = 1.0 - gamma
        survive = (w * keep**k).sum()
        slope = (w * k * keep ** (k - 1)).sum().clamp_min(1e-300)
        gamma = (gamma + (survive - keep_prob) / slope).clamp(0.0, 1.0)
    return torch.where(keep_prob >= 1.0, torch.zeros_like(gamma), gamma).float()


def _on_host(device: torch.device) -> bool:
    """Whether the bookkeeping of a tensor on ``device`` runs on the host (NumPy, Python floats).

    On CPU that is free; on accelerators the counts and factors stay on the device, so that
    nothing waits for the device beyond the one sync that sizes the seed list. (The tests also
    run the accelerator branch on CPU tensors by patching this function.)
    """
    return device.type == "cpu"


def _bernoulli_positions(num_trials: int, prob: float, device, generator) -> torch.Tensor:
    """Sorted indices of the successes among ``num_trials`` iid Bernoulli(prob) trials.

    Exact in distribution: the gaps between successes are iid Geometric(prob), so their cumulative
    sums are the success positions. Costs O(num_trials * prob), not O(num_trials).
    """
    if prob <= 0.0 or num_trials == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if prob >= 1.0:
        return torch.arange(num_trials, device=device)
    chunks = []
    last = -1.0  # position of the last success drawn so far
    while True:
        remaining = num_trials - 1 - last
        mean = remaining * prob
        # Six standard deviations over the mean: one draw almost always covers the whole range.
        count = int(mean + 6.0 * math.sqrt(mean) + 16)
        # float64 sums of integer gaps are exact up to 2**53 trials.
        gaps = torch.empty(count, dtype=torch.float64, device=device)
        gaps.geometric_(prob, generator=generator).clamp_(min=1.0)
        positions = gaps.cumsum_(0).add_(last)
        inside = int((positions < num_trials).sum())  # the only host sync on accelerators
        chunks.append(positions[:inside])
        if inside < count:
            break
        last = float(positions[-1])
    positions = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return positions.to(torch.int64)


def _block_row_starts(x_shape, mask_channels, block_h, block_w, gamma, generator, device):
    """Sample the blocks and list them as sorted flat starts of their ``bw``-long row segments.

    Args:
        x_shape: (N, C, H, W) of the input.
        mask_channels (int): C for per-channel masks, 1 for channel-shared ones.

    Returns:
        Tensor: int64 flat offsets into a contiguous (N, mask_channels, H, W) tensor, sorted.
    """
    batch, _, height, width = x_shape
    corners_w = width - block_w + 1
    corners_per_map = (height - block_h + 1) * corners_w
    positions = _bernoulli_positions(
        batch * mask_channels * corners_per_map, gamma, device, generator
    )
    on_cpu = _on_host(positions.device)
    if on_cpu:
        # The bookkeeping below is a few small integer arrays: NumPy runs it single-threaded,
        # free of the thread-pool round trips that dominate such ops on a busy CPU.
        positions = positions.numpy()
    map_index = positions // corners_per_map
    corner = positions - map_index * corners_per_map
    row = corner // corners_w
    col = corner - row * corners_w
    top_left = map_index * (height * width) + row * width + col
    row_offsets = (np.arange(block_h) if on_cpu else torch.arange(block_h, device=device)) * width
    # bh shifted copies of the sorted corner list, one after the other: bh sorted runs to merge.
    starts = (row_offsets[:, None] + top_left[None, :]).reshape(-1)
    if on_cpu:
        # NumPy's stable sort (timsort) merges the runs in O(n log bh).
        return torch.from_numpy(np.sort(starts, kind="stable"))
    return torch.sort(starts).values


def _dropped_units(row_starts: torch.Tensor, block_w: int, units_per_sample: int, batch: int):
    """Exact number of distinct dropped units per sample, from the sorted row-segment starts.

    Segments all have length bw and never cross a row, so with sorted starts each one adds
    ``min(bw, start - previous start)`` new units (the previous segment ends furthest right).

    Returns:
        list[int] on CPU, or an int64 (batch,) tensor on the starts' accelerator (no sync).
    """
    if _on_host(row_starts.device):
        starts = row_starts.numpy()
        new_units = np.minimum(np.diff(starts, prepend=starts[:1] - block_w), block_w)
        running = np.concatenate(([0], np.cumsum(new_units)))
        bounds = np.searchsorted(starts, np.arange(batch + 1) * units_per_sample)
        return (running[bounds[1:]] - running[bounds[:-1]]).tolist()
    new_units = torch.diff(row_starts, prepend=row_starts[:1] - block_w).clamp_(max=block_w)
    sample = torch.div(row_starts, units_per_sample, rounding_mode="floor")
    return torch.zeros(batch, dtype=torch.int64, device=row_starts.device).index_add_(
        0, sample, new_units
    )


def _segment_windows(flat: torch.Tensor, block_w: int) -> torch.Tensor:
    """(positions, bw) view of a flat tensor: row p holds units p .. p + bw - 1.

    One index_fill_ on it writes whole segments without listing every unit. The windows
    overlap, which is harmless here: every write is the same 0.
    """
    return flat.as_strided((flat.numel() - block_w + 1, block_w), (1, 1))


def _scale_into(src: torch.Tensor, scale, out: torch.Tensor) -> torch.Tensor:
    """``out = src * scale`` in src's dtype, the product computed in float32 or wider.

    Args:
        scale: a Python float (one factor), a list of Python floats (one per sample), or a float32
            (N, 1, 1, 1) tensor on src's device (accelerators, where reading it back would sync).
    """
    if isinstance(scale, float):
        # A Python scalar enters the kernel at float32+ precision, so fp16 never overflows early.
        return torch.mul(src, scale, out=out)
    if isinstance(scale, list):
        for sample, factor in enumerate(scale):
            torch.mul(src[sample], factor, out=out[sample])
        return out
    # Mixed dtypes promote to float32 inside the kernel (fast on accelerators, not on CPU).
    return torch.mul(src, scale, out=out)


def _scale_and_zero_segments(src, scale, out, row_starts, block_w) -> torch.Tensor:
    """``out = src * scale``, then zero the bw-long segments at ``row_starts`` (sorted) of out.

    On a single-threaded CPU the work goes in chunks of _CPU_CHUNK_BYTES: each chunk's segments
    are zeroed right after the chunk is scaled, while it is still in cache. The zeroing is
    scattered writes, which cost about as much as the whole multiply when they miss the cache.
    """
    windows = _segment_windows(out.view(-1), block_w)
    chunked = (
        out.device.type == "cpu"
        and not isinstance(scale, torch.Tensor)
        and src.is_contiguous()
        and torch.get_num_threads() == 1
    )
    if not chunked:
        _scale_into(src, scale, out)
        if row_starts.numel():
            windows.index_fill_(0, row_starts, 0)
        return out
    flat_src, flat_out = src.view(-1), out.view(-1)
    chunk = max(block_w, _CPU_CHUNK_BYTES // out.element_size())
    factors = scale if isinstance(scale, list) else [scale]
    per_factor = flat_out.numel() // len(factors)
    pieces = [
        (begin, min(begin + chunk, (index + 1) * per_factor), factor)
        for index, factor in enumerate(factors)
        for begin in range(index * per_factor, (index + 1) * per_factor, chunk)
    ]
    # A segment is zeroed once the chunk holding its last unit has been scaled.
    ends = np.array([end for _, end, _ in pieces], dtype=np.int64)
    stops = np.searchsorted(row_starts.numpy(), ends - block_w, side="right").tolist()
    done = 0
    for (begin, end, factor), stop in zip(pieces, stops):
        torch.mul(flat_src[begin:end], factor, out=flat_out[begin:end])
        if stop > done:
            windows.index_fill_(0, row_starts[done:stop], 0)
            done = stop
    return out


class _ScaleAndDropBlocks(torch.autograd.Function):
    """``y = x * scale`` with the listed blocks zeroed; the gradient gets the same map.

    Saves only the segment starts (a few per seed), never a full-size mask.
    """

    @staticmethod
    def forward(ctx, x, scale, row_starts, block_w):
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        _scale_and_zero_segments(x, scale, out, row_starts, block_w)
        ctx.save_for_backward(row_starts, *([scale] if isinstance(scale, torch.Tensor) else []))
        ctx.scale = None if isinstance(scale, torch.Tensor) else scale
        ctx.block_w = block_w
        return out

    @staticmethod
    def backward(ctx, grad_out):
        row_starts = ctx.saved_tensors[0]
        scale = ctx.saved_tensors[1] if ctx.scale is None else ctx.scale
        grad_in = torch.empty_like(grad_out, memory_format=torch.contiguous_format)
        return (
            _scale_and_zero_segments(grad_out, scale, grad_in, row_starts, ctx.block_w),
            None,
            None,
            None,
        )


def _rescale_factors(dropped, units_per_sample, batch, normalize, keep_prob, device, dtype):
    """Rescaling factors from dropped-unit counts, in the form :func:`_scale_into` takes.

    Python floats on CPU; on accelerators an (N, 1, 1, 1) tensor of ``dtype`` (float32, or
    float64 for float64 inputs) computed on the device, so that nothing waits for the GPU.
    """
    if normalize == "expected":
        return 1.0 / keep_prob
    if _on_host(device):
        counts = dropped
        if normalize == "batch":
            kept = units_per_sample * batch - sum(counts)
            return units_per_sample * batch / kept if kept else 0.0
        return [
            units_per_sample / (units_per_sample - d) if d < units_per_sample else 0.0
            for d in counts
        ]
    # float64 counts are exact; the factor is rounded once, to dtype.
    if normalize == "batch":
        dropped = dropped.sum().expand(batch)
        total = units_per_sample * batch
    else:
        total = units_per_sample
    kept = (total - dropped).double()
    # torch.div, not `total / kept`: a Python number over a tensor multiplies by the reciprocal,
    # one more rounding than the CPU path's division.
    factor = torch.where(kept > 0, torch.div(total, kept.clamp_min(1)), torch.zeros_like(kept))
    return factor.to(dtype).view(batch, 1, 1, 1)


def _drop_block_sparse(x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator):
    """Eager path: sparse seeds, index-filled blocks, one scaled copy forward and backward."""
    batch, channels, height, width = x.shape
    mask_channels = 1 if share_channels else channels
    with torch.no_grad():
        row_starts = _block_row_starts(
            x.shape, mask_channels, block_h, block_w, gamma, generator, x.device
        )
        units_per_sample = mask_channels * height * width
        dropped = None
        if normalize != "expected":
            dropped = _dropped_units(row_starts, block_w, units_per_sample, batch)
        # Factors and channel-shared masks are float32 (float64 for float64 inputs).
        factor_dtype = torch.promote_types(x.dtype, torch.float32)
        scale = _rescale_factors(
            dropped, units_per_sample, batch, normalize, keep_prob, x.device, factor_dtype
        )
    if not share_channels:
        return _ScaleAndDropBlocks.apply(x, scale, row_starts, block_w)

    # Channel-shared: a small (N, 1, H, W) mask holding the factor, broadcast in one multiply.
    with torch.no_grad():
        float_mask = torch.empty((batch, 1, height, width), dtype=factor_dtype, device=x.device)
        if isinstance(scale, list):
            float_mask.copy_(torch.tensor(scale, dtype=factor_dtype).view(batch, 1, 1, 1))
        elif isinstance(scale, float):
            float_mask.fill_(scale)
        else:
            float_mask.copy_(scale.expand_as(float_mask))
        if row_starts.numel():
            _segment_windows(float_mask.view(-1), block_w).index_fill_(0, row_starts, 0)
        mask = float_mask
        if x.dtype != factor_dtype and _on_host(x.device):
            # CPU kernels are slow on mixed dtypes. A factor the dtype can hold is cast (a relative
            # error of at most half an ulp of the dtype); one it can't needs the float32 product.
            largest = max(scale) if isinstance(scale, list) else scale
            if largest <= torch.finfo(x.dtype).max:
                mask = float_mask.to(x.dtype)
                # Rounded toward zero: a factor rounded up could overflow a product that the
                # float32 factor keeps representable.
                rounded_up = mask.float() > float_mask
                mask = torch.where(rounded_up, torch.nextafter(mask, torch.zeros_like(mask)), mask)
            else:
                return (x.float() * float_mask).to(x.dtype)
    if mask.dtype == x.dtype:
        return x * mask
    # 16-bit inputs on accelerators: the float32 product is rounded once into x's dtype.
    return _MixedDtypeMultiply.apply(x, mask)


class _MixedDtypeMultiply(torch.autograd.Function):
    """``x * mask`` computed at the mask's (wider) precision, stored in x's dtype."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return torch.mul(x, mask, out=torch.empty_like(x))

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        return torch.mul(grad_out, mask, out=torch.empty_like(grad_out)), None


def _drop_block_dense(x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator):
    """Graph-friendly path for torch.compile: dense seeds and a max-pool, keep_prob as data.

    Same distribution as the sparse path; static shapes and no host syncs, so a compiled graph
    is reused whatever keep_prob's value.
    """
    batch, channels, height, width = x.shape
    mask_channels = 1 if share_channels else channels
    corners = (batch, mask_channels, height - block_h + 1, width - block_w + 1)
    seed_prob = _seed_rate_tensor(keep_prob, height, width, block_h, block_w, gamma, x.device)
    noise = torch.rand(corners, dtype=torch.float32, device=x.device, generator=generator)
    seeds = (noise < seed_prob).float()
    # A corner at (a, b) covers rows a..a+bh-1: pad by bh-1 (bw-1) on both sides, max-pool.
    seeds = F.pad(seeds, (block_w - 1, block_w - 1, block_h - 1, block_h - 1))
    keep = 1.0 - F.max_pool2d(seeds, (block_h, block_w), stride=1)
    if normalize == "expected":
        factor = 1.0 / torch.as_tensor(keep_prob, dtype=torch.float32, device=x.device)
    else:
        dims = (0, 1, 2, 3) if normalize == "batch" else (1, 2, 3)
        kept = keep.sum(dim=dims, keepdim=True)
        total = keep[0].numel() * (batch if normalize == "batch" else 1)
        factor = torch.where(
            kept > 0, torch.div(total, kept.clamp_min(1.0)), torch.zeros_like(kept)
        )
    mask = keep * factor
    if x.dtype in (torch.float16, torch.bfloat16):
        # The float32 product is rounded once (the factor may not fit in float16); the compiler
        # fuses the casts into the multiply.
        return (x.float() * mask).to(x.dtype)
    return x * mask.to(x.dtype)


def drop_block_2d(
    x: torch.Tensor,
    keep_prob: Union[float, torch.Tensor],
    block_size: int,
    *,
    training: bool = True,
    share_channels: bool = False,
    gamma: str = "paper",
    normalize: str = "batch",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """DropBlock: zero random ``block_size x block_size`` blocks of a feature map and rescale.

    Blocks are anchored by their top-left corner, drawn only where the block fits (see the module
    docstring): for odd sizes the seed is the block's centre; for even sizes the block spans
    ``bs // 2`` units before the seed and ``(bs - 1) // 2`` after it (TF SAME anchoring). A block
    larger than the map on an axis is clipped to that axis, so a block covering the whole map
    drops whole channels (SpatialDropout) and ``block_size=1`` is dropout.

    Args:
        x (Tensor): (N, C, H, W) floating-point input (float32, float16, bfloat16 or float64).
        keep_prob (float or Tensor): target fraction of kept units, in (0, 1]. A 0-d tensor is read
            as data inside ``torch.compile`` graphs (no recompilation when it changes).
        block_size (int): side of the dropped blocks, >= 1 (clipped per axis to the map).
        training (bool): False returns ``x`` itself.
        share_channels (bool): False draws one mask per channel (the paper's Algorithm 1); True
            draws one mask per sample, shared by its channels.
        gamma (str): seed rate, "paper" (the paper's formula, ~5% under target because blocks
            overlap) or "exact" (expected dropped fraction exactly ``1 - keep_prob``).
        normalize (str): rescaling of the kept units: "batch" multiplies by
            count(mask) / count_ones(mask) over the whole batch (paper, TF reference), "sample" does
            so per sample, "expected" multiplies by 1 / keep_prob. Counts are exact integers; a
            batch (or sample) with nothing kept is all zeros.
        generator (torch.Generator, optional): source of randomness, on x's device.

    Returns:
        Tensor: same shape and dtype as x; ``x`` itself when not training, when keep_prob == 1
        or when x is empty. The gradient w.r.t. x is the same mask times the same factor.

    Non-finite values: the rescale factor is computed in float32, so finite inputs never become
    NaN. In float16/bfloat16 the product is rounded once into the input dtype: a kept value above
    ``torch.finfo(dtype).max / factor`` becomes +-Inf (it is not representable), and every smaller
    one stays finite.

    Raises:
        ValueError: keep_prob outside (0, 1], block_size < 1, an unknown gamma or normalize, or an
            x that is not a 4-D floating-point tensor.
    """
    block_size = _check_block_size(block_size)
    _check_choice("gamma", gamma, GAMMA_MODES)
    _check_choice("normalize", normalize, NORMALIZE_MODES)
    _check_input(x)
    if not training:
        return x
    batch, channels, height, width = x.shape
    block_h, block_w = min(block_size, height), min(block_size, width)
    compiling = torch.compiler.is_compiling()
    # Inside a compiled graph a tensor keep_prob stays data (no recompiles when it changes), so it
    # is neither read nor checked here.
    if not (compiling and isinstance(keep_prob, torch.Tensor)):
        keep_prob = _check_keep_prob(keep_prob)
        if keep_prob == 1.0 or x.numel() == 0:
            return x
    if compiling:
        return _drop_block_dense(
            x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator
        )
    if gamma == "paper":
        seed_prob = _paper_gamma(height, width, block_h, block_w, keep_prob)
    else:
        seed_prob = _exact_gamma(height, width, block_h, block_w, keep_prob)
    return _drop_block_sparse(
        x, keep_prob, block_h, block_w, share_channels, seed_prob, normalize, generator
    )


class DropBlock2d(nn.Module):
    """DropBlock as a module; identity in eval mode.

    ``keep_prob`` is a settable attribute stored in a non-persistent 0-d buffer: it follows the
    module across devices, stays out of the state_dict (a model's state_dict is the same with and
    without DropBlock), and is read as data inside ``torch.compile`` graphs, so a schedule can
    change it every step without recompiling. Eager forwards use a Python copy of the value,
    refreshed whenever the buffer changes, so they never wait on an accelerator to read it.

    Args:
        keep_prob (float): target fraction of kept units, in (0, 1].
        block_size (int): side of the dropped blocks, >= 1.
        share_channels (bool): one mask per sample shared by its channels (default: per channel).
        gamma (str): "paper" or "exact", see :func:`drop_block_2d`.
        normalize (str): "batch", "sample" or "expected", see :func:`drop_block_2d`.
    """

    def __init__(
        self,
        keep_prob: float = 0.9,
        block_size: int = 7,
        *,
        share_channels: bool = False,
        gamma: str = "paper",
        normalize: str = "batch",
    ):
        super().__init__()
        keep_prob = _check_keep_prob(keep_prob)
        self.block_size = _check_block_size(block_size)
        self.share_channels = bool(share_channels)
        self.gamma = _check_choice("gamma", gamma, GAMMA_MODES)
        self.normalize = _check_choice("normalize", normalize, NORMALIZE_MODES)
        self.register_buffer("_keep_prob", torch.tensor(keep_prob), persistent=False)
        self._remember_keep_prob(keep_prob)

    def _remember_keep_prob(self, value: float) -> None:
        # The copy is valid while the buffer is the same tensor at the same in-place version;
        # .to()/.half() replace the tensor and every fill_/copy_ bumps its version.
        self._keep_prob_copy: Tuple[torch.Tensor, int, float] = (
            self._keep_prob,
            self._keep_prob._version,
            value,
        )

    @property
    def keep_prob(self) -> float:
        """Current keep probability (float)."""
        buffer, version, value = self._keep_prob_copy
        if buffer is not self._keep_prob or version != self._keep_prob._version:
            value = float(self._keep_prob)
            self._remember_keep_prob(value)
        return value

    @keep_prob.setter
    def keep_prob(self, value) -> None:
        value = _check_keep_prob(value)
        with torch.no_grad():
            self._keep_prob.fill_(value)
        self._remember_keep_prob(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        # Compiled graphs read the buffer as data; eager code uses the cached float.
        keep_prob = self._keep_prob if torch.compiler.is_compiling() else self.keep_prob
        return drop_block_2d(
            x,
            keep_prob,
            self.block_size,
            training=True,
            share_channels=self.share_channels,
            gamma=self.gamma,
            normalize=self.normalize,
        )

    def extra_repr(self) -> str:
        return (
            f"keep_prob={self.keep_prob:g}, block_size={self.block_size}, "
            f"share_channels={self.share_channels}, gamma={self.gamma!r}, "
            f"normalize={self.normalize!r}"
        )
