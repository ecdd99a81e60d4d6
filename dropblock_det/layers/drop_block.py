"""DropBlock (Ghiasi, Lin, Le, NeurIPS 2018, Algorithm 1) for NCHW feature maps: the public API.

Geometry. A block of ``bh x bw`` units (``block_size`` clipped per axis to the map) is placed by its
top-left corner, drawn only where the whole block fits: the ``(H - bh + 1) x (W - bw + 1)`` "valid
centres" of the paper, each a seed independently with probability gamma. Seen from the seed, a
block covers ``bs // 2`` units before it and ``(bs - 1) // 2`` after it on each axis: the centre
for odd sizes, the anchoring of the TF reference's SAME-padded min-pool for even ones.

Seed rate (:mod:`._seed_rate`). ``gamma="paper"`` is the paper's formula with separate height and
width, ``(1 - keep_prob) * H * W / (bh * bw * (H - bh + 1) * (W - bw + 1))``, which counts
overlapping blocks twice and so drops less than ``1 - keep_prob``; ``gamma="exact"`` is the rate
whose expected dropped fraction is exactly ``1 - keep_prob``.

Backends, one private module each, all with these semantics: "sparse" (:mod:`._sparse`, fastest on
CPU, one host sync per call on accelerators), "dense" (:mod:`._dense`) and "triton"
(:mod:`._triton`, fused kernels), neither of which syncs. "auto" picks per device
(:data:`AUTO_BACKEND`); a backend that cannot serve a call falls back to "dense".
"""

import numbers

import torch
from torch import nn

from ._backend import BACKENDS, capturing, resolve_backend, run_backend
from ._keep_prob import KeepProb, check_keep_prob
from ._seed_rate import clip_block, host_gamma

__all__ = ["GAMMA_MODES", "NORMALIZE_MODES", "DropBlock2d", "drop_block_2d", "seed_rate"]

GAMMA_MODES = ("paper", "exact")
NORMALIZE_MODES = ("batch", "sample", "expected")


