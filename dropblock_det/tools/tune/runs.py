"""Training runs of a search: one setting on one seed, each a Detectron2 training in its own process.

Every run of a study (a trial's setting on one of the search seeds, the baseline on a seed, the
held-out verdict's runs) is recorded in a second Optuna study next to the search, ``<name>.runs``,
in the same storage. A run is claimed there before it is trained, so that workers on any number of
machines train each (setting, seed) once: a worker that finds a run complete reuses its AP, one
that finds it claimed by a live worker waits for it, and a claim whose worker died (its heartbeat
stopped) is failed by the next worker that looks and trained again. A trial retried after its
worker was killed thus reuses every run that had finished.
"""

import ctypes
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec

import optuna
from optuna.trial import TrialState

from ..trainer import EVAL_RESULTS_FILE
from .report import format_ap

__all__ = ["Job", "RunFailed", "RunResult", "RunStore", "setting_key", "train_command"]

# Each run's console output, in its OUTPUT_DIR.
LOG_FILE = "train.log"
_PR_SET_PDEATHSIG = 1


class RunFailed(RuntimeError):
    """A training process exited with an error; the message names its log file."""


@dataclass(frozen=True)
class Job:
    """One training: a setting (command-line options) on one seed.

    Attributes:
        arm (str): what the run is for, e.g. ``"baseline"`` or ``"trial 3"`` (folder names, logs).
        key (str): identifies the setting; runs with the same key and seed are the same run.
        opts (tuple[str]): the setting's ``KEY VALUE`` options, after the study's base options.
        seed (int): Detectron2's ``SEED``.
    """

    arm: str
    key: str
    opts: tuple[str, ...]
    seed: int

    @property
    def id(self) -> str:
        return f"{self.key}/seed{self.seed}"


@dataclass
class RunResult:
    """What a finished run gave.

    Attributes:
        ap (float): the final evaluation's metric (NaN, i.e. no detections at all, counts as 0).
        curve (list[tuple[int, float]]): (iteration, metric) of every evaluation, in order.
        run_number (int): its number in the runs study.
        output_dir (str): where it was trained (on the machine that trained it).
        seconds (float): wall-clock time of the training process.
        reused (bool): found complete rather than trained by this call.
    """

    ap: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    run_number: int = -1
    output_dir: str = ""
    seconds: float = 0.0
    reused: bool = False


def setting_key(opts: Sequence[str]) -> str:
    """A short stable identifier of a setting's options."""
    return hashlib.sha1(json.dumps(list(opts)).encode()).hexdigest()[:12]


def train_command(config_file: str, flags: Sequence[str], opts: Sequence[str]) -> list[str]:
    """The command line of one training process: dropblock_det's train_net with its arguments.

    Args:
        config_file (str): ``--config-file``.
        flags (Sequence[str]): train_net's other flags, e.g. ``--num-gpus``, ``--coco-dataset``.
        opts (Sequence[str]): the ``KEY VALUE`` config options, after the flags.

    Returns:
        list[str]: the command.
    """
    if find_spec("dropblock_det.tools.train_net") is not None:
        entry = ["-m", "dropblock_det.tools.train_net"]
    else:  # a checkout whose train_net is still only the script
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        entry = [os.path.join(root, "tools", "train_net.py")]
    return [
        sys.executable,
        *entry,
        "--config-file",
        config_file,
        *flags,
        *opts,
    ]


def _die_with_parent():
    # Runs in the child between fork and exec: a killed worker must not leave its training
    # running on (and its claim would be trained a second time by the worker that takes it over).
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Evaluations:
    """The evaluations of a running training, from the eval_results.json it rewrites after each.

    The file is replaced atomically after every evaluation (TEST.EVAL_PERIOD and the end), whereas
    metrics.json only gets the latest one at Detectron2's writer period.
    """

    def __init__(self, path: str, metric: str):
        self._path = path
        self._task, self._name = metric.split("/", 1)
        self._last = None

    def new_values(self) -> list[tuple[int, float]]:
        try:
            with open(self._path, encoding="utf-8") as f:
                payload = json.load(f)
            iteration = payload["iteration"]
            value = payload["results"][self._task][self._name]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if iteration is None or iteration == self._last:
            return []
        self._last = iteration
        return [(int(iteration), _finite(value))]


def _finite(ap) -> float:
    # COCOEvaluator gives NaN when the model detects nothing at all: as a score that is AP 0.
    ap = float(ap)
    return 0.0 if math.isnan(ap) else ap


