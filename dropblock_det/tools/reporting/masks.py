"""Pictures of DropBlock masks on a ResNet's feature-map grids over an image (the paper's Fig. 1/2).

The masks are drawn by the package's operator, :func:`dropblock_det.drop_block_2d`, each dropped
feature-map cell covering its ``stride x stride`` pixels.
"""

import math

import numpy as np
import torch

from ...layers import drop_block_2d
from .plots import agg_figure

# Detectron2 ResNet output strides.
RESNET_STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def feature_map_size(height, width, stride):
    """The ``(h, w)`` of a Detectron2 ResNet feature map of ``stride`` (a power of two).

    Every stride-2 layer (stem conv, max-pool, first block of res3..res5) maps n to ceil(n / 2).
    """
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two (e.g. 8, 16, 32), got {stride}")
    for _ in range(int(math.log2(stride))):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def sample_dropped_cells(
    height, width, keep_prob, block_size, gamma="exact", seed=0, generator=None
):
    """One channel's DropBlock mask on a ``height x width`` map: bool array, True where dropped.

    Draws from ``generator`` when given, else from a fresh CPU generator seeded with ``seed``.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    ones = torch.ones(1, 1, height, width)
    out = drop_block_2d(
        ones, keep_prob, block_size, training=True, gamma=gamma, generator=generator
    )
    return (out[0, 0] == 0).numpy()  # kept units are rescaled (> 0)


def draw_dropblock_masks(
    image,
    out_path,
    block_sizes=(1, 3, 5, 7),
    strides=(16,),
    keep_prob=0.9,
    gamma="exact",
    seed=0,
):
    """Write a PNG grid over ``image``: a row per stride, a column per block size, drops in red.

    ``image`` is ``(H, W, 3)`` uint8 RGB; every panel draws one mask at ``keep_prob`` with the
    ``gamma`` rule from one generator seeded with ``seed``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    img_h, img_w = image.shape[:2]
    stage_of = {s: f" ({n})" for n, s in RESNET_STAGE_STRIDES.items()}
    panel_h = 2.6 * img_h / img_w + 0.45
    fig = agg_figure(2.6 * len(block_sizes) + 0.6, panel_h * len(strides) + 0.9)
    axes = fig.subplots(len(strides), len(block_sizes), squeeze=False)
    generator = torch.Generator().manual_seed(seed)
    for row, stride in enumerate(strides):
        map_h, map_w = feature_map_size(img_h, img_w, stride)
        for col, block_size in enumerate(block_sizes):
            ax = axes[row, col]
            dropped = sample_dropped_cells(
                map_h, map_w, keep_prob, block_size, gamma, generator=generator
            )
            overlay = np.where(dropped[..., None], (0.9, 0.05, 0.05, 0.55), 0.0)  # RGBA
            ax.imshow(image, extent=(0, img_w, img_h, 0), interpolation="antialiased")
            # The ceil-sized map can reach past the image; the axis limits cut it.
            extent = (0, map_w * stride, map_h * stride, 0)
            ax.imshow(overlay, extent=extent, interpolation="nearest")
            if min(img_h, img_w) / stride <= 64:  # a finer grid is just noise
                grid = {"color": "white", "lw": 0.4, "alpha": 0.35}
                ax.vlines(range(stride, img_w, stride), 0, img_h, **grid)
                ax.hlines(range(stride, img_h, stride), 0, img_w, **grid)
            ax.set(xlim=(0, img_w), ylim=(img_h, 0), xticks=[], yticks=[])
            ax.set_title(
                f"block_size {block_size}: {dropped.mean():.0%} dropped", fontsize="medium"
            )
            if col == 0:
                label = f"stride {stride}{stage_of.get(stride, '')}\n{map_h}x{map_w} map"
                ax.set_ylabel(label, fontsize="medium")
    fig.suptitle(
        f"DropBlock masks of one channel, one draw each (keep_prob {keep_prob:g}: "
        f"{1 - keep_prob:.0%} dropped on average; gamma '{gamma}', seed {seed})\n"
        "red: dropped feature-map units, drawn over the pixels they cover"
    )
    fig.savefig(out_path, dpi=120)
    return out_path
