"""The registered RetinaNet meta-architecture with DropBlock in its head."""

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from ..config import validate_dropblock_config
from .placements import HEAD_GROUP, DropBlockRetinaNetHead, check_placements, make_dropblock_factory

__all__ = ["DropBlockRetinaNet"]


@META_ARCH_REGISTRY.register()
class DropBlockRetinaNet(RetinaNet):
    """Detectron2's :class:`RetinaNet`, with a :class:`DropBlockRetinaNetHead` when
    MODEL.DROPBLOCK.HEAD is on.

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

        Raises:
            ValueError: naming the key, for an invalid MODEL.DROPBLOCK value, or for STAGES/FPN
                with a backbone that inserted no DropBlock.
        """
        validate_dropblock_config(cfg)
        ret = super().from_config(cfg)
        d = cfg.MODEL.DROPBLOCK
        if not d.ENABLED:
            return ret
        check_placements(cfg, ret["backbone"], backbone_only=True)
        if d.HEAD:
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
