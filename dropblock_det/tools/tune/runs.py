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
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ...config import requested_groups
from ..train_net import build_parser
from ..trainer import EVAL_RESULTS_FILE, build_cfg, check_model
from ..validation import check_training_inputs
from .report import format_ap, log

__all__ = ["Job", "RunCommand", "RunFailed", "RunStore"]

# The baseline trains with DropBlock off; a setting turns it on, its own options after these.
BASELINE_OPTS = ("MODEL.DROPBLOCK.ENABLED", "False")
SETTING_OPTS = ("MODEL.DROPBLOCK.ENABLED", "True")
BASELINE_KEY = "baseline"
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
        opts (tuple[str]): the setting's ``KEY VALUE`` options, after the study's base options.
        seed (int): Detectron2's ``SEED``.
    """

    arm: str
    opts: tuple[str, ...]
    seed: int

    @property
    def key(self) -> str:
        """A short stable name of the setting: runs of one key and seed are the same run."""
        if self.opts == BASELINE_OPTS:
            return BASELINE_KEY
        return hashlib.sha1(json.dumps(list(self.opts)).encode()).hexdigest()[:12]

    @property
    def id(self) -> str:
        """The run's name in the runs study: ``<key>/seed<seed>``."""
        return f"{self.key}/seed{self.seed}"


class RunCommand:
    """A run's train_net command line and config, of the command's and the run's options.

    Each is the base config, train_net's flags (``--num-gpus``, ``--coco-dataset``), the
    command's ``KEY VALUE`` options, then the run's own ``extra``.
    """

    def __init__(self, config_file, base_opts, coco_datasets, num_gpus):
        self.config_file, self.base_opts, self.num_gpus = config_file, list(base_opts), num_gpus
        self.coco_datasets = [list(triple) for triple in coco_datasets]

    def dataset_flags(self):
        return [flag for triple in self.coco_datasets for flag in ("--coco-dataset", *triple)]

    def argv(self, extra=()):
        flags = ["--num-gpus", str(self.num_gpus), *self.dataset_flags()]
        return ["--config-file", self.config_file, *flags, *self.base_opts, *extra]

    def command(self, extra):
        return [sys.executable, "-m", "dropblock_det.tools.train_net", *self.argv(extra)]

    def args(self, extra=()):
        return build_parser().parse_args(self.argv(extra))

    def __call__(self, extra=()):
        return build_cfg(self.args(extra))

    def has_dropblock(self, extra):
        return bool(requested_groups(self(extra)))

    def checked(self, extra=()):
        """A trial's config of ``extra`` (DropBlock on), with train_net's model checks.

        The model is built once on the CPU, as train_net does before training, so that a
        placement the model cannot take is refused here. A setting that puts DropBlock nowhere is
        the baseline itself (trained with MODEL.DROPBLOCK.ENABLED False), so it passes unchecked.
        """
        cfg = self([*SETTING_OPTS, *extra])
        if requested_groups(cfg):
            check_training_inputs(cfg, check_train=False, check_test=False)
            check_model(cfg)
        return cfg


def _die_with_parent():
    # Runs in the child between fork and exec: a killed worker must not leave its training
    # running on (and its claim would be trained a second time by the worker that takes it over).
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _read_metric(path: str, metric: str) -> tuple[int | None, float]:
    """(iteration, metric) of eval_results.json, replaced atomically after every evaluation.

    COCOEvaluator gives NaN when the model detects nothing at all: as a score that is AP 0.

    Raises:
        OSError, ValueError, KeyError, TypeError: the file is missing or holds no such metric.
    """
    task, name = metric.split("/", 1)
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    ap = float(payload["results"][task][name])
    return payload.get("iteration"), 0.0 if math.isnan(ap) else ap


def _pruned(job, iteration):
    return optuna.TrialPruned(f"pruned at iteration {iteration} of seed {job.seed}")


