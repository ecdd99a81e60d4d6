"""The registered ResNet backbones with DropBlock.

With MODEL.DROPBLOCK.ENABLED off each builder returns exactly its stock Detectron2 twin. With it
on, the same modules are built in the same order (so the same random initialisation under the
same seed), with the DropBlock block classes of :mod:`.placements` in MODEL.DROPBLOCK.STAGES and a
:class:`~.placements.DropBlockFPN` when MODEL.DROPBLOCK.FPN is set. The state_dict keys are those
of the stock backbone.
"""

from collections.abc import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
)
from detectron2.modeling.meta_arch import GeneralizedRCNN, ProposalNetwork, RetinaNet
from torch import nn

from ..config import validate_dropblock_config, validate_dropblock_settings
from .meta_arch import DropBlockRetinaNet
from .placements import (
    DropBlockFPN,
    build_dropblock,
    check_fpn_levels,
    dropblock_block_class,
    make_dropblock_factory,
    stage_points_per_block,
)

__all__ = [
    "DROPBLOCK_BACKBONES",
    "build_dropblock_resnet",
    "build_dropblock_resnet_fpn",
    "build_resnet_dropblock_backbone",
    "build_resnet_fpn_dropblock_backbone",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "check_backbone_matches_meta_arch",
    "dropblock_fpn",
    "make_dropblock_stages",
]

# Each stock Detectron2 ResNet backbone builder and its DropBlock twin (same modules when off).
DROPBLOCK_BACKBONES = {
    "build_retinanet_resnet_fpn_backbone": "build_retinanet_resnet_fpn_dropblock_backbone",
    "build_resnet_fpn_backbone": "build_resnet_fpn_dropblock_backbone",
    "build_resnet_backbone": "build_resnet_dropblock_backbone",
}
# The FPN backbone each meta-architecture family is built with in Detectron2's configs:
# RetinaNet's heads read p3-p7 (LastLevelP6P7), R-CNN's RPN p2-p6 (LastLevelMaxPool).
_FPN_BACKBONE_OF = (
    (RetinaNet, "build_retinanet_resnet_fpn_backbone"),
    ((GeneralizedRCNN, ProposalNetwork), "build_resnet_fpn_backbone"),
)
# Stages a ResNet builds for each of its OUT_FEATURES (Detectron2 drops the stages above).
_STAGE_COUNT = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}
_NUM_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def make_dropblock_stages(
    depth: int,
    dropblock,
    *,
    norm: str = "BN",
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = True,
    res5_dilation: int = 1,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
) -> list[list[nn.Module]]:
    """The four stages of Detectron2's ResNet, with DropBlock blocks in ``dropblock.STAGES``.

    The stage loop of Detectron2's ``build_resnet_backbone`` (as TridentNet's
    ``build_trident_resnet_backbone`` does), with each chosen stage built by ``ResNet.make_stage``
    from the DropBlock subclass of its block class. The arguments are the ``MODEL.RESNETS`` keys
    in lower case; pass the result to ``ResNet(stem, stages, ...)``, in Python or as a LazyConfig
    ``L(make_dropblock_stages)(...)``.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        dropblock (CfgNode): the DropBlock settings (``cfg.MODEL.DROPBLOCK``); ENABLED off builds
            stock stages.
        norm, stem_out_channels, res2_out_channels, num_groups, width_per_group, stride_in_1x1,
        res5_dilation, deform_on_per_stage, deform_modulated, deform_num_groups: as the
            ``MODEL.RESNETS`` keys of the same names.

    Returns:
        list[list[CNNBlockBase]]: the blocks of res2..res5.

    Raises:
        ValueError: naming the key, for a chosen stage whose blocks take no DropBlock.
    """
    validate_dropblock_settings(dropblock)
    if depth in (18, 34) and (res2_out_channels != 64 or res5_dilation != 1 or num_groups != 1):
        raise ValueError(
            "R18/R34 need MODEL.RESNETS.RES2_OUT_CHANNELS 64, RES5_DILATION 1 and NUM_GROUPS 1."
        )
    chosen = set(dropblock.STAGES) if dropblock.ENABLED else set()
    bottleneck_channels = num_groups * width_per_group
    in_channels, out_channels = stem_out_channels, res2_out_channels
    stages = []
    for idx, num_blocks in enumerate(_NUM_BLOCKS_PER_STAGE[depth]):
        stage = f"res{idx + 2}"
        # RES5_DILATION as in Detectron2: the R-FCN & Deformable Conv convention.
        dilation = res5_dilation if stage == "res5" else 1
        first_stride = 1 if idx == 0 or (stage == "res5" and dilation == 2) else 2
        kwargs = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            kwargs["block_class"] = BasicBlock
        else:
            kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
                num_groups=num_groups,
                block_class=BottleneckBlock,
            )
            if deform_on_per_stage[idx]:
                kwargs.update(
                    block_class=DeformBottleneckBlock,
                    deform_modulated=deform_modulated,
                    deform_num_groups=deform_num_groups,
                )
        if stage in chosen:
            kwargs["block_class"] = dropblock_block_class(kwargs["block_class"], stage)
            kwargs["make_dropblock"] = make_dropblock_factory(dropblock, stage)
            kwargs["dropblock_points_per_block"] = stage_points_per_block(
                dropblock.PLACEMENT, num_blocks
            )
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return stages


