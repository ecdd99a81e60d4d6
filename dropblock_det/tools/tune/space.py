"""The search space: Detectron2 config keys and the values a trial may give them.

A space is a yaml mapping from a config key to either ``choices`` (a list of values, tried as
they are) or a numeric range ``low``/``high`` (optionally ``log: true`` or ``step``)::

    MODEL.DROPBLOCK.BLOCK_SIZE: {choices: [1, 3, 5, 7]}
    MODEL.DROPBLOCK.KEEP_PROB: {low: 0.8, high: 0.95}
    MODEL.DROPBLOCK.STAGES: {choices: [[], [res5], [res4, res5]]}
    SOLVER.BASE_LR: {low: 0.0005, high: 0.002, log: true}

:func:`check_space` checks every key and every value against the config the trials are built
from, so a typo or a value the model would refuse stops the search before any training.
"""

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

import yaml
from detectron2.config import CfgNode
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    ROI_BOX_HEAD_REGISTRY,
    GeneralizedRCNN,
    RetinaNet,
)

from ...config import FPN_LEVELS, RESNET_STAGES
from ...modeling import DropBlockFastRCNNConvFCHead, DropBlockRetinaNet
from ..errors import InputError

__all__ = ["Param", "SpaceError", "check_space", "default_space", "format_value", "load_space"]

# Set by the search itself: each run's seed and folder, and the switch that tells a trial from the
# baseline. Searching them would break the comparison the objective rests on.
RESERVED_KEYS = ("SEED", "OUTPUT_DIR", "MODEL.DROPBLOCK.ENABLED")
_SPEC = "{choices: [...]} or {low: ..., high: ...}"


class SpaceError(InputError):
    """A search space that cannot be searched; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched config key: ``choices`` (categorical) or a ``low``/``high`` range.

    Attributes:
        key (str): the dotted Detectron2 config key, also the Optuna parameter name.
        choices (tuple or None): the candidate values, or None for a range.
        low, high (float or int or None): the ends of a range.
        log (bool): sample the range on a log scale.
        step (float or int or None): the range's step; None samples it continuously.
        integer (bool): the range is of integers (the config value is an int).
    """

    key: str
    choices: tuple[Any, ...] | None = None
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    integer: bool = False

    @property
    def labels(self) -> tuple[Any, ...]:
        """Optuna's (scalar) form of each choice: the value, or ``"res4+res5"``/``"none"``."""
        return tuple(
            ("+".join(map(str, c)) or "none") if isinstance(c, (list, tuple)) else c
            for c in self.choices
        )

    def suggest(self, trial) -> Any:
        """Draw this key's value for an Optuna trial; return it as the config takes it."""
        if self.choices is not None:
            return self.choices[self.labels.index(trial.suggest_categorical(self.key, self.labels))]
        if self.integer:
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list[Any]:
        """The values that :func:`check_space` tries in the config: every choice, or both ends."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        """A short human-readable form, e.g. ``{1, 3, 5}`` or ``[0.8, 0.95]``."""
        if self.choices is not None:
            return "{" + ", ".join(map(str, self.labels)) + "}"
        extra = " log" if self.log else (f" step {self.step}" if self.step else "")
        return f"[{self.low}, {self.high}]{extra}"


def format_value(value) -> str:
    """A config value as a command-line option value that yacs reads back as the same value."""
    return repr(list(value) if isinstance(value, tuple) else value)


def default_space(cfg: CfgNode) -> dict[str, Param]:
    """The default DropBlock space (by config key) for a config whose model names are registered.

    ``configs/search/default_space.yaml`` is this space for the tiny RetinaNet; the README's search
    section says what it holds for other models.
    """
    # Detectron2's ResNet builds the stages up to the deepest of its OUT_FEATURES.
    outs = [RESNET_STAGES.index(f) for f in cfg.MODEL.RESNETS.OUT_FEATURES if f in RESNET_STAGES]
    stages = list(RESNET_STAGES[: max(outs, default=len(RESNET_STAGES) - 1) + 1])
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if issubclass(arch, RetinaNet):
        features = list(cfg.MODEL.RETINANET.IN_FEATURES)
    else:
        features = [*cfg.MODEL.RPN.IN_FEATURES, *cfg.MODEL.ROI_HEADS.IN_FEATURES]
    levels = [level for level in FPN_LEVELS if level in features]
    params = [
        Param("MODEL.DROPBLOCK.BLOCK_SIZE", choices=(1, 3, 5, 7)),
        Param("MODEL.DROPBLOCK.KEEP_PROB", low=0.8, high=0.95),
        # The deepest groups first, as in the paper.
        Param(
            "MODEL.DROPBLOCK.STAGES", choices=([], *(stages[i:] for i in range(len(stages))[::-1]))
        ),
        Param("MODEL.DROPBLOCK.PLACEMENT", choices=("block", "stage")),
    ]
    if levels:
        prefixes = [levels[:k] for k in range(1, len(levels) + 1)]
        params.append(Param("MODEL.DROPBLOCK.FPN", choices=([], *prefixes)))
    box_head = cfg.MODEL.ROI_BOX_HEAD.NAME  # C4 models' Res5ROIHeads name none
    if issubclass(arch, DropBlockRetinaNet):
        params.append(Param("MODEL.DROPBLOCK.HEAD", choices=(False, True)))
    elif (
        issubclass(arch, GeneralizedRCNN)
        and box_head in ROI_BOX_HEAD_REGISTRY
        and ROI_BOX_HEAD_REGISTRY.get(box_head) is DropBlockFastRCNNConvFCHead
    ):
        params.append(Param("MODEL.DROPBLOCK.ROI_HEADS", choices=(False, True)))
    return {p.key: p for p in params}


def load_space(path: str) -> dict[str, Param]:
    """Read a search-space yaml file (see the module docstring), checking its form only.

    Returns:
        dict[str, Param]: by config key, in the file's order.

    Raises:
        SpaceError: naming the file and the key when the file is missing or malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as error:
        raise SpaceError(f"--space {path!r} cannot be read: {error.strerror}.") from error
    except yaml.YAMLError as error:
        raise SpaceError(f"--space {path!r} is not valid yaml: {error}") from error
    if not isinstance(data, dict) or not data:
        raise SpaceError(
            f"{path}: expected a mapping of config keys to {_SPEC}, e.g. "
            "'MODEL.DROPBLOCK.BLOCK_SIZE: {choices: [1, 3, 5]}'."
        )
    params = {}
    for key, spec in data.items():
        where = f"{path}: {key}"
        if not isinstance(key, str) or not key:
            raise SpaceError(f"{path}: {key!r} is not a config key (expected e.g. SOLVER.BASE_LR).")
        if key in RESERVED_KEYS:
            raise SpaceError(
                f"{where} is set by the search itself (one of {list(RESERVED_KEYS)}) and cannot "
                "be searched."
            )
        if not isinstance(spec, dict):
            raise SpaceError(f"{where}: expected {_SPEC}.")
        parse = _parse_choices if "choices" in spec else _parse_range
        params[key] = parse(where, key, spec)
    return params


