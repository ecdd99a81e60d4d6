"""The report's figures: AP per run, keep_prob schedules and training losses.

Drawn on matplotlib's Agg canvas, not pyplot: no display needed, the caller's backend untouched.
"""

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...hooks import KEEP_PROB_METRIC
from .runs import BBOX_METRICS, TRAINING_KEY
from .table import format_delta

LOSS_KEYS = (
    ("total_loss", "total loss"),
    ("loss_cls", "classification loss (focal)"),
    ("loss_box_reg", "box regression loss"),
)
_DPI = 110


def run_colors(count):
    """One tab10 colour per run (cycling after ten), the same in every figure."""
    palette = colormaps["tab10"]
    return [palette(i % palette.N) for i in range(count)]


def smooth(values, span):
    """Bias-corrected exponential moving average of ``span`` points (TensorBoard's smoothing).

    Dividing by the accumulated weight removes the plain EMA's pull towards 0 at the start.
    """
    values = np.asarray(values, dtype=float)
    decay = 1.0 - 2.0 / (max(span, 1) + 1.0)
    out, average, weight = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        average = decay * average + (1.0 - decay) * v
        weight = decay * weight + (1.0 - decay)
        out[i] = average / weight
    return out


def agg_figure(width, height):
    """A constrained-layout Figure on its own Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _markers(points):
    # Short logs (a run just started, a smoke test) would be invisible as lines alone.
    return {"marker": "o", "markersize": 4} if len(points) < 15 else {}


def _no_data(ax, message):
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_ap(runs, rows, out_path, decimals=1):
    """Write a PNG of the table's AP and its differences (left) and of the box metrics (right).

    ``rows`` are :func:`~.table.build_rows`' of ``runs``, the paper's drawn in grey.
    """
    colors = run_colors(len(runs))
    fig = agg_figure(13, max(3.6, 0.55 * len(rows) + 1.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})

    values = [row.values["AP"] for row in rows]
    span = max([v for v in values if v is not None and not math.isnan(v)], default=1.0)
    for y, (row, value) in enumerate(zip(rows, values, strict=True)):
        if value is None or math.isnan(value):
            text = "not evaluated" if value is None else "NaN"
            left.text(0.01 * span, y, text, va="center", ha="left", style="italic", color="0.35")
            continue
        paper = {"color": "0.6", "hatch": "//", "edgecolor": "white"}
        left.barh(y, value, **(paper if row.is_paper else {"color": colors[y]}))
        delta = (row.deltas or {}).get("AP")
        text = f"{value:.{decimals}f}"
        text += "" if delta is None else f" ({format_delta(delta, decimals)})"
        left.text(value + 0.01 * span, y, text, va="center", ha="left")
    left.set_yticks(range(len(rows)), [row.label for row in rows])
    left.set(
        ylim=(len(rows) - 0.5, -0.5),  # first run on top
        xlim=(0, span * 1.3),
        xlabel="AP (COCO bbox, IoU 0.50:0.95)",
        title="AP per run" + (" (grey: published)" if any(r.is_paper for r in rows) else ""),
        axisbelow=True,
    )
    left.grid(axis="x", alpha=0.3)

    evaluated = [(r, c) for r, c in zip(runs, colors, strict=True) if r.evaluation is not None]
    right.set_title("Box metrics of the evaluated runs")
    finite = [h for r, _ in evaluated for h in r.evaluation.metrics.values() if not math.isnan(h)]
    if finite:
        group, width = np.arange(len(BBOX_METRICS)), 0.8 / len(evaluated)
        for i, (run, color) in enumerate(evaluated):
            heights = [run.evaluation.metrics[m] for m in BBOX_METRICS]
            centers = group - 0.4 + width * (i + 0.5)
            right.bar(centers, np.nan_to_num(heights), width, color=color, label=run.name)
            for x, h in zip(centers, heights, strict=True):
                if math.isnan(h):  # COCOeval gives NaN when a size range has no objects
                    right.text(x, 0.5, "NaN", rotation=90, ha="center", va="bottom", fontsize=8)
        right.set_xticks(group, BBOX_METRICS)
        # Head room above the tallest bar for the legend.
        right.set(ylabel="score (0-100)", ylim=(0, max(finite + [1.0]) * 1.3), axisbelow=True)
        right.legend(loc="upper right", fontsize="small", framealpha=0.9)
        right.grid(axis="y", alpha=0.3)
    else:
        reason = "every metric is NaN (no detections to score)" if evaluated else None
        _no_data(right, reason or "no run has been evaluated yet")
    fig.savefig(out_path, dpi=_DPI)
    return out_path


def plot_keep_prob(runs, out_path):
    """Write a PNG of the logged keep_prob against iteration; runs without DropBlock at 1.0."""
    fig = agg_figure(8, 4.5)
    ax = fig.subplots()
    drawn, lowest = 0, 1.0
    for run, color in zip(runs, run_colors(len(runs)), strict=True):
        iterations, keep_prob = run.log.series(KEEP_PROB_METRIC)
        trained, _ = run.log.series(TRAINING_KEY)
        if iterations:
            ax.plot(
                iterations, keep_prob, color=color, lw=2, label=run.name, **_markers(iterations)
            )
            lowest = min(lowest, *keep_prob)
        elif trained:
            label = f"{run.name} (not logged: no DropBlock, 1.0)"
            ends = [trained[0], trained[-1]]
            ax.plot(ends, [1.0, 1.0], color=color, lw=2, ls="--", label=label, **_markers(trained))
        drawn += bool(iterations or trained)
    if drawn:
        margin = max(0.01, 0.08 * (1.0 - lowest))
        ax.set_ylim(lowest - margin, 1.0 + margin)
        ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
    else:
        _no_data(ax, "no run has a metrics.json")
    title = "DropBlock keep_prob schedule (from metrics.json)"
    ax.set(xlabel="iteration", ylabel="keep_prob", title=title)
    ax.grid(alpha=0.3)
    fig.savefig(out_path, dpi=_DPI)
    return out_path


def plot_losses(runs, out_path):
    """Write a PNG with a panel per logged loss: raw values faint, lightly smoothed on top."""
    present = [(k, t) for k, t in LOSS_KEYS if any(r.log.series(k)[0] for r in runs)]
    fig = agg_figure(5.2 * max(1, len(present)), 4.3)
    if not present:
        _no_data(fig.subplots(), "no run logged a training loss")
        fig.savefig(out_path, dpi=_DPI)
        return out_path
    axes = np.atleast_1d(fig.subplots(1, len(present), sharex=True))
    colors = run_colors(len(runs))
    for ax, (key, title) in zip(axes, present, strict=True):
        upper = 0.0
        for run, color in zip(runs, colors, strict=True):
            iterations, raw = run.log.series(key)
            if not iterations:
                continue
            # An EMA spanning ~1/20 of the logged points (none for short logs).
            smoothed = smooth(raw, span=max(1, len(raw) // 20))
            ax.plot(iterations, raw, color=color, lw=0.8, alpha=0.25)
            ax.plot(iterations, smoothed, color=color, lw=1.8, label=run.name, **_markers(raw))
            # Scale to the bulk of the curve, not to the first iterations' spike.
            upper = max(upper, float(np.percentile(raw, 98)))
        ax.set_ylim(0, upper * 1.1 if upper > 0 else 1.0)
        ax.set(title=title, xlabel="iteration", ylabel=key)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small", framealpha=0.9)
    fig.suptitle("Training losses (faint: as logged; solid: smoothed)")
    fig.savefig(out_path, dpi=_DPI)
    return out_path
