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
import os
import sys

from .data import (
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    DatasetSpec,
    default_dataset_dir,
    format_summary,
    hash_dataset_files,
    prepare_dataset,
    save_preview_grid,
)


def parse_args(argv=None):
    """Args: argv (list[str] or None): command line, None for sys.argv. Returns: Namespace."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        default=None,
        help="dataset folder (default: $DETECTRON2_DATASETS/dropblock_digits, "
        f"currently {default_dataset_dir()})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument(
        "--force",
        action="store_true",
        help="regenerate even when the folder already holds this dataset",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="recompute the content hash of the files and compare with the manifest",
    )
    parser.add_argument(
        "--preview",
        nargs="?",
        const="",
        default=None,
        metavar="PNG",
        help="save a grid of train scenes with their boxes (default path: <out>/preview.png)",
    )
    return parser.parse_args(argv)


class _Progress:
    """Prints one updating progress line per split (a line per 10% when not on a terminal)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.interactive = stream.isatty()
        self.called = False

    def __call__(self, split, done, total):
        self.called = True
        step = 1 if self.interactive else max(1, total // 10)
        if done % step and done != total:
            return
        if self.interactive:
            end = "\n" if done == total else ""
            print(f"\rgenerating {split}: {done}/{total}", end=end, file=self.stream, flush=True)
        else:
            print(f"generating {split}: {done}/{total}", file=self.stream, flush=True)


def main(argv=None):
    """Generate (or find current) the dataset, print a summary, optionally verify and preview.

    Args:
        argv (list[str] or None): command line, None for sys.argv.

    Returns:
        int: exit status (1 when --verify finds altered files).
    """
    args = parse_args(argv)
    out = os.path.abspath(args.out or default_dataset_dir())
    try:
        spec = DatasetSpec(
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = _Progress()
    try:
        manifest = prepare_dataset(out, spec, force=args.force, progress=progress)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if progress.called:
        print(f"wrote {out}")
    else:
        print(f"{out} already holds this dataset (--force regenerates it)")
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