def _stop(child):
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class RunStore:
    """The runs of one study, shared by its workers through the storage.

    Args:
        storage (optuna.storages.RDBStorage): with heartbeats on and no stale-trial callback.
        study_name (str): the search study's name; the runs live in ``<study_name>.runs``.
        out_dir (str): this worker's folder; runs are trained in ``out_dir/runs/``.
        train_command (Callable[[list[str]], list[str]]): the train_net command line of a run's
            ``KEY VALUE`` options.
        metric (str): the metric, as in metrics.json (``bbox/AP``).
        poll_s (float): seconds between looks at a running training or a rival's claim.
    """

    def __init__(self, storage, study_name, out_dir, train_command, metric, poll_s):
        self._storage = storage
        # Its trials draw no parameters: the value of each is the run's AP.
        self.study = optuna.create_study(
            storage=storage,
            study_name=f"{study_name}.runs",
            direction="maximize",
            load_if_exists=True,
        )
        self._study_id = storage.get_study_id_from_name(self.study.study_name)
        self._out_dir, self._train_command = out_dir, train_command
        self._metric, self.poll_s = metric, poll_s

    def runs(self, states=(TrialState.COMPLETE,)) -> list[optuna.trial.FrozenTrial]:
        """The runs study's trials in the given states."""
        return self.study.get_trials(deepcopy=False, states=states)

    def result(self, job: Job) -> optuna.trial.FrozenTrial | None:
        """The complete run of a job (its value is the AP), or None."""
        return next((r for r in self.runs() if r.user_attrs.get("job") == job.id), None)

    def get(self, jobs: Sequence[Job], reporter=None) -> dict[str, float]:
        """The APs of some jobs: reused where complete, trained here, or awaited from a rival.

        Jobs are taken in order: each free one is trained before the next is looked at, so a
        trial's seeds go to the pruner in order.

        Args:
            jobs (Sequence[Job]): the jobs.
            reporter (Callable[[Job, int, float], bool] or None): called with (job, iteration,
                metric) for every evaluation of these jobs (also of reused ones); a True return
                stops the training and raises ``optuna.TrialPruned``.

        Returns:
            dict[str, float]: the AP by ``job.id``.

        Raises:
            RunFailed: a training exited with an error.
            optuna.TrialPruned: ``reporter`` asked to stop.
        """
        aps: dict[str, float] = {}
        pending = list(jobs)
        while pending:
            running = {r.user_attrs.get("job") for r in self.runs((TrialState.RUNNING,))}
            for job in pending:
                run = self.result(job)
                if run is not None:
                    if reporter is not None:
                        log(f"[tune] {job.arm} seed {job.seed}: reusing run #{run.number}")
                        for iteration, value in run.user_attrs.get("curve", []):
                            if reporter(job, iteration, value):
                                raise _pruned(job, iteration)
                    aps[job.id] = run.value
                elif job.id in running or (claim := self._claim(job)) is None:
                    continue
                else:
                    aps[job.id] = self._train(job, *claim, reporter)
                pending.remove(job)
                break
            else:
                # Every remaining job is being trained by another worker: wait, and fail the
                # claims of workers that died so that the next pass takes them over.
                time.sleep(self.poll_s)
                optuna.storages.fail_stale_trials(self.study)
        return aps

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
        worker = f"{socket.gethostname()}:{os.getpid()}"
        attrs = {"job": job.id, "arm": job.arm, "seed": job.seed, "opts": list(job.opts)}
        for name, value in {**attrs, "worker": worker}.items():  # "job" first: rivals wait for it
            trial.set_user_attr(name, value)
        deadline = time.time() + 30 * self.poll_s
        while True:
            claims = self.runs((TrialState.RUNNING, TrialState.COMPLETE))
            earlier = [r for r in claims if r.number < trial.number]
            if any(r.user_attrs.get("job") == job.id for r in earlier):
                trial.set_user_attr("yielded", True)
                self.study.tell(trial, state=TrialState.FAIL)
                return None
            # A claim without a job yet is between its ask and set_user_attr: wait for it.
            if all("job" in r.user_attrs for r in earlier) or time.time() > deadline:
                return trial, trial_id
            time.sleep(min(0.2, self.poll_s))
            self._storage.record_heartbeat(trial_id)

    def _train(self, job: Job, trial, trial_id, reporter) -> float:
        name = f"{trial.number:04d}-{job.arm.replace(' ', '')}-seed{job.seed}"
        out = os.path.abspath(os.path.join(self._out_dir, "runs", name))
        os.makedirs(out, exist_ok=True)
        trial.set_user_attr("output_dir", out)
        cmd = self._train_command([*job.opts, "SEED", str(job.seed), "OUTPUT_DIR", out])
        log_path, results_path = os.path.join(out, LOG_FILE), os.path.join(out, EVAL_RESULTS_FILE)
        log(f"[tune] {job.arm} seed {job.seed}: training run #{trial.number} in {out}")
        curve: list[tuple[int, float]] = []
        start = time.time()
        with open(log_path, "w", encoding="utf-8") as log_file:
            log_file.write(" ".join(cmd) + "\n")
            log_file.flush()
            child = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                while True:
                    exited = child.poll() is not None
                    try:
                        iteration, value = _read_metric(results_path, self._metric)
                    except (OSError, ValueError, KeyError, TypeError):
                        iteration = None
                    if iteration is not None and (not curve or curve[-1][0] != iteration):
                        curve.append((int(iteration), value))
                        trial.set_user_attr("curve", curve)
                        log(
                            f"[tune] {job.arm} seed {job.seed}: iteration {iteration} "
                            f"{self._metric} {format_ap(value)}"
                        )
                        if reporter is not None and reporter(job, iteration, value):
                            _stop(child)
                            self.study.tell(trial, state=TrialState.PRUNED)
                            raise _pruned(job, iteration)
                    if exited:
                        break
                    self._storage.record_heartbeat(trial_id)
                    time.sleep(self.poll_s)
            finally:
                _stop(child)
        seconds = time.time() - start
        if child.returncode != 0:
            trial.set_user_attr("error", f"exit status {child.returncode}; see {log_path}")
            self.study.tell(trial, state=TrialState.FAIL)
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            raise RunFailed(
                f"the {job.arm} training on seed {job.seed} exited with status "
                f"{child.returncode}; its output is in {log_path}:\n{tail}"
            )
        try:
            ap = _read_metric(results_path, self._metric)[1]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunFailed(
                f"the training in {out} finished without a {self._metric} in {results_path} "
                f"({error!r}); is DATASETS.TEST set? Its output is in {log_path}."
            ) from error
        trial.set_user_attr("seconds", seconds)
        self.study.tell(trial, ap)
        log(
            f"[tune] {job.arm} seed {job.seed}: run #{trial.number} done, {self._metric} "
            f"{format_ap(ap)} in {seconds / 60:.1f} min"
        )
        return ap
