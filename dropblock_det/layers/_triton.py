"""The Triton backend: the kernels of :mod:`._triton_kernels` as torch custom ops, and eagerly.

``dropblock_det::triton_mask`` draws the bit mask and the per-sample kept counts,
``dropblock_det::triton_apply`` multiplies by mask x factor; both are ``torch.library.triton_op``
so that torch.compile traces into the kernels, and the apply op's gradient is the same op on the
output gradient (exactly mask x factor). Eager calls launch the same kernels from an autograd
Function, without the custom-op dispatch. The Philox seed is drawn from the torch generator as a
one-element device tensor that the kernel loads: no host sync, reproducible under
``torch.manual_seed``, and capturable in a CUDA graph.
"""

import contextlib
import os

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._seed_rate import host_gamma, seed_rate_tensor
from ._triton_kernels import (
    APPLY_VEC,
    FLAT_UNITS_LIMIT,
    MAX_BLOCK_W,
    NORMALIZE_CODES,
    dropblock_apply_kernel,
    dropblock_mask_kernel,
)

__all__ = ["INTERPRETED", "apply_launch", "drop_block_triton", "mask_launch", "triton_serves"]

# Read once, as Triton reads it when it decorates the kernels.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1
# Mask words per mask program (one lane each in a chunk of _MASK_BLOCK): enough to amortise the
# program's prologue, few enough that a batch of large planes still fills the GPU.
_MASK_BLOCK = 128
_MASK_WORDS_PER_PROGRAM = 1024
# Maps narrower than this have mask words that span three rows or more: there the seed rows are
# OR-ed once into a scratch string (the kernel's DILATE) instead of bh times per mask row, for
# one more scratch write and read of about a bit per unit.
_DILATE_BELOW_WIDTH = 32
# Elements per apply program: the factor is computed once per program.
_APPLY_UNITS_PER_PROGRAM = 16384
_APPLY_BLOCKS = (1024, 512, 256)
# Apply runs flat over several planes where per-plane blocks leave more than 1 lane in this many
# idle (the flat loop's per-vector plane index costs about that share of an element's work).
_FLAT_IDLE_SHARE = 8
# Programs enough to fill a large GPU (132 SMs x several programs each) before grouping planes.
_MIN_PROGRAMS = 1024


def _planes_per_program(planes: int, group: int, plane_cost: int, budget: int) -> int:
    """Planes one program handles: a power of two dividing ``group``, within ``budget``."""
    count = 1
    while (
        group % (2 * count) == 0
        and 2 * count * plane_cost <= budget
        and planes // (2 * count) >= _MIN_PROGRAMS
    ):
        count *= 2
    return count


def _words(units: int) -> int:
    return (units + 31) // 32


def mask_launch(batch, mask_channels, height, width, block_h, block_w):
    """Launch geometry of the mask kernel: (grid, planes per program, seed words, mask words)."""
    planes = batch * mask_channels
    seed_words = _words((height - block_h + 1) * (width - block_w + 1))
    mask_words = _words(height * width)
    per_program = _planes_per_program(
        planes, mask_channels, max(seed_words, mask_words), _MASK_WORDS_PER_PROGRAM
    )
    return (triton.cdiv(planes, per_program),), per_program, seed_words, mask_words


def _fewest_idle_lanes(units: int) -> int:
    """The apply block with the fewest idle lanes over ``units`` (ties: the larger block)."""
    return min(_APPLY_BLOCKS, key=lambda b: (triton.cdiv(units, b) * b, -b))


