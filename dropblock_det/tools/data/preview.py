"""A preview grid of generated scenes with their boxes, read back from the COCO json on disk."""

import json
import os

import numpy as np
from PIL import Image

__all__ = ["save_preview_grid"]


def save_preview_grid(dataset_dir, out_path, split="train", num_images=12, columns=4, dpi=100):
    """Draw the first images of a split with their annotated boxes and classes into one PNG.

    It reads what was written (json + PNGs), so it shows exactly what a model is trained on.

    Args:
        dataset_dir (str): a generated dataset folder (with ``annotations/`` and the split folders).
        out_path (str): PNG file to write; its folder is created.
        split (str): "train" or "val".
        num_images (int): how many images, from the start of the split.
        columns (int): images per row.
        dpi (int): resolution of the saved figure.

    Returns:
        str: ``out_path``.

    Raises:
        FileNotFoundError: naming the missing annotation file.
    """
    # Figure + Agg canvas rather than pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    json_file = os.path.join(dataset_dir, "annotations", f"instances_{split}.json")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"No annotations for split {split!r}: {json_file} does not exist.")
    with open(json_file, encoding="utf-8") as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = coco["images"][:num_images]
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)

    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.4 * columns, 2.5 * rows), dpi=dpi)
    FigureCanvasAgg(figure)
    for slot, info in enumerate(images):
        axes = figure.add_subplot(rows, columns, slot + 1)
        pixels = np.asarray(Image.open(os.path.join(dataset_dir, split, info["file_name"])))
        axes.imshow(pixels, interpolation="nearest")
        anns = by_image.get(info["id"], [])
        for ann in anns:
            x, y, w, h = ann["bbox"]
            # Box edges drawn on pixel edges (imshow centres pixel i at i, so edges are at i-0.5).
            axes.add_patch(
                Rectangle((x - 0.5, y - 0.5), w, h, fill=False, linewidth=1.0, edgecolor="lime")
            )
            axes.text(
                x - 0.5,
                y - 1.5,
                names[ann["category_id"]],
                color="black",
                fontsize=7,
                va="bottom",
                bbox={"facecolor": "lime", "pad": 0.5, "linewidth": 0},
            )
        axes.set_title(
            f"{split} {info['file_name']} ({len(anns)} box{'' if len(anns) == 1 else 'es'})",
            fontsize=7,
        )
        axes.set_axis_off()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    figure.savefig(out_path)
    return out_path
