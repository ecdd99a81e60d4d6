"""DropBlock groups in a Detectron2 model: building one, its keep_prob, finding and checking them.

Every placement builds its DropBlocks with :func:`build_dropblock` and a group: the ResNet stage
("res2" … "res5"), the FPN level ("p2" … "p7"), "head", "roi_box" or "roi_mask". The group sets
the keep_prob (:func:`group_keep_prob`); the schedule hook sets each group as one.
"""

import functools
from collections.abc import Callable, Iterable

from torch import nn

from ..config import dropblock_settings_of, requested_groups, validate_dropblock_settings
from ..layers import DropBlock2d

__all__ = [
    "DROPBLOCK_BACKBONES",
    "build_dropblock",
    "check_placements",
    "dropblock_modules",
    "group_keep_prob",
    "make_dropblock_factory",
    "set_children",
]


# Each stock Detectron2 ResNet backbone builder and its DropBlock twin (same modules when off).
DROPBLOCK_BACKBONES = {
    "build_retinanet_resnet_fpn_backbone": "build_retinanet_resnet_fpn_dropblock_backbone",
    "build_resnet_fpn_backbone": "build_resnet_fpn_dropblock_backbone",
    "build_resnet_backbone": "build_resnet_dropblock_backbone",
}


def group_keep_prob(keep_prob: float, group: str, stages: Iterable[str], group_scaling: bool):
    """Keep probability of one DropBlock group, with the TF reference's per-stage scaling.

    With ``group_scaling`` a ResNet stage ``d`` stages below the deepest stage of ``stages``
    keeps ``1 - (1 - keep_prob) / 4**d`` (tensorflow/tpu ``resnet_main.py``: res4 gets a quarter
    of res5's drop rate); STAGES [res3, res5] gives res3 a sixteenth. Every other group (FPN
    levels, heads) gets the unscaled ``keep_prob``.

    Args:
        keep_prob (float): the unscaled keep probability, in (0, 1].
        group (str): the DropBlock's group ("res2" … "res5", "p2" … "p7", "head" …).
        stages (Iterable[str]): MODEL.DROPBLOCK.STAGES.
        group_scaling (bool): MODEL.DROPBLOCK.GROUP_SCALING.

    Returns:
        float: the keep probability for that group.
    """
    stages = list(stages)
    if not group_scaling or group not in stages:
        return float(keep_prob)
    # "res<N>": the distance counts stage numbers.
    distance = max(int(s[3:]) for s in stages) - int(group[3:])
    return 1.0 - (1.0 - float(keep_prob)) / 4**distance


def build_dropblock(settings, group: str) -> DropBlock2d:
    """One parameter-free DropBlock2d of ``group``, at the group's target keep_prob.

    Outside :class:`~dropblock_det.DropBlockSchedule` a model so trains at a constant keep_prob,
    as the TF detection code does.

    Args:
        settings (CfgNode): ``cfg.MODEL.DROPBLOCK``, or a LazyConfig's ``dropblock``.
        group (str): the group of the module.

    Returns:
        DropBlock2d: the module.
    """
    d = settings
    return DropBlock2d(
        keep_prob=group_keep_prob(d.KEEP_PROB, group, d.STAGES, d.GROUP_SCALING),
        block_size=d.BLOCK_SIZE,
        share_channels=d.SHARE_CHANNELS,
        gamma=d.GAMMA,
        normalize=d.NORMALIZE,
        backend=d.BACKEND,
        group=group,
    )


def make_dropblock_factory(settings, group: str) -> Callable[[], DropBlock2d]:
    """The placements' ``make_dropblock``: ``() -> build_dropblock(settings, group)``."""
    return functools.partial(build_dropblock, settings, group)


def set_children(module: nn.Module, children: list[tuple[str, nn.Module]]):
    """Make the (name, module) pairs ``children`` the children of ``module``, in this order.

    The head placements insert DropBlocks into Detectron2's ``nn.Sequential`` heads so: the stock
    forward runs the children in order, and a DropBlock adds no state_dict entry.
    """
    for name, _ in list(module.named_children()):
        delattr(module, name)
    for name, child in children:
        module.add_module(name, child)


def dropblock_modules(model: nn.Module) -> list[tuple[str, DropBlock2d, str | None]]:
    """Every DropBlock2d in ``model`` (through a DDP wrapper too), with its name and group.

    Args:
        model (nn.Module): a model, wrapped or not.

    Returns:
        list[tuple[str, DropBlock2d, str or None]]: (module name, module, group) in model order;
        the group is None for a DropBlock2d built outside the placements.
    """
    return [(name, m, m.group) for name, m in model.named_modules() if isinstance(m, DropBlock2d)]


