"""Which group each DropBlock belongs to, and the keep_prob that group gets.

Every :class:`~dropblock_det.layers.DropBlock2d` the model builders insert carries a
``dropblock_group`` attribute: the ResNet stage it sits in ("res2" … "res5"), the FPN level it
drops ("p3" … "p7") or "head". The schedule hook and the builders both compute a group's
keep_prob with :func:`group_keep_prob`, so the value a model is built with and the value the hook
sets at the end of the ramp are the same number.
"""

from typing import Iterable

from ..layers import DropBlock2d

__all__ = ["DROPBLOCK_GROUP_ATTR", "build_dropblock", "group_keep_prob", "stage_index"]

# Name of the attribute that tags each inserted DropBlock2d with its group.
DROPBLOCK_GROUP_ATTR = "dropblock_group"


def stage_index(stage: str) -> int:
    """Return the number of a ResNet stage name ("res4" -> 4).

    Args:
        stage (str): one of "res2" … "res5".

    Returns:
        int: the stage number.
    """
    return int(stage[len("res") :])


def group_keep_prob(keep_prob: float, group: str, stages: Iterable[str], group_scaling: bool):
    """Keep probability of one DropBlock group, with the TF reference's per-stage scaling.

    With ``group_scaling`` a ResNet stage ``d`` stages below the deepest stage of ``stages``
    keeps ``1 - (1 - keep_prob) / 4**d`` (tensorflow/tpu ``resnet_main.py``: res4 gets a quarter
    of res5's drop rate when both are chosen). The distance counts stage numbers, not positions in
    ``stages``, so STAGES [res3, res5] gives res3 a sixteenth of res5's drop rate. FPN levels and
    the head always get the unscaled ``keep_prob``.

    Args:
        keep_prob (float): the unscaled keep probability, in (0, 1].
        group (str): the DropBlock's group ("res2" … "res5", "p2" … "p7" or "head").
        stages (Iterable[str]): MODEL.DROPBLOCK.STAGES.
        group_scaling (bool): MODEL.DROPBLOCK.GROUP_SCALING.

    Returns:
        float: the keep probability for that group.
    """
    stages = list(stages)
    if not group_scaling or group not in stages:
        return float(keep_prob)
    distance = max(stage_index(s) for s in stages) - stage_index(group)
    return 1.0 - (1.0 - float(keep_prob)) / 4**distance


def build_dropblock(cfg, group: str, module_class=DropBlock2d) -> DropBlock2d:
    """Build one parameter-free DropBlock2d from ``cfg.MODEL.DROPBLOCK`` for ``group``.

    The module starts at the group's target keep_prob (the end of the schedule), so a model used
    outside :class:`~dropblock_det.DropBlockSchedule` trains with a constant keep_prob, as the TF
    detection code does; the hook overwrites it before every training step.

    Args:
        cfg (CfgNode): a config with the ``MODEL.DROPBLOCK`` keys.
        group (str): the group this module belongs to (see :func:`group_keep_prob`).
        module_class (type): DropBlock2d or a subclass taking the same arguments.

    Returns:
        DropBlock2d: the module, tagged with ``dropblock_group = group``.
    """
    d = cfg.MODEL.DROPBLOCK
    module = module_class(
        keep_prob=group_keep_prob(d.KEEP_PROB, group, d.STAGES, d.GROUP_SCALING),
        block_size=d.BLOCK_SIZE,
        share_channels=d.SHARE_CHANNELS,
        gamma=d.GAMMA,
        normalize=d.NORMALIZE,
    )
    setattr(module, DROPBLOCK_GROUP_ATTR, group)
    return module
