"""Detectron2's ResNet with DropBlock: the block classes, the stages and the plain backbone.

The DropBlock blocks subclass Detectron2's and are built by ``ResNet.make_stage``, as TridentNet's
are. PLACEMENT "block" drops at the TF reference's points in every block of the chosen stages;
"stage" once, on the last block's output. The DropBlocks hold no parameters, so the state_dict
keys are the stock blocks'.
"""

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
)
from torch import nn

from ..config import requested_groups
from .groups import make_dropblock_factory

__all__ = [
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "build_resnet_dropblock_backbone",
    "make_dropblock_stages",
]

_NUM_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class _DropBlockPoints:
    """Mixin: one child ``dropblock_<point>`` per insertion point, a DropBlock or an Identity."""

    # Names of the block's insertion points, in forward order.
    points: tuple[str, ...] = ()

    def __init__(
        self,
        *args,
        make_dropblock: Callable[[], nn.Module],
        dropblock_points: Sequence[str] | None = None,
        **kwargs,
    ):
        """Build the Detectron2 block, then one child per DropBlock point.

        Args:
            *args: positional arguments of the Detectron2 block.
            **kwargs: its keyword arguments.
            make_dropblock (callable): returns a new parameter-free DropBlock module.
            dropblock_points (Sequence[str] or None): the points that drop (the others hold an
                ``nn.Identity``); None for every point but "output" (PLACEMENT "block").
        """
        super().__init__(*args, **kwargs)
        chosen = self.points[:-1] if dropblock_points is None else tuple(dropblock_points)
        unknown = sorted(set(chosen) - set(self.points))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no DropBlock point {unknown}; it has {self.points}."
            )
        # Built after the block's own layers, so the stock random initialisation is unchanged.
        for point in self.points:
            self.add_module(
                f"dropblock_{point}", make_dropblock() if point in chosen else nn.Identity()
            )


class DropBlockBottleneckBlock(_DropBlockPoints, BottleneckBlock):
    """Detectron2's ``BottleneckBlock`` with DropBlock where the TF reference puts it.

    tensorflow/tpu ``bottleneck_block`` drops after conv1's and conv2's BN+ReLU, after conv3's BN
    and on the shortcut before the addition; "output" drops the block's output (PLACEMENT "stage").
    """

    points = ("conv1", "conv2", "conv3", "shortcut", "output")

    def forward(self, x):
        """The stock bottleneck computation, with the DropBlock points in it."""
        out = self.dropblock_conv1(F.relu_(self.conv1(x)))
        out = self.dropblock_conv2(F.relu_(self.conv2(out)))
        # Detectron2's Conv2d applies its norm inside, so this is conv3's BN output.
        out = self.dropblock_conv3(self.conv3(out))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += self.dropblock_shortcut(shortcut)
        return self.dropblock_output(F.relu_(out))


class DropBlockBasicBlock(_DropBlockPoints, BasicBlock):
    """Detectron2's ``BasicBlock`` (R-18/34) with DropBlock at the TF reference's points.

    The bottleneck pattern on two convs: after conv1's norm+ReLU, after conv2's norm and on the
    shortcut; "output" as for :class:`DropBlockBottleneckBlock`.
    """

    points = ("conv1", "conv2", "shortcut", "output")

    def forward(self, x):
        """The stock basic-block computation, with the DropBlock points in it."""
        out = self.dropblock_conv1(F.relu_(self.conv1(x)))
        out = self.dropblock_conv2(self.conv2(out))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += self.dropblock_shortcut(shortcut)
        return self.dropblock_output(F.relu_(out))


# The DropBlock subclass of each stock block class a stage may be built with.
_DROPBLOCK_BLOCK_CLASSES = {
    BottleneckBlock: DropBlockBottleneckBlock,
    BasicBlock: DropBlockBasicBlock,
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

    The stage loop of Detectron2's ``build_resnet_backbone`` (as TridentNet's builder does), each
    chosen stage built by ``ResNet.make_stage`` from the DropBlock subclass of its block class.
    ``depth`` and the keyword arguments are the ``MODEL.RESNETS`` keys in lower case;
    ``dropblock`` is ``cfg.MODEL.DROPBLOCK`` (ENABLED off builds stock stages). Pass the result to
    ``ResNet(stem, stages, ...)``, in Python or as ``L(make_dropblock_stages)(...)``.

    Returns:
        list[list[CNNBlockBase]]: the blocks of res2..res5.

    Raises:
        ValueError: naming the key, for a chosen stage whose blocks take no DropBlock.
    """
    if depth in (18, 34) and (res2_out_channels != 64 or res5_dilation != 1 or num_groups != 1):
        raise ValueError(
            "R18/R34 need MODEL.RESNETS.RES2_OUT_CHANNELS 64, RES5_DILATION 1 and NUM_GROUPS 1."
        )
    chosen = requested_groups(dropblock, backbone_only=True)
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
            block_class = kwargs["block_class"]
            if block_class not in _DROPBLOCK_BLOCK_CLASSES:
                raise ValueError(
                    f"cfg.MODEL.DROPBLOCK.STAGES names {stage}, whose {block_class.__name__} "
                    "blocks take no DropBlock (only BottleneckBlock and BasicBlock; see "
                    f"MODEL.RESNETS.DEFORM_ON_PER_STAGE). Remove {stage} from "
                    "MODEL.DROPBLOCK.STAGES."
                )
            kwargs["block_class"] = _DROPBLOCK_BLOCK_CLASSES[block_class]
            kwargs["make_dropblock"] = make_dropblock_factory(dropblock, stage)
            # "block": the in-block points (None) of every block; "stage": the last one's output.
            kwargs["dropblock_points_per_block"] = (
                [None] * num_blocks
                if dropblock.PLACEMENT == "block"
                else [()] * (num_blocks - 1) + [("output",)]
            )
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return stages


@BACKBONE_REGISTRY.register()
def build_resnet_dropblock_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ``build_resnet_backbone``, with DropBlock blocks in MODEL.DROPBLOCK.STAGES.

    The plain backbone of the C4 R-CNN models (whose res5 belongs to ``Res5ROIHeads``, so STAGES
    can name res2-res4 there), and the bottom-up network of the FPN backbones.

    Args:
        cfg (CfgNode): a config that went through :func:`dropblock_det.add_dropblock_config`.
        input_shape (ShapeSpec): the image input shape.

    Returns:
        ResNet: the network; the same modules as ``build_resnet_backbone`` when DropBlock is off.

    Raises:
        ValueError: naming the key, for a chosen stage whose blocks take no DropBlock.
    """
    r = cfg.MODEL.RESNETS
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
