"""The keep_prob schedule of DropBlock, as a Detectron2 training hook."""

import logging
import math
from collections.abc import Sequence

from detectron2.config import configurable
from detectron2.engine import HookBase
from torch import nn

from .config import HEAD_GROUP, ROI_BOX_GROUP, ROI_MASK_GROUP, dropblock_settings_of
from .layers import KeepProb, share_keep_prob
from .modeling import dropblock_modules, group_keep_prob

__all__ = ["KEEP_PROB_METRIC", "DropBlockSchedule"]

logger = logging.getLogger(__name__)

# Name of the scalar written to the EventStorage (metrics.json, TensorBoard) every iteration.
KEEP_PROB_METRIC = "dropblock/keep_prob"


# Where each group sits, for the start-up summary.
_GROUP_PLACES = {
    HEAD_GROUP: "RetinaNet head",
    ROI_BOX_GROUP: "RoI box head input",
    ROI_MASK_GROUP: "mask head convs",
}


def _where(group: str | None) -> str:
    if group in _GROUP_PLACES:
        return _GROUP_PLACES[group]
    for prefix, kind in (("res", "ResNet stage"), ("p", "FPN level")):
        if group and group.startswith(prefix):
            return f"{kind} {group}"
    return f"group {group}"


class DropBlockSchedule(HookBase):
    """Sets every DropBlock's keep_prob from the iteration count before each training step.

    keep_prob falls linearly from ``start`` at step 0 to ``keep_prob`` at step
    ``ramp * (max_iter - 1)``, then stays there (paper §3; the TF reference ramps over the whole
    run, ``ramp`` 1.0), so the last step runs at the target. ResNet stages get it scaled by
    GROUP_SCALING (:func:`~dropblock_det.modeling.group_keep_prob`); the unscaled value is written
    to the EventStorage as ``dropblock/keep_prob``.

    Between steps DropBlock is off (keep_prob 1): hooks that run the model in train mode after a
    step, such as PreciseBN, collect BN statistics as inference will see them. The hook keeps no
    state (the value depends only on ``trainer.iter`` and ``trainer.max_iter``), so a resumed run
    continues the schedule exactly. Register it on every rank, before the hooks whose
    ``after_step`` should see DropBlock off.
    """

    @configurable
    def __init__(
        self,
        *,
        keep_prob: float,
        start: float = 1.0,
        ramp: float = 1.0,
        stages: Sequence[str] = (),
        group_scaling: bool = True,
        model: nn.Module | None = None,
    ):
        """Set up the schedule; the model's DropBlocks are found in ``before_train``.

        Args:
            keep_prob (float): final keep probability (MODEL.DROPBLOCK.KEEP_PROB).
            start (float): keep probability at iteration 0 (MODEL.DROPBLOCK.SCHEDULE.START).
            ramp (float): fraction of the run over which it falls (MODEL.DROPBLOCK.SCHEDULE.RAMP).
            stages (Sequence[str]): MODEL.DROPBLOCK.STAGES, for GROUP_SCALING.
            group_scaling (bool): MODEL.DROPBLOCK.GROUP_SCALING.
            model (nn.Module or None): the model to schedule; None uses ``trainer.model``.
        """
        self._keep_prob, self._start, self._ramp = float(keep_prob), float(start), float(ramp)
        self._stages = tuple(stages)
        self._scaling = bool(group_scaling)
        self._model = model
        # (a group's shared KeepProb, its drop rate over the unscaled one), set in before_train.
        self._groups: list[tuple[KeepProb, float]] = []

    @classmethod
    def from_config(cls, cfg, model=None):
        """The ``__init__`` arguments from a yaml config or its ``MODEL.DROPBLOCK`` node.

        Args:
            cfg (CfgNode): a config with the ``MODEL.DROPBLOCK`` keys, or that node itself (a
                LazyConfig's ``dropblock``).
            model (nn.Module or None): see ``__init__``.

        Returns:
            dict: the keyword arguments of ``__init__``.
        """
        d = dropblock_settings_of(cfg)
        return {
            "keep_prob": d.KEEP_PROB,
            "start": d.SCHEDULE.START,
            "ramp": d.SCHEDULE.RAMP,
            "stages": list(d.STAGES),
            "group_scaling": d.GROUP_SCALING,
            "model": model,
        }

    def keep_prob_at(self, iteration: int, max_iter: int, group: str | None = None) -> float:
        """The keep probability the hook sets before training step ``iteration`` (see the class).

        Args:
            iteration (int): the step about to run, in [0, max_iter).
            max_iter (int): the run's total number of steps.
            group (str or None): a DropBlock group ("res4", "p3", "head" …); None for the
                unscaled value that is logged.

        Returns:
            float: the keep probability.
        """
        fraction = iteration / (max_iter - 1) if max_iter > 1 else 1.0
        progress = min(fraction / self._ramp, 1.0) if self._ramp > 0 else 1.0
        keep_prob = (
            self._keep_prob
            if progress >= 1.0
            else self._start + (self._keep_prob - self._start) * progress
        )
        if group is None:
            return keep_prob
        return group_keep_prob(keep_prob, group, self._stages, self._scaling)

    def before_train(self):
        """Tie each group's DropBlocks to one keep_prob and log one line per group."""
        model = self._model if self._model is not None else self.trainer.model
        by_group: dict[tuple, list] = {}
        for _, module, group in dropblock_modules(model):
            # share_keep_prob needs one device and dtype.
            tensor = module.keep_prob_tensor
            by_group.setdefault((group, tensor.device, tensor.dtype), []).append(module)
        # One shared keep_prob per group: each step costs one fill per group, not one per module.
        # Each group's drop rate is the unscaled one times a factor of its own, computed here once.
        self._groups = [
            (share_keep_prob(modules), 1.0 - group_keep_prob(0.0, g, self._stages, self._scaling))
            for (g, _, _), modules in by_group.items()
        ]
        for (group, _, _), modules in by_group.items():
            logger.info(self._summary(group, modules))
        # The map sizes of the first step, for the warning on a block larger than every map.
        self._map_sizes: dict[str, set] = {}
        self._size_hooks = [
            m.register_forward_pre_hook(self._recorder(group))
            for (group, _, _), modules in by_group.items()
            for m in modules
        ]
        self._block_sizes = {m.block_size for modules in by_group.values() for m in modules}

    def _summary(self, group: str, modules) -> str:
        """One start-up line: where, how many, block size, keep_prob schedule of the group."""
        max_iter = self.trainer.max_iter
        first, last = (self.keep_prob_at(i, max_iter, group) for i in (0, max_iter - 1))
        reached = math.ceil(self._ramp * (max_iter - 1))
        return (
            f"DropBlock {_where(group)}: {len(modules)} module(s), block "
            f"{sorted({m.block_size for m in modules})}, keep_prob {first:.4g} -> {last:.4g} from "
            f"iteration 0 to {reached} of 0..{max_iter - 1}"
        )

    def _recorder(self, group: str):
        def record(module, inputs):
            self._map_sizes.setdefault(group, set()).add(tuple(inputs[0].shape[-2:]))

        return record

    def before_step(self):
        """Set every group's keep_prob for the step about to run and log the unscaled value."""
        keep_prob = self.keep_prob_at(self.trainer.iter, self.trainer.max_iter)
        for shared, drop_scale in self._groups:
            shared.fill(1.0 - (1.0 - keep_prob) * drop_scale)
        self.trainer.storage.put_scalar(KEEP_PROB_METRIC, keep_prob, smoothing_hint=False)

    def after_step(self):
        """Switch DropBlock off until the next step; after the first, warn on clipped blocks."""
        for shared, _ in self._groups:
            shared.fill(1.0)
        if self._size_hooks:
            for handle in self._size_hooks:
                handle.remove()
            self._size_hooks = []
            self._warn_if_always_clipped()

    def _warn_if_always_clipped(self):
        """One warning when the block is larger than every map DropBlock saw in the first step."""
        sizes = [(g, hw) for g, shapes in sorted(self._map_sizes.items()) for hw in sorted(shapes)]
        block = min(self._block_sizes)
        if sizes and all(block > min(hw) for _, hw in sizes):
            maps = ", ".join(f"{g} {h}x{w}" for g, (h, w) in sizes)
            logger.warning(
                f"MODEL.DROPBLOCK.BLOCK_SIZE = {block} is larger than every feature map DropBlock "
                f"reaches ({maps}): each block is clipped to the map, so DropBlock drops whole "
                "rows, columns or channels. Choose a BLOCK_SIZE below the smallest side."
            )
