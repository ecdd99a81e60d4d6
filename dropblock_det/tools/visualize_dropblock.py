"""Draw DropBlock masks over an image at the feature-map resolution of a ResNet stage.

Example:
    python tools/visualize_dropblock.py --out output/dropblock_masks.png
    python tools/visualize_dropblock.py --image photo.jpg --strides 8 16 32 --out masks.png

Without --image it uses the first image of the embedded validation split "dropblock_digits_val"
(generated under $DETECTRON2_DATASETS on first use). Each panel shows one channel's mask, drawn by
dropblock_det.drop_block_2d with a fixed seed, dropped units in red.
"""

import argparse
import sys

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import ResizeShortestEdge
from PIL import Image

from .data import VAL_DATASET, register_dropblock_digits
from .reporting import draw_dropblock_masks
from .reporting.masks import RESNET_STAGE_STRIDES, feature_map_size


def main(argv=None) -> int:
    """Draw the mask figure; 2 for an unreadable image or a bad option."""
    summary, epilog = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        description=summary, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", help=f"any picture (default: first image of {VAL_DATASET})")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[1, 3, 5, 7])
    parser.add_argument(
        "--strides", type=int, nargs="+", default=[16], help="8, 16, 32 = res3, res4, res5"
    )
    parser.add_argument("--keep-prob", type=float, default=0.9)
    parser.add_argument("--gamma", choices=["paper", "exact"], default="exact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-size",
        type=int,
        help="resize the shorter side to this first, as the model's ResizeShortestEdge would",
    )
    parser.add_argument("--max-size", type=int, default=10**6, help="cap for --min-size resizing")
    args = parser.parse_args(argv)
    if not args.image:
        register_dropblock_digits()
    path = args.image or DatasetCatalog.get(VAL_DATASET)[0]["file_name"]
    try:
        image = read_image(path, format="RGB")
        if args.min_size:
            h, w = ResizeShortestEdge.get_output_shape(
                *image.shape[:2], args.min_size, args.max_size
            )
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    except (OSError, ValueError) as e:
        print(f"visualize_dropblock.py: error: cannot read image {path}: {e}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    sizes = [
        f"{name} {'x'.join(map(str, feature_map_size(h, w, stride)))}"
        for name, stride in RESNET_STAGE_STRIDES.items()
        if name != "res2"
    ]
    print(f"{path}: {h}x{w} px; feature maps: {', '.join(sizes)}")
    try:
        out = draw_dropblock_masks(
            image,
            args.out,
            block_sizes=args.block_sizes,
            strides=args.strides,
            keep_prob=args.keep_prob,
            gamma=args.gamma,
            seed=args.seed,
        )
    except ValueError as e:
        print(f"visualize_dropblock.py: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {out}")
    return 0
