"""Sparse DropBlock (the CPU backend): seeds as a sorted list, blocks written by index fills.

At keep_prob 0.9 and block 7 only ~0.3% of the corners are seeds, so the seeds are drawn sparsely
(Bernoulli successes as a cumulative sum of geometric gaps) instead of as dense noise, and the
blocks are written with index fills instead of a dense max-pool over the whole tensor. The number
of dropped units (for the rescaling) comes from the seed list alone: the blocks are unions of
equal-length row segments, whose union length is a sum over the sorted segment starts.

On accelerators the counts and factors stay on the device, but sizing the seed list needs one host
sync per call: there the dense and Triton backends are the ones to use.
"""

import math

import numpy as np
import torch

from ._seed_rate import host_gamma

__all__ = ["drop_block_sparse"]

# Single-threaded CPU work unit of the scale-and-zero pass (BENCHMARKS.md, "DropBlock operator").
# With several intra-op threads each extra op is a thread-pool round trip: no chunks there.
_CPU_CHUNK_BYTES = 4 << 20


def _on_host(device: torch.device) -> bool:
    """Whether the bookkeeping of a tensor on ``device`` runs on the host (NumPy, Python floats)."""
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

    One index_fill_ on it writes whole segments; the windows overlap, but every write is 0.
    """
    return flat.as_strided((flat.numel() - block_w + 1, block_w), (1, 1))


def _scale_and_zero_segments(src, scale, out, row_starts, block_w) -> torch.Tensor:
    """``out = src * scale`` in src's dtype, then zero the bw-long segments at ``row_starts``.

    The product is computed in float32 or wider: ``scale`` is a Python float, a list of them (one
    per sample) or, on accelerators (where reading it back would sync), a float32 (N, 1, 1, 1)
    tensor. On a single-threaded CPU the work goes in chunks of _CPU_CHUNK_BYTES, each chunk's
    segments zeroed (scattered writes) right after the chunk is scaled, while it is in cache.
    """
    windows = _segment_windows(out.view(-1), block_w)
    chunked = (
        out.device.type == "cpu"
        and not isinstance(scale, torch.Tensor)
        and src.is_contiguous()
        and torch.get_num_threads() == 1
    )
    if not chunked:
        if isinstance(scale, list):
            for sample, factor in enumerate(scale):
                torch.mul(src[sample], factor, out=out[sample])
        else:  # a Python float enters the kernel at float32+ precision: no early fp16 overflow
            torch.mul(src, scale, out=out)
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
    for (begin, end, factor), stop in zip(pieces, stops, strict=False):
        torch.mul(flat_src[begin:end], factor, out=flat_out[begin:end])
        if stop > done:
            windows.index_fill_(0, row_starts[done:stop], 0)
            done = stop
    return out


class _ScaleAndDropBlocks(torch.autograd.Function):
    """``y = x * scale`` with the listed blocks zeroed, the same on dy; saves no full-size mask."""

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
        _scale_and_zero_segments(grad_out, scale, grad_in, row_starts, ctx.block_w)
        return grad_in, None, None, None


def _rescale_factors(dropped, units_per_sample, batch, normalize, keep_prob, device, dtype):
    """Rescaling factors from dropped-unit counts, as :func:`_scale_and_zero_segments` takes them.

    Python floats on CPU; on accelerators an (N, 1, 1, 1) tensor of ``dtype`` (float32, or
    float64 for float64 inputs) computed on the device, so that nothing waits for the GPU.
    """
    if normalize == "expected":
        return 1.0 / keep_prob
    if _on_host(device):
        if normalize == "batch":
            kept = units_per_sample * batch - sum(dropped)
            return units_per_sample * batch / kept if kept else 0.0
        return [
            units_per_sample / (units_per_sample - d) if d < units_per_sample else 0.0
            for d in dropped
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


def drop_block_sparse(x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator):
    """Eager path: sparse seeds, index-filled blocks, one scaled copy forward and backward."""
    batch, channels, height, width = x.shape
    mask_channels = 1 if share_channels else channels
    seed_prob = host_gamma(gamma, height, width, block_h, block_w, keep_prob)
    with torch.no_grad():
        row_starts = _block_row_starts(
            x.shape, mask_channels, block_h, block_w, seed_prob, generator, x.device
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
