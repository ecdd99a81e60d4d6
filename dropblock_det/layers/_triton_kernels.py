"""Triton kernels of DropBlock: a bit mask drawn and dilated in one pass, and a masked rescale.

Importing this module needs Triton. With ``TRITON_INTERPRET=1`` in the environment before the
import, the kernels run on CPU tensors through Triton's interpreter (how the tests run them).

Mask kernel, one program per (row tile, mask plane). The tile spans whole rows (``BLOCK_W`` >= W)
and ``BLOCK_R`` corner rows, of which the first ``bh - 1`` are a halo shared with the tile above.
Corner ``(a, b)`` of plane ``p`` is a seed when Philox at offset ``(p * Hc + a) * Wc + b`` is below
gamma, so the mask does not depend on the tiling. Dilation is two max-scans: a unit is dropped when
the last seed to its left lies within ``bw - 1`` columns, and the last such row within ``bh - 1``
rows above. Kept units are counted per sample (one atomic add per program) and stored as bits,
eight columns a byte: 1/8 byte per unit, read again by the forward and the backward rescale.
"""

import triton
import triton.language as tl

# Normalisation codes of the apply kernel (the ``NORMALIZE`` constexpr).
NORMALIZE_CODES = {"batch": 0, "sample": 1, "expected": 2}


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


# Integer arguments equal to 1 would otherwise become compile-time constants (a batch of one, a 1x1
# map, shared masks): a separate compilation each, and no tensor methods on them in the kernel.
@triton.jit(
    do_not_specialize=[
        "height",
        "width",
        "block_h",
        "block_w",
        "mask_channels",
        "row_bytes",
        "rows_out",
    ]
)
def dropblock_mask_kernel(
    seed_ptr,
    gamma_ptr,
    mask_ptr,
    count_ptr,
    height,
    width,
    block_h,
    block_w,
    mask_channels,
    row_bytes,
    rows_out,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    tile = tl.program_id(0)
    plane = tl.program_id(1)
    seed = tl.load(seed_ptr)
    gamma = tl.load(gamma_ptr)
    corners_h = height - block_h + 1
    corners_w = width - block_w + 1
    t = tl.arange(0, BLOCK_R)[:, None]
    j = tl.arange(0, BLOCK_W)[None, :]
    first_row = tile * rows_out
    # Block row t holds corner row a and, from t = bh - 1 on, output row a.
    a = first_row - (block_h - 1) + t
    is_corner = (a >= 0) & (a < corners_h) & (j < corners_w)
    offset = tl.where(is_corner, (plane * corners_h + a) * corners_w + j, 0)
    seeded = is_corner & (tl.rand(seed, offset) < gamma)
    # A corner at column b covers columns b .. b + bw - 1, rows a .. a + bh - 1.
    last_col = tl.associative_scan(tl.where(seeded, j, -BLOCK_W), 1, _maximum)
    row_hit = last_col > j - block_w
    last_row = tl.associative_scan(tl.where(row_hit, t, -BLOCK_R), 0, _maximum)
    dropped = last_row > t - block_h
    is_output = (t >= block_h - 1) & (a < height) & (a < first_row + rows_out)
    kept = (is_output & (j < width) & ~dropped).to(tl.int32)
    tl.atomic_add(count_ptr + plane // mask_channels, tl.sum(kept))
    # Eight columns a byte, column j at bit j % 8; distinct bits, so their sum is their OR.
    bits = tl.reshape(kept << (j % 8), (BLOCK_R, BLOCK_W // 8, 8))
    packed = tl.sum(bits, axis=2)
    byte = tl.arange(0, BLOCK_W // 8)[None, :]
    address = (plane * height + a) * row_bytes + byte
    tl.store(mask_ptr + address, packed.to(tl.uint8), mask=is_output & (byte < row_bytes))


@triton.jit(
    do_not_specialize=["batch", "channels", "height", "width", "mask_channels", "row_bytes"]
)
def dropblock_apply_kernel(
    x_ptr,
    mask_ptr,
    count_ptr,
    inverse_keep_ptr,
    y_ptr,
    batch,
    channels,
    height,
    width,
    mask_channels,
    row_bytes,
    NORMALIZE: tl.constexpr,
    BLOCK: tl.constexpr,
    BATCH_BLOCK: tl.constexpr,
):
    block = tl.program_id(0)
    sample = tl.program_id(1)
    plane_units = height * width
    sample_units = channels * plane_units
    # One factor per program (a program stays inside one sample), in float64 from exact counts.
    if NORMALIZE == 2:
        factor = tl.load(inverse_keep_ptr).to(tl.float32)
    else:
        if NORMALIZE == 1:
            kept = tl.load(count_ptr + sample).to(tl.int64)
            total = (mask_channels * plane_units).to(tl.int64)
        else:
            samples = tl.arange(0, BATCH_BLOCK)
            counts = tl.load(count_ptr + samples, mask=samples < batch, other=0)
            kept = tl.sum(counts.to(tl.int64))
            total = batch.to(tl.int64) * mask_channels * plane_units
        ratio = total.to(tl.float64) / tl.maximum(kept, 1).to(tl.float64)
        factor = tl.where(kept > 0, ratio, 0.0).to(tl.float32)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    inside = offs < sample_units
    channel = offs // plane_units
    rest = offs - channel * plane_units
    row = rest // width
    col = rest - row * width
    plane = sample * mask_channels + channel % mask_channels
    byte = tl.load(mask_ptr + (plane * height + row) * row_bytes + col // 8, mask=inside, other=0)
    keep = ((byte.to(tl.int32) >> (col % 8)) & 1) != 0
    base = sample.to(tl.int64) * sample_units
    x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(tl.float32)
    # where, not a multiply by 0: dropped units are 0 whatever x holds (as in the sparse path).
    y = tl.where(keep, x * factor, 0.0)
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=inside)
