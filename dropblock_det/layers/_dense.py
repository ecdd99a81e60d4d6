"""Dense DropBlock: seeds as dense noise, blocks by a max-pool, all bookkeeping on the device.

Launches a fixed handful of element-wise kernels and never reads a value back to the host, so it
serves compiled graphs (keep_prob as tensor data: no recompiles when it changes), CUDA-graph
capture, and eager CUDA steps without a host sync.
"""

import torch
import torch.nn.functional as F

from ._seed_rate import host_gamma, seed_rate_tensor

__all__ = ["drop_block_dense"]


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
        inverse_keep = 1.0 / keep_prob.to(device=x.device, dtype=torch.float32)
    else:
        # Host floats: a tensor made from them would be a host-to-device copy, i.e. a sync.
        seed_prob = host_gamma(gamma, height, width, block_h, block_w, keep_prob)
        inverse_keep = 1.0 / keep_prob
    noise = torch.rand(corners, dtype=torch.float32, device=x.device, generator=generator)
    seeds = (noise < seed_prob).float()
    # A corner at (a, b) covers rows a..a+bh-1: pad by bh-1 (bw-1) on both sides, max-pool.
    seeds = F.pad(seeds, (block_w - 1, block_w - 1, block_h - 1, block_h - 1))
    keep = 1.0 - F.max_pool2d(seeds, (block_h, block_w), stride=1)
    if normalize == "expected":
        factor = inverse_keep
    else:
        dims = (0, 1, 2, 3) if normalize == "batch" else (1, 2, 3)
        # float64 sums: exact counts at any detector batch size (float32 stops at 2**24).
        kept = keep.sum(dim=dims, keepdim=True, dtype=torch.float64)
        total = keep[0].numel() * (batch if normalize == "batch" else 1)
        factor = torch.where(
            kept > 0, torch.div(total, kept.clamp_min(1.0)), torch.zeros_like(kept)
        ).float()
    mask = keep * factor
    if x.dtype in (torch.float16, torch.bfloat16):
        # The float32 product is rounded once (the factor may not fit in float16); the compiler
        # fuses the casts into the multiply.
        return (x.float() * mask).to(x.dtype)
    return x * mask.to(x.dtype)
