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


def _compile(kernel, signature, constexprs, num_warps):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(source, target=target, options={"num_warps": num_warps})


def test_mask_kernel_compiles_for_sm90():
    from dropblock_det.layers._triton import _mask_warps, _tile
    from dropblock_det.layers._triton_kernels import dropblock_mask_kernel

    signature = {"seed_ptr": "*i64", "gamma_ptr": "*fp32", "mask_ptr": "*u8", "count_ptr": "*i32"}
    for name in ("height", "width", "block_h", "block_w", "mask_channels", "row_bytes"):
        signature[name] = "i32"
    signature.update(rows_out="i32", BLOCK_R="constexpr", BLOCK_W="constexpr")
    rows, cols = _tile(100, 76, 7)  # the res3 map of an 800 x 608 image, block 7
    compiled = _compile(
        dropblock_mask_kernel,
        signature,
        {"BLOCK_R": rows, "BLOCK_W": cols},
        _mask_warps(rows, cols),
    )
    assert "ld.global" in compiled.asm["ptx"] or "st.global" in compiled.asm["ptx"]


@pytest.mark.parametrize("dtype,normalize", [("fp16", 0), ("bf16", 1), ("fp32", 2)])
def test_apply_kernel_compiles_for_sm90(dtype, normalize):
    from dropblock_det.layers._triton_kernels import dropblock_apply_kernel

    signature = {"x_ptr": f"*{dtype}", "mask_ptr": "*u8", "count_ptr": "*i32"}
    signature.update(inverse_keep_ptr="*fp32", y_ptr=f"*{dtype}")
    for name in ("batch", "channels", "height", "width", "mask_channels", "row_bytes"):
        signature[name] = "i32"
    signature.update(NORMALIZE="constexpr", BLOCK="constexpr", BATCH_BLOCK="constexpr")
    constexprs = {"NORMALIZE": normalize, "BLOCK": 1024, "BATCH_BLOCK": 8}
    compiled = _compile(dropblock_apply_kernel, signature, constexprs, 4)
    assert "st.global" in compiled.asm["ptx"]