def check_stages_built(dropblock, out_features: Sequence[str]):
    """Refuse DropBlock stages that a ResNet with these ``out_features`` does not build.

    Args:
        dropblock (CfgNode): the DropBlock settings.
        out_features (Sequence[str]): MODEL.RESNETS.OUT_FEATURES.

    Raises:
        ValueError: naming MODEL.DROPBLOCK.STAGES and MODEL.RESNETS.OUT_FEATURES.
    """
    num_stages = max(_STAGE_COUNT.get(f, 0) for f in out_features)
    built = [f"res{i + 2}" for i in range(num_stages)]
    missing = [s for s in dropblock.STAGES if s not in built]
    if dropblock.ENABLED and missing:
        raise ValueError(
            f"cfg.MODEL.DROPBLOCK.STAGES = {list(dropblock.STAGES)} names {missing}, which this "
            f"ResNet does not build (it has {built}; see MODEL.RESNETS.OUT_FEATURES = "
            f"{list(out_features)})."
        )


def build_dropblock_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ``build_resnet_backbone``, with DropBlock blocks in MODEL.DROPBLOCK.STAGES.

    Use it as the bottom-up network of one's own backbone builders.

    Args:
        cfg (CfgNode): a config with the ``MODEL.DROPBLOCK`` keys.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        ResNet: the network.

    Raises:
        ValueError: naming the key, for a chosen stage this ResNet does not build or whose blocks
            take no DropBlock.
    """
    r = cfg.MODEL.RESNETS
    check_stages_built(cfg.MODEL.DROPBLOCK, r.OUT_FEATURES)
    stem = BasicStem(
        in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM
    )
    stages = make_dropblock_stages(
        r.DEPTH,
        cfg.MODEL.DROPBLOCK,
        norm=r.NORM,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        deform_on_per_stage=r.DEFORM_ON_PER_STAGE,
        deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
    )
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def dropblock_fpn(dropblock, **fpn_kwargs) -> FPN:
    """Detectron2's FPN, or a :class:`DropBlockFPN` when ``dropblock`` asks for FPN levels.

    Args:
        dropblock (CfgNode): the DropBlock settings.
        **fpn_kwargs: the arguments of :class:`FPN`.

    Returns:
        FPN: the network.
    """
    if not (dropblock.ENABLED and dropblock.FPN):
        fpn = FPN(**fpn_kwargs)
        # Checked with DropBlock off too, so that switching it on later cannot fail.
        check_fpn_levels(dropblock.FPN, fpn.output_shape())
        return fpn
    dropblocks = {level: build_dropblock(dropblock, level) for level in dropblock.FPN}
    return DropBlockFPN(dropblocks=dropblocks, **fpn_kwargs)


def check_head_meta_arch(cfg):
    """Refuse MODEL.DROPBLOCK.HEAD with a meta-architecture that builds no head DropBlock.

    The backbone builders run this: with a stock meta-architecture no other code of ours runs.

    Args:
        cfg (CfgNode): the config.

    Raises:
        ValueError: naming MODEL.META_ARCHITECTURE.
    """
    d = cfg.MODEL.DROPBLOCK
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if (
        d.ENABLED
        and d.HEAD
        and not (isinstance(arch, type) and issubclass(arch, DropBlockRetinaNet))
    ):
        raise ValueError(
            f"cfg.MODEL.DROPBLOCK.HEAD = True needs cfg.MODEL.META_ARCHITECTURE = "
            f"'DropBlockRetinaNet' (or a subclass), got {cfg.MODEL.META_ARCHITECTURE!r}."
        )


def build_dropblock_resnet_fpn(cfg, input_shape: ShapeSpec, make_top_block) -> FPN:
    """A ResNet-FPN with DropBlock from ``cfg.MODEL.DROPBLOCK``, built as Detectron2 builds it.

    Args:
        cfg (CfgNode): the config.
        input_shape (ShapeSpec): the image input shape.
        make_top_block (callable): ``bottom_up -> top block`` (LastLevelP6P7, LastLevelMaxPool),
            called where Detectron2's builder constructs it.

    Returns:
        FPN: see :func:`dropblock_fpn`.
    """
    bottom_up = build_dropblock_resnet(cfg, input_shape)
    return dropblock_fpn(
        cfg.MODEL.DROPBLOCK,
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=make_top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def check_backbone_matches_meta_arch(cfg, stock_twin: str):
    """Refuse a DropBlock FPN backbone whose top block is not the meta-architecture's stock one.

    Args:
        cfg (CfgNode): the config.
        stock_twin (str): the stock builder the DropBlock backbone in use mirrors.

    Raises:
        ValueError: naming MODEL.BACKBONE.NAME and the DropBlock backbone to use instead.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    for family, stock in _FPN_BACKBONE_OF:
        if isinstance(arch, type) and issubclass(arch, family) and stock != stock_twin:
            raise ValueError(
                f"cfg.MODEL.BACKBONE.NAME = {DROPBLOCK_BACKBONES[stock_twin]!r} builds the FPN of "
                f"{stock_twin!r}, but MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r} "
                f"is built with {stock!r} (a different top block and levels). Set "
                f"MODEL.BACKBONE.NAME to {DROPBLOCK_BACKBONES[stock]!r}."
            )


