"""Dense DropBlock: dense noise, blocks by window sums, all bookkeeping on the device.

Launches a fixed handful of element-wise kernels and never reads a value back to the host, so it
serves compiled graphs (keep_prob as tensor data: no recompiles when it changes), CUDA-graph
capture, and eager CUDA steps without a host sync.

Narrow intermediates: the float32 noise (gamma needs its resolution) becomes float16 seeds, summed
over each block window (``avg_pool2d`` as a sum: no int64 indices, which ``max_pool2d`` writes on
CUDA). The kept units are a bool mask: autograd saves a byte a unit, not a float32 mask.
"""

import torch
import torch.nn.functional as F

from ._seed_rate import host_gamma, seed_rate_tensor

__all__ = ["drop_block_dense"]

# Seeds 0 and 1 are exact in float16, and a window sum of them, however rounded (+inf past the
# float16 range), is nonzero exactly when the window holds a seed.
_SEED_DTYPE = torch.float16


def _scaled(t, mask, factor=None):
    """``t * mask * factor``, the float32 product rounded once into t's dtype.

    Per-channel masks: t times the bool ``mask`` (exact), then times ``factor`` in place (computed
    in float32, or float64 for float64 t). A shared mask comes as one float32 map (``keep *
    factor``, 1/C of t's size) and no ``factor``: one multiply.
    """
    if factor is None:
        return torch.mul(t, mask, out=torch.empty_like(t))
    return torch.mul(t, mask).mul_(factor)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep * factor; the gradient is the same mask and factor on dy."""

    @staticmethod
    def forward(ctx, x, keep, factor):
        saved = (keep * factor,) if keep.shape[1] != x.shape[1] else (keep, factor)
        ctx.save_for_backward(*saved)
        return _scaled(x, *saved)

    @staticmethod
    def backward(ctx, grad_out):
        return _scaled(grad_out, *ctx.saved_tensors), None, None


def drop_block_dense(x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator):
    """Dense-path DropBlock; arguments as :func:`~dropblock_det.layers.drop_block_2d`.

    Args:
        keep_prob (float or Tensor): a Python float (checked by the caller) enters the kernels as
            a scalar argument; a tensor stays device data.
        block_h (int), block_w (int): the clipped block.
        gamma (str): the seed-rate mode, "paper" or "exact".
    """
    batch, channels, height, width = x.shape
    mask_channels = 1 if share_channels else channels
    corners = (batch, mask_channels, height - block_h + 1, width - block_w + 1)
    if isinstance(keep_prob, torch.Tensor):
        seed_prob = seed_rate_tensor(keep_prob, height, width, block_h, block_w, gamma, x.device)
    else:
        # Host floats: a tensor made from them would be a host-to-device copy, i.e. a sync.
        seed_prob = host_gamma(gamma, height, width, block_h, block_w, keep_prob)
    noise = torch.rand(corners, dtype=torch.float32, device=x.device, generator=generator)
    seeds = torch.lt(noise, seed_prob, out=torch.empty_like(noise, dtype=_SEED_DTYPE))
    # A corner at (a, b) covers rows a..a+bh-1: pad by bh-1 (bw-1) on both sides, sum windows.
    seeds = F.pad(seeds, (block_w - 1, block_w - 1, block_h - 1, block_h - 1))
    keep = F.avg_pool2d(seeds, (block_h, block_w), stride=1, divisor_override=1) == 0
    if normalize == "expected":
        if isinstance(keep_prob, torch.Tensor):
            factor = (1.0 / keep_prob.to(device=x.device, dtype=torch.float32)).reshape(1, 1, 1, 1)
        else:
            factor = torch.full((1, 1, 1, 1), 1.0 / keep_prob, dtype=torch.float32, device=x.device)
    else:
        dims = (0, 1, 2, 3) if normalize == "batch" else (1, 2, 3)
        # float64 sums: exact counts at any detector batch size (float32 stops at 2**24).
        kept = keep.sum(dim=dims, keepdim=True, dtype=torch.float64)
        total = mask_channels * height * width * (batch if normalize == "batch" else 1)
        # Nothing kept: factor 0 (the output is all zeros), not total / 0.
        factor = torch.div(total, kept).masked_fill_(kept == 0, 0.0).float()
    return _MaskedScale.apply(x, keep, factor)
