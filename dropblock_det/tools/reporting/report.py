"""Write a comparison of run folders: a Markdown report, its table as text, and PNG figures."""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .plots import plot_ap, plot_keep_prob, plot_losses
from .runs import Run, read_runs
from .table import TableRow, build_rows, format_markdown_table, format_text_table

__all__ = ["ReportResult", "write_report"]

REPORT_NAME = "report.md"
FIGURE_NAMES = {"ap": "ap.png", "keep_prob": "keep_prob.png", "loss": "loss.png"}


@dataclass
class ReportResult:
    """What :func:`write_report` read and wrote.

    Attributes:
        runs: the parsed runs, in the order given.
        rows: the table rows (runs, then paper rows).
        table_text: the fixed-width table with its footnotes, as printed by tools/compare.py.
        markdown: the content of ``report.md``.
        report_path: the written ``report.md``.
        figures: figure key ("ap", "keep_prob", "loss") -> written PNG.
    """

    runs: list[Run]
    rows: list[TableRow]
    table_text: str
    markdown: str
    report_path: Path
    figures: dict[str, Path] = field(default_factory=dict)


def write_report(
    run_dirs: Sequence,
    out_dir,
    names: Sequence[str] | None = None,
    include_paper: bool = True,
    *,
    dataset: str | None = None,
    decimals: int = 1,
) -> ReportResult:
    """Compare run folders: write ``report.md``, ``ap.png``, ``keep_prob.png`` and ``loss.png``.

    Args:
        run_dirs: Detectron2 OUTPUT_DIRs; the first is the reference for the deltas.
        out_dir: folder for the report and figures (created if needed).
        names: one label per run; folder names when None.
        include_paper: add the paper's RetinaNet rows (36.8 AP, 38.4 AP with DropBlock), unless
            no run is a RetinaNet (the footnotes then say why they are left out).
        dataset: with several test datasets, the one to report; each run's DATASETS.TEST[0]
            when None.
        decimals: digits after the point in the tables.

    Returns:
        ReportResult: the runs, the table and the written paths.

    Raises:
        NotARunFolderError: for a path that is not a run folder.
        ValueError: for no runs, a wrong number of names, or an unknown ``dataset``.
    """
    runs = read_runs(run_dirs, names=names, dataset=dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    architectures = _non_retinanet_architectures(runs)
    left_out = include_paper and bool(architectures)
    include_paper = include_paper and not left_out
    rows = build_rows(runs, include_paper=include_paper)
    footnotes = _footnotes(runs, include_paper)
    if left_out:
        footnotes.append(
            "No paper rows: the paper's COCO results (Ghiasi et al. 2018, Table 3) are RetinaNet's, "
            f"and these runs are {', '.join(architectures)} (MODEL.META_ARCHITECTURE)."
        )

    table_text = "\n".join([format_text_table(rows, decimals), "", *footnotes])
    figures = {
        "ap": plot_ap(runs, out_dir / FIGURE_NAMES["ap"], include_paper, decimals),
        "keep_prob": plot_keep_prob(runs, out_dir / FIGURE_NAMES["keep_prob"]),
        "loss": plot_losses(runs, out_dir / FIGURE_NAMES["loss"]),
    }
    markdown = _markdown(runs, rows, footnotes, out_dir, decimals)
    report_path = out_dir / REPORT_NAME
    report_path.write_text(markdown, encoding="utf-8")
    return ReportResult(runs, rows, table_text, markdown, report_path, figures)


def _non_retinanet_architectures(runs: Sequence[Run]) -> list[str]:
    """The runs' meta-architectures when none is a RetinaNet (R-CNN runs), else []."""
    architectures = [r.meta_architecture for r in runs]
    # A run of unknown architecture may be a RetinaNet: the rows stay.
    if (
        not architectures
        or None in architectures
        or any("RetinaNet" in str(a) for a in architectures)
    ):
        return []
    return sorted(set(map(str, architectures)))


def _footnotes(runs: Sequence[Run], include_paper: bool) -> list[str]:
    notes = ["AP metrics on Detectron2's 0-100 scale; '–': no number."]
    if any(r.evaluation is not None and r.evaluation.segm_ap is not None for r in runs):
        notes.append("segm AP: mask AP (COCO segm, IoU 0.50:0.95) of the runs that train masks.")
    if any(
        math.isnan(v) for run in runs if run.evaluation for v in run.evaluation.metrics.values()
    ):
        notes.append("NaN: COCOeval had no detections, or no objects of that size, to score.")
    if len(runs) > 1:
        if runs[0].evaluation is not None:
            notes.append(f"(+x.x): difference to the first run, {runs[0].name}.")
        else:
            notes.append(f"No differences: the first run, {runs[0].name}, is not evaluated.")
    if include_paper:
        notes.append(
            "Paper rows: Ghiasi et al. 2018, Table 3, COCO val2017 after 150 epochs at 640 px; "
            "only AP is verified, and their difference is to the paper's own baseline."
        )
    return notes


def _markdown(runs, rows, footnotes, out_dir: Path, decimals: int) -> str:
    lines = [
        "# Run comparison",
        "",
        format_markdown_table(rows, decimals),
        "",
        *[f"- {note}" for note in footnotes],
        "",
        "## Runs",
        "",
    ]
    for run in runs:
        lines.append(f"- **{run.name}** (`{_display_path(run.path, out_dir)}`): {run.status}.")
        lines.extend(f"  - {detail}" for detail in _run_details(run))
    lines += [
        "",
        "## Figures",
        "",
        f"![AP per run]({FIGURE_NAMES['ap']})",
        "",
        f"![keep_prob schedule]({FIGURE_NAMES['keep_prob']})",
        "",
        f"![Training losses]({FIGURE_NAMES['loss']})",
        "",
    ]
    return "\n".join(lines)


def _run_details(run: Run) -> list[str]:
    details = [f"DropBlock: {_dropblock_details(run)}"]
    max_iter = run.max_iter if run.max_iter is not None else "unknown"
    done = run.iterations_done if run.iterations_done is not None else 0
    details.append(
        f"training: {done}/{max_iter} iterations (SOLVER.MAX_ITER) logged"
        + (", model_final.pth present" if run.has_final_checkpoint else "")
    )
    evaluation = run.evaluation
    if evaluation is not None:
        source = f"numbers from {evaluation.source}"
        if evaluation.iteration is not None:
            source += f" (iteration {evaluation.iteration})"
        if evaluation.dataset:
            source += f", dataset {evaluation.dataset}"
        if evaluation.other_datasets:
            source += f" (also evaluated: {', '.join(evaluation.other_datasets)})"
        details.append(source)
    details.extend(run.notes)
    return details


def _dropblock_details(run: Run) -> str:
    label = run.dropblock_label
    if label in ("off", "?"):
        return label
    value = run.config_value
    extras = [
        f"placement {value('MODEL.DROPBLOCK.PLACEMENT', '?')}",
        f"gamma {value('MODEL.DROPBLOCK.GAMMA', '?')}",
    ]
    start, target, ramp = (
        value(f"MODEL.DROPBLOCK.{key}") for key in ("SCHEDULE.START", "KEEP_PROB", "SCHEDULE.RAMP")
    )
    if all(isinstance(v, (int, float)) for v in (start, target, ramp)):
        extras.append(f"keep_prob {start:g} → {target:g} over {ramp:.0%} of the run")
    return f"{label} ({', '.join(extras)})"


def _display_path(path: Path, out_dir: Path) -> str:
    # Relative to the report, so the report folder can be moved together with the runs.
    try:
        return os.path.relpath(path.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        return str(path)
