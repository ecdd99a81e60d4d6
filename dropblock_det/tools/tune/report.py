"""The study's report: ``report.md`` with the trial table and the verdict, ``best.yaml``, plots."""

import math
import os
import re
import shlex
import statistics
import warnings

import optuna
from optuna.trial import TrialState

__all__ = ["format_ap", "format_duration", "hide_password", "log", "write_report"]

# Optuna's matplotlib plots of the study: file name, function, keyword arguments.
_PLOTS = (
    ("optimization_history.png", "plot_optimization_history", {}),
    ("param_importances.png", "plot_param_importances", {}),
    ("slice.png", "plot_slice", {}),
)
_CONTOUR_KEYS = ("MODEL.DROPBLOCK.BLOCK_SIZE", "MODEL.DROPBLOCK.KEEP_PROB")


def format_ap(value, signed=False) -> str:
    """An AP, or a difference (``signed``: with ``+``) or spread of APs, with enough digits.

    One decimal from 1 AP up; below, two significant digits (0.70, 0.012, 0.0012; under 0.001 in
    scientific notation), so that a small AP never reads as 0.0. None is shown as ``–``.
    """
    if value is None:
        return "–"
    value, sign = float(value), "+" if signed else ""
    size = abs(value)
    if 0 < size < 0.001:
        return f"{value:{sign}.1e}"
    decimals = 1 if size >= 1 or size == 0 else 1 - math.floor(math.log10(size))
    return f"{value:{sign}.{decimals}f}"


def log(line: str) -> None:
    """Print a progress line at once (a worker's console is read while it runs)."""
    print(line, flush=True)


