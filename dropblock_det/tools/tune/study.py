"""The search: an Optuna study whose objective is a setting's mean AP gain over the baseline.

Each trial trains its setting on every search seed; the baseline is trained once per seed and
shared by all trials (see :mod:`.runs`). The objective is the mean over seeds of the paired
difference ``AP(setting, seed) - AP(baseline, seed)``. Since the best of many noisy trials is
biased upwards by its selection, :meth:`Search.verdict` then trains the best setting and the
baseline on fresh held-out seeds and keeps the paired test on those alone.

Workers started with the same command cooperate through the storage: trials are numbered by it,
the first ``n_trials`` live trials run and any extra one drawn in a race ends at once as FAIL with
``surplus`` set; a worker killed mid-trial stops beating its heartbeat, and the next worker that
looks fails the trial and re-queues it with the same parameters (Optuna's
``RetryHeartbeatStaleTrialCallback``).
"""

import json
import socket
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass

import optuna
import sqlalchemy
from optuna.trial import TrialState
from scipy import stats

from ..errors import InputError
from .report import format_ap, format_duration, hide_password, log
from .runs import BASELINE_KEY, BASELINE_OPTS, SETTING_OPTS, Job, RunFailed
from .space import format_value

__all__ = ["Search", "SearchFailed", "SearchSetup", "check_storage_url", "open_storage"]

# A setting may fail on its own (diverge); several failures in a row point at the setup instead.
MAX_FAILURES_IN_A_ROW = 3
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_LIVE = (*_FINISHED, TrialState.RUNNING, TrialState.WAITING)


class SearchFailed(RuntimeError):
    """The search cannot go on in this worker; the message says why."""


class BaselineFailed(SearchFailed):
    """The baseline's training failed: no trial can be scored, so the worker stops."""


class TooManyFailures(SearchFailed):
    """Several trials in a row failed in this worker, which points at the setup, not a setting."""


class _Surplus(Exception):
    """Raised in a trial drawn after the study's trial budget was already taken."""


@dataclass
class SearchSetup:
    """What every worker of a study must agree on; kept in the study as a user attribute.

    Attributes:
        config_hash (str): of the base config with the base options (OUTPUT_DIR aside).
        seeds (list[int]): the search seeds.
        heldout_seeds (list[int]): the verdict's seeds, never used during the search.
        space (str): the checked search space (its parameters' repr).
        metric (str): e.g. ``bbox/AP``.
        max_iter (int): SOLVER.MAX_ITER of a run (the pruner's steps are per seed and iteration).
    """

    config_hash: str
    seeds: list[int]
    heldout_seeds: list[int]
    space: str
    metric: str
    max_iter: int


def check_storage_url(url: str) -> None:
    """Refuse a ``--storage`` URL that no RDB storage can open, without connecting to it.

    Raises:
        InputError: the URL does not parse, names no SQLAlchemy dialect, or its driver is not
            installed; the message says which.
    """
    flag = f"--storage {hide_password(url)!r}"
    example = "e.g. sqlite:///study.db or postgresql+psycopg://user:password@host:5432/db"
    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.get_dialect().import_dbapi()
    except sqlalchemy.exc.NoSuchModuleError as error:  # an ArgumentError: caught before those
        raise InputError(
            f"{flag}: SQLAlchemy has no database {parsed.drivername!r} ({example}; 'postgres://' "
            "is spelled 'postgresql://')."
        ) from error
    except sqlalchemy.exc.ArgumentError as error:
        raise InputError(f"{flag}: not an SQLAlchemy URL ({example}).") from error
    except ImportError as error:
        raise InputError(
            f"{flag}: the driver of {parsed.drivername!r} is not installed here ({error})."
        ) from error