# What builds each key's groups, for the message when a model lacks them: (yaml, LazyConfig).
_BUILDER_HINTS = {
    "MODEL.DROPBLOCK.STAGES": (
        "MODEL.BACKBONE.NAME to one of our DropBlock backbones, with those stages in "
        "MODEL.RESNETS.OUT_FEATURES",
        "the ResNet stages to L(make_dropblock_stages)(dropblock='${dropblock}', ...), with those "
        "stages among the ResNet's out_features",
    ),
    "MODEL.DROPBLOCK.FPN": (
        "MODEL.BACKBONE.NAME to one of our DropBlock FPN backbones, and only levels it produces",
        "the FPN to L(dropblock_fpn)(dropblock='${dropblock}', ...), and only levels it produces",
    ),
    "MODEL.DROPBLOCK.HEAD": (
        "MODEL.META_ARCHITECTURE to 'DropBlockRetinaNet'",
        "the head to L(retinanet_head)(dropblock='${dropblock}', ...)",
    ),
    "MODEL.DROPBLOCK.ROI_HEADS": (
        "MODEL.ROI_BOX_HEAD.NAME to 'DropBlockFastRCNNConvFCHead' (and for masks "
        "MODEL.ROI_MASK_HEAD.NAME to 'DropBlockMaskRCNNConvUpsampleHead') with StandardROIHeads",
        "the box and mask heads' make_dropblock to L(roi_dropblock_factory)(...)",
    ),
}


def check_placements(model: nn.Module, cfg):
    """Refuse settings or a built model that lacks a DropBlock group the config asks for.

    Called once, where the model is built (the trainer's ``build_model``, the LazyConfig tool
    after ``instantiate(cfg.model)``): checks the ``MODEL.DROPBLOCK`` values, then that every
    group of :func:`~dropblock_det.config.requested_groups` has DropBlocks in ``model`` (a stage
    the ResNet does not build, an FPN level it lacks, a stock backbone or head leave it empty).

    Args:
        model (nn.Module): the built model (DDP-wrapped or not).
        cfg (CfgNode or DictConfig): the yaml config it was built from, or the LazyConfig root
            (with a ``dropblock`` node made by :func:`~dropblock_det.config.dropblock_settings`,
            or none: a baseline).

    Raises:
        ValueError: naming the config key, the missing groups and what builds them.
    """
    settings = dropblock_settings_of(cfg)
    if settings is None:
        return
    validate_dropblock_settings(settings)
    found = {group for _, _, group in dropblock_modules(model)}
    missing = {}
    for group, key in requested_groups(cfg).items():
        if group not in found:
            missing.setdefault(key, []).append(group)
    if not missing:
        return
    key, groups = next(iter(missing.items()))
    yaml_hint, lazy_hint = _BUILDER_HINTS[key]
    if "MODEL" in cfg:
        built_from = (
            f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r} and MODEL.BACKBONE.NAME = "
            f"{cfg.MODEL.BACKBONE.NAME!r}"
        )
        hint = yaml_hint
        twin = DROPBLOCK_BACKBONES.get(cfg.MODEL.BACKBONE.NAME)
        if twin is not None and key in ("MODEL.DROPBLOCK.STAGES", "MODEL.DROPBLOCK.FPN"):
            hint = (
                f"MODEL.BACKBONE.NAME to {twin!r}: {cfg.MODEL.BACKBONE.NAME!r} is a stock "
                "Detectron2 backbone that ignores MODEL.DROPBLOCK"
            )
    else:
        built_from, hint = "the LazyConfig's model node", lazy_hint
    raise ValueError(
        f"cfg.{key} asks for DropBlock in {groups}, but the model built from {built_from} has none "
        f"there{_what_it_has(model, key)}: set {hint}."
    )


def _what_it_has(model: nn.Module, key: str) -> str:
    """What the model offers for ``key`` (its FPN levels, its ResNet stages), for the message."""
    backbone = getattr(getattr(model, "module", model), "backbone", None)
    if backbone is None:
        return ""
    if key == "MODEL.DROPBLOCK.FPN":
        return f" (its backbone produces {list(backbone.output_shape())})"
    bottom_up = getattr(backbone, "bottom_up", backbone)
    if key == "MODEL.DROPBLOCK.STAGES" and hasattr(bottom_up, "stage_names"):
        return f" (its ResNet builds {list(bottom_up.stage_names)})"
    return ""
