"""Compare training runs: box (and mask) AP table, with the paper's RetinaNet rows, and figures.

Example:
    python tools/compare.py output/baseline output/dropblock --out output/compare
    python tools/compare.py runA runB runC --names base,kp0.9,kp0.8 --out report --no-paper

Prints the table and writes OUT/report.md, OUT/ap.png, OUT/keep_prob.png and OUT/loss.png. Each RUN
is a Detectron2 OUTPUT_DIR written by tools/train_net.py (config.yaml, metrics.json and, once
evaluated, eval_results.json); runs that are not evaluated yet are listed as such. Runs that
evaluated masks get a segm AP column; the paper's rows (RetinaNet) are left out when no run is a
RetinaNet, and the table says so.
"""

import argparse
import sys

from .reporting import NotARunFolderError, write_report


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str] or None): arguments; sys.argv[1:] when None.

    Returns:
        argparse.Namespace: runs, out, names, no_paper, dataset, decimals.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders; deltas are to the first"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report and figures")
    parser.add_argument(
        "--names", help="comma-separated labels, one per run (default: folder names)"
    )
    parser.add_argument(
        "--no-paper", action="store_true", help="leave out the paper's RetinaNet rows"
    )
    parser.add_argument(
        "--dataset",
        help="with several test datasets, the one to report (default: DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--decimals", type=int, default=1, help="digits after the point (default 1)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the comparison and print the table.

    Args:
        argv (list[str] or None): command-line arguments; sys.argv[1:] when None.

    Returns:
        int: 0 on success, 2 for a bad argument or a path that is not a run folder.
    """
    args = parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    try:
        result = write_report(
            args.runs,
            args.out,
            names=names,
            include_paper=not args.no_paper,
            dataset=args.dataset,
            decimals=args.decimals,
        )
    except (NotARunFolderError, ValueError) as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    print(result.table_text)
    print()
    print(f"Wrote {result.report_path}")
    for path in result.figures.values():
        print(f"Wrote {path}")
    return 0
