"""Detectron2's ResNet-FPN backbones with DropBlock, and the FPN whose outputs it drops.

The registered builders mirror ``build_retinanet_resnet_fpn_backbone`` (P3–P7) and
``build_resnet_fpn_backbone`` (P2–P6) module for module (so the same initialisation under the same
seed), with the blocks of :mod:`.resnet` and a :class:`DropBlockFPN` where the settings ask.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.meta_arch import GeneralizedRCNN, ProposalNetwork, RetinaNet
from torch import nn

from ..config import requested_groups
from .groups import DROPBLOCK_BACKBONES, build_dropblock
from .resnet import build_resnet_dropblock_backbone

__all__ = [
    "DropBlockFPN",
    "build_resnet_fpn_dropblock_backbone",
    "build_retinanet_resnet_fpn_dropblock_backbone",
    "dropblock_fpn",
]

# The FPN backbone each meta-architecture family is built with in Detectron2's configs:
# RetinaNet's heads read p3-p7 (LastLevelP6P7), R-CNN's RPN p2-p6 (LastLevelMaxPool).
_FPN_BACKBONE_OF = (
    (RetinaNet, "build_retinanet_resnet_fpn_backbone"),
    ((GeneralizedRCNN, ProposalNetwork), "build_resnet_fpn_backbone"),
)


class DropBlockFPN(FPN):
    """An :class:`FPN` whose outputs at some levels go through DropBlock.

    The drop applies to each level's output as the detection head receives it. Maps computed from
    that level inside the FPN (the top-down sum, and P7, which LastLevelP6P7 computes from P6) see
    the undropped map, so each chosen level is dropped exactly once.
    """

    def __init__(self, *args, dropblocks: dict[str, nn.Module], **kwargs):
        """Build the FPN, then keep the DropBlocks of the levels it produces.

        Args:
            *args: positional arguments of :class:`FPN`.
            **kwargs: its keyword arguments.
            dropblocks (dict[str, nn.Module]): output level name ("p3" …) to the parameter-free
                DropBlock module applied to it. A level this FPN does not produce gets none, which
                :func:`~dropblock_det.modeling.check_placements` reports.
        """
        super().__init__(*args, **kwargs)
        levels = self.output_shape()
        self.dropblock = nn.ModuleDict({k: m for k, m in dropblocks.items() if k in levels})

    def forward(self, x):
        """:meth:`FPN.forward`, the chosen levels after their DropBlock."""
        features = super().forward(x)
        return {
            level: self.dropblock[level](feature) if level in self.dropblock else feature
            for level, feature in features.items()
        }


def dropblock_fpn(dropblock, **fpn_kwargs) -> FPN:
    """``FPN(**fpn_kwargs)``, or a :class:`DropBlockFPN` when ``dropblock`` asks for FPN levels."""
    levels = [g for g, key in requested_groups(dropblock).items() if key == "MODEL.DROPBLOCK.FPN"]
    if not levels:
        return FPN(**fpn_kwargs)
    dropblocks = {level: build_dropblock(dropblock, level) for level in levels}
    return DropBlockFPN(dropblocks=dropblocks, **fpn_kwargs)


def _build_resnet_fpn(cfg, input_shape: ShapeSpec, stock_twin: str, make_top_block) -> FPN:
    """The ResNet-FPN of ``stock_twin`` with DropBlock, built as Detectron2's builder builds it.

    Args:
        cfg (CfgNode): the config.
        input_shape (ShapeSpec): the image input shape.
        stock_twin (str): the stock builder mirrored, e.g. "build_resnet_fpn_backbone".
        make_top_block (callable): ``bottom_up -> top block``, called where Detectron2 builds it.

    Returns:
        FPN: see :func:`dropblock_fpn`.

    Raises:
        ValueError: naming MODEL.BACKBONE.NAME, when the meta-architecture is built with the other
            FPN (a different top block and levels).
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
    bottom_up = build_resnet_dropblock_backbone(cfg, input_shape)
    return dropblock_fpn(
        cfg.MODEL.DROPBLOCK,
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=make_top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_dropblock_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's RetinaNet ResNet-FPN backbone (P3–P7, ``LastLevelP6P7``) with DropBlock.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        FPN: the backbone; the same modules as Detectron2's when DropBlock is off.
    """

    def top_block(bottom_up):
        return LastLevelP6P7(bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS)

    return _build_resnet_fpn(cfg, input_shape, "build_retinanet_resnet_fpn_backbone", top_block)


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_dropblock_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's R-CNN ResNet-FPN backbone (P2–P6, ``LastLevelMaxPool``) with DropBlock.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        FPN: the backbone; the same modules as Detectron2's when DropBlock is off.
    """
    return _build_resnet_fpn(
        cfg, input_shape, "build_resnet_fpn_backbone", lambda bottom_up: LastLevelMaxPool()
    )
