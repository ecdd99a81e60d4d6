"""Detectron2's RetinaNet with DropBlock in its head: the head and the registered meta-architecture.

RetinaNetHead hard-codes its subnets' ``nn.ReLU``; the DropBlocks are children inserted after
them in the built head, so the stock head's modules, state_dict keys and random initialisation
stay as they are.
"""

from collections.abc import Callable

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from ..config import HEAD_GROUP, requested_groups
from .groups import make_dropblock_factory, set_children

__all__ = ["DropBlockRetinaNet", "add_head_dropblocks", "retinanet_head"]


def add_head_dropblocks(head: RetinaNetHead, make_dropblock: Callable[[], nn.Module]):
    """Put a DropBlock after every activation of a RetinaNet head's class and box subnets.

    Each ``nn.ReLU`` child ``"<k>"`` of ``cls_subnet`` / ``bbox_subnet`` is followed by a child
    ``"<k>_dropblock"``; the head's norms (a per-level ``CycleBatchNormList`` for BN) are untouched.

    Args:
        head (RetinaNetHead): the head, changed in place.
        make_dropblock (callable): returns a new parameter-free DropBlock module.
    """
    for subnet in (head.cls_subnet, head.bbox_subnet):
        children = []
        for name, layer in subnet.named_children():
            children.append((name, layer))
            if isinstance(layer, nn.ReLU):
                children.append((f"{name}_dropblock", make_dropblock()))
        set_children(subnet, children)


def retinanet_head(dropblock, **head_kwargs) -> RetinaNetHead:
    """Detectron2's RetinaNetHead, with DropBlock in its subnets when ``dropblock`` asks.

    The LazyConfig form, ``head=L(retinanet_head)(dropblock=..., ...)``, of the head
    ``DropBlockRetinaNet`` builds.

    Args:
        dropblock (CfgNode): the DropBlock settings; ENABLED and HEAD on add the DropBlocks.
        **head_kwargs: the arguments of :class:`RetinaNetHead`.

    Returns:
        RetinaNetHead: the head.
    """
    head = RetinaNetHead(**head_kwargs)
    if HEAD_GROUP in requested_groups(dropblock):
        add_head_dropblocks(head, make_dropblock_factory(dropblock, HEAD_GROUP))
    return head


@META_ARCH_REGISTRY.register()
class DropBlockRetinaNet(RetinaNet):
    """Detectron2's :class:`RetinaNet`, with DropBlock in its head's subnets when HEAD is on.

    Pair it with ``build_retinanet_resnet_fpn_dropblock_backbone`` for DropBlock in the ResNet and
    FPN. With ENABLED or HEAD off it is stock RetinaNet.
    """

    @classmethod
    def from_config(cls, cfg):
        """RetinaNet's arguments from ``cfg``, its head with DropBlock when HEAD is on.

        Args:
            cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.

        Returns:
            dict: the keyword arguments of :class:`RetinaNet`.
        """
        ret = super().from_config(cfg)
        if HEAD_GROUP in requested_groups(cfg):
            add_head_dropblocks(
                ret["head"], make_dropblock_factory(cfg.MODEL.DROPBLOCK, HEAD_GROUP)
            )
        return ret
