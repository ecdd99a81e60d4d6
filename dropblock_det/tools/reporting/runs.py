"""Read Detectron2 run folders (``OUTPUT_DIR``): config, training log and evaluation results.

A run folder is what ``tools/train_net.py`` leaves behind:

* ``config.yaml``: the full config, dumped by Detectron2's ``default_setup``;
* ``metrics.json``: JSON lines from Detectron2's ``JSONWriter``, one dict per logging period (and per
  evaluation when it ran inside training). The writer appends, so a resumed run repeats iterations
  and a killed run may leave a partial line;
* ``eval_results.json``: ``{"iteration": int|null, "results": {"bbox": {...}}}`` (or
  ``{"results": {"<dataset>": {"bbox": {...}}}}`` with several test datasets), written by the
  engine after every final evaluation;
* ``last_checkpoint`` / ``model_final.pth`` when checkpoints were saved.
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from detectron2.config import CfgNode

from ...config import add_dropblock_config, requested_groups
from ..evaluation import COCO_METRICS
from ..trainer import EVAL_RESULTS_FILE

__all__ = [
    "BBOX_METRICS",
    "Evaluation",
    "MetricsLog",
    "NotARunFolderError",
    "Run",
    "TRAINING_KEY",
    "read_metrics_json",
    "read_run",
    "read_runs",
]

logger = logging.getLogger(__name__)

# COCO box metrics reported by Detectron2's COCOEvaluator, on its 0-100 scale.
BBOX_METRICS = COCO_METRICS

_RUN_FILES = ("config.yaml", "metrics.json", EVAL_RESULTS_FILE)
# Every training step of Detectron2's SimpleTrainer logs it; evaluation lines do not.
TRAINING_KEY = "total_loss"


class NotARunFolderError(ValueError):
    """Raised for a path that is not a Detectron2 run folder (the message names the path)."""


@dataclass
class MetricsLog:
    """The scalars of a ``metrics.json``, one merged dict per iteration.

    Attributes:
        entries: dicts sorted by ``"iteration"``. Lines of the same iteration are merged, later
            lines winning, so a resumed run's repeated iterations keep their newest values.
        skipped_lines: 1-based numbers of lines that were not a JSON object (e.g. the partial last
            line of a killed run), reported rather than silently dropped.
        line_count: number of lines in the file.
    """

    entries: list[dict] = field(default_factory=list)
    skipped_lines: list[int] = field(default_factory=list)
    line_count: int = 0

    @property
    def last_training_iteration(self) -> int | None:
        """The highest iteration with a training loss, or None when no training step was logged.

        Evaluation lines do not count: Detectron2 logs the final evaluation at iteration
        ``MAX_ITER``, one past the last training step.
        """
        trained = [e["iteration"] for e in self.entries if TRAINING_KEY in e]
        return max(trained) if trained else None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Return the iterations and values of one scalar, in iteration order.

        Args:
            key: a metrics.json key such as ``"total_loss"`` or ``"dropblock/keep_prob"``.

        Returns:
            (iterations, values): two equally long lists, empty when the key was never logged.
        """
        points = [(e["iteration"], float(e[key])) for e in self.entries if _is_number(e.get(key))]
        return [it for it, _ in points], [v for _, v in points]


@dataclass
class Evaluation:
    """Box (and mask) metrics of one run.

    Attributes:
        metrics: ``BBOX_METRICS`` name -> value (0-100); NaN where the evaluator gave NaN or nothing.
        segm_ap: the mask AP (0-100) of a run that evaluated masks, else None.
        iteration: the iteration the evaluated weights come from, when known.
        source: ``"eval_results.json"`` or ``"metrics.json"``.
        dataset: the test dataset the numbers belong to, when the file names it.
        other_datasets: further test datasets present in the same file.
    """

    metrics: dict[str, float]
    iteration: int | None
    source: str
    dataset: str | None = None
    other_datasets: list[str] = field(default_factory=list)
    segm_ap: float | None = None


