"""DropBlock in a LazyConfig: :func:`add_dropblock` turns a model-zoo config into its DropBlock twin.

LazyConfigs build models from ``_target_`` nodes, not registry names: :func:`add_dropblock` swaps
the targets of a ResNet detector for the DropBlock builders of :mod:`dropblock_det.modeling`
(same arguments) and adds the ``dropblock`` node (the ``MODEL.DROPBLOCK`` keys) they read::

    from detectron2 import model_zoo
    from dropblock_det.lazyconfig import add_dropblock

    cfg = model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.py")
    add_dropblock(cfg, KEEP_PROB=0.9, BLOCK_SIZE=7, STAGES=["res4", "res5"])

With ``ENABLED=False`` the twin builds exactly the stock model.
"""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead
from detectron2.utils.registry import locate

from .config import ROI_BOX_GROUP, ROI_MASK_GROUP, dropblock_settings
from .modeling import (
    DropBlockFastRCNNConvFCHead,
    DropBlockMaskRCNNConvUpsampleHead,
    DropBlockRetinaNet,
    dropblock_fpn,
    make_dropblock_stages,
    retinanet_head,
    roi_dropblock_factory,
)

__all__ = ["DROPBLOCK_KEY", "add_dropblock", "lazy_target"]

# The root key of the DropBlock settings in a LazyConfig (``cfg.dropblock``).
DROPBLOCK_KEY = "dropblock"
# What every DropBlock builder receives: the root node, by interpolation.
_SETTINGS = "${" + DROPBLOCK_KEY + "}"
# ``ResNet.make_default_stages`` arguments that ``make_dropblock_stages`` takes by the same name.
_STAGE_ARGS = ("norm", "stride_in_1x1")


def add_dropblock(cfg, **settings):
    """Turn a LazyConfig of a ResNet detector into its DropBlock twin, in place.

    Swaps each stock node it finds: ``ResNet.make_default_stages`` → ``make_dropblock_stages``,
    ``FPN`` → ``dropblock_fpn``, ``RetinaNet`` and its head → ``DropBlockRetinaNet`` and
    ``retinanet_head``, the R-CNN box and mask heads → their DropBlock subclasses. Every other
    value stays (norms, freeze_at, the dataloader, the schedule). Then sets ``cfg.dropblock`` to
    the settings; calling it again only replaces them.

    Args:
        cfg (DictConfig): a LazyConfig root with ``model``, e.g. from
            ``detectron2.model_zoo.get_config`` or ``LazyConfig.load``; RetinaNet, Faster/Mask
            R-CNN (FPN or C4), Cascade R-CNN and the ``new_baselines`` LSJ recipes on ResNet.
        **settings: ``MODEL.DROPBLOCK`` keys (``SCHEDULE`` as a dict); ENABLED defaults to True.

    Returns:
        DictConfig: ``cfg``.

    Raises:
        KeyError: for a key ``MODEL.DROPBLOCK`` does not have.
        ValueError: for an invalid value (naming the key), or a backbone that is not
            Detectron2's ResNet (or an FPN on it), e.g. the RegNet and ViT recipes.
    """
    settings = {"ENABLED": True, **settings}
    dropblock_settings(**settings)  # refuse a bad key or value now, not when training starts
    model = cfg.model
    _swap_backbone(model.backbone)
    if lazy_target(model) is RetinaNet:
        model._target_ = DropBlockRetinaNet
    head = model.get("head")
    if head is not None and lazy_target(head) in (RetinaNetHead, retinanet_head):
        head._target_ = retinanet_head
        head.dropblock = _SETTINGS
    roi_heads = model.get("roi_heads")
    if roi_heads is not None:
        box_heads = roi_heads.get("box_heads") or [roi_heads.get("box_head")]  # Cascade: a list
        for box_head in box_heads:
            _swap_roi_head(box_head, FastRCNNConvFCHead, DropBlockFastRCNNConvFCHead, ROI_BOX_GROUP)
        _swap_roi_head(
            roi_heads.get("mask_head"),
            MaskRCNNConvUpsampleHead,
            DropBlockMaskRCNNConvUpsampleHead,
            ROI_MASK_GROUP,
        )
    cfg[DROPBLOCK_KEY] = L(dropblock_settings)(**settings)
    return cfg


def lazy_target(node):
    """The callable a LazyCall node builds (a saved config holds its import path), or None."""
    target = node.get("_target_") if hasattr(node, "get") else None
    return locate(target) if isinstance(target, str) else target


def _swap_backbone(backbone):
    resnet = backbone.bottom_up if lazy_target(backbone) in (FPN, dropblock_fpn) else backbone
    if lazy_target(resnet) is not ResNet:
        found = lazy_target(resnet)
        raise ValueError(
            f"add_dropblock: model.backbone builds {getattr(found, '__name__', found)!r}; "
            "DropBlock's placements need Detectron2's ResNet, or an FPN on it "
            "(model.backbone.bottom_up)."
        )
    if lazy_target(backbone) is FPN:
        backbone._target_ = dropblock_fpn
        backbone.dropblock = _SETTINGS
    stages = resnet.stages
    if lazy_target(stages) is make_dropblock_stages:
        return
    if lazy_target(stages) is not ResNet.make_default_stages:
        raise ValueError(
            "add_dropblock: model.backbone's ResNet stages are built by "
            f"{lazy_target(stages)!r}; only ResNet.make_default_stages can be swapped for "
            "dropblock_det.modeling.make_dropblock_stages."
        )
    depth = stages.depth
    block_class = stages.get("block_class")
    block_class = locate(block_class) if isinstance(block_class, str) else block_class
    if block_class not in (None, BasicBlock, BottleneckBlock):
        raise ValueError(
            f"add_dropblock: model.backbone's ResNet stages use block_class {block_class!r}; "
            "DropBlock's blocks extend BasicBlock and BottleneckBlock only."
        )
    unknown = sorted(set(stages) - {"_target_", "depth", "block_class", *_STAGE_ARGS})
    if unknown:
        raise ValueError(
            f"add_dropblock: ResNet.make_default_stages arguments {unknown} have no counterpart "
            "in dropblock_det.modeling.make_dropblock_stages."
        )
    resnet.stages = L(make_dropblock_stages)(
        depth=depth,
        dropblock=_SETTINGS,
        # make_default_stages' widths: R18/R34 start at 64 channels, deeper ResNets at 256.
        res2_out_channels=64 if depth < 50 else 256,
        # The defaults of Detectron2's blocks, which make_default_stages leaves in place.
        norm=stages.get("norm", "BN"),
        stride_in_1x1=stages.get("stride_in_1x1", False),
    )


def _swap_roi_head(head, stock, dropblock_head, group):
    if head is None or lazy_target(head) not in (stock, dropblock_head):
        return
    head._target_ = dropblock_head
    head.make_dropblock = L(roi_dropblock_factory)(dropblock=_SETTINGS, group=group)
