"""The study's report: ``report.md`` with the trial table and the verdict, ``best.yaml``, plots."""

import math
import os
import shlex
import statistics
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from .space import Param

__all__ = ["format_ap", "hide_password", "write_best_yaml", "write_plots", "write_report"]

# Below this, format_ap switches to scientific notation (4 decimals would be needed).
_SMALLEST_DECIMAL_AP = 0.001

_PLOTS = (
    ("optimization_history.png", "plot_optimization_history", {}),
    ("param_importances.png", "plot_param_importances", {}),
    ("slice.png", "plot_slice", {}),
)
_CONTOUR_KEYS = ("MODEL.DROPBLOCK.BLOCK_SIZE", "MODEL.DROPBLOCK.KEEP_PROB")


def format_ap(value, signed=False) -> str:
    """An AP (or a difference or spread of APs, on COCO's 0-100 scale) with enough digits.

    One decimal from 1 AP up; below, two significant digits (0.70, 0.012, 0.0012), so that a small
    AP never reads as 0.0 next to the same value elsewhere. The report and the console use it.

    Args:
        value (float or None): the value; None is shown as ``–``.
        signed (bool): with a ``+`` on positive values (differences).

    Returns:
        str: the text.
    """
    if value is None:
        return "–"
    value = float(value)
    size = abs(value)
    if size >= 1 or size == 0:
        decimals = 1
    elif size >= _SMALLEST_DECIMAL_AP:
        decimals = 1 - math.floor(math.log10(size))
    else:
        return f"{value:+.1e}" if signed else f"{value:.1e}"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _fmt(value, digits, signed=False):
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return format_ap(values[0])
    return f"{format_ap(statistics.fmean(values))} ± {format_ap(statistics.stdev(values))}"


def _param_cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1] if key.startswith("MODEL.DROPBLOCK.") else key


def _state(trial, trials, seeds, max_iter) -> str:
    if trial.user_attrs.get("surplus"):
        return "FAIL (surplus, not trained)"
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        # Steps are seed index * (MAX_ITER + 1) + iteration (see Search.objective).
        step = max(trial.intermediate_values)
        index, iteration = divmod(step, max_iter + 1)
        seed = seeds[index] if index < len(seeds) else "?"
        value = trial.intermediate_values[step]
        return f"PRUNED at iteration {iteration} of seed {seed} (AP {format_ap(value)} then)"
    if trial.state == TrialState.FAIL:
        retried = [
            t.number
            for t in trials
            if t.system_attrs.get("failed_trial") == trial.number
            or trial.number in t.system_attrs.get("retry_history", [])
        ]
        if retried:
            return f"FAIL (worker lost, retried as #{retried[0]})"
        error = trial.user_attrs.get("error")
        return f"FAIL ({error})" if error else "FAIL"
    return trial.state.name


def write_plots(study, params: dict[str, Param], out_dir: str) -> dict[str, str]:
    """Optuna's matplotlib visualisations of the study as PNG files.

    Args:
        study (optuna.Study): the search study.
        params (dict[str, Param]): the space (the contour needs block size and keep_prob in it).
        out_dir (str): where the files go.

    Returns:
        dict[str, str]: file name -> what became of it (``""`` when written, else why not).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = list(_PLOTS)
    if all(k in params for k in _CONTOUR_KEYS):
        plots.append(
            ("contour_block_size_keep_prob.png", "plot_contour", {"params": _CONTOUR_KEYS})
        )
    status = {}
    for name, function, kwargs in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                axes = getattr(vis, function)(study, **kwargs)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # Optuna refuses some plots on small studies, e.g. importances of one trial.
                status[name] = f"not drawn: {error}"
                continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        if not hasattr(axes, "flat"):
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
        figure.savefig(os.path.join(out_dir, name), dpi=72)
        plt.close(figure)
        status[name] = ""
    return status


def write_best_yaml(cfg, path: str, header: list[str]) -> str:
    """Write a full config that ``tools/train_net.py --config-file`` trains as it is.

    Args:
        cfg (CfgNode): the base config with the best setting merged in.
        path (str): the yaml to write.
        header (list[str]): comment lines on top.

    Returns:
        str: ``path``.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"# {line}\n" for line in header))
        f.write(cfg.dump())
    return path