def open_storage(url: str, heartbeat_s: float, max_retry: int, retry: bool = True):
    """An RDB storage with heartbeats every ``heartbeat_s``; silent for 3 of them, a trial is stale.

    Stale trials are re-queued up to ``max_retry`` times (the search study), or with ``retry``
    False only failed (the runs). Two workers that create the schema of an empty database at the
    same instant race (PostgreSQL answers one with a duplicate ``CREATE TYPE``): a failed attempt
    is repeated, by then the other worker's schema is there.

    Raises:
        InputError: the storage cannot be opened; the message has the reason, not the password.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry) if retry else None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=callback,
            )
        except Exception as error:  # noqa: BLE001  (the schema race raises driver-specific errors)
            # A bad URL or a missing driver: no retry mends it.
            if attempt == 4 or isinstance(error, (sqlalchemy.exc.ArgumentError, ImportError)):
                reason = " ".join(str(getattr(error, "orig", None) or error).split())
                raise InputError(
                    f"--storage {hide_password(url)!r} cannot be opened: {reason}"
                ) from error
            time.sleep(0.5 * (attempt + 1))


def paired_stats(a, b) -> dict[str, float | None]:
    """``mean``, ``sd``, paired ``t``, two-sided ``p``, 95% CI (``ci_low``, ``ci_high``) of ``a - b``.

    ``a`` and ``b`` are paired (same seeds, same order); a figure is None where undefined (fewer
    than two pairs, or all differences equal).
    """
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    out = dict.fromkeys(("mean", "sd", "t", "p", "ci_low", "ci_high"))
    out["mean"] = statistics.fmean(diffs) if diffs else None
    if len(diffs) >= 2:
        out["sd"] = statistics.stdev(diffs)
        if out["sd"] > 0:
            test = stats.ttest_rel(a, b)
            ci = test.confidence_interval(0.95)
            out.update(t=float(test.statistic), p=float(test.pvalue))
            out.update(ci_low=float(ci.low), ci_high=float(ci.high))
    return out


class Search:
    """One worker's view of a study: its objective, its loop and the verdict.

    Args:
        study (optuna.Study): the search study (maximize).
        store (RunStore): the study's runs.
        params (dict[str, Param]): the checked space.
        setup (SearchSetup): what the workers agree on.
        has_dropblock (Callable[[list[str]], bool]): whether a setting's options put DropBlock
            anywhere (one with nothing to drop is the baseline itself and needs no training).
    """

    def __init__(self, study, store, params, setup, has_dropblock):
        self.study, self.store, self.params, self.setup = study, store, params, setup
        self._has_dropblock = has_dropblock
        self._start = time.time()
        self._last = self.n_trials = None

    @staticmethod
    def agree(study, setup: SearchSetup):
        """Record the setup in a new study, or check that it matches the one recorded.

        Raises:
            InputError: naming the fields that differ.
        """
        mine, recorded = asdict(setup), study.user_attrs.get("setup")
        if recorded is None:
            study.set_user_attr("setup", mine)
            return
        differ = [name for name in mine if recorded.get(name) != mine[name]]
        if differ:
            details = "; ".join(f"{n}: study {recorded.get(n)!r}, here {mine[n]!r}" for n in differ)
            raise InputError(
                f"study {study.study_name!r} was created with a different command ({details}). "
                "Start every worker with the same config, options, seeds and space, or choose "
                "another --study-name."
            )

    def baseline_jobs(self, seeds):
        """The baseline's jobs on some seeds."""
        return [Job("baseline", BASELINE_OPTS, s) for s in seeds]

    def best(self):
        """The study's best COMPLETE trial, or None while there is none."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return self.study.best_trial if complete else None

    def describe(self, stored) -> str:
        """A trial's stored parameters as ``BLOCK_SIZE=3, KEEP_PROB=0.9``."""
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in stored.items())

    def objective(self, trial) -> float:
        """Train the trial's setting and the baseline on the search seeds; return the mean Δ."""
        self._check_budget(trial)
        opts = list(SETTING_OPTS)
        for key, param in self.params.items():
            opts += [key, format_value(param.suggest(trial))]
        seeds, max_iter = self.setup.seeds, self.setup.max_iter
        # A setting with nothing to drop anywhere is the stock model, i.e. the baseline.
        jobs = baseline = self.baseline_jobs(seeds)
        if self._has_dropblock(opts):
            jobs = [Job(f"trial {trial.number}", tuple(opts), s) for s in seeds]
        trial.set_user_attr("opts", list(jobs[0].opts))
        trial.set_user_attr("setting_key", jobs[0].key)

        def report(job, iteration, value):
            # The step orders (seed, iteration) pairs; every trial sees the seeds in one order,
            # so the pruner compares trials on the same seed at the same iteration.
            trial.report(value, seeds.index(job.seed) * (max_iter + 1) + iteration)
            return trial.should_prune()

        if jobs is baseline:
            log(f"[tune] trial {trial.number}: no DropBlock anywhere, the baseline itself")
            own = base = self._baseline(seeds)
        else:
            log(f"[tune] trial {trial.number}: {self.describe(trial.params)}")
            try:
                own = self.store.get(jobs, reporter=report)
            except RunFailed as error:
                trial.set_user_attr("error", str(error).splitlines()[0])
                raise
            base = self._baseline(seeds)
        aps = [own[j.id] for j in jobs]
        base_aps = [base[j.id] for j in baseline]
        result = paired_stats(aps, base_aps)
        trial.set_user_attr("ap", dict(zip(map(str, seeds), aps, strict=True)))
        trial.set_user_attr("baseline_ap", dict(zip(map(str, seeds), base_aps, strict=True)))
        trial.set_user_attr("delta", result)
        return result["mean"]

    def _baseline(self, seeds):
        try:
            return self.store.get(self.baseline_jobs(seeds))
        except RunFailed as error:
            # Without the baseline no trial can be scored: stop rather than fail every trial.
            raise BaselineFailed(str(error)) from error

    def _check_budget(self, trial):
        live = self.study.get_trials(deepcopy=False, states=_LIVE)
        earlier = [t for t in live if t.number < trial.number and not t.user_attrs.get("surplus")]
        if len(earlier) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(
                f"the study's {self.n_trials} trials were already taken by other workers"
            )

    def run(self, n_trials: int) -> None:
        """Take part in the search until the study has ``n_trials`` COMPLETE or PRUNED trials."""
        self.n_trials = n_trials
        failures = 0
        while True:
            count = Counter(t.state for t in self.study.get_trials(deepcopy=False))
            finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
            running, waiting = count[TrialState.RUNNING], count[TrialState.WAITING]
            if finished >= n_trials and running == 0:
                return
            if not waiting and finished + running >= n_trials:
                # The remaining trials run in other workers: wait for them, failing (and so
                # re-queueing) those whose worker died.
                time.sleep(self.store.poll_s)
                optuna.storages.fail_stale_trials(self.study)
                continue
            self._last = None
            self.study.optimize(
                self.objective, n_trials=1, catch=(_Surplus, RunFailed), callbacks=[self._progress]
            )
            mine = self._last  # None for a surplus trial
            failures = failures + 1 if mine and mine.state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise TooManyFailures(
                    f"{failures} trials in a row failed in this worker; the last one: "
                    f"{mine.user_attrs.get('error', 'see the log above')}"
                )

    def _progress(self, study, trial):
        self._last = None if trial.user_attrs.get("surplus") else trial
        if self._last is None:
            return
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in _FINISHED]
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        line = f"[tune] trial {trial.number} {trial.state.name}"
        if trial.state == TrialState.COMPLETE:
            line += f", Δ {format_ap(trial.value, signed=True)} AP"
        line += f" | {len(finished)}/{self.n_trials} finished"
        if complete:
            top = max(complete, key=lambda t: t.value)
            line += f" | best #{top.number} Δ {format_ap(top.value, signed=True)}"
        line += f" | elapsed {format_duration(time.time() - self._start)}"
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished]
        if durations:
            runs = self.store.runs()
            run_s = statistics.fmean(r.user_attrs.get("seconds", 0.0) for r in runs) if runs else 0
            remaining = max(self.n_trials - len(finished), 0) * statistics.fmean(durations)
            workers = max(sum(t.state == TrialState.RUNNING for t in trials), 1)
            seconds = (remaining + 2 * len(self.setup.heldout_seeds) * run_s) / workers
            line += f", ETA ~{format_duration(seconds)} (with the verdict)"
        log(line)

    def verdict(self) -> dict | None:
        """Train the best setting and the baseline on the held-out seeds; record the paired test.

        Returns:
            dict or None: the verdict (also stored in the study as ``verdict/<trial number>``), or
            None when no trial completed or the best setting is the baseline itself.
        """
        best = self.best()
        if best is None:
            return None
        name = f"verdict/{best.number}"
        if name in self.study.user_attrs:
            return self.study.user_attrs[name]
        if best.user_attrs.get("setting_key") == BASELINE_KEY:
            log("[tune] the best setting puts DropBlock nowhere: no verdict to train")
            return None
        seeds = self.setup.heldout_seeds
        opts = tuple(best.user_attrs["opts"])
        best_jobs = [Job("best", opts, s) for s in seeds]
        base_jobs = self.baseline_jobs(seeds)
        log(
            f"[tune] verdict: trial {best.number} (Δ {format_ap(best.value, signed=True)} in the "
            f"search) and the baseline on held-out seeds {seeds}"
        )
        interleaved = [job for pair in zip(base_jobs, best_jobs, strict=True) for job in pair]
        results = self.store.get(interleaved)
        best_aps = [results[j.id] for j in best_jobs]
        base_aps = [results[j.id] for j in base_jobs]
        verdict = {
            "trial": best.number,
            "seeds": list(seeds),
            "best_ap": best_aps,
            "baseline_ap": base_aps,
            **paired_stats(best_aps, base_aps),
            "host": socket.gethostname(),
        }
        self.study.set_user_attr(name, verdict)
        log(f"[tune] verdict: {json.dumps(verdict)}")
        return verdict