class RunStore:
    """The runs of one study, shared by its workers through the storage.

    Args:
        storage (optuna.storages.RDBStorage): with heartbeats on and no stale-trial callback.
        study_name (str): the search study's name; the runs live in ``<study_name>.runs``.
        out_dir (str): this worker's folder; runs are trained in ``out_dir/runs/``.
        config_file (str): the base config file.
        flags (Sequence[str]): train_net's flags of every run (``--num-gpus``, ``--coco-dataset``).
        base_opts (Sequence[str]): options every run gets before its own.
        metric (str): the metric, as in metrics.json (``bbox/AP``).
        poll_s (float): seconds between looks at a running training or a rival's claim.
        log (Callable[[str], None]): progress lines.
    """

    def __init__(
        self,
        storage,
        study_name: str,
        out_dir: str,
        config_file: str,
        flags: Sequence[str],
        base_opts: Sequence[str],
        metric: str = "bbox/AP",
        poll_s: float = 1.0,
        log: Callable[[str], None] = print,
    ):
        self._storage = storage
        self.study = optuna.create_study(
            study_name=f"{study_name}.runs",
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(),
        )
        self._study_id = storage.get_study_id_from_name(self.study.study_name)
        self._out_dir = out_dir
        self._config_file = config_file
        self._flags = list(flags)
        self._base_opts = list(base_opts)
        self._metric = metric
        self.poll_s = poll_s
        self._log = log

    # ------------------------------------------------------------------ lookup

    def runs(self, states=(TrialState.COMPLETE,)) -> list[optuna.trial.FrozenTrial]:
        """The runs study's trials in the given states."""
        return self.study.get_trials(deepcopy=False, states=states)

    def result(self, job: Job) -> RunResult | None:
        """The complete run of a job, or None."""
        for run in self.runs():
            if run.user_attrs.get("job") == job.id:
                return _result_of(run, reused=True)
        return None

    def _claimed_elsewhere(self, job: Job) -> bool:
        return any(r.user_attrs.get("job") == job.id for r in self.runs((TrialState.RUNNING,)))

    # ------------------------------------------------------------------ get

    def get(
        self, jobs: Sequence[Job], reporter: Callable[[Job, int, float], bool] | None = None
    ) -> dict[str, RunResult]:
        """The results of some jobs: reused where complete, trained here, or awaited from a rival.

        Jobs are taken in order: each free one is trained before the next is looked at, so a
        trial's seeds go to the pruner in order.

        Args:
            jobs (Sequence[Job]): the jobs.
            reporter (Callable or None): called with (job, iteration, metric) for every evaluation
                of these jobs (also of reused ones); a True return stops the training and raises
                ``optuna.TrialPruned``.

        Returns:
            dict[str, RunResult]: by ``job.id``.

        Raises:
            RunFailed: a training exited with an error.
            optuna.TrialPruned: ``reporter`` asked to stop.
        """
        results: dict[str, RunResult] = {}
        pending = list(jobs)
        while pending:
            progressed = False
            for job in pending:
                found = self.result(job)
                if found is None and not self._claimed_elsewhere(job):
                    claim = self._claim(job)
                    if claim is not None:
                        found = self._train(job, claim, reporter)
                if found is not None:
                    if found.reused:
                        self._replay(job, found, reporter)
                    results[job.id] = found
                    pending.remove(job)
                    progressed = True
                    break
            if pending and not progressed:
                # Every remaining job is being trained by another worker: wait, and fail the
                # claims of workers that died so that the next pass takes them over.
                time.sleep(self.poll_s)
                optuna.storages.fail_stale_trials(self.study)
        return results

    def _replay(self, job, result, reporter):
        if reporter is None:
            return
        self._log(f"[tune] {job.arm} seed {job.seed}: reusing run #{result.run_number}")
        for iteration, value in result.curve:
            if reporter(job, iteration, value):
                raise optuna.TrialPruned(f"pruned at iteration {iteration} of seed {job.seed}")

    # ------------------------------------------------------------------ claim

    def _claim(self, job: Job):
        """Claim a job in the runs study; None when an earlier claim of the same job wins.

        Claims are runs-study trials, numbered by the storage in creation order. Every claimant
        writes the job on its claim and then looks at the earlier claims: the earliest live claim
        of a job wins, so two workers that claim at the same instant never both train it.
        """
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize; this class beats itself.
            warnings.simplefilter("ignore", UserWarning)
            trial = self.study.ask()
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(
            self._study_id, trial.number
        )
        self._storage.record_heartbeat(trial_id)
        trial.set_user_attr("job", job.id)
        for name, value in (("arm", job.arm), ("seed", job.seed), ("opts", list(job.opts))):
            trial.set_user_attr(name, value)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        deadline = time.time() + 30 * self.poll_s
        while True:
            earlier = [
                r
                for r in self.runs((TrialState.RUNNING, TrialState.COMPLETE))
                if r.number < trial.number
            ]
            if any(r.user_attrs.get("job") == job.id for r in earlier):
                trial.set_user_attr("yielded", True)
                self.study.tell(trial, state=TrialState.FAIL)
                return None
            # A claim without a job yet is between its ask and set_user_attr: wait for it.
            if all("job" in r.user_attrs for r in earlier) or time.time() > deadline:
                return trial, trial_id
            time.sleep(min(0.2, self.poll_s))
            self._storage.record_heartbeat(trial_id)

    # ------------------------------------------------------------------ train

    def _train(self, job: Job, claim, reporter) -> RunResult:
        trial, trial_id = claim
        name = f"{trial.number:04d}-{job.arm.replace(' ', '')}-seed{job.seed}"
        out = os.path.abspath(os.path.join(self._out_dir, "runs", name))
        os.makedirs(out, exist_ok=True)
        trial.set_user_attr("output_dir", out)
        opts = [*self._base_opts, *job.opts, "SEED", str(job.seed), "OUTPUT_DIR", out]
        cmd = train_command(self._config_file, self._flags, opts)
        log_path = os.path.join(out, LOG_FILE)
        self._log(f"[tune] {job.arm} seed {job.seed}: training run #{trial.number} in {out}")
        tail = _Evaluations(os.path.join(out, EVAL_RESULTS_FILE), self._metric)
        curve: list[tuple[int, float]] = []
        start = time.time()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            child = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                while True:
                    exited = child.poll() is not None
                    for iteration, value in tail.new_values():
                        curve.append((iteration, value))
                        trial.set_user_attr("curve", curve)
                        self._log(
                            f"[tune] {job.arm} seed {job.seed}: iteration {iteration} "
                            f"{self._metric} {format_ap(value)}"
                        )
                        if reporter is not None and reporter(job, iteration, value):
                            self._stop(child)
                            self.study.tell(trial, state=TrialState.PRUNED)
                            raise optuna.TrialPruned(
                                f"pruned at iteration {iteration} of seed {job.seed}"
                            )
                    if exited:
                        break
                    self._storage.record_heartbeat(trial_id)
                    time.sleep(self.poll_s)
            finally:
                self._stop(child)
        seconds = time.time() - start
        if child.returncode != 0:
            trial.set_user_attr("error", f"exit status {child.returncode}; see {log_path}")
            self.study.tell(trial, state=TrialState.FAIL)
            raise RunFailed(
                f"the {job.arm} training on seed {job.seed} exited with status "
                f"{child.returncode}; its output is in {log_path}:\n{_tail(log_path)}"
            )
        ap = self._final_metric(out, log_path)
        trial.set_user_attr("seconds", seconds)
        self.study.tell(trial, ap)
        self._log(
            f"[tune] {job.arm} seed {job.seed}: run #{trial.number} done, {self._metric} "
            f"{format_ap(ap)} in {seconds / 60:.1f} min"
        )
        return RunResult(ap, curve, trial.number, out, seconds, reused=False)

    def _final_metric(self, out: str, log_path: str) -> float:
        path = os.path.join(out, EVAL_RESULTS_FILE)
        task, name = self._metric.split("/", 1)
        try:
            with open(path, encoding="utf-8") as f:
                return _finite(json.load(f)["results"][task][name])
        except (OSError, ValueError, KeyError) as error:
            raise RunFailed(
                f"the training in {out} finished without a {self._metric} in {path} ({error!r}); "
                f"is DATASETS.TEST set? Its output is in {log_path}."
            ) from error

    @staticmethod
    def _stop(child):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _result_of(run, reused):
    curve = [tuple(point) for point in run.user_attrs.get("curve", [])]
    return RunResult(
        run.value,
        curve,
        run.number,
        run.user_attrs.get("output_dir", ""),
        run.user_attrs.get("seconds", 0.0),
        reused,
    )


def _tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
