"""Where DropBlock goes in a Detectron2 detector: every placement, one mechanism.

Each placement is a subclass of the Detectron2 module it extends, built by Detectron2's own
construction path, that adds parameter-free DropBlock children at named points:

- ResNet blocks (MODEL.DROPBLOCK.STAGES): :class:`DropBlockBottleneckBlock` and
  :class:`DropBlockBasicBlock`, built by ``ResNet.make_stage``. PLACEMENT "block" drops at the TF
  reference's points inside every block; "stage" drops once, at the output of the stage's last
  block (what feeds the next stage and the FPN lateral).
- FPN outputs (MODEL.DROPBLOCK.FPN): :class:`DropBlockFPN`.
- RetinaNet head (MODEL.DROPBLOCK.HEAD): :class:`DropBlockRetinaNetHead`, after every activation
  of the class and box subnets.
- R-CNN RoI heads (MODEL.DROPBLOCK.ROI_HEADS): :class:`DropBlockFastRCNNConvFCHead` drops the
  pooled RoI features its box head receives, :class:`DropBlockMaskRCNNConvUpsampleHead` the output
  of each mask-head conv; both registered in Detectron2's head registries.

Every DropBlock comes from :func:`build_dropblock` with its group passed explicitly: the ResNet
stage it sits in ("res2" … "res5"), the FPN level it drops ("p2" … "p7"), "head", "roi_box" or
"roi_mask". The group
decides the keep_prob (:func:`group_keep_prob`) and is what the schedule hook sets. Parameter-free
children add no state_dict key, so every placement keeps the stock model's checkpoints.
"""

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead
from torch import nn

from ..config import HEAD_GROUP, ROI_BOX_GROUP, ROI_MASK_GROUP, requested_groups
from ..layers import DropBlock2d

__all__ = [
    "DROPBLOCK_GROUP_ATTR",
    "HEAD_GROUP",
    "ROI_BOX_GROUP",
    "ROI_MASK_GROUP",
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "DropBlockFPN",
    "DropBlockFastRCNNConvFCHead",
    "DropBlockMaskRCNNConvUpsampleHead",
    "DropBlockRetinaNetHead",
    "build_dropblock",
    "check_placements",
    "dropblock_block_class",
    "dropblock_modules",
    "group_keep_prob",
    "make_dropblock_factory",
    "requested_groups",
    "retinanet_head",
    "roi_dropblock_factory",
    "stage_points_per_block",
]

# Attribute naming the group of each DropBlock2d the placements build.
DROPBLOCK_GROUP_ATTR = "dropblock_group"


def _stage_index(stage: str) -> int:
    return int(stage[len("res") :])


