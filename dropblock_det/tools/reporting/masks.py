"""Pictures of DropBlock masks on the feature-map grids of a real image (as the paper's Fig. 1/2).

The masks are drawn with the package's own operator, :func:`dropblock_det.drop_block_2d`, on the
grid a ResNet produces for the image at a given stride, then overlaid on the image with every
dropped feature-map cell covering its ``stride x stride`` pixels.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...layers import drop_block_2d

__all__ = [
    "RESNET_STAGE_STRIDES",
    "draw_dropblock_masks",
    "feature_map_size",
    "sample_dropped_cells",
    "stage_sizes",
]

# Detectron2 ResNet output strides: res2 4, res3 8, res4 16, res5 32.
RESNET_STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

_DROP_COLOR = (0.9, 0.05, 0.05)


def feature_map_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Size of a Detectron2 ResNet feature map of the given stride for an image.

    Every stride-2 layer of the ResNet (stem conv, max-pool, first block of res3..res5) maps a size
    n to ceil(n / 2), so the map at stride 2**k has ceil-halved the image size k times.

    Args:
        height, width: the image size in pixels.
        stride: a power of two (4, 8, 16 or 32 for res2..res5).

    Returns:
        (h, w): the feature map size.
    """
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two (e.g. 8, 16, 32), got {stride}")
    for _ in range(int(math.log2(stride))):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def sample_dropped_cells(
    height: int,
    width: int,
    keep_prob: float,
    block_size: int,
    gamma: str = "exact",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Draw one channel's DropBlock mask on a ``height x width`` feature map.

    Args:
        height, width: feature map size.
        keep_prob: target fraction of kept units.
        block_size: side of the dropped blocks.
        gamma: the operator's seed-rate rule, "paper" or "exact".
        seed: seed of a fresh CPU generator (the same call draws the same mask); ignored when
            ``generator`` is given.
        generator: a CPU generator to draw from, to take several masks from one seeded stream.

    Returns:
        np.ndarray: bool array ``(height, width)``, True where the unit is dropped.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    ones = torch.ones(1, 1, height, width)
    out = drop_block_2d(
        ones, keep_prob, block_size, training=True, gamma=gamma, generator=generator
    )
    # Kept units are rescaled (> 0) and dropped ones are exactly 0.
    return (~(out[0, 0] > 0)).numpy()


def draw_dropblock_masks(
    image: np.ndarray,
    out_path,
    block_sizes: Sequence[int] = (1, 3, 5, 7),
    strides: Sequence[int] = (16,),
    keep_prob: float = 0.9,
    gamma: str = "exact",
    seed: int = 0,
    title: str = None,
) -> Path:
    """Write a grid figure: one row per stride, one column per block size, dropped cells in red.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        out_path: the PNG to write.
        block_sizes: DropBlock block sizes, one column each.
        strides: feature-map strides, one row each (8, 16, 32: res3, res4, res5).
        keep_prob: DropBlock keep probability of every panel.
        gamma: seed-rate rule passed to the operator.
        seed: seed of the generator the panels draw from in turn (so the figure is reproducible
            and the panels' masks are independent).
        title: figure title; a description of the settings when None.

    Returns:
        Path: ``out_path``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    img_h, img_w = image.shape[:2]
    stage_of = {s: n for n, s in RESNET_STAGE_STRIDES.items()}

    panel_w = 2.6
    panel_h = panel_w * img_h / img_w + 0.45
    fig = Figure(
        figsize=(panel_w * len(block_sizes) + 0.6, panel_h * len(strides) + 0.9),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = np.array(fig.subplots(len(strides), len(block_sizes), squeeze=False))
    generator = torch.Generator().manual_seed(seed)
    for row, stride in enumerate(strides):
        map_h, map_w = feature_map_size(img_h, img_w, stride)
        for col, block_size in enumerate(block_sizes):
            ax = axes[row, col]
            dropped = sample_dropped_cells(
                map_h, map_w, keep_prob, block_size, gamma, generator=generator
            )
            _draw_panel(ax, image, dropped, stride)
            ax.set_title(
                f"block_size {block_size}: {dropped.mean():.0%} dropped", fontsize="medium"
            )
            if col == 0:
                stage = stage_of.get(stride, "")
                ax.set_ylabel(
                    f"stride {stride}{f' ({stage})' if stage else ''}\n{map_h}x{map_w} map",
                    fontsize="medium",
                )
    if title is None:
        title = (
            f"DropBlock masks of one channel, one draw each (keep_prob {keep_prob:g}: "
            f"{1 - keep_prob:.0%} dropped on average; gamma '{gamma}', seed {seed})\n"
            "red: dropped feature-map units, drawn over the pixels they cover"
        )
    fig.suptitle(title)
    fig.savefig(out_path, dpi=120)
    return Path(out_path)


def _draw_panel(ax, image: np.ndarray, dropped: np.ndarray, stride: int) -> None:
    img_h, img_w = image.shape[:2]
    map_h, map_w = dropped.shape
    overlay = np.zeros((map_h, map_w, 4))
    overlay[..., :3] = _DROP_COLOR
    overlay[..., 3] = np.where(dropped, 0.55, 0.0)
    ax.imshow(image, extent=(0, img_w, img_h, 0), interpolation="antialiased")
    # Cell (i, j) of the map covers pixels [i*stride, (i+1)*stride): the last row and column can
    # reach past the image (ceil sizes) and are cut by the axis limits.
    ax.imshow(overlay, extent=(0, map_w * stride, map_h * stride, 0), interpolation="nearest")
    if min(img_h, img_w) / stride <= 64:  # a grid finer than that is just noise
        for x in range(stride, img_w, stride):
            ax.axvline(x, color="white", lw=0.4, alpha=0.35)
        for y in range(stride, img_h, stride):
            ax.axhline(y, color="white", lw=0.4, alpha=0.35)
    ax.set_xlim(0, img_w)
    ax.set_ylim(img_h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def stage_sizes(height: int, width: int) -> dict[str, tuple[int, int]]:
    """Feature map sizes of res3, res4 and res5 for an image.

    Args:
        height, width: the image size.

    Returns:
        dict: stage name -> (h, w).
    """
    return {
        name: feature_map_size(height, width, stride)
        for name, stride in RESNET_STAGE_STRIDES.items()
        if name != "res2"
    }
