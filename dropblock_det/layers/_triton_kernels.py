"""Triton kernels of DropBlock: a bit mask drawn and dilated in one launch, and a masked rescale.

Importing this module needs Triton. With ``TRITON_INTERPRET=1`` in the environment before the
import, the kernels run on CPU tensors through Triton's interpreter (how the tests run them).

Bit strings. A plane's ``Hc x Wc`` seed corners (``Hc = H - bh + 1``, ``Wc = W - bw + 1``) and its
``H x W`` units are each one flat bit string in row-major order, 32 bits an int32 word, bit ``t``
of word ``k`` being element ``32 k + t``; each plane starts a new word.

Seeds. Corner word ``k`` of mask plane ``p`` is drawn by eight Philox 4x32-10 calls
(``tl.randint4x`` at offsets ``8 (p * SW + k) + i``, ``SW`` the plane's corner words), all four
32-bit outputs used: output ``w`` of call ``i`` decides corner ``32 k + 4 i + w``, a seed when it is
below ``floor(gamma * 2**32)``. The rate is gamma to within ``2**-32``, the mask does not depend on
how the planes are split among programs, and the stream is replayed bit for bit in NumPy by the
tests.

Mask kernel, one program per group of mask planes of one sample: phase 1 draws the seed words into
a scratch buffer; phase 3 ORs the seed rows each mask row needs as 64-bit windows, dilates them by
``bw - 1`` shift-ORs and counts the kept units (popcount, one atomic per program). With ``DILATE``
(narrow maps, where a mask word spans three rows or more) phase 2 first dilates the seeds down the
rows once. Apply kernel, one program per group of planes of one sample: one factor per program, x
and y in 128-bit vectors, a unit's bit by a shift of its mask word. BENCHMARKS.md, "The Triton
kernels", gives the design's reasons.
"""

import triton
import triton.language as tl

# Normalisation codes of the apply kernel (the ``NORMALIZE`` constexpr).
NORMALIZE_CODES = {"batch": 0, "sample": 1, "expected": 2}

# Units of one flat apply vector (a 128-bit vector of fp16/bf16, two of fp32): a plane size that is
# a multiple of it lets the flat apply loop run over several planes at once.
APPLY_VEC = tl.constexpr(8)
# The largest range of units a flat apply program covers (its float32 plane index stays exact).
FLAT_UNITS_LIMIT = 2**20

# The widest block the 64-bit seed window of the mask kernel dilates (32 columns + bw - 1).
MAX_BLOCK_W = 33