def apply_launch(batch: int, channels: int, plane_units: int):
    """Launch geometry of the apply kernel: (grid, planes per program, BLOCK, num_warps, FLAT).

    Per plane (``FLAT`` false) unless blocks over the plane leave more than one lane in
    ``_FLAT_IDLE_SHARE`` idle and the plane size is a multiple of ``APPLY_VEC``; then the program's
    planes run as one flat range, whose plane index per vector costs less than those idle lanes.
    """
    planes = batch * channels
    plane_block = _fewest_idle_lanes(plane_units)
    padded = triton.cdiv(plane_units, plane_block) * plane_block
    flat = False
    if (padded - plane_units) * _FLAT_IDLE_SHARE > padded and plane_units % APPLY_VEC.value == 0:
        per_program = _planes_per_program(planes, channels, plane_units, _APPLY_UNITS_PER_PROGRAM)
        block = _fewest_idle_lanes(per_program * plane_units)
        flat = per_program * plane_units + block <= FLAT_UNITS_LIMIT
    if not flat:
        block = plane_block
        per_program = _planes_per_program(planes, channels, padded, _APPLY_UNITS_PER_PROGRAM)
    # 8 elements per thread: one 128-bit vector of fp16, two of fp32.
    return (triton.cdiv(planes, per_program),), per_program, block, max(1, block // 256), flat


def triton_serves(x: Tensor, block_h: int, share_channels: bool, block_w: int = 1) -> bool:
    """Whether the Triton backend computes DropBlock of ``x`` (otherwise: the dense path).

    It takes CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``) of float32/float16/bfloat16
    whose plane fits int32 indices (planes themselves may number up to 2**31 - 1), with a block
    width of at most ``MAX_BLOCK_W`` (the mask kernel's 64-bit seed window).
    """
    on_device = x.device.type == ("cpu" if INTERPRETED else "cuda")
    if not on_device or x.dtype not in _DTYPES:
        return False
    batch, channels, height, width = x.shape
    return (
        height * width + 32 * _APPLY_BLOCKS[0] <= _INT32_LIMIT
        and batch * channels <= _INT32_LIMIT
        and max(block_h, block_w) <= MAX_BLOCK_W
    )


def _launch_mask(launcher, x, seed, rate, block_h, block_w, mask_channels):
    """Run the mask kernel through ``launcher`` (the kernel, or its ``wrap_triton`` for ops).

    ``rate`` is the seed rate: a Python float (a kernel argument) or a 0-d float32 tensor that the
    kernel loads (compiled graphs, CUDA graphs: the schedule's new value is data).
    """
    batch, _, height, width = x.shape
    grid, per_program, seed_words, mask_words = mask_launch(
        batch, mask_channels, height, width, block_h, block_w
    )
    planes = batch * mask_channels
    scratch = torch.empty((planes, seed_words), dtype=torch.int32, device=x.device)
    dilate = width < _DILATE_BELOW_WIDTH and block_h > 1
    dilated_words = _words(height * (width - block_w + 1)) if dilate else 0
    # Without DILATE the kernel never reads it: the seed scratch stands in (no empty pointer).
    dilated = scratch
    if dilate:
        dilated = torch.empty((planes, dilated_words), dtype=torch.int32, device=x.device)
    mask = torch.empty((planes, mask_words), dtype=torch.int32, device=x.device)
    counts = torch.zeros((batch,), dtype=torch.int32, device=x.device)
    on_device = isinstance(rate, Tensor)
    launcher(dropblock_mask_kernel)[grid](
        seed,
        rate if on_device else seed,
        0.0 if on_device else rate,
        scratch,
        dilated,
        mask,
        counts,
        planes,
        per_program,
        mask_channels,
        height,
        width,
        height - block_h + 1,
        width - block_w + 1,
        seed_words,
        dilated_words,
        mask_words,
        BH=block_h,
        BW=block_w,
        RATE_ON_DEVICE=on_device,
        DILATE=dilate,
        BLOCK=_MASK_BLOCK,
        num_warps=_MASK_BLOCK // 32,
    )
    return mask, counts


def _launch_apply(launcher, x, mask, counts, keep_prob, normalize):
    """Run the apply kernel (y = x * mask * factor) through ``launcher``.

    ``keep_prob``: a Python float or a 0-d tensor read on the device (used by "expected" only).
    """
    batch, channels, height, width = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    grid, per_program, block, warps, flat = apply_launch(batch, channels, height * width)
    on_device = isinstance(keep_prob, Tensor)
    launcher(dropblock_apply_kernel)[grid](
        x,
        mask,
        counts,
        keep_prob if on_device else counts,
        1.0 if on_device else 1.0 / keep_prob,
        y,
        batch,
        channels,
        batch * channels,
        per_program,
        height * width,
        mask.shape[1],
        NORMALIZE=normalize,
        SHARED=mask.shape[0] != batch * channels,
        KEEP_ON_DEVICE=on_device,
        BLOCK=block,
        BATCH_BLOCK=triton.next_power_of_2(batch),
        FLAT=flat,
        num_warps=warps,
    )
    return y


def _direct(kernel):
    return kernel


# The ops that torch.compile traces into. Eager calls launch the same kernels from
# _TritonDropBlock instead, skipping the custom-op dispatch layers (host time in every step).
@triton_op("dropblock_det::triton_mask", mutates_args=())
def _triton_mask(
    x: Tensor, seed: Tensor, gamma: Tensor, block_h: int, block_w: int, mask_channels: int
) -> tuple[Tensor, Tensor]:
    return _launch_mask(wrap_triton, x, seed, gamma, block_h, block_w, mask_channels)


@triton_op("dropblock_det::triton_apply", mutates_args=())
def _triton_apply(
    x: Tensor, mask: Tensor, counts: Tensor, keep_prob: Tensor, normalize: int
) -> Tensor:
    return _launch_apply(wrap_triton, x, mask, counts, keep_prob, normalize)


def _setup_context(ctx, inputs, output):
    _, mask, counts, keep_prob, normalize = inputs
    ctx.save_for_backward(mask, counts, keep_prob)
    ctx.normalize = normalize


def _backward(ctx, grad_out):
    mask, counts, keep_prob = ctx.saved_tensors
    grad_in = _triton_apply(grad_out, mask, counts, keep_prob, ctx.normalize)
    return grad_in, None, None, None, None


_triton_apply.register_autograd(_backward, setup_context=_setup_context)


class _TritonDropBlock(torch.autograd.Function):
    """Eager form of the two ops: the same kernels, the same saved mask and counts."""

    @staticmethod
    def forward(ctx, x, seed, rate, keep_prob, block_h, block_w, mask_channels, normalize):
        mask, counts = _launch_mask(_direct, x, seed, rate, block_h, block_w, mask_channels)
        if isinstance(keep_prob, Tensor):
            ctx.save_for_backward(mask, counts, keep_prob)
        else:
            ctx.save_for_backward(mask, counts)
            ctx.keep_prob = keep_prob
        ctx.normalize = normalize
        return _launch_apply(_direct, x, mask, counts, keep_prob, normalize)

    @staticmethod
    def backward(ctx, grad_out):
        mask, counts, *device_keep = ctx.saved_tensors
        keep_prob = device_keep[0] if device_keep else ctx.keep_prob
        grad_in = _launch_apply(_direct, grad_out, mask, counts, keep_prob, ctx.normalize)
        return grad_in, None, None, None, None, None, None, None


def drop_block_triton(x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator):
    """Triton-backend DropBlock; arguments as :func:`~dropblock_det.layers._dense.drop_block_dense`.

    A float keep_prob reaches the kernels as scalar arguments; a 0-d tensor stays on the device,
    the seed rate computed from it by tensor ops, so a captured CUDA graph or a compiled graph
    follows its new value, ``1.0`` included. The caller checks :func:`triton_serves` first.
    """
    batch, channels, height, width = x.shape
    device = x.device
    if isinstance(keep_prob, Tensor):
        keep_prob = keep_prob.to(device=device, dtype=torch.float32).reshape(())
        rate = seed_rate_tensor(keep_prob, height, width, block_h, block_w, gamma, device)
        rate = rate.reshape(())
    else:
        rate = host_gamma(gamma, height, width, block_h, block_w, keep_prob)
    mask_channels = 1 if share_channels else channels
    normalize = NORMALIZE_CODES[normalize]
    # Triton launches on the current device: make it x's.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        seed = torch.randint(2**62, (1,), dtype=torch.int64, device=device, generator=generator)
        if not torch.compiler.is_compiling():
            return _TritonDropBlock.apply(
                x, seed, rate, keep_prob, block_h, block_w, mask_channels, normalize
            )
        if not isinstance(keep_prob, Tensor):
            keep_prob = torch.full((), keep_prob, dtype=torch.float32, device=device)
            rate = torch.full((), rate, dtype=torch.float32, device=device)
        mask, counts = _triton_mask(x, seed, rate, block_h, block_w, mask_channels)
        return _triton_apply(x, mask, counts, keep_prob, normalize)