def group_keep_prob(keep_prob: float, group: str, stages: Iterable[str], group_scaling: bool):
    """Keep probability of one DropBlock group, with the TF reference's per-stage scaling.

    With ``group_scaling`` a ResNet stage ``d`` stages below the deepest stage of ``stages``
    keeps ``1 - (1 - keep_prob) / 4**d`` (tensorflow/tpu ``resnet_main.py``: res4 gets a quarter
    of res5's drop rate when both are chosen). The distance counts stage numbers, not positions in
    ``stages``, so STAGES [res3, res5] gives res3 a sixteenth of res5's drop rate. Every other
    group (FPN levels, heads) gets the unscaled ``keep_prob``.

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
    distance = max(_stage_index(s) for s in stages) - _stage_index(group)
    return 1.0 - (1.0 - float(keep_prob)) / 4**distance


def build_dropblock(settings, group: str) -> DropBlock2d:
    """Build one parameter-free DropBlock2d for ``group`` from the DropBlock settings.

    The module starts at the group's target keep_prob (the end of the schedule), so a model used
    outside :class:`~dropblock_det.DropBlockSchedule` trains with a constant keep_prob, as the TF
    detection code does; the hook overwrites it before every training step.

    Args:
        settings (CfgNode): ``cfg.MODEL.DROPBLOCK``, or :func:`dropblock_det.config.dropblock_settings`
            in a LazyConfig.
        group (str): the group this module belongs to (see :func:`group_keep_prob`).

    Returns:
        DropBlock2d: the module, tagged with ``dropblock_group = group``.
    """
    d = settings
    module = DropBlock2d(
        keep_prob=group_keep_prob(d.KEEP_PROB, group, d.STAGES, d.GROUP_SCALING),
        block_size=d.BLOCK_SIZE,
        share_channels=d.SHARE_CHANNELS,
        gamma=d.GAMMA,
        normalize=d.NORMALIZE,
        backend=d.BACKEND,
    )
    setattr(module, DROPBLOCK_GROUP_ATTR, group)
    return module


def dropblock_modules(model: nn.Module) -> list[tuple[str, DropBlock2d, str | None]]:
    """Every DropBlock2d in ``model``, with its name and group; the one answer to "where is it".

    ``named_modules`` reaches through a DistributedDataParallel wrapper to the inner model.

    Args:
        model (nn.Module): a model, wrapped or not.

    Returns:
        list[tuple[str, DropBlock2d, str or None]]: (module name, module, group) in model order;
        the group is None for a DropBlock2d that no placement built.
    """
    return [
        (name, m, getattr(m, DROPBLOCK_GROUP_ATTR, None))
        for name, m in model.named_modules()
        if isinstance(m, DropBlock2d)
    ]


# The builders that take each group, for the message when a model lacks it.
_BUILDER_HINTS = {
    "MODEL.DROPBLOCK.STAGES": "MODEL.BACKBONE.NAME: one of our DropBlock backbones",
    "MODEL.DROPBLOCK.FPN": "MODEL.BACKBONE.NAME: one of our DropBlock FPN backbones",
    "MODEL.DROPBLOCK.HEAD": "MODEL.META_ARCHITECTURE 'DropBlockRetinaNet'",
    "MODEL.DROPBLOCK.ROI_HEADS": (
        "MODEL.ROI_BOX_HEAD.NAME 'DropBlockFastRCNNConvFCHead' (and for masks "
        "MODEL.ROI_MASK_HEAD.NAME 'DropBlockMaskRCNNConvUpsampleHead') with StandardROIHeads"
    ),
}


def check_placements(cfg, model: nn.Module, *, backbone_only: bool = False):
    """Refuse a model that lacks a DropBlock group the config asks for.

    Args:
        cfg (CfgNode): the config the model was built from.
        model (nn.Module): the model (or its backbone, with ``backbone_only``).
        backbone_only (bool): check only STAGES and FPN.

    Raises:
        ValueError: naming the config key, the missing groups and the builder that takes them.
    """
    requested = requested_groups(cfg, backbone_only=backbone_only)
    d = cfg.MODEL.DROPBLOCK
    if d.ENABLED and not backbone_only and not requested:
        raise ValueError(
            "cfg.MODEL.DROPBLOCK.ENABLED is True but the config asks for DropBlock nowhere: choose "
            f"some of MODEL.DROPBLOCK.STAGES (now {list(d.STAGES)}), FPN (now {list(d.FPN)}), "
            f"HEAD (now {d.HEAD}) or ROI_HEADS (now {d.ROI_HEADS})."
        )
    found = {group for _, _, group in dropblock_modules(model)}
    missing = {}
    for group, key in requested.items():
        if group not in found:
            missing.setdefault(key, []).append(group)
    if missing:
        key, groups = next(iter(missing.items()))
        raise ValueError(
            f"cfg.{key} asks for DropBlock in {groups}, but the model built from "
            f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r} and MODEL.BACKBONE.NAME = "
            f"{cfg.MODEL.BACKBONE.NAME!r} has none there: set {_BUILDER_HINTS[key]}."
        )


# ---------------------------------------------------------------------------------------------
# ResNet blocks


class _DropBlockPoints:
    """Mixin: one child ``dropblock_<point>`` per insertion point, a DropBlock or an Identity."""

    # Names of the block's insertion points, in forward order.
    points: tuple[str, ...] = ()

    def __init__(
        self,
        *args,
        make_dropblock: Callable[[], nn.Module],
        dropblock_points: Sequence[str] | None = None,
        **kwargs,
    ):
        """
        Args:
            args, kwargs: arguments of the Detectron2 block.
            make_dropblock (callable): returns a new parameter-free DropBlock module.
            dropblock_points (Sequence[str] or None): the points that drop; None for every point
                but "output" (PLACEMENT "block"). The others hold an ``nn.Identity``.
        """
        super().__init__(*args, **kwargs)
        chosen = self.points[:-1] if dropblock_points is None else tuple(dropblock_points)
        unknown = sorted(set(chosen) - set(self.points))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no DropBlock point {unknown}; it has {self.points}."
            )
        # Built after the block's own layers, so the stock random initialisation is unchanged.
        for point in self.points:
            self.add_module(
                f"dropblock_{point}", make_dropblock() if point in chosen else nn.Identity()
            )


class DropBlockBottleneckBlock(_DropBlockPoints, BottleneckBlock):
    """Detectron2's ``BottleneckBlock`` with DropBlock where the TF reference puts it.

    tensorflow/tpu ``resnet_model.py`` ``bottleneck_block`` drops after conv1's and conv2's
    BN+ReLU, after conv3's BN and on the shortcut branch (projection or identity) before the
    addition; "output" drops the block's output (PLACEMENT "stage", last block only).
    """

    points = ("conv1", "conv2", "conv3", "shortcut", "output")

    def forward(self, x):
        out = self.dropblock_conv1(F.relu_(self.conv1(x)))
        out = self.dropblock_conv2(F.relu_(self.conv2(out)))
        # Detectron2's Conv2d applies its norm inside, so this is conv3's BN output.
        out = self.dropblock_conv3(self.conv3(out))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += self.dropblock_shortcut(shortcut)
        return self.dropblock_output(F.relu_(out))


class DropBlockBasicBlock(_DropBlockPoints, BasicBlock):
    """Detectron2's ``BasicBlock`` (R-18/34) with DropBlock at the TF reference's points.

    The bottleneck pattern mapped onto two convolutions: after conv1's norm+ReLU, after conv2's
    norm (the last one before the addition) and on the shortcut branch before the addition;
    "output" as for :class:`DropBlockBottleneckBlock`.
    """

    points = ("conv1", "conv2", "shortcut", "output")

    def forward(self, x):
        out = self.dropblock_conv1(F.relu_(self.conv1(x)))
        out = self.dropblock_conv2(self.conv2(out))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += self.dropblock_shortcut(shortcut)
        return self.dropblock_output(F.relu_(out))


_DROPBLOCK_BLOCK_CLASSES = {
    BottleneckBlock: DropBlockBottleneckBlock,
    BasicBlock: DropBlockBasicBlock,
}


def dropblock_block_class(block_class: type, stage: str) -> type:
    """The DropBlock subclass of a stock Detectron2 block class.

    Args:
        block_class (type): the class Detectron2's ResNet would build the stage with.
        stage (str): the stage name, for the message.

    Returns:
        type: :class:`DropBlockBottleneckBlock` or :class:`DropBlockBasicBlock`.

    Raises:
        ValueError: for any other block (deformable bottlenecks), naming the keys to change.
    """
    if block_class not in _DROPBLOCK_BLOCK_CLASSES:
        raise ValueError(
            f"cfg.MODEL.DROPBLOCK.STAGES names {stage}, whose {block_class.__name__} blocks take "
            f"no DropBlock (only BottleneckBlock and BasicBlock; see "
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE). Remove {stage} from MODEL.DROPBLOCK.STAGES."
        )
    return _DROPBLOCK_BLOCK_CLASSES[block_class]


def stage_points_per_block(placement: str, num_blocks: int) -> list[tuple[str, ...] | None]:
    """The ``dropblock_points`` of each block of a stage, for ``ResNet.make_stage``.

    Args:
        placement (str): MODEL.DROPBLOCK.PLACEMENT, "block" or "stage".
        num_blocks (int): blocks in the stage.

    Returns:
        list: None (the in-block points) for every block with "block"; with "stage", no point
        but for ("output",) on the last block.
    """
    if placement == "block":
        return [None] * num_blocks
    return [()] * (num_blocks - 1) + [("output",)]


def make_dropblock_factory(settings, group: str) -> Callable[[], DropBlock2d]:
    """A no-argument callable building the DropBlocks of ``group`` (``make_dropblock``).

    Args:
        settings (CfgNode): the DropBlock settings (see :func:`build_dropblock`).
        group (str): the group.

    Returns:
        callable: ``() -> DropBlock2d``.
    """
    return functools.partial(build_dropblock, settings, group)


# ---------------------------------------------------------------------------------------------
# FPN outputs


class DropBlockFPN(FPN):
    """An :class:`FPN` whose outputs at some levels go through DropBlock.

    The drop applies to each level's output as the detection head receives it. Maps computed from
    that level inside the FPN (the top-down sum, and P7, which LastLevelP6P7 computes from P6) see
    the undropped map, so each chosen level is dropped exactly once.
    """

    def __init__(self, *args, dropblocks: dict[str, nn.Module], **kwargs):
        """
        Args:
            args, kwargs: arguments of :class:`FPN`.
            dropblocks (dict[str, nn.Module]): output level name ("p3" …) to the parameter-free
                DropBlock module applied to it.

        Raises:
            ValueError: if ``dropblocks`` names a level this FPN does not produce.
        """
        super().__init__(*args, **kwargs)
        check_fpn_levels(dropblocks, self.output_shape())
        self.dropblock = nn.ModuleDict(dropblocks)

    def forward(self, x):
        """
        Args:
            x (Tensor): the image batch, as for :meth:`FPN.forward`.

        Returns:
            dict[str, Tensor]: the FPN levels, the chosen ones after DropBlock.
        """
        features = super().forward(x)
        return {
            level: self.dropblock[level](feature) if level in self.dropblock else feature
            for level, feature in features.items()
        }


def check_fpn_levels(levels: Iterable[str], output_shape: dict):
    """Refuse MODEL.DROPBLOCK.FPN levels that the built FPN does not produce.

    Args:
        levels (Iterable[str]): the chosen levels.
        output_shape (dict): the FPN's ``output_shape()``.

    Raises:
        ValueError: naming MODEL.DROPBLOCK.FPN and the levels the FPN has.
    """
    unknown = sorted(set(levels) - set(output_shape))
    if unknown:
        raise ValueError(
            f"cfg.MODEL.DROPBLOCK.FPN names {unknown}, which this FPN does not produce (it "
            f"produces {list(output_shape)}; see MODEL.FPN.IN_FEATURES)."
        )


# ---------------------------------------------------------------------------------------------
# RetinaNet head


class DropBlockRetinaNetHead(RetinaNetHead):
    """Detectron2's ``RetinaNetHead`` with a DropBlock after every subnet activation.

    Each ``nn.ReLU`` of ``cls_subnet`` / ``bbox_subnet`` becomes, at the same index,
    ``Sequential(relu=ReLU, dropblock=DropBlock2d)``: neither holds parameters or persistent
    buffers, so every state_dict key stays as in the stock head (new Sequential entries would
    renumber them). The head's BN (a per-level ``CycleBatchNormList``) is untouched.
    """

    def __init__(self, *args, make_dropblock: Callable[[], nn.Module], **kwargs):
        """
        Args:
            args, kwargs: arguments of :class:`RetinaNetHead` (or ``cfg, input_shape``).
            make_dropblock (callable): returns a new parameter-free DropBlock module.
        """
        super().__init__(*args, **kwargs)
        for subnet in (self.cls_subnet, self.bbox_subnet):
            for index, layer in enumerate(subnet):
                if isinstance(layer, nn.ReLU):
                    subnet[index] = nn.Sequential(
                        OrderedDict(relu=layer, dropblock=make_dropblock())
                    )


def retinanet_head(dropblock, **head_kwargs) -> RetinaNetHead:
    """Detectron2's RetinaNetHead, or a :class:`DropBlockRetinaNetHead` when ``dropblock`` asks.

    The LazyConfig form of the head placement: ``head=L(retinanet_head)(dropblock=..., ...)``.

    Args:
        dropblock (CfgNode): the DropBlock settings; ENABLED and HEAD on give the DropBlock head.
        **head_kwargs: the arguments of :class:`RetinaNetHead`.

    Returns:
        RetinaNetHead: the head.
    """
    if not (dropblock.ENABLED and dropblock.HEAD):
        return RetinaNetHead(**head_kwargs)
    factory = make_dropblock_factory(dropblock, HEAD_GROUP)
    return DropBlockRetinaNetHead(make_dropblock=factory, **head_kwargs)


# ---------------------------------------------------------------------------------------------
# R-CNN RoI heads


def roi_dropblock_factory(dropblock, group: str) -> Callable[[], DropBlock2d] | None:
    """The ``make_dropblock`` argument of the DropBlock RoI heads, or None for no DropBlock.

    The one rule for both construction paths: the yaml heads' ``from_config`` calls it, and a
    LazyConfig passes ``make_dropblock=L(roi_dropblock_factory)(dropblock=..., group=...)``.

    Args:
        dropblock (CfgNode): the DropBlock settings; ENABLED and ROI_HEADS on give a factory.
        group (str): ROI_BOX_GROUP or ROI_MASK_GROUP.

    Returns:
        callable or None: ``() -> DropBlock2d`` (see :func:`make_dropblock_factory`), or None.
    """
    if dropblock.ENABLED and dropblock.ROI_HEADS:
        return make_dropblock_factory(dropblock, group)
    return None


def _roi_dropblock_from_config(cfg, group):
    return roi_dropblock_factory(cfg.MODEL.DROPBLOCK, group)


def _children_but_dropblock(module: nn.Module):
    return (layer for name, layer in module.named_children() if name != "dropblock")


@ROI_BOX_HEAD_REGISTRY.register()
class DropBlockFastRCNNConvFCHead(FastRCNNConvFCHead):
    """Detectron2's ``FastRCNNConvFCHead`` that drops blocks of the pooled RoI features it receives.

    MODEL.ROI_BOX_HEAD.NAME "DropBlockFastRCNNConvFCHead" selects it. With MODEL.DROPBLOCK.ENABLED
    or ROI_HEADS off it holds no DropBlock and computes exactly the stock head.
    """

    @configurable
    def __init__(self, *args, make_dropblock: Callable[[], nn.Module] | None = None, **kwargs):
        """
        Args:
            args, kwargs: arguments of :class:`FastRCNNConvFCHead` (or ``cfg, input_shape``).
            make_dropblock (callable or None): returns a new parameter-free DropBlock module;
                None for no DropBlock.
        """
        super().__init__(*args, **kwargs)
        if make_dropblock is not None:
            self.dropblock = make_dropblock()

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["make_dropblock"] = _roi_dropblock_from_config(cfg, ROI_BOX_GROUP)
        return ret

    def forward(self, x):
        if hasattr(self, "dropblock"):
            x = self.dropblock(x)
        # The stock forward, over every layer but the DropBlock (a child of this Sequential).
        for layer in _children_but_dropblock(self):
            x = layer(x)
        return x


@ROI_MASK_HEAD_REGISTRY.register()
class DropBlockMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """Detectron2's ``MaskRCNNConvUpsampleHead`` with a DropBlock after each of its convs.

    MODEL.ROI_MASK_HEAD.NAME "DropBlockMaskRCNNConvUpsampleHead" selects it. Each ``mask_fcn<k>``
    (conv, norm, ReLU) is followed by a DropBlock; the deconvolution and the predictor are not.
    With MODEL.DROPBLOCK.ENABLED or ROI_HEADS off it computes exactly the stock head.
    """

    @configurable
    def __init__(self, *args, make_dropblock: Callable[[], nn.Module] | None = None, **kwargs):
        """
        Args:
            args, kwargs: arguments of :class:`MaskRCNNConvUpsampleHead` (or ``cfg, input_shape``).
            make_dropblock (callable or None): returns a new parameter-free DropBlock module;
                None for no DropBlock.
        """
        super().__init__(*args, **kwargs)
        if make_dropblock is not None:
            self.dropblock = nn.ModuleDict(
                {name: make_dropblock() for name, _ in self.named_children() if "mask_fcn" in name}
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["make_dropblock"] = _roi_dropblock_from_config(cfg, ROI_MASK_GROUP)
        return ret

    def layers(self, x):
        dropblocks = getattr(self, "dropblock", {})
        for name, layer in self.named_children():
            if name == "dropblock":
                continue
            x = layer(x)
            if name in dropblocks:
                x = dropblocks[name](x)
        return x