@triton.jit
def _popcount(word):
    """Set bits of each uint32 of ``word`` (the shift-and-mask popcount)."""
    word = word - ((word >> 1) & 0x55555555)
    word = (word & 0x33333333) + ((word >> 2) & 0x33333333)
    word = (word + (word >> 4)) & 0x0F0F0F0F
    return ((word * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _low_bits(count):
    """uint64 with the lowest ``clamp(count, 0, 64)`` bits set."""
    count = tl.minimum(tl.maximum(count, 0), 64).to(tl.uint64)
    # Two shifts: a shift by 64 is undefined, (2**63 << 1) is 0.
    full = (tl.full(count.shape, 1, tl.uint64) << (count >> 1)) << (count - (count >> 1))
    return full - 1


@triton.jit
def _seed_window(scratch_ptr, plane_base, seed_words, position, valid):
    """64 seed bits of the flat corner string starting at bit ``position`` (>= 0) of a plane."""
    word = position >> 5
    shift = (position & 31).to(tl.uint64)
    w0 = tl.load(scratch_ptr + plane_base + word, mask=valid & (word < seed_words), other=0)
    w1 = tl.load(scratch_ptr + plane_base + word + 1, mask=valid & (word + 1 < seed_words), other=0)
    w2 = tl.load(scratch_ptr + plane_base + word + 2, mask=valid & (word + 2 < seed_words), other=0)
    low = w0.to(tl.uint32).to(tl.uint64) | (w1.to(tl.uint32).to(tl.uint64) << 32)
    high = w2.to(tl.uint32).to(tl.uint64)
    return (low >> shift) | ((high << 32) << (32 - shift))


# Integer arguments equal to 1 would otherwise become compile-time constants (a batch of one, a 1x1
# map, shared masks): a separate compilation each. The plane sizes keep their divisibility hints.
@triton.jit(do_not_specialize=["planes", "planes_per_program", "corners_h", "corners_w", "height"])
def dropblock_mask_kernel(
    seed_ptr,
    rate_ptr,
    rate,
    scratch_ptr,
    dilated_ptr,
    mask_ptr,
    count_ptr,
    planes,
    planes_per_program,
    mask_channels,
    height,
    width,
    corners_h,
    corners_w,
    seed_words,
    dilated_words,
    mask_words,
    BH: tl.constexpr,
    BW: tl.constexpr,
    RATE_ON_DEVICE: tl.constexpr,
    DILATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    first = tl.program_id(0).to(tl.int64) * planes_per_program
    seed = tl.load(seed_ptr)
    gamma = tl.load(rate_ptr) if RATE_ON_DEVICE else rate
    # P(u32 < threshold) = threshold / 2**32, threshold = floor(gamma * 2**32).
    threshold = tl.minimum(tl.cast(gamma, tl.float64) * 4294967296.0, 4294967295.0).to(tl.uint32)
    corner_units = corners_h * corners_w
    lanes = tl.arange(0, BLOCK)

    # Phase 1: seed words of the program's planes, to scratch.
    n_seed = planes_per_program * seed_words
    for start in range(0, n_seed, BLOCK):
        e = start + lanes
        local = e // seed_words
        k = e - local * seed_words
        plane = first + local
        valid = (e < n_seed) & (plane < planes)
        call = (plane * seed_words + k) * 8
        bits = tl.zeros((BLOCK,), dtype=tl.uint32)
        for i in tl.static_range(8):
            r0, r1, r2, r3 = tl.randint4x(seed, call + i)
            nibble = (r0 < threshold).to(tl.uint32)
            nibble |= (r1 < threshold).to(tl.uint32) << 1
            nibble |= (r2 < threshold).to(tl.uint32) << 2
            nibble |= (r3 < threshold).to(tl.uint32) << 3
            bits |= nibble << (4 * i)
        # Bits past the plane's last corner are 0.
        bits &= _low_bits(corner_units - 32 * k).to(tl.uint32)
        tl.store(scratch_ptr + plane * seed_words + k, bits.to(tl.int32), mask=valid)
    tl.debug_barrier()

    # Phase 2 (DILATE): the seeds dilated down the rows, an H x Wc string: bit (i, b) is the OR
    # of seed bits (i - t, b), t < bh, so that each mask row reads one row of it, not bh rows.
    if DILATE:
        n_dilated = planes_per_program * dilated_words
        for start in range(0, n_dilated, BLOCK):
            e = start + lanes
            local = e // dilated_words
            k = e - local * dilated_words
            plane = first + local
            valid = (e < n_dilated) & (plane < planes)
            plane_base = plane * seed_words
            bits = tl.zeros((BLOCK,), dtype=tl.uint64)
            for t in tl.static_range(BH):
                # Seed bit q - t Wc for dilated bit q; rows above the first have none.
                position = 32 * k - t * corners_w
                lead = tl.minimum(tl.maximum(-position, 0), 32)
                on = valid & (lead < 32)
                seeds = _seed_window(scratch_ptr, plane_base, seed_words, position + lead, on)
                bits |= tl.where(on, seeds << lead.to(tl.uint64), 0)
            dilated = (bits & 0xFFFFFFFF).to(tl.uint32).to(tl.int32)
            tl.store(dilated_ptr + plane * dilated_words + k, dilated, mask=valid)
        tl.debug_barrier()

    # Phase 3: mask words, counted.
    n_mask = planes_per_program * mask_words
    rows_per_word = tl.cdiv(32, width) + 1
    kept_total = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(0, n_mask, BLOCK):
        e = start + lanes
        local = e // mask_words
        k = e - local * mask_words
        plane = first + local
        valid = (e < n_mask) & (plane < planes)
        unit = 32 * k
        row0 = unit // width
        col0 = unit - row0 * width
        word = tl.zeros((BLOCK,), dtype=tl.uint64)
        for r in range(0, rows_per_word):
            row = row0 + r
            col = tl.where(r == 0, col0, 0)
            # Seed columns col - bw + 1 .. col + 63 - bw + 1, clipped at the row's start.
            first_col = col - (BW - 1)
            lead = tl.maximum(-first_col, 0)
            # Only columns of a seed row (< Wc) count.
            columns = _low_bits(corners_w - first_col - lead)
            if DILATE:
                on = valid & (row < height)
                seeds = _seed_window(
                    dilated_ptr,
                    plane * dilated_words,
                    dilated_words,
                    row * corners_w + first_col + lead,
                    on,
                )
                window = tl.where(on, (seeds & columns) << lead.to(tl.uint64), 0)
            else:
                window = tl.zeros((BLOCK,), dtype=tl.uint64)
                for t in tl.static_range(BH):
                    a = row - (BH - 1) + t
                    on = valid & (a >= 0) & (a < corners_h)
                    seeds = _seed_window(
                        scratch_ptr,
                        plane * seed_words,
                        seed_words,
                        a * corners_w + first_col + lead,
                        on,
                    )
                    window |= tl.where(on, (seeds & columns) << lead.to(tl.uint64), 0)
            dropped = window
            for s in tl.static_range(1, BW):
                dropped |= window >> s
            kept = ~dropped & _low_bits(tl.minimum(width - col, 32))
            offset = row * width + col - unit
            inside = valid & (row < height) & (offset < 32)
            word |= tl.where(inside, kept << tl.minimum(offset, 63).to(tl.uint64), 0)
        word32 = (word & 0xFFFFFFFF).to(tl.uint32)
        kept_total += tl.where(valid, _popcount(word32), 0)
        tl.store(mask_ptr + plane * mask_words + k, word32.to(tl.int32), mask=valid)
    # The program's planes are one sample's.
    sample = first // mask_channels
    tl.atomic_add(count_ptr + sample, tl.sum(kept_total), sem="relaxed")


@triton.jit(do_not_specialize=["batch", "channels", "planes", "planes_per_program"])
def dropblock_apply_kernel(
    x_ptr,
    mask_ptr,
    count_ptr,
    keep_ptr,
    inverse_keep,
    y_ptr,
    batch,
    channels,
    planes,
    planes_per_program,
    plane_units,
    mask_words,
    NORMALIZE: tl.constexpr,
    SHARED: tl.constexpr,
    KEEP_ON_DEVICE: tl.constexpr,
    BLOCK: tl.constexpr,
    BATCH_BLOCK: tl.constexpr,
    FLAT: tl.constexpr,
):
    first = tl.program_id(0).to(tl.int64) * planes_per_program
    sample = first // channels
    sample_units = tl.cast(plane_units, tl.int64)
    if not SHARED:
        sample_units *= channels
    # One factor per program (its planes are one sample's), in float64 from exact counts.
    if NORMALIZE == 2:
        if KEEP_ON_DEVICE:
            factor = 1.0 / tl.load(keep_ptr).to(tl.float64)
        else:
            factor = tl.cast(inverse_keep, tl.float64)
    else:
        if NORMALIZE == 1:
            kept = tl.load(count_ptr + sample).to(tl.int64)
            total = sample_units
        else:
            samples = tl.arange(0, BATCH_BLOCK)
            counts = tl.load(count_ptr + samples, mask=samples < batch, other=0)
            kept = tl.sum(counts.to(tl.int64))
            total = batch * sample_units
        ratio = total.to(tl.float64) / tl.maximum(kept, 1).to(tl.float64)
        factor = tl.where(kept > 0, ratio, 0.0)
    factor = tl.cast(factor, tl.float32)
    # The loops stay in the kernel's body (no helper): benchmarks/gpu_estimate.py weights each
    # instruction by how often its kernel line runs.
    if FLAT:
        # The program's planes as one range of APPLY_VEC-unit vectors, each in one plane and one
        # mask word. A vector's plane: (offset + 0.5) times the float32 reciprocal of the plane
        # size, truncated; exact below FLAT_UNITS_LIMIT, and no integer division.
        base = first * plane_units
        units = (tl.minimum(first + planes_per_program, planes) - first).to(tl.int32) * plane_units
        reciprocal = 1.0 / plane_units.to(tl.float32)
        vectors = tl.arange(0, BLOCK // APPLY_VEC) * APPLY_VEC
        lane = tl.arange(0, APPLY_VEC)
        for start in range(0, units, BLOCK):
            offset = start + vectors
            local = ((offset.to(tl.float32) + 0.5) * reciprocal).to(tl.int32)
            unit = offset - local * plane_units
            if SHARED:
                mask_plane = sample
            else:
                mask_plane = first + local
            bits = tl.load(
                mask_ptr + mask_plane * mask_words + (unit >> 5), mask=offset < units, other=0
            )
            keep = ((bits[:, None] >> ((unit & 31)[:, None] + lane[None, :])) & 1) != 0
            offs = offset[:, None] + lane[None, :]
            inside = offs < units
            x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(tl.float32)
            y = tl.where(keep, x * factor, 0.0)
            tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=inside)
    else:
        words = tl.arange(0, BLOCK // 32)
        bit = tl.arange(0, 32)
        unit = words[:, None] * 32 + bit[None, :]
        last = tl.minimum(first + planes_per_program, planes)
        for plane in range(first, last):
            mask_plane = plane
            if SHARED:
                mask_plane = sample
            for start in range(0, plane_units, BLOCK):
                offs = start + unit
                inside = offs < plane_units
                word_index = start // 32 + words
                bits = tl.load(
                    mask_ptr + mask_plane * mask_words + word_index,
                    mask=word_index < mask_words,
                    other=0,
                )
                keep = ((bits[:, None] >> bit[None, :]) & 1) != 0
                base = plane * plane_units
                x = tl.load(x_ptr + base + offs, mask=inside, other=0.0).to(tl.float32)
                # where, not a multiply by 0: dropped units are 0 whatever x holds.
                y = tl.where(keep, x * factor, 0.0)
                tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=inside)
