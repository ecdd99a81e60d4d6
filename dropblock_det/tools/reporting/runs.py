"""Read Detectron2 run folders (``OUTPUT_DIR``): config.yaml, metrics.json, eval_results.json.

metrics.json holds JSONWriter lines: the writer appends, so a resumed run repeats iterations and a
killed run may leave a partial last line. eval_results.json is ``{"iteration", "results"}`` with
results ``{task: metrics}`` for one test dataset, ``{dataset: {task: metrics}}`` for several.
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from detectron2.config import CfgNode

from ...config import add_dropblock_config, requested_groups
from ..evaluation import COCO_METRICS as BBOX_METRICS
from ..trainer import EVAL_RESULTS_FILE

_RUN_FILES = ("config.yaml", "metrics.json", EVAL_RESULTS_FILE)
# Every training step logs it; evaluation lines do not.
TRAINING_KEY = "total_loss"


class NotARunFolderError(ValueError):
    """A path that is not a Detectron2 run folder (the message names it)."""


@dataclass
class MetricsLog:
    """A metrics.json: one dict per iteration, sorted, later lines winning; unparsed line numbers."""

    entries: list[dict] = field(default_factory=list)
    skipped_lines: list[int] = field(default_factory=list)
    line_count: int = 0

    def series(self, key):
        """Return ``(iterations, values)`` of one scalar, empty lists when it was never logged."""
        points = [(e["iteration"], float(e[key])) for e in self.entries if _is_number(e.get(key))]
        return [it for it, _ in points], [v for _, v in points]


@dataclass
class Evaluation:
    """``BBOX_METRICS`` (0-100, NaN where none) and the mask AP of one run, and where from."""

    metrics: dict[str, float]
    iteration: int | None
    source: str
    dataset: str | None = None
    other_datasets: list[str] = field(default_factory=list)
    segm_ap: float | None = None


@dataclass
class Run:
    """One run folder as the report reads it; ``notes`` are the problems met while reading."""

    path: Path
    name: str
    config: dict | None
    log: MetricsLog
    has_final_checkpoint: bool
    notes: list[str] = field(default_factory=list)
    evaluation: Evaluation | None = None

    def config_value(self, dotted_key, default=None):
        """Look up a key such as ``"SOLVER.MAX_ITER"`` in config.yaml; ``default`` when missing."""
        node = self.config
        for part in dotted_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def max_iter(self):
        """``SOLVER.MAX_ITER``, or None when unknown."""
        value = self.config_value("SOLVER.MAX_ITER")
        return int(value) if _is_number(value) else None

    @property
    def iterations_done(self):
        """Training steps logged (Detectron2 logs a step's 0-based index), or None."""
        trained = [e["iteration"] for e in self.log.entries if TRAINING_KEY in e]
        return max(trained) + 1 if trained else None

    @property
    def training_finished(self):
        """Whether training reached ``SOLVER.MAX_ITER``; None when that cannot be told."""
        done, max_iter = self.iterations_done, self.max_iter
        if self.has_final_checkpoint:
            return True
        return None if done is None or max_iter is None else done >= max_iter

    @property
    def dropblock_label(self):
        """The DropBlock setting in a few words: keep_prob, block size, the requested groups."""
        if self.config is None:
            return "?"
        groups = requested_groups(_dropblock_cfg(self.config))
        if not groups:
            return "off"
        keep_prob = self.config_value("MODEL.DROPBLOCK.KEEP_PROB", "?")
        keep_prob = f"{keep_prob:g}" if _is_number(keep_prob) else keep_prob
        block_size = self.config_value("MODEL.DROPBLOCK.BLOCK_SIZE", "?")
        return f"kp {keep_prob} bs {block_size} {','.join(groups)}"

    @property
    def status(self):
        """Whether the run is evaluated and whether training reached ``SOLVER.MAX_ITER``."""
        done, max_iter, finished = self.iterations_done, self.max_iter, self.training_finished
        if max_iter is None:
            progress = f"{done} iters, SOLVER.MAX_ITER unknown"
        else:
            progress = f"{done or 0}/{max_iter} iters"
        if self.evaluation is not None:
            if finished is not False:
                return "evaluated"
            at = (
                "" if self.evaluation.iteration is None else f" at iter {self.evaluation.iteration}"
            )
            return f"evaluated{at}; training unfinished ({progress})"
        if done is None:
            return "not evaluated: no training logged"
        if finished is None:
            return f"not evaluated ({progress})"
        if finished:
            return "not evaluated: training finished, no evaluation"
        return f"not evaluated: training unfinished ({progress})"


def _dropblock_cfg(config):
    # Over the defaults: a run written before a key existed still reads; unknown keys are ignored.
    cfg = CfgNode({"MODEL": CfgNode()})
    add_dropblock_config(cfg)
    model = config.get("MODEL") if isinstance(config.get("MODEL"), dict) else {}
    dropblock = model.get("DROPBLOCK") if isinstance(model.get("DROPBLOCK"), dict) else {}
    for key, value in dropblock.items():
        if key in cfg.MODEL.DROPBLOCK and not isinstance(value, dict):
            cfg.MODEL.DROPBLOCK[key] = value
    cfg.MODEL.MASK_ON = bool(model.get("MASK_ON", False))
    return cfg


def read_metrics_json(path):
    """Parse a metrics.json into a :class:`MetricsLog`, noting the lines that are not objects."""
    by_iteration, skipped, line_number = {}, [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or not _is_number(entry.get("iteration")):
                skipped.append(line_number)
                continue
            iteration = int(entry["iteration"])
            by_iteration.setdefault(iteration, {}).update(entry, iteration=iteration)
    return MetricsLog([by_iteration[k] for k in sorted(by_iteration)], skipped, line_number)


def read_run(path, name=None, dataset=None):
    """Read one run folder (labelled ``name``, the folder name when None).

    The metrics come from eval_results.json when readable, else from the last evaluation logged in
    metrics.json; ``dataset`` (default ``DATASETS.TEST[0]``) picks one of several test datasets.
    NotARunFolderError when ``path`` holds no run file, ValueError without results for ``dataset``.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotARunFolderError(f"{path}: not a run folder (no such directory)")
    if not any((path / f).is_file() for f in _RUN_FILES):
        raise NotARunFolderError(
            f"{path}: not a run folder (expected a Detectron2 OUTPUT_DIR with "
            f"{', '.join(_RUN_FILES)}, as written by tools/train_net.py)"
        )
    notes = []
    config = _read_config(path / "config.yaml", notes)
    log = MetricsLog()
    if (path / "metrics.json").is_file():
        log = read_metrics_json(path / "metrics.json")
        if log.skipped_lines == [log.line_count]:
            notes.append("metrics.json: ignored its partial last line (writer interrupted)")
        elif log.skipped_lines:
            lines = ", ".join(map(str, log.skipped_lines[:5]))
            more = len(log.skipped_lines) - 5
            notes.append(
                f"metrics.json: skipped unreadable line(s) {lines}"
                + (f" and {more} more" if more > 0 else "")
            )
    name = name if name is not None else path.resolve().name
    run = Run(path, name, config, log, (path / "model_final.pth").is_file(), notes)
    test_datasets = run.config_value("DATASETS.TEST") or []
    run.evaluation = _read_eval_results(path / EVAL_RESULTS_FILE, dataset, test_datasets, notes)
    if run.evaluation is None:
        run.evaluation = _eval_from_metrics(log, dataset, test_datasets, path / "metrics.json")
    return run


def read_runs(paths, names=None, dataset=None):
    """:func:`read_run` of each path, named by ``names`` or distinct folder names; ValueError."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no run folders given: pass at least one Detectron2 OUTPUT_DIR")
    if names is None:
        names = [p.resolve().name for p in paths]
        if len(set(names)) < len(names):  # e.g. a/output and b/output
            names = [os.path.join(p.resolve().parent.name, p.resolve().name) for p in paths]
    names = [str(n) for n in names]
    if len(names) != len(paths):
        raise ValueError(
            f"--names has {len(names)} name(s) ({', '.join(names)}) for {len(paths)} run "
            "folder(s): give one name per run"
        )
    return [read_run(p, name=n, dataset=dataset) for p, n in zip(paths, names, strict=True)]


def _read_config(path, notes):
    if not path.is_file():
        notes.append("config.yaml missing: DropBlock setting and SOLVER.MAX_ITER unknown")
        return None
    try:
        # Detectron2 (yacs) dumps with yaml.safe_dump.
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        notes.append(f"config.yaml unreadable ({_first_line(e)}): labels unknown")
        return None
    if not isinstance(config, dict):
        notes.append("config.yaml is not a mapping: labels unknown")
        return None
    return config


def _read_eval_results(path, dataset, test_datasets, notes):
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(content["results"], dict):
            raise TypeError("'results' is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        notes.append(f"eval_results.json unreadable ({_first_line(e)}): used metrics.json instead")
        return None
    iteration = content.get("iteration")
    iteration = int(iteration) if _is_number(iteration) else None
    evaluation = _evaluation(
        content["results"], iteration, EVAL_RESULTS_FILE, dataset, test_datasets, path
    )
    if evaluation is None:
        notes.append("eval_results.json has no bbox results: used metrics.json")
    return evaluation


def _eval_from_metrics(log, dataset, test_datasets, where):
    # EvalHook flattens results: "bbox/AP" for one test dataset, "<dataset>/bbox/AP" for several.
    for entry in reversed(log.entries):
        results = {}
        for key, value in entry.items():
            parts = key.split("/")
            if len(parts) in (2, 3) and parts[-2] in ("bbox", "segm"):
                node = results.setdefault(parts[0], {}) if len(parts) == 3 else results
                node.setdefault(parts[-2], {})[parts[-1]] = value
        evaluation = _evaluation(
            results, entry["iteration"], "metrics.json", dataset, test_datasets, where
        )
        if evaluation is not None:
            return evaluation
    return None


def _evaluation(results, iteration, source, dataset, test_datasets, where):
    """The Evaluation of ``{task: metrics}`` or ``{dataset: {task: metrics}}``; None without bbox."""
    if not results:
        return None
    if "bbox" in results:  # one test dataset: the file does not name it, DATASETS.TEST does
        if dataset is not None and test_datasets and dataset not in test_datasets:
            raise ValueError(
                f"{where}: has results for {', '.join(test_datasets)} (DATASETS.TEST), "
                f"not for dataset {dataset!r}"
            )
        name = dataset or (test_datasets[0] if len(test_datasets) == 1 else None)
        tasks, others = results, []
    else:
        if dataset is not None and dataset not in results:
            raise ValueError(
                f"{where}: no results for dataset {dataset!r}; it has {', '.join(results)}"
            )
        name = dataset or next((d for d in test_datasets if d in results), next(iter(results)))
        tasks, others = results[name], [d for d in results if d != name]
    if not isinstance(tasks, dict) or not isinstance(tasks.get("bbox"), dict):
        return None
    metrics = {m: _number(tasks["bbox"].get(m)) for m in BBOX_METRICS}
    # None without mask results; NaN where they exist but COCOeval gave no number.
    segm = tasks.get("segm")
    segm_ap = _number(segm.get("AP")) if isinstance(segm, dict) else None
    return Evaluation(metrics, iteration, source, name, others, segm_ap)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value):
    return float(value) if _is_number(value) else math.nan


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
