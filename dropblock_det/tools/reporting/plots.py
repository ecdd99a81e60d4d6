"""PNG figures of a run comparison: AP per run, keep_prob schedules and training losses.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so writing a report neither
needs a display nor changes the backend of the process that calls it.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...hooks import KEEP_PROB_METRIC
from .runs import BBOX_METRICS, TRAINING_KEY, Run
from .table import PAPER_RESULTS, format_delta

__all__ = ["plot_ap", "plot_keep_prob", "plot_losses", "run_colors", "smooth"]

LOSS_KEYS = (
    ("total_loss", "total loss"),
    ("loss_cls", "classification loss (focal)"),
    ("loss_box_reg", "box regression loss"),
)
_PAPER_COLOR = "0.6"


def run_colors(count: int) -> list[tuple]:
    """One colour per run, the same in every figure of a report.

    Args:
        count: number of runs.

    Returns:
        list: RGBA tuples (tab10, cycling after ten runs).
    """
    palette = colormaps["tab10"]
    return [palette(i % palette.N) for i in range(count)]


def smooth(values: Sequence[float], span: int) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing slider).

    Args:
        values: the raw series.
        span: the EMA span in points; 1 returns the series unchanged.

    Returns:
        np.ndarray: the smoothed series, same length.
    """
    values = np.asarray(values, dtype=float)
    if span <= 1 or values.size == 0:
        return values.copy()
    decay = 1.0 - 2.0 / (span + 1.0)
    out = np.empty_like(values)
    average, weight = 0.0, 0.0
    for i, v in enumerate(values):
        average = decay * average + (1.0 - decay) * v
        weight = decay * weight + (1.0 - decay)
        # Dividing by the accumulated weight removes the EMA's pull towards 0 at the start.
        out[i] = average / weight
    return out


def plot_ap(runs: Sequence[Run], out_path, include_paper: bool = True, decimals: int = 1) -> Path:
    """Bar charts of AP per run (left) and of all six box metrics per run (right).

    Args:
        runs: the compared runs; unevaluated ones are named with "not evaluated" and no bar.
        out_path: the PNG to write.
        include_paper: add the paper's AP as grey hatched bars on the left.
        decimals: digits of the value labels.

    Returns:
        Path: ``out_path``.
    """
    colors = run_colors(len(runs))
    labels = [r.name for r in runs]
    values = [r.evaluation.metrics["AP"] if r.evaluation else None for r in runs]
    bar_colors = list(colors)
    hatches = [None] * len(runs)
    if include_paper:
        labels += [p.label for p in PAPER_RESULTS]
        values += [p.metrics["AP"] for p in PAPER_RESULTS]
        bar_colors += [_PAPER_COLOR] * len(PAPER_RESULTS)
        hatches += ["//"] * len(PAPER_RESULTS)

    height = max(3.6, 0.55 * len(labels) + 1.6)
    fig = Figure(figsize=(13, height), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})

    positions = np.arange(len(labels))
    finite = [v for v in values if v is not None and not math.isnan(v)]
    span = max(finite) if finite else 1.0
    reference = values[0] if values and values[0] is not None else math.nan
    paper_reference = PAPER_RESULTS[0].metrics["AP"]
    for index, (y, value, color, hatch) in enumerate(
        zip(positions, values, bar_colors, hatches, strict=True)
    ):
        if value is None or math.isnan(value):
            text = "not evaluated" if value is None else "NaN"
            left.text(0.01 * span, y, text, va="center", ha="left", style="italic", color="0.35")
            continue
        left.barh(y, value, color=color, hatch=hatch, edgecolor="white" if hatch else None)
        text = f"{value:.{decimals}f}"
        # Same differences as the table: to the first run, or to the paper's baseline.
        base = paper_reference if index >= len(runs) else reference
        if index not in (0, len(runs)) and not math.isnan(base):
            text += f" ({format_delta(value - base, decimals)})"
        left.text(value + 0.01 * span, y, text, va="center", ha="left")
    left.set_yticks(positions, labels)
    left.set_ylim(len(labels) - 0.5, -0.5)  # first run on top, whether or not it has a bar
    left.set_xlim(0, span * 1.3)
    left.set_xlabel("AP (COCO bbox, IoU 0.50:0.95)")
    left.set_title("AP per run" + (" (grey: published)" if include_paper else ""))
    left.grid(axis="x", alpha=0.3)
    left.set_axisbelow(True)

    evaluated = [(r, c) for r, c in zip(runs, colors, strict=True) if r.evaluation is not None]
    right.set_title("Box metrics of the evaluated runs")
    finite_metrics = [
        h for r, _ in evaluated for h in r.evaluation.metrics.values() if not math.isnan(h)
    ]
    if finite_metrics:
        group = np.arange(len(BBOX_METRICS))
        width = 0.8 / len(evaluated)
        for i, (run, color) in enumerate(evaluated):
            heights = [run.evaluation.metrics[m] for m in BBOX_METRICS]
            centers = group - 0.4 + width * (i + 0.5)
            right.bar(centers, np.nan_to_num(heights), width, color=color, label=run.name)
            for x, h in zip(centers, heights, strict=True):
                if math.isnan(h):  # COCOeval gives NaN when a size range has no objects
                    right.text(x, 0.5, "NaN", rotation=90, ha="center", va="bottom", fontsize=8)
        right.set_xticks(group, BBOX_METRICS)
        right.set_ylabel("score (0-100)")
        right.legend(loc="upper right", fontsize="small", framealpha=0.9)
        right.grid(axis="y", alpha=0.3)
        right.set_axisbelow(True)
        # Head room above the tallest bar for the legend.
        right.set_ylim(0, max(finite_metrics + [1.0]) * 1.3)
    elif evaluated:
        _no_data(right, "every metric is NaN (no detections to score)")
    else:
        _no_data(right, "no run has been evaluated yet")
    fig.savefig(out_path, dpi=110)
    return Path(out_path)


