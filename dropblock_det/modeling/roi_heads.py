"""Detectron2's R-CNN RoI heads with DropBlock, registered in its head registries.

:class:`DropBlockFastRCNNConvFCHead` drops the pooled RoI features its box head receives,
:class:`DropBlockMaskRCNNConvUpsampleHead` the output of each mask-head conv
(MODEL.DROPBLOCK.ROI_HEADS). Both take their DropBlock through ``from_config`` (yaml) or the
``make_dropblock`` argument (LazyConfig) and keep the stock forward: each DropBlock is a child of
the head's ``nn.Sequential`` at the place it drops. Without it they are the stock heads.
"""

from collections.abc import Callable

from detectron2.config import configurable
from detectron2.modeling import ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead
from torch import nn

from ..config import ROI_BOX_GROUP, ROI_MASK_GROUP, requested_groups
from ..layers import DropBlock2d
from .groups import make_dropblock_factory, set_children

__all__ = [
    "DropBlockFastRCNNConvFCHead",
    "DropBlockMaskRCNNConvUpsampleHead",
    "roi_dropblock_factory",
]


def roi_dropblock_factory(dropblock, group: str) -> Callable[[], DropBlock2d] | None:
    """The ``make_dropblock`` argument of the DropBlock RoI heads, or None for no DropBlock.

    The yaml heads' ``from_config`` calls it; a LazyConfig passes
    ``make_dropblock=L(roi_dropblock_factory)(dropblock=..., group=...)``.

    Args:
        dropblock (CfgNode): the DropBlock settings; ENABLED and ROI_HEADS on give a factory.
        group (str): ROI_BOX_GROUP or ROI_MASK_GROUP.

    Returns:
        callable or None: ``() -> DropBlock2d`` (see :func:`make_dropblock_factory`), or None.
    """
    # The box group stands for MODEL.DROPBLOCK.ROI_HEADS (the mask group also needs MASK_ON).
    if ROI_BOX_GROUP in requested_groups(dropblock):
        return make_dropblock_factory(dropblock, group)
    return None


@ROI_BOX_HEAD_REGISTRY.register()
class DropBlockFastRCNNConvFCHead(FastRCNNConvFCHead):
    """Detectron2's ``FastRCNNConvFCHead`` that drops blocks of the pooled RoI features it receives.

    MODEL.ROI_BOX_HEAD.NAME "DropBlockFastRCNNConvFCHead" selects it. With MODEL.DROPBLOCK.ENABLED
    or ROI_HEADS off it holds no DropBlock and computes exactly the stock head.
    """

    @configurable
    def __init__(self, *args, make_dropblock: Callable[[], nn.Module] | None = None, **kwargs):
        """Build the stock head, then its DropBlock when ``make_dropblock`` is given.

        Args:
            *args: positional arguments of :class:`FastRCNNConvFCHead` (or ``cfg, input_shape``).
            **kwargs: its keyword arguments.
            make_dropblock (callable or None): returns a new parameter-free DropBlock module;
                None for no DropBlock.
        """
        super().__init__(*args, **kwargs)
        if make_dropblock is not None:
            # First: the pooled RoI features, before the first conv or fc.
            set_children(self, [("dropblock", make_dropblock()), *self.named_children()])

    @classmethod
    def from_config(cls, cfg, input_shape):
        """The stock head's arguments, with the DropBlock factory of MODEL.DROPBLOCK.ROI_HEADS."""
        ret = super().from_config(cfg, input_shape)
        ret["make_dropblock"] = roi_dropblock_factory(cfg.MODEL.DROPBLOCK, ROI_BOX_GROUP)
        return ret


@ROI_MASK_HEAD_REGISTRY.register()
class DropBlockMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """Detectron2's ``MaskRCNNConvUpsampleHead`` with a DropBlock after each of its convs.

    MODEL.ROI_MASK_HEAD.NAME "DropBlockMaskRCNNConvUpsampleHead" selects it. Each ``mask_fcn<k>``
    (conv, norm, ReLU) is followed by a DropBlock; the deconvolution and the predictor are not.
    With MODEL.DROPBLOCK.ENABLED or ROI_HEADS off it computes exactly the stock head.
    """

    @configurable
    def __init__(self, *args, make_dropblock: Callable[[], nn.Module] | None = None, **kwargs):
        """Build the stock head, then one DropBlock per ``mask_fcn`` when asked.

        Args:
            *args: positional arguments of :class:`MaskRCNNConvUpsampleHead` (or ``cfg, input_shape``).
            **kwargs: its keyword arguments.
            make_dropblock (callable or None): returns a new parameter-free DropBlock module;
                None for no DropBlock.
        """
        super().__init__(*args, **kwargs)
        if make_dropblock is not None:
            children = []
            for name, child in self.named_children():
                children.append((name, child))
                if name.startswith("mask_fcn"):
                    children.append((f"{name}_dropblock", make_dropblock()))
            set_children(self, children)

    @classmethod
    def from_config(cls, cfg, input_shape):
        """The stock head's arguments, with the DropBlock factory of MODEL.DROPBLOCK.ROI_HEADS."""
        ret = super().from_config(cfg, input_shape)
        ret["make_dropblock"] = roi_dropblock_factory(cfg.MODEL.DROPBLOCK, ROI_MASK_GROUP)
        return ret
