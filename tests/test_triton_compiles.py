"""The Triton kernels compile for a Hopper GPU (sm_90), ahead of time, on a machine without one.

Triton's compiler lowers a kernel to PTX and assembles it with its bundled ptxas without a
device, so a kernel that the interpreter runs but the GPU compiler rejects fails here, in CI.
"""

import os

import pytest

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") == "1", reason="the interpreter compiles nothing"
)


def _compile(kernel, signature, constexprs, num_warps, attrs=None):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs or {})
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(source, target=target, options={"num_warps": num_warps})


def _mask_signature():
    signature = {"seed_ptr": "*i64", "rate_ptr": "*fp32", "rate": "fp32"}
    signature.update(scratch_ptr="*i32", dilated_ptr="*i32", mask_ptr="*i32", count_ptr="*i32")
    for name in ("planes", "planes_per_program", "mask_channels", "height", "width"):
        signature[name] = "i32"
    for name in ("corners_h", "corners_w", "seed_words", "dilated_words", "mask_words"):
        signature[name] = "i32"
    signature.update(BH="constexpr", BW="constexpr", RATE_ON_DEVICE="constexpr")
    signature.update(DILATE="constexpr", BLOCK="constexpr")
    return signature


@pytest.mark.parametrize("on_device,dilate", [(False, False), (True, True)])
def test_mask_kernel_compiles_for_sm90(on_device, dilate):
    from dropblock_det.layers._triton import _MASK_BLOCK
    from dropblock_det.layers._triton_kernels import dropblock_mask_kernel

    constexprs = {"BH": 7, "BW": 7, "RATE_ON_DEVICE": on_device, "DILATE": dilate}
    constexprs["BLOCK"] = _MASK_BLOCK
    compiled = _compile(dropblock_mask_kernel, _mask_signature(), constexprs, _MASK_BLOCK // 32)
    ptx = compiled.asm["ptx"]
    # Phase 1 stores the seeds, a block barrier, one atomic count per program.
    assert "st.global" in ptx and "bar.sync" in ptx
    assert "atom.global" in ptx or "red.global" in ptx


@pytest.mark.parametrize(
    "dtype,normalize,shared", [("fp16", 0, False), ("bf16", 1, True), ("fp32", 2, False)]
)
@pytest.mark.parametrize("flat", [False, True])
def test_apply_kernel_compiles_for_sm90_with_128_bit_vectors(dtype, normalize, shared, flat):
    from dropblock_det.layers._triton_kernels import dropblock_apply_kernel

    signature = {"x_ptr": f"*{dtype}", "mask_ptr": "*i32", "count_ptr": "*i32"}
    signature.update(keep_ptr="*fp32", inverse_keep="fp32", y_ptr=f"*{dtype}")
    for name in ("batch", "channels", "planes", "planes_per_program", "plane_units"):
        signature[name] = "i32"
    signature.update(mask_words="i32", NORMALIZE="constexpr", SHARED="constexpr")
    signature.update(KEEP_ON_DEVICE="constexpr", BLOCK="constexpr", BATCH_BLOCK="constexpr")
    signature.update(FLAT="constexpr")
    constexprs = {"NORMALIZE": normalize, "SHARED": shared, "KEEP_ON_DEVICE": False}
    constexprs.update(BLOCK=256, BATCH_BLOCK=8, FLAT=flat)
    # What Triton's launcher specialises: 16-byte aligned tensors, plane size a multiple of 16.
    aligned = {(0,): [["tt.divisibility", 16]], (5,): [["tt.divisibility", 16]]}
    aligned[(10,)] = [["tt.divisibility", 16]]
    compiled = _compile(dropblock_apply_kernel, signature, constexprs, 1, aligned)
    ptx = compiled.asm["ptx"]
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx


def test_kernels_compile_where_the_launcher_makes_sizes_of_one_constants():
    # Triton specialises an integer argument equal to 1 into a constexpr (a 1 x 1 map, one
    # channel, shared masks): the kernels must not call tensor methods on those.
    from dropblock_det.layers._triton_kernels import dropblock_apply_kernel, dropblock_mask_kernel

    ones = ("mask_channels", "width", "seed_words", "dilated_words", "mask_words")
    signature = {**_mask_signature(), **{name: "constexpr" for name in ones}}
    constexprs = {**{name: 1 for name in ones}, "BH": 1, "BW": 1, "RATE_ON_DEVICE": True}
    for dilate in (False, True):
        constexprs["DILATE"] = dilate
        _compile(dropblock_mask_kernel, signature, {**constexprs, "BLOCK": 128}, 4)
    signature = {"x_ptr": "*fp16", "mask_ptr": "*i32", "count_ptr": "*i32", "keep_ptr": "*fp32"}
    signature.update(inverse_keep="fp32", y_ptr="*fp16", batch="i32", planes="i32")
    signature.update(planes_per_program="i32", channels="constexpr", plane_units="constexpr")
    signature.update(mask_words="constexpr", NORMALIZE="constexpr", SHARED="constexpr")
    signature.update(KEEP_ON_DEVICE="constexpr", BLOCK="constexpr", BATCH_BLOCK="constexpr")
    signature.update(FLAT="constexpr")
    for normalize in (0, 1, 2):
        constexprs = {"channels": 1, "plane_units": 1, "mask_words": 1, "NORMALIZE": normalize}
        constexprs.update(SHARED=True, KEEP_ON_DEVICE=normalize == 2, BLOCK=256, BATCH_BLOCK=1)
        constexprs.update(FLAT=False)
        compiled = _compile(dropblock_apply_kernel, signature, constexprs, 1)
        assert "st.global" in compiled.asm["ptx"]
