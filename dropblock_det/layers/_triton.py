"""The Triton backend: the kernels of :mod:`._triton_kernels` as torch custom ops.

Two ops, both ``torch.library.triton_op`` so that torch.compile traces into the kernels:
``dropblock_det::triton_mask`` draws the bit mask and the per-sample kept counts,
``dropblock_det::triton_apply`` multiplies by mask x factor. The apply op's gradient is the same
op on the output gradient with the same mask and counts, so it is exactly mask x factor. Eager
calls launch the same kernels from an autograd Function, without the custom-op dispatch.

The Philox seed is drawn from the torch generator as a one-element device tensor that the kernel
loads: no host sync, reproducible under ``torch.manual_seed``, and capturable in a CUDA graph.
gamma and 1/keep_prob also reach the kernels as device tensors, so a compiled graph takes a new
keep_prob as data.
"""

import os

import torch
import triton
from torch.library import triton_op, wrap_triton

from ._seed_rate import host_gamma, seed_rate_tensor
from ._triton_kernels import NORMALIZE_CODES, dropblock_apply_kernel, dropblock_mask_kernel

__all__ = ["drop_block_triton", "triton_serves", "INTERPRETED"]

# Read once, as Triton reads it when it decorates the kernels.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Units of one mask tile (BLOCK_R x BLOCK_W): enough rows to amortise the bh - 1 halo rows.
_TILE_UNITS = 4096
# Units per thread of a mask program: at 16, the kernel's int32 blocks fit in ~60 registers on
# sm_90 (ptxas -v), not the 200+ of 32, which would leave one program per SM.
_UNITS_PER_THREAD = 16
# Largest tile (32 warps of 32 threads); wider maps go to the dense path.
_MAX_TILE_UNITS = 32 * 32 * _UNITS_PER_THREAD
_APPLY_BLOCK = 1024
_INT32_LIMIT = 2**31 - 1


