"""Compare run folders: report.md, the table as text, and the figures beside them."""

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .plots import plot_ap, plot_keep_prob, plot_losses
from .runs import Run, read_runs
from .table import (
    MISSING,
    PAPER_SOURCE,
    TableRow,
    build_rows,
    format_markdown_table,
    format_text_table,
)

REPORT_NAME = "report.md"
FIGURE_NAMES = {"ap": "ap.png", "keep_prob": "keep_prob.png", "loss": "loss.png"}
_FIGURE_TITLES = {"ap": "AP per run", "keep_prob": "keep_prob schedule", "loss": "Training losses"}


@dataclass
class ReportResult:
    """What :func:`write_report` read and wrote; ``table_text`` is what tools/compare.py prints."""

    runs: list[Run]
    rows: list[TableRow]
    table_text: str
    markdown: str
    report_path: Path
    figures: dict[str, Path] = field(default_factory=dict)


def write_report(
    run_dirs, out_dir, names=None, include_paper=True, *, dataset=None, decimals=1
) -> ReportResult:
    """Compare run folders: write ``report.md``, ``ap.png``, ``keep_prob.png`` and ``loss.png``.

    Args:
        run_dirs (Sequence): Detectron2 OUTPUT_DIRs; the first is the reference of the deltas.
        out_dir (str or Path): folder of the report (created if needed).
        names (Sequence[str] or None): one label per run; folder names when None.
        include_paper (bool): add the paper's RetinaNet rows, unless no run is a RetinaNet (a
            footnote then says so).
        dataset (str or None): with several test datasets, the one to report.
        decimals (int): digits after the point.

    Raises:
        ValueError: for no runs, a wrong number of names, an unknown ``dataset``, or (as
            NotARunFolderError) a path that is not a run folder.
    """
    runs = read_runs(run_dirs, names=names, dataset=dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    architectures = [r.config_value("MODEL.META_ARCHITECTURE") for r in runs]
    # The paper's rows are RetinaNet's; a run of unknown architecture may be one.
    left_out = include_paper and all(
        a is not None and "RetinaNet" not in str(a) for a in architectures
    )
    include_paper = include_paper and not left_out
    footnotes = _footnotes(runs, include_paper)
    if left_out:
        footnotes.append(
            f"No paper rows: the paper's COCO results ({PAPER_SOURCE}) are RetinaNet's, "
            f"and these runs are {', '.join(sorted(set(map(str, architectures))))} "
            "(MODEL.META_ARCHITECTURE)."
        )
    rows = build_rows(runs, include_paper=include_paper)
    figures = {
        "ap": plot_ap(runs, rows, out_dir / FIGURE_NAMES["ap"], decimals),
        "keep_prob": plot_keep_prob(runs, out_dir / FIGURE_NAMES["keep_prob"]),
        "loss": plot_losses(runs, out_dir / FIGURE_NAMES["loss"]),
    }
    lines = ["# Run comparison", "", format_markdown_table(rows, decimals), ""]
    lines += [f"- {note}" for note in footnotes] + ["", "## Runs", ""]
    for run in runs:
        try:  # relative to the report, so that the report folder moves with the runs
            where = os.path.relpath(run.path.resolve(), out_dir.resolve())
        except ValueError:  # another drive on Windows
            where = run.path
        lines.append(f"- **{run.name}** (`{where}`): {run.status}.")
        lines += [f"  - {detail}" for detail in _run_details(run)]
    lines += ["", "## Figures", ""]
    for key, name in FIGURE_NAMES.items():
        lines += [f"![{_FIGURE_TITLES[key]}]({name})", ""]
    markdown = "\n".join(lines)
    report_path = out_dir / REPORT_NAME
    report_path.write_text(markdown, encoding="utf-8")
    table_text = "\n".join([format_text_table(rows, decimals), "", *footnotes])
    return ReportResult(runs, rows, table_text, markdown, report_path, figures)


def _footnotes(runs, include_paper):
    evaluations = [r.evaluation for r in runs if r.evaluation is not None]
    notes = [f"AP metrics on Detectron2's 0-100 scale; '{MISSING}': no number."]
    if any(e.segm_ap is not None for e in evaluations):
        notes.append("segm AP: mask AP (COCO segm, IoU 0.50:0.95) of the runs that train masks.")
    if any(math.isnan(v) for e in evaluations for v in e.metrics.values()):
        notes.append("NaN: COCOeval had no detections, or no objects of that size, to score.")
    if len(runs) > 1 and runs[0].evaluation is not None:
        notes.append(f"(+x.x): difference to the first run, {runs[0].name}.")
    elif len(runs) > 1:
        notes.append(f"No differences: the first run, {runs[0].name}, is not evaluated.")
    if include_paper:
        notes.append(
            f"Paper rows: {PAPER_SOURCE}, COCO val2017 after 150 epochs at 640 px; "
            "only AP is verified, and their difference is to the paper's own baseline."
        )
    return notes


def _run_details(run):
    dropblock = run.dropblock_label
    if dropblock not in ("off", "?"):
        key = "MODEL.DROPBLOCK."
        extras = [
            f"placement {run.config_value(key + 'PLACEMENT', '?')}",
            f"gamma {run.config_value(key + 'GAMMA', '?')}",
        ]
        start, target, ramp = (
            run.config_value(key + k) for k in ("SCHEDULE.START", "KEEP_PROB", "SCHEDULE.RAMP")
        )
        if all(isinstance(v, (int, float)) for v in (start, target, ramp)):
            extras.append(f"keep_prob {start:g} → {target:g} over {ramp:.0%} of the run")
        dropblock += f" ({', '.join(extras)})"
    max_iter = run.max_iter if run.max_iter is not None else "unknown"
    details = [
        f"DropBlock: {dropblock}",
        f"training: {run.iterations_done or 0}/{max_iter} iterations (SOLVER.MAX_ITER) logged"
        + (", model_final.pth present" if run.has_final_checkpoint else ""),
    ]
    e = run.evaluation
    if e is not None:
        source = f"numbers from {e.source}"
        source += f" (iteration {e.iteration})" if e.iteration is not None else ""
        source += f", dataset {e.dataset}" if e.dataset else ""
        source += f" (also evaluated: {', '.join(e.other_datasets)})" if e.other_datasets else ""
        details.append(source)
    return details + run.notes
