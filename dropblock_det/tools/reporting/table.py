"""The comparison table: box (and mask) AP per run, the difference to the first run, the paper's rows."""

import math
from dataclasses import dataclass

from .runs import BBOX_METRICS

MISSING = "–"
# The mask AP column, shown when any run evaluated masks (Mask R-CNN).
SEGM_AP = "segm AP"


@dataclass(frozen=True)
class PaperResult:
    """A published COCO val2017 result; only the metrics the paper's text verifies."""

    label: str
    dropblock: str
    metrics: dict[str, float]


# Ghiasi et al. 2018, Table 3: RetinaNet R50-FPN from random initialisation, 150 epochs, 640 px.
# Only AP is verified from the text; AP50 ... APl are left out rather than guessed.
PAPER_RESULTS = (
    PaperResult("Paper: RetinaNet R50-FPN, random init", "off", {"AP": 36.8}),
    PaperResult("Paper: + DropBlock kp 0.9", "kp 0.9", {"AP": 38.4}),
)
PAPER_SOURCE = "Ghiasi et al. 2018, Table 3"


@dataclass
class TableRow:
    """One line of the table.

    ``values`` holds None where there is no number; ``deltas`` (None for a reference row) the
    difference to the first run, or to the paper's baseline for paper rows.
    """

    label: str
    dropblock: str
    values: dict[str, float | None]
    deltas: dict[str, float | None] | None
    status: str
    is_paper: bool = False


def build_rows(runs, include_paper=True):
    """Table rows of the runs (deltas to the first), then of the paper (deltas to its baseline).

    A ``segm AP`` column when any run has masks.
    """
    with_segm = any(r.evaluation is not None and r.evaluation.segm_ap is not None for r in runs)
    columns = (*BBOX_METRICS, SEGM_AP) if with_segm else BBOX_METRICS
    entries = []
    for run in runs:
        e = run.evaluation
        values = {**e.metrics, SEGM_AP: e.segm_ap} if e is not None else {}
        entries.append((run.name, run.dropblock_label, values, run.status, False))
    if include_paper:
        entries += [(p.label, p.dropblock, p.metrics, PAPER_SOURCE, True) for p in PAPER_RESULTS]
    rows, reference = [], {}
    for label, dropblock, values, status, is_paper in entries:
        values = {m: values.get(m) for m in columns}
        first = not rows or (is_paper and not rows[-1].is_paper)
        reference = values if first else reference
        deltas = None if first else {m: _difference(values[m], reference[m]) for m in columns}
        rows.append(TableRow(label, dropblock, values, deltas, status, is_paper))
    return rows


def format_text_table(rows, decimals=1):
    """The rows as a fixed-width table for a terminal, paper rows set apart by a rule."""
    header, body = _header(rows), [_cells(row, decimals) for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = range(2, len(header) - 1)

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
            lines.append(rule)
        lines.append(render(cells))
    return "\n".join(lines)


def format_markdown_table(rows, decimals=1):
    """The rows as a GitHub Markdown table, metric columns right-aligned, paper rows in italics."""
    header = _header(rows)
    align = [":--", ":--", *["--:"] * (len(header) - 3), ":--"]
    lines = [header, align]
    for row in rows:
        cells = _cells(row, decimals)
        cells[0] = f"*{cells[0]}*" if row.is_paper else cells[0]
        lines.append(cells)
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in ln) + " |" for ln in lines)


def format_delta(delta, decimals):
    """A signed difference such as ``+1.6``; rounding first avoids ``-0.0``."""
    return f"{round(delta, decimals) + 0.0:+.{decimals}f}"


def _header(rows):
    return ["Run", "DropBlock", *(rows[0].values if rows else BBOX_METRICS), "Status"]


def _cells(row, decimals):
    metrics = []
    for m, value in row.values.items():
        text = MISSING if value is None else "NaN" if math.isnan(value) else f"{value:.{decimals}f}"
        delta = row.deltas.get(m) if row.deltas else None
        metrics.append(text if delta is None else f"{text} ({format_delta(delta, decimals)})")
    return [row.label, row.dropblock, *metrics, row.status]


def _difference(value, reference):
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return None
    return value - reference