def _tile(height: int, width: int, block_h: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_W) of the mask kernel for this map and block height."""
    block_w = max(8, triton.next_power_of_2(width))
    # At least 2 bh rows (half of them or more are output rows), at most what the map needs.
    least = triton.next_power_of_2(2 * block_h)
    rows = max(least, triton.next_power_of_2(_TILE_UNITS // block_w))
    return min(rows, max(triton.next_power_of_2(height + block_h - 1), least)), block_w


def _mask_warps(rows: int, cols: int) -> int:
    """Warps of a mask program: ``_UNITS_PER_THREAD`` units per thread, 4 to 32 warps."""
    return min(32, max(4, rows * cols // (32 * _UNITS_PER_THREAD)))


def triton_serves(x: torch.Tensor, block_h: int, share_channels: bool) -> bool:
    """Whether the Triton backend computes DropBlock of ``x`` (otherwise: the dense path).

    It takes CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``) of float32/float16/bfloat16,
    with every index inside int32 and a mask tile of at most ``_MAX_TILE_UNITS`` units.
    """
    on_device = x.device.type == ("cpu" if INTERPRETED else "cuda")
    if not on_device or x.dtype not in _DTYPES:
        return False
    batch, channels, height, width = x.shape
    mask_planes = batch * (1 if share_channels else channels)
    rows, cols = _tile(height, width, block_h)
    return (
        channels * height * width <= _INT32_LIMIT
        and mask_planes * height * width <= _INT32_LIMIT
        and rows * cols <= _MAX_TILE_UNITS
    )


def _launch_mask(launcher, x, seed, gamma, block_h, block_w, mask_channels):
    """Run the mask kernel through ``launcher`` (the kernel, or its ``wrap_triton`` for ops)."""
    batch, _, height, width = x.shape
    row_bytes = (width + 7) // 8
    mask = torch.empty(
        (batch * mask_channels, height, row_bytes), dtype=torch.uint8, device=x.device
    )
    counts = torch.zeros((batch,), dtype=torch.int32, device=x.device)
    rows, cols = _tile(height, width, block_h)
    rows_out = rows - (block_h - 1)
    grid = (triton.cdiv(height, rows_out), batch * mask_channels)
    launcher(dropblock_mask_kernel)[grid](
        seed,
        gamma,
        mask,
        counts,
        height,
        width,
        block_h,
        block_w,
        mask_channels,
        row_bytes,
        rows_out,
        BLOCK_R=rows,
        BLOCK_W=cols,
        num_warps=_mask_warps(rows, cols),
    )
    return mask, counts


def _launch_apply(launcher, x, mask, counts, inverse_keep, normalize):
    """Run the apply kernel (y = x * mask * factor) through ``launcher``."""
    batch, channels, height, width = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    grid = (triton.cdiv(channels * height * width, _APPLY_BLOCK), batch)
    launcher(dropblock_apply_kernel)[grid](
        x,
        mask,
        counts,
        inverse_keep,
        y,
        batch,
        channels,
        height,
        width,
        mask.shape[0] // batch,
        mask.shape[2],
        NORMALIZE=normalize,
        BLOCK=_APPLY_BLOCK,
        BATCH_BLOCK=triton.next_power_of_2(batch),
    )
    return y


def _direct(kernel):
    return kernel


# The ops that torch.compile traces into. Eager calls launch the same kernels from
# _TritonDropBlock instead, skipping the custom-op dispatch layers (host time in every step).
@triton_op("dropblock_det::triton_mask", mutates_args=())
def _triton_mask(
    x: torch.Tensor,
    seed: torch.Tensor,
    gamma: torch.Tensor,
    block_h: int,
    block_w: int,
    mask_channels: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_mask(wrap_triton, x, seed, gamma, block_h, block_w, mask_channels)


@triton_op("dropblock_det::triton_apply", mutates_args=())
def _triton_apply(
    x: torch.Tensor,
    mask: torch.Tensor,
    counts: torch.Tensor,
    inverse_keep: torch.Tensor,
    normalize: int,
) -> torch.Tensor:
    return _launch_apply(wrap_triton, x, mask, counts, inverse_keep, normalize)


def _setup_context(ctx, inputs, output):
    _, mask, counts, inverse_keep, normalize = inputs
    ctx.save_for_backward(mask, counts, inverse_keep)
    ctx.normalize = normalize


def _backward(ctx, grad_out):
    mask, counts, inverse_keep = ctx.saved_tensors
    grad_in = _triton_apply(grad_out, mask, counts, inverse_keep, ctx.normalize)
    return grad_in, None, None, None, None


_triton_apply.register_autograd(_backward, setup_context=_setup_context)


class _TritonDropBlock(torch.autograd.Function):
    """Eager form of the two ops: the same kernels, the same saved mask and counts."""

    @staticmethod
    def forward(ctx, x, seed, gamma, inverse_keep, block_h, block_w, mask_channels, normalize):
        mask, counts = _launch_mask(_direct, x, seed, gamma, block_h, block_w, mask_channels)
        ctx.save_for_backward(mask, counts, inverse_keep)
        ctx.normalize = normalize
        return _launch_apply(_direct, x, mask, counts, inverse_keep, normalize)

    @staticmethod
    def backward(ctx, grad_out):
        mask, counts, inverse_keep = ctx.saved_tensors
        grad_in = _launch_apply(_direct, grad_out, mask, counts, inverse_keep, ctx.normalize)
        return grad_in, None, None, None, None, None, None, None


def drop_block_triton(
    x: torch.Tensor,
    keep_prob,
    block_h: int,
    block_w: int,
    share_channels: bool,
    gamma: str,
    normalize: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Triton-backend DropBlock; arguments as :func:`~dropblock_det.layers._dense.drop_block_dense`.

    The caller checks :func:`triton_serves` first.
    """
    batch, channels, height, width = x.shape
    device = x.device
    if isinstance(keep_prob, torch.Tensor):
        seed_prob = seed_rate_tensor(keep_prob, height, width, block_h, block_w, gamma, device)
        inverse_keep = 1.0 / keep_prob.to(device=device, dtype=torch.float32)
    else:
        # torch.full passes the value as a kernel argument: no host-to-device copy, no sync.
        rate = host_gamma(gamma, height, width, block_h, block_w, keep_prob)
        seed_prob = torch.full((), rate, dtype=torch.float32, device=device)
        inverse_keep = torch.full((), 1.0 / keep_prob, dtype=torch.float32, device=device)
    seed = torch.randint(2**62, (1,), dtype=torch.int64, device=device, generator=generator)
    mask_channels = 1 if share_channels else channels
    seed_prob, inverse_keep = seed_prob.reshape(()), inverse_keep.reshape(())
    normalize = NORMALIZE_CODES[normalize]
    if not torch.compiler.is_compiling():
        return _TritonDropBlock.apply(
            x, seed, seed_prob, inverse_keep, block_h, block_w, mask_channels, normalize
        )
    mask, counts = _triton_mask(x, seed, seed_prob, block_h, block_w, mask_channels)
    return _triton_apply(x, mask, counts, inverse_keep, normalize)