def plot_keep_prob(runs: Sequence[Run], out_path) -> Path:
    """keep_prob against iteration for every run, as logged by the DropBlock schedule hook.

    Runs that did not log ``dropblock/keep_prob`` (baselines) are drawn as a dashed line at 1.0
    over the iterations they trained, and say so in the legend.

    Args:
        runs: the compared runs.
        out_path: the PNG to write.

    Returns:
        Path: ``out_path``.
    """
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn, lowest = 0, 1.0
    for run, color in zip(runs, run_colors(len(runs)), strict=True):
        iterations, keep_prob = run.log.series(KEEP_PROB_METRIC)
        trained, _ = run.log.series(TRAINING_KEY)
        if iterations:
            ax.plot(
                iterations, keep_prob, color=color, lw=2, label=run.name, **_markers(iterations)
            )
            lowest = min(lowest, min(keep_prob))
            drawn += 1
        elif trained:
            ax.plot(
                [trained[0], trained[-1]],
                [1.0, 1.0],
                color=color,
                lw=2,
                ls="--",
                label=f"{run.name} (not logged: no DropBlock, 1.0)",
                **_markers(trained),
            )
            drawn += 1
    if drawn:
        margin = max(0.01, 0.08 * (1.0 - lowest))
        ax.set_ylim(lowest - margin, 1.0 + margin)
        ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
    else:
        _no_data(ax, "no run has a metrics.json")
    ax.set_xlabel("iteration")
    ax.set_ylabel("keep_prob")
    ax.set_title("DropBlock keep_prob schedule (from metrics.json)")
    ax.grid(alpha=0.3)
    fig.savefig(out_path, dpi=110)
    return Path(out_path)


def plot_losses(runs: Sequence[Run], out_path) -> Path:
    """Training loss curves: raw values faint, lightly smoothed values on top.

    One panel per loss (total, classification, box regression) that any run logged.

    Args:
        runs: the compared runs.
        out_path: the PNG to write.

    Returns:
        Path: ``out_path``.
    """
    present = [(k, t) for k, t in LOSS_KEYS if any(r.log.series(k)[0] for r in runs)]
    fig = Figure(figsize=(5.2 * max(1, len(present)), 4.3), layout="constrained")
    FigureCanvasAgg(fig)
    if not present:
        _no_data(fig.subplots(), "no run logged a training loss")
        fig.savefig(out_path, dpi=110)
        return Path(out_path)
    axes = np.atleast_1d(fig.subplots(1, len(present), sharex=True))
    colors = run_colors(len(runs))
    for ax, (key, title) in zip(axes, present, strict=True):
        upper = 0.0
        for run, color in zip(runs, colors, strict=True):
            iterations, raw = run.log.series(key)
            if not iterations:
                continue
            # Light smoothing: an EMA spanning ~1/20 of the logged points (none for short logs).
            smoothed = smooth(raw, span=max(1, len(raw) // 20))
            ax.plot(iterations, raw, color=color, lw=0.8, alpha=0.25)
            ax.plot(
                iterations, smoothed, color=color, lw=1.8, label=run.name, **_markers(iterations)
            )
            # Scale to the bulk of the curve, not to the first iterations' spike.
            upper = max(upper, float(np.percentile(raw, 98)))
        ax.set_ylim(0, upper * 1.1 if upper > 0 else 1.0)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="small", framealpha=0.9)
    fig.suptitle("Training losses (faint: as logged; solid: smoothed)")
    fig.savefig(out_path, dpi=110)
    return Path(out_path)


def _markers(points: Sequence) -> dict:
    # Short logs (a run just started, a smoke test) would be invisible as lines alone.
    return {"marker": "o", "markersize": 4} if len(points) < 15 else {}


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
