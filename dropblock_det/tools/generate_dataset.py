"""Generate the embedded digits detection dataset (the registered datasets also do it on first use).

Examples::

    python tools/generate_dataset.py --preview
    python tools/generate_dataset.py --out /tmp/digits --seed 1 --num-train 1000 --num-val 300 \\
        --preview /tmp/digits.png

The registered ``dropblock_digits_{train,val}`` use the defaults in
``$DETECTRON2_DATASETS/dropblock_digits``; a dataset generated there with other options is stale for
them and would be regenerated on their first use, so pass ``--out`` for custom datasets.
"""

import argparse
import collections
import json
import os
import sys

from PIL import Image, ImageDraw, ImageFont

from .data import DatasetSpec, default_dataset_dir, hash_dataset_files, prepare_dataset


def format_summary(manifest):
    """A manifest in a few lines: images, boxes, source digits, box heights, per-class counts."""
    spec = manifest["spec"]
    lines = [
        f"seed {spec['seed']}, generator v{spec['generator_version']}, "
        f"content sha256 {manifest['content_sha256'][:16]}…"
    ]
    for split, info in manifest["summary"].items():
        per_image = info["boxes"] / info["images"] if info["images"] else 0.0
        heights = info.get("box_height_px") or {}
        lines.append(
            f"{split:>5}: {info['images']} images, {info['boxes']} boxes ({per_image:.1f}/image), "
            f"{info['source_digits']} source digits, box height "
            f"{heights.get('min', '-')}..{heights.get('max', '-')} px "
            f"(median {heights.get('median', '-')})"
        )
        counts = "  ".join(f"{name}:{count}" for name, count in info["boxes_per_class"].items())
        lines.append(f"       per class  {counts}")
    return "\n".join(lines)


def save_preview_grid(dataset_dir, out_path, columns=4, scale=2):
    """Draw the first 12 train images with the boxes and classes of their json into one PNG.

    It reads what was written, so it shows exactly what a model trains on.
    """
    with open(os.path.join(dataset_dir, "annotations", "instances_train.json"), "rb") as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = coco["images"][:12]
    boxes = collections.defaultdict(list)
    for ann in coco["annotations"]:
        boxes[ann["image_id"]].append(ann)
    columns = max(1, min(columns, len(images)))
    side = max([max(i["width"], i["height"]) for i in images], default=64) * scale
    font = ImageFont.load_default(size=6 * scale)
    grid = Image.new("RGB", (columns * side, -(-len(images) // columns) * side or side))
    for slot, info in enumerate(images):
        with Image.open(os.path.join(dataset_dir, "train", info["file_name"])) as image:
            size = (info["width"] * scale, info["height"] * scale)
            tile = image.convert("RGB").resize(size, Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for ann in boxes[info["id"]]:
            x, y, w, h = (v * scale for v in ann["bbox"])
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(0, 255, 0))
            label = draw.textbbox((x, y), names[ann["category_id"]], font=font, anchor="lb")
            draw.rectangle(label, fill=(0, 255, 0))
            draw.text((x, y), names[ann["category_id"]], fill=(0, 0, 0), font=font, anchor="lb")
        grid.paste(tile, ((slot % columns) * side, (slot // columns) * side))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    grid.save(out_path)
    return out_path


def main(argv=None):
    """Generate (or find current) the dataset and summarize it; 1 when --verify finds changes."""
    defaults = DatasetSpec()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        help="dataset folder (default: $DETECTRON2_DATASETS/dropblock_digits, "
        f"currently {default_dataset_dir()})",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--force", action="store_true", help="regenerate even if current")
    parser.add_argument("--verify", action="store_true", help="check the files' content hash")
    parser.add_argument(
        "--preview",
        nargs="?",
        const="",
        metavar="PNG",
        help="save a grid of train scenes with their boxes (default path: <out>/preview.png)",
    )
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out or default_dataset_dir())
    written = set()

    def progress(split, done, total):
        # One updating line per split on a terminal, a line per 10% otherwise.
        written.add(split)
        interactive = sys.stderr.isatty()
        if done % (1 if interactive else max(1, total // 10)) and done != total:
            return
        end = "\n" if not interactive or done == total else ""
        line = f"generating {split}: {done}/{total}"
        print(("\r" if interactive else "") + line, end=end, file=sys.stderr, flush=True)

    try:
        spec = DatasetSpec(seed=args.seed, num_train=args.num_train, num_val=args.num_val)
        manifest = prepare_dataset(out, spec, force=args.force, progress=progress)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {out}" if written else f"{out} already holds this dataset (--force regenerates it)"
    )
    print(format_summary(manifest))
    status = 0
    if args.verify:
        actual = hash_dataset_files(out)
        ok = actual == manifest["content_sha256"]
        print(f"verify: {'ok' if ok else 'MISMATCH'} (files hash to {actual[:16]}…)")
        status = 0 if ok else 1
    if args.preview is not None:
        path = save_preview_grid(out, args.preview or os.path.join(out, "preview.png"))
        print(f"preview: {path}")
    return status
