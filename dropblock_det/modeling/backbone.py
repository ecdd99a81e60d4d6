"""The registered RetinaNet ResNet-FPN backbone with DropBlock."""

import math

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7, build_retinanet_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..config import validate_dropblock_config
from .fpn import DropBlockFPN
from .groups import build_dropblock
from .meta_arch import DropBlockRetinaNet
from .resnet import insert_dropblock_into_resnet

__all__ = ["build_retinanet_resnet_fpn_dropblock_backbone", "retinanet_fpn_levels"]

# LastLevelP6P7 adds two levels above the last FPN input (P6 and P7 on top of P5).
_RETINANET_TOP_LEVELS = 2


def retinanet_fpn_levels(bottom_up, in_features):
    """Names of the levels a RetinaNet FPN over ``bottom_up`` produces, as FPN names them.

    Args:
        bottom_up (Backbone): the ResNet.
        in_features (list[str]): MODEL.FPN.IN_FEATURES.

    Returns:
        list[str]: e.g. ["p3", "p4", "p5", "p6", "p7"] for res3-res5.
    """
    shapes = bottom_up.output_shape()
    levels = [int(math.log2(shapes[f].stride)) for f in in_features]
    levels += [levels[-1] + k for k in range(1, _RETINANET_TOP_LEVELS + 1)]
    return [f"p{level}" for level in levels]


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_dropblock_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's RetinaNet ResNet-FPN backbone with DropBlock from ``cfg.MODEL.DROPBLOCK``.

    With ENABLED off this returns exactly ``build_retinanet_resnet_fpn_backbone(cfg,
    input_shape)``. With it on, the same ResNet and FPN are built in the same order (so the same
    random initialisation under the same seed), then DropBlock is inserted into the STAGES of the
    ResNet (PLACEMENT "block" or "stage") and on the FPN outputs in FPN. The state_dict keys are
    those of the stock backbone.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        FPN: the backbone (a :class:`DropBlockFPN` when MODEL.DROPBLOCK.FPN is not empty).

    Raises:
        ValueError: naming the key, for invalid MODEL.DROPBLOCK values, a stage or level this
            backbone does not build, a placement its blocks cannot take, or HEAD without a
            DropBlock meta-architecture.
    """
    d = cfg.MODEL.DROPBLOCK
    # Checked before anything is built, then again below once the FPN levels are known.
    validate_dropblock_config(cfg)
    if not d.ENABLED:
        backbone = build_retinanet_resnet_fpn_backbone(cfg, input_shape)
        validate_dropblock_config(cfg, fpn_levels=backbone.output_shape().keys())
        return backbone

    meta_arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if d.HEAD and not (isinstance(meta_arch, type) and issubclass(meta_arch, DropBlockRetinaNet)):
        raise ValueError(
            f"cfg.MODEL.DROPBLOCK.HEAD = True needs cfg.MODEL.META_ARCHITECTURE = "
            f"'DropBlockRetinaNet' (or a subclass), got {cfg.MODEL.META_ARCHITECTURE!r}."
        )

    # The body of Detectron2's build_retinanet_resnet_fpn_backbone, with the FPN class chosen.
    bottom_up = build_resnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    validate_dropblock_config(cfg, fpn_levels=retinanet_fpn_levels(bottom_up, in_features))
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    fpn_kwargs = dict(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    if d.FPN:
        dropblocks = {level: build_dropblock(cfg, level) for level in d.FPN}
        backbone = DropBlockFPN(dropblocks=dropblocks, **fpn_kwargs)
    else:
        backbone = FPN(**fpn_kwargs)
    insert_dropblock_into_resnet(bottom_up, cfg)
    return backbone
