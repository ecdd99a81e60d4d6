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
from PIL import Image

from .data import VAL_DATASET, register_dropblock_digits
from .reporting import draw_dropblock_masks, stage_sizes

DEFAULT_DATASET = VAL_DATASET


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str] or None): arguments; sys.argv[1:] when None.

    Returns:
        argparse.Namespace: the options.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--image", help=f"any picture (default: first image of {DEFAULT_DATASET})")
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
    return parser.parse_args(argv)


def load_image(path, min_size=None, max_size=10**6):
    """Read an image as RGB uint8, optionally resized as Detectron2's ResizeShortestEdge does.

    Args:
        path (str): image file.
        min_size (int or None): target length of the shorter side; None keeps the size.
        max_size (int): cap on the longer side when resizing.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    from detectron2.data.detection_utils import read_image
    from detectron2.data.transforms import ResizeShortestEdge

    image = read_image(path, format="RGB")
    if min_size:
        h, w = image.shape[:2]
        new_h, new_w = ResizeShortestEdge.get_output_shape(h, w, min_size, max_size)
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return image


def default_image_path():
    """Path of the first image of the embedded validation split.

    Returns:
        str: the image file.
    """
    from detectron2.data import DatasetCatalog

    register_dropblock_digits()
    return DatasetCatalog.get(DEFAULT_DATASET)[0]["file_name"]


def main(argv=None) -> int:
    """Draw the mask figure.

    Args:
        argv (list[str] or None): command-line arguments; sys.argv[1:] when None.

    Returns:
        int: 0 on success, 2 for an unreadable image or a bad option.
    """
    args = parse_args(argv)
    path = args.image or default_image_path()
    try:
        image = load_image(path, args.min_size, args.max_size)
    except (OSError, ValueError) as e:
        print(f"visualize_dropblock.py: error: cannot read image {path}: {e}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    sizes = ", ".join(f"{name} {fh}x{fw}" for name, (fh, fw) in stage_sizes(h, w).items())
    print(f"{path}: {h}x{w} px; feature maps: {sizes}")
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