def _retinanet_top_block(cfg):
    def make(bottom_up):
        return LastLevelP6P7(bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS)

    return make


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_dropblock_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's RetinaNet ResNet-FPN backbone (P3–P7) with DropBlock.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        FPN: the backbone; exactly ``build_retinanet_resnet_fpn_backbone`` when DropBlock is off.

    Raises:
        ValueError: naming the key, for invalid MODEL.DROPBLOCK values or a stage or level this
            backbone does not build.
    """
    validate_dropblock_config(cfg)
    check_head_meta_arch(cfg)
    check_backbone_matches_meta_arch(cfg, "build_retinanet_resnet_fpn_backbone")
    return build_dropblock_resnet_fpn(cfg, input_shape, _retinanet_top_block(cfg))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_dropblock_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's R-CNN ResNet-FPN backbone (P2–P6, ``LastLevelMaxPool``) with DropBlock.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        FPN: the backbone; the same modules as ``build_resnet_fpn_backbone`` when DropBlock is off.

    Raises:
        ValueError: naming the key, for invalid MODEL.DROPBLOCK values, a stage or level this
            backbone does not build, or a meta-architecture built with another FPN.
    """
    validate_dropblock_config(cfg)
    check_head_meta_arch(cfg)
    check_backbone_matches_meta_arch(cfg, "build_resnet_fpn_backbone")
    return build_dropblock_resnet_fpn(cfg, input_shape, lambda bottom_up: LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_resnet_dropblock_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's plain ResNet backbone (the C4 R-CNN models') with DropBlock.

    In C4 models res5 belongs to the RoI heads (``Res5ROIHeads``), not to this backbone, so
    MODEL.DROPBLOCK.STAGES can name res2–res4 here.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        ResNet: the backbone; the same modules as ``build_resnet_backbone`` when DropBlock is off.
    """
    validate_dropblock_config(cfg)
    check_head_meta_arch(cfg)
    return build_dropblock_resnet(cfg, input_shape)