@dataclass
class Run:
    """Everything the report needs about one run folder.

    Attributes:
        path: the run folder.
        name: the label used in tables and legends.
        config: the parsed ``config.yaml`` (nested dicts), or None when absent or unreadable.
        log: the parsed ``metrics.json`` (empty when absent).
        evaluation: the box metrics, or None when the run has not been evaluated.
        has_final_checkpoint: whether ``model_final.pth`` exists (training ran to the end).
        notes: problems met while reading (unreadable files, skipped lines), shown in the report.
    """

    path: Path
    name: str
    config: dict | None
    log: MetricsLog
    evaluation: Evaluation | None
    has_final_checkpoint: bool
    notes: list[str] = field(default_factory=list)

    def config_value(self, dotted_key: str, default=None):
        """Look up a config key such as ``"SOLVER.MAX_ITER"``; ``default`` when it is missing."""
        node = self.config
        for part in dotted_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def max_iter(self) -> int | None:
        """``SOLVER.MAX_ITER`` from config.yaml, or None when unknown."""
        value = self.config_value("SOLVER.MAX_ITER")
        return int(value) if _is_number(value) else None

    @property
    def iterations_done(self) -> int | None:
        """Number of training iterations logged (Detectron2 logs the 0-based index of the step)."""
        last = self.log.last_training_iteration
        return None if last is None else last + 1

    @property
    def training_finished(self) -> bool | None:
        """True when training reached ``SOLVER.MAX_ITER``; None when that cannot be told."""
        if self.has_final_checkpoint:
            return True
        done, max_iter = self.iterations_done, self.max_iter
        if done is None or max_iter is None:
            return None
        return done >= max_iter

    @property
    def meta_architecture(self) -> str | None:
        """``MODEL.META_ARCHITECTURE`` from config.yaml, or None when unknown."""
        return self.config_value("MODEL.META_ARCHITECTURE")

    @property
    def dropblock_label(self) -> str:
        """A short description of the run's DropBlock setting: keep_prob, block size, groups.

        The groups are :func:`dropblock_det.config.requested_groups` of the run's config, the
        one answer to which groups a config asks for (RoI heads included).
        """
        if self.config is None:
            return "?"
        groups = requested_groups(_dropblock_config(self.config))
        if not groups:
            return "off"
        parts = [
            f"kp {_format_number(self.config_value('MODEL.DROPBLOCK.KEEP_PROB', '?'))}",
            f"bs {self.config_value('MODEL.DROPBLOCK.BLOCK_SIZE', '?')}",
            ",".join(groups),
        ]
        return " ".join(parts)

    @property
    def status(self) -> str:
        """Whether the run is evaluated and whether training reached ``SOLVER.MAX_ITER``."""
        progress = self._progress()
        if self.evaluation is not None:
            if self.training_finished is False:
                where = (
                    f" at iter {self.evaluation.iteration}"
                    if self.evaluation.iteration is not None
                    else ""
                )
                return f"evaluated{where}; training unfinished ({progress})"
            return "evaluated"
        if self.iterations_done is None:
            return "not evaluated: no training logged"
        if self.training_finished is True:
            return "not evaluated: training finished, no evaluation"
        if self.training_finished is False:
            return f"not evaluated: training unfinished ({progress})"
        return f"not evaluated ({progress})"

    def _progress(self) -> str:
        done, max_iter = self.iterations_done, self.max_iter
        if max_iter is None:
            return f"{done} iters, SOLVER.MAX_ITER unknown"
        return f"{done if done is not None else 0}/{max_iter} iters"


def _dropblock_config(config: dict) -> CfgNode:
    """The ``MODEL.DROPBLOCK`` keys and ``MODEL.MASK_ON`` of a dumped config, over the defaults.

    Keys a run's config lacks (written by an older version) keep their defaults, and keys the
    defaults lack are ignored, so that an old run folder still reads.
    """
    cfg = CfgNode({"MODEL": CfgNode()})
    add_dropblock_config(cfg)
    model = config.get("MODEL") if isinstance(config.get("MODEL"), dict) else {}
    dropblock = model.get("DROPBLOCK") if isinstance(model.get("DROPBLOCK"), dict) else {}
    for key, value in dropblock.items():
        if key in cfg.MODEL.DROPBLOCK and not isinstance(value, dict):
            cfg.MODEL.DROPBLOCK[key] = value
    cfg.MODEL.MASK_ON = bool(model.get("MASK_ON", False))
    return cfg