def _check_settings(block_size, gamma, normalize="batch", backend="auto") -> int:
    """Raise ValueError for a bad block_size or mode; return block_size as an int."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    modes = {"gamma": GAMMA_MODES, "normalize": NORMALIZE_MODES, "backend": BACKENDS}
    for name, value in zip(modes, (gamma, normalize, backend), strict=True):
        if value not in modes[name]:
            raise ValueError(f"{name} must be one of {modes[name]}, got {value!r}")
    return int(block_size)


def seed_rate(height: int, width: int, block_size: int, keep_prob: float, gamma: str = "paper"):
    """Per-corner seed probability that :func:`drop_block_2d` uses on an ``height x width`` map.

    ``block_size`` (clipped per axis to the map), ``keep_prob`` and ``gamma`` are as
    :func:`drop_block_2d` takes them.

    Returns:
        float: the seed probability gamma.

    Raises:
        ValueError: for the arguments :func:`drop_block_2d` refuses.
    """
    keep_prob = check_keep_prob(keep_prob)
    block_h, block_w = clip_block(_check_settings(block_size, gamma), height, width)
    return host_gamma(gamma, height, width, block_h, block_w, keep_prob)


def drop_block_2d(
    x: torch.Tensor,
    keep_prob: float | torch.Tensor,
    block_size: int,
    *,
    training: bool = True,
    share_channels: bool = False,
    gamma: str = "paper",
    normalize: str = "batch",
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """DropBlock: zero random ``block_size x block_size`` blocks of a feature map and rescale.

    Blocks are placed as the module docstring says. A block larger than the map on an axis is
    clipped to it, so a block covering the whole map drops whole channels (SpatialDropout), and
    ``block_size=1`` is dropout.

    Args:
        x (Tensor): (N, C, H, W) floating-point input (float32, float16, bfloat16 or float64).
        keep_prob (float or Tensor): target fraction of kept units, in (0, 1]. A 0-d tensor is read
            as data inside ``torch.compile`` graphs (no recompilation when it changes); eagerly it
            is read once (a host sync on accelerators: pass a float there).
        block_size (int): side of the dropped blocks, >= 1 (clipped per axis to the map).
        training (bool): False returns ``x`` itself.
        share_channels (bool): False draws one mask per channel (the paper's Algorithm 1); True
            draws one mask per sample, shared by its channels.
        gamma (str): seed rate, "paper" (the paper's formula, under target because blocks
            overlap) or "exact" (expected dropped fraction exactly ``1 - keep_prob``).
        normalize (str): rescaling of the kept units: "batch" multiplies by
            count(mask) / count_ones(mask) over the whole batch (paper, TF reference), "sample" does
            so per sample, "expected" multiplies by 1 / keep_prob. Counts are exact integers; a
            batch (or sample) with nothing kept is all zeros.
        generator (torch.Generator, optional): source of randomness, on x's device.
        backend (str): "auto" (per device, see the module docstring), "sparse", "dense" or
            "triton". The backends draw different masks from the same generator state, each with
            the same distribution.

    Returns:
        Tensor: same shape and dtype as x; ``x`` itself when not training, when keep_prob == 1
        or when x is empty. The gradient w.r.t. x is the same mask times the same factor.

    Non-finite values: the rescale factor is computed in float32, so finite inputs never become
    NaN. In float16/bfloat16 the product is rounded once into the input dtype: a kept value above
    ``torch.finfo(dtype).max / factor`` becomes +-Inf (it is not representable), and every smaller
    one stays finite.

    Raises:
        ValueError: keep_prob outside (0, 1], block_size < 1, an unknown gamma, normalize or
            backend, or an x that is not a 4-D floating-point tensor.
    """
    block_size = _check_settings(block_size, gamma, normalize, backend)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an (N, C, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not training:
        return x
    # In a compiled graph or a CUDA graph capture a tensor keep_prob stays data (no recompiles;
    # replays follow its new value, 1.0 included): neither read nor checked here.
    on_device = torch.compiler.is_compiling() or capturing(x)
    if not (on_device and isinstance(keep_prob, torch.Tensor)):
        keep_prob = check_keep_prob(keep_prob)
        if keep_prob == 1.0 or x.numel() == 0:
            return x
    block_h, block_w = clip_block(block_size, *x.shape[-2:])
    backend = resolve_backend(backend, x, block_h, share_channels, block_w)
    return run_backend(
        backend, x, keep_prob, block_h, block_w, share_channels, gamma, normalize, generator
    )


class DropBlock2d(nn.Module):
    """DropBlock as a module; identity in eval mode.

    ``keep_prob`` is a settable attribute held in a non-persistent 0-d buffer (:mod:`._keep_prob`):
    it follows the module across devices, stays out of the state_dict (a model's state_dict is the
    same with and without DropBlock), and is data to compiled graphs, so a schedule can change it
    every step without recompiling; eager forwards read its Python copy.

    Args:
        keep_prob (float): target fraction of kept units, in (0, 1].
        block_size (int): side of the dropped blocks, >= 1.
        share_channels (bool): one mask per sample shared by its channels (default: per channel).
        gamma (str): "paper" or "exact", see :func:`drop_block_2d`.
        normalize (str): "batch", "sample" or "expected", see :func:`drop_block_2d`.
        backend (str): "auto", "sparse", "dense" or "triton", see :func:`drop_block_2d`.
        group (str or None): the placement group the module belongs to ("res4", "p3", "head" …),
            which a schedule sets as one; None for a module outside any detector placement.
    """

    def __init__(
        self,
        keep_prob: float = 0.9,
        block_size: int = 7,
        *,
        share_channels: bool = False,
        gamma: str = "paper",
        normalize: str = "batch",
        backend: str = "auto",
        group: str | None = None,
    ):
        """Check the settings and store keep_prob (arguments: see the class docstring)."""
        super().__init__()
        keep_prob = check_keep_prob(keep_prob)
        self.group = group
        self.block_size = _check_settings(block_size, gamma, normalize, backend)
        self.share_channels = bool(share_channels)
        self.gamma, self.normalize, self.backend = gamma, normalize, backend
        self.register_buffer("_keep_prob", torch.tensor(keep_prob), persistent=False)
        self._adopt_keep_prob(KeepProb(self._keep_prob, keep_prob))

    @property
    def keep_prob_tensor(self) -> torch.Tensor:
        """The 0-d tensor holding keep_prob (what compiled graphs read); its value is ``keep_prob``."""
        self.keep_prob  # noqa: B018  (re-adopts a buffer replaced directly)
        return self._keep_prob_cell.tensor

    def adopt_keep_prob(self, shared: KeepProb) -> None:
        """Read and set keep_prob through ``shared`` from now on, as every module holding it does.

        Raises:
            ValueError: for a ``shared`` tensor on another device or dtype than this module's.
        """
        mine, theirs = self._buffers["_keep_prob"], shared.tensor
        if (mine.device, mine.dtype) != (theirs.device, theirs.dtype):
            raise ValueError(
                "share_keep_prob: keep_prob tensors on different devices or dtypes "
                f"({theirs.device}, {theirs.dtype}) and ({mine.device}, {mine.dtype}); share "
                "within one device"
            )
        self._adopt_keep_prob(shared)

    def _adopt_keep_prob(self, cell: KeepProb) -> None:
        self._buffers["_keep_prob"] = cell.tensor
        # Plain attribute, past nn.Module.__setattr__: the hook's setters run every step.
        self.__dict__["_keep_prob_cell"] = cell

    @property
    def keep_prob(self) -> float:
        """Current keep probability (float)."""
        buffer = self._buffers["_keep_prob"]
        if buffer is not self._keep_prob_cell.tensor:  # the buffer was replaced directly
            self._adopt_keep_prob(KeepProb(buffer, float(buffer)))
        return self._keep_prob_cell.value

    @keep_prob.setter
    def keep_prob(self, value) -> None:
        value = check_keep_prob(value)
        cell, buffer = self._keep_prob_cell, self._buffers["_keep_prob"]
        if cell.shared or buffer is not cell.tensor:
            # A value of its own again (a fresh tensor if shared: the others keep theirs).
            self._adopt_keep_prob(
                KeepProb(torch.empty_like(buffer) if cell.shared else buffer, 1.0)
            )
        self._keep_prob_cell.fill(value)

    def _apply(self, fn, recurse=True):
        # .to()/.half() convert each module's buffer separately: a group sharing a KeepProb keeps
        # sharing it (the first module converts the tensor, the others adopt the result).
        before = self._buffers["_keep_prob"]
        super()._apply(fn, recurse)
        after = self._buffers["_keep_prob"]
        if after is not before:
            self._buffers["_keep_prob"] = self._keep_prob_cell.converted(before, after, fn)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        # Compiled graphs and CUDA graph captures read the buffer as data; eager code its value.
        on_device = torch.compiler.is_compiling() or capturing(x)
        keep_prob = self._keep_prob if on_device else self.keep_prob
        return drop_block_2d(
            x,
            keep_prob,
            self.block_size,
            share_channels=self.share_channels,
            gamma=self.gamma,
            normalize=self.normalize,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        """The settings, as ``print(model)`` shows them."""
        group = f"group={self.group!r}, " if self.group is not None else ""
        return (
            f"{group}keep_prob={self.keep_prob:g}, block_size={self.block_size}, "
            f"share_channels={self.share_channels}, gamma={self.gamma!r}, "
            f"normalize={self.normalize!r}, backend={self.backend!r}"
        )
