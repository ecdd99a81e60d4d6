"""Detectron2's FPN with DropBlock on chosen output levels (MODEL.DROPBLOCK.FPN)."""

from typing import Dict

from detectron2.modeling.backbone.fpn import FPN
from torch import nn

__all__ = ["DropBlockFPN"]


class DropBlockFPN(FPN):
    """An :class:`FPN` whose outputs at some levels go through DropBlock.

    The drop applies to each level's output as the detection head receives it. Maps computed from
    that level inside the FPN (the top-down sum, and P7, which LastLevelP6P7 computes from P6) see
    the undropped map, so each chosen level is dropped exactly once.
    """

    def __init__(self, *args, dropblocks: Dict[str, nn.Module], **kwargs):
        """
        Args:
            args, kwargs: arguments of :class:`FPN`.
            dropblocks (dict[str, nn.Module]): output level name ("p3" …) to the parameter-free
                DropBlock module applied to it.

        Raises:
            ValueError: if ``dropblocks`` names a level this FPN does not produce.
        """
        super().__init__(*args, **kwargs)
        unknown = sorted(set(dropblocks) - set(self._out_features))
        if unknown:
            raise ValueError(
                f"cfg.MODEL.DROPBLOCK.FPN names {unknown}, which this FPN does not produce "
                f"(it produces {self._out_features})."
            )
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