def _parse_choices(where, key, spec):
    if set(spec) != {"choices"}:
        raise SpaceError(
            f"{where}: 'choices' cannot be combined with {sorted(set(spec) - {'choices'})}."
        )
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{where}: 'choices' must be a non-empty list, got {choices!r}.")
    for choice in choices:
        inner = choice if isinstance(choice, list) else [choice]
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in inner):
            raise SpaceError(f"{where}: choice {choice!r} is not a number, string, bool or list.")
    param = Param(key, choices=tuple(choices))
    if len(set(map(repr, param.labels))) != len(choices):
        raise SpaceError(f"{where}: 'choices' has duplicates: {choices!r}.")
    return param


def _parse_range(where, key, spec):
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}:
        raise SpaceError(
            f"{where}: expected 'choices' or 'low' and 'high' (with optional 'log', 'step'); "
            f"got {sorted(spec)}."
        )
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SpaceError(f"{where}: '{name}' must be a number, got {value!r}.")
    if not low < high:
        raise SpaceError(f"{where}: 'low' ({low}) must be below 'high' ({high}).")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: 'log' must be true or false, got {log!r}.")
    if step is not None and (step <= 0 or log):
        raise SpaceError(f"{where}: 'step' must be positive and cannot be combined with 'log'.")
    if log and low <= 0:
        raise SpaceError(f"{where}: a 'log' range needs 'low' > 0, got {low}.")
    return Param(key, low=low, high=high, log=log, step=step)


def _flatten(node: CfgNode, prefix="") -> dict[str, Any]:
    values = {}
    for name, value in node.items():
        if isinstance(value, CfgNode):
            values.update(_flatten(value, f"{prefix}{name}."))
        else:
            values[f"{prefix}{name}"] = value
    return values


def check_space(params, cfg, build, source="the search space", advice="Change it in the space."):
    """Check every key of a space against a config and every candidate value in it.

    Args:
        params (dict[str, Param]): from :func:`load_space` or :func:`default_space`.
        cfg (CfgNode): the config the trials are built from (base config and options).
        build (Callable[[Sequence[str]], CfgNode]): builds and checks the config of extra
            ``KEY VALUE`` options as a trial's training would, raising ``ValueError`` (e.g.
            ``InputError``) that names the key at fault.
        source (str): named in error messages.
        advice (str): what a refused value's message says to do.

    Returns:
        dict[str, Param]: the space, with integer ranges marked where the config value is an int.

    Raises:
        SpaceError: naming ``source``, the key and the value at fault.
    """
    checked = {}
    values = _flatten(cfg)
    for key, param in params.items():
        where = f"{source}: {key}"
        if key not in values:
            matches = difflib.get_close_matches(key, list(values), n=3, cutoff=0.7)
            hint = f" Did you mean {', '.join(matches)}?" if matches else ""
            raise SpaceError(f"{where} is not a key of the config.{hint}")
        current = values[key]
        if param.choices is None:
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise SpaceError(
                    f"{where}: a 'low'/'high' range needs a numeric key, but the config holds "
                    f"{current!r}; use 'choices' instead."
                )
            ends = (param.low, param.high, param.step)
            integer = isinstance(current, int)
            if integer and not all(isinstance(v, int) for v in ends if v is not None):
                raise SpaceError(
                    f"{where} is an integer key (the config holds {current!r}): 'low', 'high' "
                    "and 'step' must be integers, or use 'choices'."
                )
            param = dataclasses.replace(param, integer=integer)
        for value in param.candidates():
            try:
                build([key, format_value(value)])
            except ValueError as error:
                # The config's own message, without its advice on editing the config file.
                reason = str(error).split(" Fix it in the config file")[0]
                raise SpaceError(
                    f"{where}: the value {value!r} is refused: {reason} {advice}"
                ) from error
        checked[key] = param
    return checked


def space_to_yaml(params: dict[str, Param]) -> str:
    """The space as the yaml :func:`load_space` reads: the study's record of it.

    Stable across versions that read the same yaml (unlike a repr of :class:`Param`), so a rerun
    of the same command joins the study it made.
    """
    data = {}
    for key, p in params.items():
        if p.choices is not None:
            data[key] = {"choices": [list(c) if isinstance(c, tuple) else c for c in p.choices]}
        else:
            data[key] = {"low": p.low, "high": p.high}
            if p.log:
                data[key]["log"] = True
            if p.step:
                data[key]["step"] = p.step
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
