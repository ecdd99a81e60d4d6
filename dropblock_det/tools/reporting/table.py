"""The comparison table: box (and mask) AP per run, the difference to the first run, the paper's rows."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .runs import BBOX_METRICS, Run

__all__ = [
    "PAPER_RESULTS",
    "PAPER_SOURCE",
    "PaperResult",
    "SEGM_AP",
    "TableRow",
    "build_rows",
    "format_delta",
    "format_markdown_table",
    "format_text_table",
]

_MISSING = "–"
# The mask AP column, shown when any run evaluated masks (Mask R-CNN).
SEGM_AP = "segm AP"


@dataclass(frozen=True)
class PaperResult:
    """A published COCO val2017 result; only the metrics the paper's text verifies are given."""

    label: str
    dropblock: str
    metrics: dict[str, float]


# Ghiasi et al. 2018, Table 3 (RetinaNet R50-FPN trained from random initialisation, 150 epochs,
# 640 px). Only AP is verified from the text; AP50 ... APl are left out rather than guessed.
PAPER_RESULTS = (
    PaperResult("Paper: RetinaNet R50-FPN, random init", "off", {"AP": 36.8}),
    PaperResult("Paper: + DropBlock kp 0.9", "kp 0.9", {"AP": 38.4}),
)
PAPER_SOURCE = "Ghiasi et al. 2018, Table 3"


@dataclass
class TableRow:
    """One line of the comparison table.

    Attributes:
        label: run name or paper row title.
        dropblock: the DropBlock setting in a few words.
        values: metric -> value; None where there is no number (not evaluated, not published).
        deltas: metric -> difference to the row's reference (the first run, or the paper's own
            baseline for paper rows); None where it cannot be computed or for the reference row.
        status: evaluation / training state of a run, or the source of a paper row.
        is_paper: whether this is a published row rather than a run.
    """

    label: str
    dropblock: str
    values: dict[str, float | None]
    deltas: dict[str, float | None] | None
    status: str
    is_paper: bool = False


def build_rows(runs: Sequence[Run], include_paper: bool = True) -> list[TableRow]:
    """Turn runs (and the paper's results) into table rows with deltas to the first run.

    The columns are :data:`BBOX_METRICS`, then :data:`SEGM_AP` when any run evaluated masks.

    Args:
        runs: the runs; the first is the reference for every delta.
        include_paper: append the paper's baseline and DropBlock rows.

    Returns:
        list[TableRow]: one row per run, then the paper rows.
    """
    with_segm = any(r.evaluation is not None and r.evaluation.segm_ap is not None for r in runs)
    columns = (*BBOX_METRICS, SEGM_AP) if with_segm else BBOX_METRICS
    values_of = [_run_values(run, columns) for run in runs]
    rows = []
    for index, (run, values) in enumerate(zip(runs, values_of, strict=True)):
        deltas = None
        if index > 0:
            deltas = {m: _difference(values[m], values_of[0][m]) for m in columns}
        rows.append(TableRow(run.name, run.dropblock_label, values, deltas, run.status))
    if include_paper:
        paper_baseline = PAPER_RESULTS[0].metrics
        for index, paper in enumerate(PAPER_RESULTS):
            values = {m: paper.metrics.get(m) for m in columns}
            deltas = None
            if index > 0:
                deltas = {m: _difference(values[m], paper_baseline.get(m)) for m in columns}
            rows.append(
                TableRow(paper.label, paper.dropblock, values, deltas, PAPER_SOURCE, is_paper=True)
            )
    return rows


def _run_values(run: Run, columns: Sequence[str]) -> dict[str, float | None]:
    if run.evaluation is None:
        return {m: None for m in columns}
    values = {**run.evaluation.metrics, SEGM_AP: run.evaluation.segm_ap}
    return {m: values[m] for m in columns}


def _columns(rows: Sequence[TableRow]) -> list[str]:
    return list(rows[0].values) if rows else list(BBOX_METRICS)


def format_text_table(rows: Sequence[TableRow], decimals: int = 1) -> str:
    """Format rows as a fixed-width table for a terminal.

    Args:
        rows: from :func:`build_rows`.
        decimals: digits after the point for metrics and deltas.

    Returns:
        str: the table, paper rows set apart by a rule.
    """
    columns = _columns(rows)
    header = ["Run", "DropBlock", *columns, "Status"]
    body = [_cells(row, columns, decimals) for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = range(2, 2 + len(columns))

    def render(cells):
        padded = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [render(header), rule]
    for index, (row, cells) in enumerate(zip(rows, body, strict=True)):
        if row.is_paper and (index == 0 or not rows[index - 1].is_paper):
            lines.append(rule)  # sets the published rows apart from the runs
        lines.append(render(cells))
    return "\n".join(lines)


def format_markdown_table(rows: Sequence[TableRow], decimals: int = 1) -> str:
    """Format rows as a GitHub-flavoured Markdown table (metric columns right-aligned).

    Args:
        rows: from :func:`build_rows`.
        decimals: digits after the point for metrics and deltas.

    Returns:
        str: the table.
    """
    columns = _columns(rows)
    header = ["Run", "DropBlock", *columns, "Status"]
    align = [":--", ":--", *["--:"] * len(columns), ":--"]
    lines = [_markdown_line(header), _markdown_line(align)]
    for row in rows:
        cells = _cells(row, columns, decimals)
        if row.is_paper:
            cells[0] = f"*{cells[0]}*"
        lines.append(_markdown_line(cells))
    return "\n".join(lines)


def _cells(row: TableRow, columns: Sequence[str], decimals: int) -> list[str]:
    metrics = []
    for m in columns:
        text = _format_value(row.values[m], decimals)
        delta = row.deltas.get(m) if row.deltas else None
        if delta is not None:
            text += f" ({format_delta(delta, decimals)})"
        metrics.append(text)
    return [row.label, row.dropblock, *metrics, row.status]


def format_delta(delta: float, decimals: int) -> str:
    """A signed difference, e.g. ``+1.6``; rounding first avoids ``-0.0`` below display precision."""
    return f"{round(delta, decimals) + 0.0:+.{decimals}f}"


def _format_value(value: float | None, decimals: int) -> str:
    if value is None:
        return _MISSING
    if math.isnan(value):
        return "NaN"
    return f"{value:.{decimals}f}"


def _difference(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return None
    return value - reference


def _markdown_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
