"""Which implementation computes a DropBlock call: the backends and the choice of "auto"."""

import os

import torch

from ._dense import drop_block_dense
from ._sparse import drop_block_sparse

__all__ = ["AUTO_BACKEND", "BACKENDS", "auto_backend", "capturing", "resolve_backend"]

BACKENDS = ("auto", "sparse", "dense", "triton")

# What backend="auto" runs on each device type (others: "dense"): the fastest there, the sparse
# path on CPU and the Triton kernels on CUDA (BENCHMARKS.md, "DropBlock operator" and "Backends
# and the fused Triton kernel"; benchmarks/gpu_check.sh measures both on a GPU).
AUTO_BACKEND = {"cpu": "sparse", "cuda": "triton"}

_triton = None
_triton_error = None


def _triton_backend():
    """The Triton backend module, or None where Triton does not import."""
    global _triton, _triton_error
    if _triton is None and _triton_error is None:
        try:
            from . import _triton as module
        except Exception as error:  # no Triton, or a build whose kernels do not compile
            _triton_error = error
        else:
            _triton = module
    return _triton


def capturing(x: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured on x's device (no host reads allowed)."""
    on_cuda = isinstance(x, torch.Tensor) and x.device.type == "cuda"
    return on_cuda and torch.cuda.is_current_stream_capturing()


def auto_backend(device: torch.device) -> str:
    """The backend "auto" picks for tensors on ``device``."""
    return AUTO_BACKEND.get(device.type, "dense")


def resolve_backend(
    backend: str, x: torch.Tensor, block_h: int, share_channels: bool, block_w: int | None = None
) -> str:
    """The backend that computes this call: the one asked for, or the one that falls in for it.

    "triton" falls back to "dense" where Triton does not import or cannot serve the tensor
    (float64, CPU tensors outside the interpreter, a plane past int32 units, a block wider than
    the mask kernel's window); "sparse" falls back to "dense" inside torch.compile graphs and CUDA
    graph captures, where its host-side bookkeeping cannot run. ``block_w`` defaults to
    ``block_h``.
    """
    if backend == "auto":
        backend = auto_backend(x.device)
    if backend == "triton":
        # Compiled graphs never trace the import: where Triton can serve it is imported below.
        module = _triton if torch.compiler.is_compiling() else _triton_backend()
        block_w = block_h if block_w is None else block_w
        if module is None or not module.triton_serves(x, block_h, share_channels, block_w):
            backend = "dense"
    if backend == "sparse" and (torch.compiler.is_compiling() or capturing(x)):
        backend = "dense"
    return backend


def run_backend(backend, x, keep_prob, block_h, block_w, share_channels, gamma, normalize, gen):
    """Compute DropBlock with ``backend`` ("sparse", "dense" or "triton", as resolved)."""
    run = drop_block_sparse if backend == "sparse" else drop_block_dense
    if backend == "triton":
        run = _triton_backend().drop_block_triton
    return run(x, keep_prob, block_h, block_w, share_channels, gamma, normalize, gen)


if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1":
    # Imported up front where it can serve, so that compiled graphs never trace the import.
    _triton_backend()