def write_report(
    search,
    out_dir: str,
    build_cfg: Callable[[list[str]], object],
    command: str,
    storage_url: str,
    dataset_flags=(),
) -> str:
    """Write ``report.md`` (and ``best.yaml`` and the plots) from what the storage holds.

    Args:
        search (Search): the worker's search (its study, runs, space and setup).
        out_dir (str): the study's output folder.
        build_cfg (Callable): builds the config of extra options (base config and options first).
        command (str): the command line, quoted in the report.
        storage_url (str): where the study lives (shown without a password).
        dataset_flags (Sequence[str]): the ``--coco-dataset`` flags the best setting trains with.

    Returns:
        str: the path of report.md.
    """
    study, setup, params = search.study, search.setup, search.params
    os.makedirs(out_dir, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    seeds = setup.seeds
    lines = [f"# DropBlock search: study `{study.study_name}`", ""]
    lines += [
        f"- Command: `{study.user_attrs.get('command', command)}`",
        f"- Storage: `{hide_password(storage_url)}`",
        f"- Objective: mean over the search seeds {seeds} of AP(setting) − AP(baseline), "
        f"{setup.metric} on the validation set after {setup.max_iter} iterations.",
        f"- Held-out seeds for the verdict: {setup.heldout_seeds}",
    ]
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    lines.append(
        "- Trials: "
        + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        + f" (of {len(trials)} in all)"
    )
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        lines.append(f"- Search wall-clock time: {_duration(max(ends) - min(starts))}")
    lines += ["", "## Search space", "", "| key | values |", "|---|---|"]
    lines += [f"| `{k}` | {p.describe()} |" for k, p in params.items()]

    baseline = _baseline_aps(search, seeds)
    lines += ["", "## Trials, best first", ""]
    if baseline:
        lines.append(
            f"Baseline (DropBlock off) {setup.metric} per seed: "
            + ", ".join(
                f"seed {s}: {format_ap(ap)}" for s, ap in zip(seeds, baseline, strict=False)
            )
            + f" (mean ± sd {_mean_sd(baseline)})."
        )
        lines.append("")
    keys = list(params)
    header = ["#", *map(_short, keys), "AP mean ± sd", "Δ vs baseline", "paired p", "state"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def order(t):
        value = t.value if t.state == TrialState.COMPLETE else None
        return (value is None, -(value or 0.0), t.number)

    for t in sorted(trials, key=order):
        if t.state in (TrialState.WAITING,):
            continue
        aps = list(t.user_attrs.get("ap", {}).values())
        delta = t.user_attrs.get("delta", {})
        cells = [str(t.number)] + [_param_cell(t.params.get(k, "–")) for k in keys]
        # A pruned trial's value is Optuna's last intermediate value (an AP, not a difference).
        value = t.value if t.state == TrialState.COMPLETE else None
        cells += [_mean_sd(aps), format_ap(value, signed=True)]
        cells += [_fmt(delta.get("p"), 3), _state(t, trials, seeds, setup.max_iter)]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Held-out verdict", ""]
    lines += _verdict_lines(search)
    _best_section(search, out_dir, build_cfg, lines, list(dataset_flags))
    plots = (
        write_plots(study, params, out_dir)
        if any(t.state == TrialState.COMPLETE for t in trials)
        else {}
    )
    if plots:
        lines += ["", "## Plots", ""]
        for name, status in plots.items():
            lines.append(f"![{name}]({name})" if not status else f"- `{name}` {status}")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _baseline_aps(search, seeds) -> list[float]:
    aps = []
    for job in search.baseline_jobs(seeds):
        result = search.store.result(job)
        if result is None:
            return []
        aps.append(result.ap)
    return aps


def _verdict_lines(search) -> list[str]:
    study = search.study
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return ["No trial completed yet."]
    best = study.best_trial
    verdict = study.user_attrs.get(f"verdict/{best.number}")
    if verdict is None:
        if best.user_attrs.get("setting_key") == "baseline":
            return ["The best trial puts DropBlock nowhere: no setting beat the baseline."]
        return [f"Not run yet for the best trial #{best.number} (it runs after the search)."]
    out = [
        f"Trial #{best.number} gained {format_ap(best.value, signed=True)} AP over the baseline on the search seeds, "
        "where it was selected as the best of all trials, which biases that figure upwards. "
        f"Retrained with the baseline on the held-out seeds {verdict['seeds']}:",
        "",
        "| seed | baseline AP | best setting AP | Δ |",
        "|---:|---:|---:|---:|",
    ]
    for seed, base, best_ap in zip(
        verdict["seeds"], verdict["baseline_ap"], verdict["best_ap"], strict=True
    ):
        out.append(
            f"| {seed} | {format_ap(base)} | {format_ap(best_ap)} | "
            f"{format_ap(best_ap - base, signed=True)} |"
        )
    out.append(
        f"| mean ± sd | {_mean_sd(verdict['baseline_ap'])} | {_mean_sd(verdict['best_ap'])} | "
        f"**{format_ap(verdict['mean'], signed=True)} ± {format_ap(verdict['sd'])}** |"
    )
    out.append("")
    if verdict["p"] is None:
        out.append("Too few held-out seeds (or identical differences) for a paired t-test.")
    else:
        significant = verdict["p"] < 0.05
        out.append(
            f"Paired t-test on the held-out seeds: t = {verdict['t']:.2f}, p = {verdict['p']:.3f}, "
            f"95% CI of the mean gain [{format_ap(verdict['ci_low'], signed=True)}, "
            f"{format_ap(verdict['ci_high'], signed=True)}] AP. "
            + (
                "The gain is larger than the seed noise at the 5% level."
                if significant and verdict["mean"] > 0
                else (
                    "The difference is within the seed noise: this study does not show that "
                    "the setting helps."
                    if not significant
                    else "The setting is significantly worse than the baseline on fresh seeds."
                )
            )
        )
    return out


def _best_section(search, out_dir, build_cfg, lines, dataset_flags) -> str | None:
    study = search.study
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    cfg = build_cfg(list(best.user_attrs["opts"]))
    cfg.defrost()
    cfg.OUTPUT_DIR = os.path.join("output", f"{study.study_name}-best")
    path = os.path.join(out_dir, "best.yaml")
    train = shlex.join(["python", "tools/train_net.py", "--config-file", path, *dataset_flags])
    header = [
        f"The best setting of DropBlock search {study.study_name!r}: trial #{best.number}, "
        f"{format_ap(best.value, signed=True)} AP over the baseline on search seeds "
        f"{search.setup.seeds}.",
        "See report.md next to this file for the held-out verdict. Train it with",
        f"  {train}",
        "Searched: "
        + ", ".join(f"{k} = {best.params[k]}" for k in search.params if k in best.params),
    ]
    write_best_yaml(cfg, path, header)
    lines += ["", "## Best setting", ""]
    lines += [f"`{path}` (a full config; `{train}` trains it):", ""]
    lines += [f"- `{k}`: {best.params[k]}" for k in search.params if k in best.params]
    return path


def hide_password(url: str) -> str:
    """A storage URL with its password, if any, replaced by ``***``."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        if ":" in credentials:
            return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def _duration(delta) -> str:
    minutes, seconds = divmod(int(delta.total_seconds()), 60)
    return f"{minutes} min {seconds:02d} s"