def format_duration(seconds: float) -> str:
    """Seconds as ``"12 min 05 s"``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def hide_password(text: str) -> str:
    """``text``, the password of a storage URL in it (if any) shown as ``***``.

    Everything between the user name and the last ``@`` is hidden, also a password that holds an
    ``@`` (which SQLAlchemy's own URL parser would split there, showing the rest).
    """
    return re.sub(r"(://[^:/@]*):.*@", r"\1:***@", text)


def _mean_sd(values) -> str:
    if len(values) < 2:
        return format_ap(values[0]) if values else "–"
    return f"{format_ap(statistics.fmean(values))} ± {format_ap(statistics.stdev(values))}"


def _state(trial, trials, seeds, max_iter) -> str:
    if trial.user_attrs.get("surplus"):
        return "FAIL (surplus, not trained)"
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        # Steps are seed index * (MAX_ITER + 1) + iteration (see Search.objective).
        step = max(trial.intermediate_values)
        index, iteration = divmod(step, max_iter + 1)
        value = format_ap(trial.intermediate_values[step])
        return f"PRUNED at iteration {iteration} of seed {seeds[index]} (AP {value} then)"
    if trial.state == TrialState.FAIL:
        retried = [
            t.number for t in trials if trial.number in t.system_attrs.get("retry_history", ())
        ]
        if retried:
            return f"FAIL (worker lost, retried as #{retried[0]})"
        error = trial.user_attrs.get("error")
        return f"FAIL ({error})" if error else "FAIL"
    return trial.state.name


def _write_plots(study, params, out_dir) -> list[str]:
    """Draw Optuna's matplotlib plots as PNG files; return their report lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = list(_PLOTS)
    if all(k in params for k in _CONTOUR_KEYS):
        plots.append(
            ("contour_block_size_keep_prob.png", "plot_contour", {"params": _CONTOUR_KEYS})
        )
    lines = []
    for name, function, kwargs in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                axes = getattr(vis, function)(study, **kwargs)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # Optuna refuses some plots on small studies, e.g. importances of one trial.
                lines.append(f"- `{name}` not drawn: {error}")
                continue
        if hasattr(axes, "flat"):  # a grid of axes (the slice and contour of several keys)
            figure = axes.flat[0].figure
        else:
            figure = axes.figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
        figure.savefig(os.path.join(out_dir, name), dpi=72)
        plt.close(figure)
        lines.append(f"![{name}]({name})")
    return lines


def write_report(search, out_dir, runs, command, storage_url) -> str:
    """Write ``report.md`` (and ``best.yaml`` and the plots) from what the storage holds.

    Args:
        search (Search): the worker's search (its study, runs, space and setup).
        out_dir (str): the study's output folder.
        runs (Callable[[list[str]], CfgNode]): the config of extra options on the base ones; its
            ``dataset_flags()`` are the ``--coco-dataset`` flags the best setting trains with.
        command (str): the command line, quoted in the report.
        storage_url (str): where the study lives (shown without a password).

    Returns:
        str: the path of report.md.
    """
    study, setup, params = search.study, search.setup, search.params
    trials = study.get_trials(deepcopy=False)
    seeds = setup.seeds
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    lines = [
        f"# DropBlock search: study `{study.study_name}`",
        "",
        f"- Command: `{study.user_attrs.get('command', command)}`",
        f"- Storage: `{hide_password(storage_url)}`",
        f"- Objective: mean over the search seeds {seeds} of AP(setting) − AP(baseline), "
        f"{setup.metric} on the validation set after {setup.max_iter} iterations.",
        f"- Held-out seeds for the verdict: {setup.heldout_seeds}",
        "- Trials: "
        + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        + f" (of {len(trials)} in all)",
    ]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        seconds = (max(ends) - min(starts)).total_seconds()
        lines.append(f"- Search wall-clock time: {format_duration(int(seconds))}")
    lines += ["", "## Search space", "", "| key | values |", "|---|---|"]
    lines += [f"| `{k}` | {p.describe()} |" for k, p in params.items()]

    lines += ["", "## Trials, best first", ""]
    baseline = [search.store.result(job) for job in search.baseline_jobs(seeds)]
    if all(run is not None for run in baseline):
        aps = [run.value for run in baseline]
        lines += [
            f"Baseline (DropBlock off) {setup.metric} per seed: "
            + ", ".join(f"seed {s}: {format_ap(ap)}" for s, ap in zip(seeds, aps, strict=True))
            + f" (mean ± sd {_mean_sd(aps)}).",
            "",
        ]
    short = [k.removeprefix("MODEL.DROPBLOCK.") for k in params]
    header = ["#", *short, "AP mean ± sd", "Δ vs baseline", "paired p", "state"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def value(t):  # a pruned trial's value is its last intermediate AP, not a difference
        return t.value if t.state == TrialState.COMPLETE else None

    shown = [t for t in trials if t.state != TrialState.WAITING]
    for t in sorted(shown, key=lambda t: (value(t) is None, -(value(t) or 0.0), t.number)):
        searched = [t.params.get(key, "–") for key in params]
        cells = [str(t.number), *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in searched)]
        p, aps = t.user_attrs.get("delta", {}).get("p"), list(t.user_attrs.get("ap", {}).values())
        cells += [_mean_sd(aps), format_ap(value(t), signed=True), "–" if p is None else f"{p:.3f}"]
        cells.append(_state(t, trials, seeds, setup.max_iter))
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Held-out verdict", ""]
    best = search.best()
    if best is not None:
        lines += _verdict_lines(study, best)
        lines += _write_best_yaml(search, best, out_dir, runs)
        lines += ["", "## Plots", "", *_write_plots(study, params, out_dir)]
    else:
        lines.append("No trial completed yet.")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _verdict_lines(study, best) -> list[str]:
    from .runs import BASELINE_KEY

    verdict = study.user_attrs.get(f"verdict/{best.number}")
    if verdict is None:
        if best.user_attrs.get("setting_key") == BASELINE_KEY:
            return ["The best trial puts DropBlock nowhere: no setting beat the baseline."]
        return [f"Not run yet for the best trial #{best.number} (it runs after the search)."]
    out = [
        f"Trial #{best.number} gained {format_ap(best.value, signed=True)} AP over the baseline on "
        "the search seeds, where it was selected as the best of all trials, which biases that "
        f"figure upwards. Retrained with the baseline on the held-out seeds {verdict['seeds']}:",
        "",
        "| seed | baseline AP | best setting AP | Δ |",
        "|---:|---:|---:|---:|",
    ]
    for seed, base, best_ap in zip(
        verdict["seeds"], verdict["baseline_ap"], verdict["best_ap"], strict=True
    ):
        delta = format_ap(best_ap - base, signed=True)
        out.append(f"| {seed} | {format_ap(base)} | {format_ap(best_ap)} | {delta} |")
    out += [
        f"| mean ± sd | {_mean_sd(verdict['baseline_ap'])} | {_mean_sd(verdict['best_ap'])} | "
        f"**{format_ap(verdict['mean'], signed=True)} ± {format_ap(verdict['sd'])}** |",
        "",
    ]
    if verdict["p"] is None:
        return out + ["Too few held-out seeds (or identical differences) for a paired t-test."]
    if verdict["p"] >= 0.05:
        meaning = "The difference is within the seed noise: this study does not show that the "
        meaning += "setting helps."
    elif verdict["mean"] > 0:
        meaning = "The gain is larger than the seed noise at the 5% level."
    else:
        meaning = "The setting is significantly worse than the baseline on fresh seeds."
    return out + [
        f"Paired t-test on the held-out seeds: t = {verdict['t']:.2f}, p = {verdict['p']:.3f}, "
        f"95% CI of the mean gain [{format_ap(verdict['ci_low'], signed=True)}, "
        f"{format_ap(verdict['ci_high'], signed=True)}] AP. {meaning}"
    ]


def _write_best_yaml(search, best, out_dir, runs) -> list[str]:
    """Write ``best.yaml``, a full config train_net trains as it is; return its report lines."""
    study = search.study
    output_dir = os.path.join("output", f"{study.study_name}-best")
    cfg = runs([*best.user_attrs["opts"], "OUTPUT_DIR", output_dir])
    path = os.path.join(out_dir, "best.yaml")
    train = shlex.join(
        ["python", "tools/train_net.py", "--config-file", path, *runs.dataset_flags()]
    )
    searched = [(k, best.params[k]) for k in search.params if k in best.params]
    header = [
        f"The best setting of DropBlock search {study.study_name!r}: trial #{best.number}, "
        f"{format_ap(best.value, signed=True)} AP over the baseline on search seeds "
        f"{search.setup.seeds}.",
        "See report.md next to this file for the held-out verdict. Train it with",
        f"  {train}",
        "Searched: " + ", ".join(f"{k} = {v}" for k, v in searched),
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"# {line}\n" for line in header) + cfg.dump())
    lines = ["", "## Best setting", "", f"`{path}` (a full config; `{train}` trains it):", ""]
    return lines + [f"- `{k}`: {v}" for k, v in searched]