def read_metrics_json(path) -> MetricsLog:
    """Parse a Detectron2 ``metrics.json``, tolerating partial or broken lines.

    Args:
        path (str or Path): the file.

    Returns:
        MetricsLog: entries merged per iteration; undecodable lines listed in ``skipped_lines``.
    """
    by_iteration: dict[int, dict] = {}
    skipped = []
    line_number = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                skipped.append(line_number)
                continue
            if not isinstance(entry, dict) or not _is_number(entry.get("iteration")):
                skipped.append(line_number)
                continue
            iteration = int(entry["iteration"])
            # Later lines win: after a resume the writer logs the repeated iterations again.
            by_iteration.setdefault(iteration, {}).update(entry, iteration=iteration)
    if skipped == [line_number]:
        logger.warning(
            "%s: ignored its partial last line %d (writer interrupted)", path, line_number
        )
    elif skipped:
        logger.warning("%s: skipped %d unreadable line(s): %s", path, len(skipped), skipped)
    return MetricsLog(
        [by_iteration[k] for k in sorted(by_iteration)], skipped, line_count=line_number
    )


def read_run(path, name: str | None = None, dataset: str | None = None) -> Run:
    """Read one run folder.

    Evaluation results come from ``eval_results.json`` when it is readable, otherwise from the last
    ``bbox/*`` entries of ``metrics.json``; a run with neither is "not evaluated".

    Args:
        path (str or Path): the run folder (Detectron2 ``OUTPUT_DIR``).
        name: label for tables and legends; the folder name when None.
        dataset: with several test datasets, the one to report; ``DATASETS.TEST[0]`` when None.

    Returns:
        Run: the parsed folder.

    Raises:
        NotARunFolderError: when ``path`` is not a folder holding config.yaml, metrics.json or
            eval_results.json.
        ValueError: when ``dataset`` is given but the run has no results for it.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotARunFolderError(f"{path}: not a run folder (no such directory)")
    if not any((path / f).is_file() for f in _RUN_FILES):
        raise NotARunFolderError(
            f"{path}: not a run folder (expected a Detectron2 OUTPUT_DIR with "
            f"{', '.join(_RUN_FILES)}, as written by tools/train_net.py)"
        )
    notes: list[str] = []
    config = _read_config(path / "config.yaml", notes)
    log = MetricsLog()
    if (path / "metrics.json").is_file():
        log = read_metrics_json(path / "metrics.json")
        if log.skipped_lines == [log.line_count]:
            notes.append("metrics.json: ignored its partial last line (writer interrupted)")
        elif log.skipped_lines:
            notes.append(
                f"metrics.json: skipped unreadable line(s) {_format_line_list(log.skipped_lines)}"
            )
    run = Run(
        path=path,
        name=name if name is not None else path.resolve().name,
        config=config,
        log=log,
        evaluation=None,
        has_final_checkpoint=(path / "model_final.pth").is_file(),
        notes=notes,
    )
    test_datasets = run.config_value("DATASETS.TEST") or []
    run.evaluation = _read_eval_results(path / EVAL_RESULTS_FILE, dataset, test_datasets, notes)
    if run.evaluation is None:
        run.evaluation = _eval_from_metrics(log, dataset, test_datasets, path)
    return run


def read_runs(
    paths: Sequence, names: Sequence[str] | None = None, dataset: str | None = None
) -> list[Run]:
    """Read several run folders, giving them distinct names.

    Args:
        paths: run folders.
        names: one label per folder; folder names (made unique with their parent) when None.
        dataset: passed to :func:`read_run`.

    Returns:
        list[Run]: in the order of ``paths``.

    Raises:
        ValueError: for an empty ``paths`` or a ``names`` of the wrong length.
        NotARunFolderError: for the first path that is not a run folder.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no run folders given: pass at least one Detectron2 OUTPUT_DIR")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(paths):
            raise ValueError(
                f"--names has {len(names)} name(s) ({', '.join(names)}) for {len(paths)} run "
                "folder(s): give one name per run"
            )
    else:
        names = _default_names(paths)
    return [read_run(p, name=n, dataset=dataset) for p, n in zip(paths, names, strict=True)]


