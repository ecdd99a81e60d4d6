"""The registered RetinaNet meta-architecture with DropBlock in the class and box subnets."""

from collections import OrderedDict

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from torch import nn

from ..config import validate_dropblock_config
from ..layers import DropBlock2d
from .groups import build_dropblock

__all__ = ["DropBlockRetinaNet", "insert_dropblock_into_head"]

# Group name of the head's DropBlocks (they always get the unscaled keep_prob).
HEAD_GROUP = "head"


def insert_dropblock_into_head(head, cfg):
    """Put a DropBlock after every ReLU of a ``RetinaNetHead``'s class and box subnets.

    Each ``nn.ReLU`` entry of ``cls_subnet`` / ``bbox_subnet`` is replaced, at the same index, by
    ``Sequential(relu=ReLU, dropblock=DropBlock2d)``. Neither holds parameters or persistent
    buffers, so the subnet's other indices and every state_dict key stay as in the stock head
    (inserting new Sequential entries would renumber them). The head's BN (a per-level
    ``CycleBatchNormList`` for NORM "BN"/"SyncBN") is untouched.

    Args:
        head (RetinaNetHead): changed in place.
        cfg (CfgNode): a config with the ``MODEL.DROPBLOCK`` keys.

    Returns:
        RetinaNetHead: ``head`` itself.
    """
    for subnet in (head.cls_subnet, head.bbox_subnet):
        for index, layer in enumerate(subnet):
            if isinstance(layer, nn.ReLU):
                subnet[index] = nn.Sequential(
                    OrderedDict(relu=layer, dropblock=build_dropblock(cfg, HEAD_GROUP))
                )
    return head


@META_ARCH_REGISTRY.register()
class DropBlockRetinaNet(RetinaNet):
    """Detectron2's :class:`RetinaNet`, with DropBlock in its head when MODEL.DROPBLOCK.HEAD.

    Pair it with the ``build_retinanet_resnet_fpn_dropblock_backbone`` backbone for DropBlock in
    the ResNet and FPN. With ENABLED or HEAD off it holds no DropBlock of its own and behaves as
    stock RetinaNet; in eval mode it is bit-identical to RetinaNet with the same weights.
    """

    @classmethod
    def from_config(cls, cfg):
        """Build RetinaNet's arguments from ``cfg``, then add the head DropBlocks.

        Args:
            cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.

        Returns:
            dict: the keyword arguments of :class:`RetinaNet`.

        Raises:
            ValueError: naming the key, for an invalid MODEL.DROPBLOCK value, or for STAGES/FPN
                with a backbone that inserted no DropBlock.
        """
        validate_dropblock_config(cfg)
        ret = super().from_config(cfg)
        d = cfg.MODEL.DROPBLOCK
        if not d.ENABLED:
            return ret
        wants_backbone_dropblock = bool(d.STAGES) or bool(d.FPN)
        has_backbone_dropblock = any(isinstance(m, DropBlock2d) for m in ret["backbone"].modules())
        if wants_backbone_dropblock and not has_backbone_dropblock:
            raise ValueError(
                f"cfg.MODEL.DROPBLOCK.STAGES = {list(d.STAGES)} / FPN = {list(d.FPN)} ask for "
                f"DropBlock in the backbone, but cfg.MODEL.BACKBONE.NAME = "
                f"{cfg.MODEL.BACKBONE.NAME!r} inserted none: use "
                f"'build_retinanet_resnet_fpn_dropblock_backbone', or set STAGES and FPN to []."
            )
        if d.HEAD:
            insert_dropblock_into_head(ret["head"], cfg)
        return ret
