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

from .reporting import write_report


def main(argv=None) -> int:
    """Print the comparison of the runs; 2 for a bad argument or a path that is not a run folder."""
    summary, epilog = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        description=summary, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders, deltas to the first")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report and figures")
    parser.add_argument("--names", help="comma-separated run labels (default: folder names)")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's rows")
    parser.add_argument(
        "--dataset",
        help="with several test datasets, the one to report (default: DATASETS.TEST[0])",
    )
    parser.add_argument("--decimals", type=int, default=1, help="digits after the point, default 1")
    args = parser.parse_args(argv)
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
    except ValueError as e:  # NotARunFolderError included
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    print(result.table_text + "\n")
    for path in [result.report_path, *result.figures.values()]:
        print(f"Wrote {path}")
    return 0