def _default_names(paths: list[Path]) -> list[str]:
    # Folder names, unless two runs share one (e.g. a/output and b/output): then parent/name.
    names = [p.resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [os.path.join(p.resolve().parent.name, p.resolve().name) for p in paths]


def _read_config(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        notes.append("config.yaml missing: DropBlock setting and SOLVER.MAX_ITER unknown")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            # Detectron2 (yacs) dumps its config with yaml.safe_dump, so safe_load reads it back.
            config = yaml.safe_load(f)
    except yaml.YAMLError as e:
        notes.append(f"config.yaml unreadable ({_first_line(e)}): labels unknown")
        return None
    if not isinstance(config, dict):
        notes.append("config.yaml is not a mapping: labels unknown")
        return None
    return config


def _read_eval_results(
    path: Path, dataset: str | None, test_datasets: Sequence[str], notes: list[str]
) -> Evaluation | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
        results = content["results"]
        if not isinstance(results, dict):
            raise TypeError("'results' is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        notes.append(f"eval_results.json unreadable ({_first_line(e)}): used metrics.json instead")
        logger.warning("%s unreadable: %s", path, e)
        return None
    iteration = content.get("iteration")
    iteration = int(iteration) if _is_number(iteration) else None
    evaluation = _evaluation(results, iteration, EVAL_RESULTS_FILE, dataset, test_datasets, path)
    if evaluation is None:
        notes.append("eval_results.json has no bbox results: used metrics.json")
    return evaluation


def _eval_from_metrics(
    log: MetricsLog, dataset: str | None, test_datasets: Sequence[str], path: Path
) -> Evaluation | None:
    # EvalHook flattens results: "bbox/AP" for one test dataset, "<dataset>/bbox/AP" for several.
    for entry in reversed(log.entries):
        results = {}
        for key, value in entry.items():
            parts = key.split("/")
            if len(parts) in (2, 3) and parts[-2] in ("bbox", "segm"):
                node = results.setdefault(parts[0], {}) if len(parts) == 3 else results
                node.setdefault(parts[-2], {})[parts[-1]] = value
        source = path / "metrics.json"
        evaluation = _evaluation(
            results, entry["iteration"], "metrics.json", dataset, test_datasets, source
        )
        if evaluation is not None:
            return evaluation
    return None


def _evaluation(
    results: dict,
    iteration: int | None,
    source: str,
    dataset: str | None,
    test_datasets: Sequence[str],
    where: Path,
) -> Evaluation | None:
    """The Evaluation of ``{task: metrics}`` (one test dataset) or ``{dataset: {task: metrics}}``."""
    if not results:
        return None
    if "bbox" in results:
        name, tasks, others = _single_dataset_name(dataset, test_datasets, where), results, []
    else:
        name = _choose_dataset(list(results), dataset, test_datasets, where)
        tasks = results[name] if isinstance(results[name], dict) else {}
        others = [d for d in results if d != name]
    if not isinstance(tasks.get("bbox"), dict):
        return None
    return Evaluation(
        _bbox_metrics(tasks["bbox"]), iteration, source, name, others, _segm_ap(tasks.get("segm"))
    )


def _single_dataset_name(
    dataset: str | None, test_datasets: Sequence[str], source: Path
) -> str | None:
    # Results of a single test dataset carry no dataset name: take it from DATASETS.TEST.
    if dataset is not None and test_datasets and dataset not in test_datasets:
        raise ValueError(
            f"{source}: has results for {', '.join(test_datasets)} (DATASETS.TEST), "
            f"not for dataset {dataset!r}"
        )
    if dataset is not None:
        return dataset
    return test_datasets[0] if len(test_datasets) == 1 else None


def _choose_dataset(
    available: list[str], dataset: str | None, test_datasets: Sequence[str], source: Path
) -> str:
    if dataset is not None:
        if dataset not in available:
            raise ValueError(
                f"{source}: no results for dataset {dataset!r}; it has {', '.join(available)}"
            )
        return dataset
    for name in test_datasets:
        if name in available:
            return name
    return available[0]


def _bbox_metrics(bbox: dict) -> dict[str, float]:
    return {m: float(bbox[m]) if _is_number(bbox.get(m)) else math.nan for m in BBOX_METRICS}


def _segm_ap(segm) -> float | None:
    # None without mask results; NaN where they exist but COCOeval gave no number.
    if not isinstance(segm, dict):
        return None
    return float(segm["AP"]) if _is_number(segm.get("AP")) else math.nan


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_number(value) -> str:
    return f"{value:g}" if _is_number(value) else str(value)


def _format_line_list(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
