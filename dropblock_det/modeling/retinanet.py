"""Detectron2's RetinaNet with DropBlock in its head: the head and the registered meta-architecture."""

from collections import OrderedDict
from collections.abc import Callable

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from ..config import HEAD_GROUP
from .groups import make_dropblock_factory

__all__ = ["DropBlockRetinaNet", "DropBlockRetinaNetHead", "retinanet_head"]


class DropBlockRetinaNetHead(RetinaNetHead):
    """Detectron2's ``RetinaNetHead`` with a DropBlock after every subnet activation.

    Each ``nn.ReLU`` of ``cls_subnet`` / ``bbox_subnet`` becomes, at the same index,
    ``Sequential(relu=ReLU, dropblock=DropBlock2d)``: neither holds parameters or persistent
    buffers, so every state_dict key stays as in the stock head (new Sequential entries would
    renumber them). The head's BN (a per-level ``CycleBatchNormList``) is untouched.
    """

    def __init__(self, *args, make_dropblock: Callable[[], nn.Module], **kwargs):
        """Build the stock head, with a DropBlock after each subnet activation.

        Args:
            *args: positional arguments of :class:`RetinaNetHead` (or ``cfg, input_shape``).
            **kwargs: its keyword arguments.
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


@META_ARCH_REGISTRY.register()
class DropBlockRetinaNet(RetinaNet):
    """Detectron2's :class:`RetinaNet`, with a :class:`DropBlockRetinaNetHead` when HEAD is on.

    Pair it with the ``build_retinanet_resnet_fpn_dropblock_backbone`` backbone for DropBlock in
    the ResNet and FPN. With ENABLED or HEAD off it is stock RetinaNet; in eval mode it is
    bit-identical to RetinaNet with the same weights.
    """

    @classmethod
    def from_config(cls, cfg):
        """Build RetinaNet's arguments from ``cfg``, with the DropBlock head when asked for.

        Args:
            cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.

        Returns:
            dict: the keyword arguments of :class:`RetinaNet`.
        """
        ret = super().from_config(cfg)
        d = cfg.MODEL.DROPBLOCK
        if d.ENABLED and d.HEAD:
            stock_head = ret["head"]
            shapes = ret["backbone"].output_shape()
            ret["head"] = DropBlockRetinaNetHead(
                cfg,
                [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES],
                make_dropblock=make_dropblock_factory(d, HEAD_GROUP),
            )
            # The stock head's initial weights, so that one seed starts the same model with and
            # without head DropBlock (building a second head drew other random numbers).
            ret["head"].load_state_dict(stock_head.state_dict())
        return ret
