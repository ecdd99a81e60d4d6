"""DropBlock inside Detectron2's ResNet: in every residual block, or once per stage output.

Detectron2's ``build_resnet_backbone`` hard-codes its block classes. Rather than copy its stage
loop, :func:`insert_dropblock_into_resnet` takes the stock ResNet it builds and changes the chosen
stages in place:

- PLACEMENT "block": each ``BottleneckBlock`` / ``BasicBlock`` is re-typed to a subclass that
  differs only in ``forward`` and gains parameter-free DropBlock children. Parameter names,
  initialisation and even the random numbers drawn while building are those of the stock model,
  so ImageNet weights and stock checkpoints load unchanged.
- PLACEMENT "stage": one DropBlock is appended to the stage's ``nn.Sequential``; it drops the
  stage output that feeds the next stage, the FPN lateral and (for res5) P6/P7.

A module with no parameters and only non-persistent buffers adds no state_dict key either way.
"""

import functools
from typing import Callable

import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from torch import nn

from ..layers import DropBlock2d
from .groups import build_dropblock

__all__ = [
    "DropBlockBasicBlock",
    "DropBlockBottleneckBlock",
    "StageOutputDropBlock",
    "insert_dropblock_into_resnet",
]


class _DropBlockResidualMixin:
    """Attaches the named DropBlock children of a residual block subclass."""

    # The Detectron2 block class this subclass extends, and the names of its DropBlock children
    # (one per insertion point).
    stock_class = None
    dropblock_points = ()

    def __init__(self, *args, make_dropblock: Callable[[], nn.Module], **kwargs):
        """
        Args:
            args, kwargs: arguments of the Detectron2 block (``stock_class``).
            make_dropblock (callable): returns a new parameter-free DropBlock module.
        """
        super().__init__(*args, **kwargs)
        self.attach_dropblocks(make_dropblock)

    def attach_dropblocks(self, make_dropblock: Callable[[], nn.Module]):
        """Add one DropBlock child per insertion point, named ``dropblock_<point>``.

        Args:
            make_dropblock (callable): returns a new parameter-free DropBlock module.
        """
        for point in self.dropblock_points:
            self.add_module(f"dropblock_{point}", make_dropblock())

    @classmethod
    def convert(cls, block, make_dropblock: Callable[[], nn.Module]):
        """Turn a stock Detectron2 block into this class in place, keeping its parameters.

        Args:
            block (nn.Module): an instance of exactly ``cls.stock_class``.
            make_dropblock (callable): returns a new parameter-free DropBlock module.

        Returns:
            nn.Module: ``block`` itself, now an instance of ``cls``.
        """
        if type(block) is not cls.stock_class:
            raise TypeError(
                f"{cls.__name__}.convert expects a {cls.stock_class.__name__}, "
                f"got a {type(block).__name__}"
            )
        block.__class__ = cls
        block.attach_dropblocks(make_dropblock)
        return block


class DropBlockBottleneckBlock(_DropBlockResidualMixin, BottleneckBlock):
    """Detectron2's ``BottleneckBlock`` with DropBlock where the TF reference puts it.

    tensorflow/tpu ``resnet_model.py`` ``bottleneck_block`` drops after conv1's and conv2's
    BN+ReLU, after conv3's BN and on the shortcut branch (projection or identity) before the
    addition. Built either by :meth:`convert` on a stock block or directly, with the
    ``BottleneckBlock`` arguments plus ``make_dropblock`` (e.g. through ``ResNet.make_stage``).
    """

    stock_class = BottleneckBlock
    dropblock_points = ("conv1", "conv2", "conv3", "shortcut")

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = self.dropblock_conv1(out)
        out = F.relu_(self.conv2(out))
        out = self.dropblock_conv2(out)
        # Detectron2's Conv2d applies its norm inside, so this is conv3's BN output.
        out = self.dropblock_conv3(self.conv3(out))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += self.dropblock_shortcut(shortcut)
        return F.relu_(out)


class DropBlockBasicBlock(_DropBlockResidualMixin, BasicBlock):
    """Detectron2's ``BasicBlock`` (R-18/34) with DropBlock at the TF reference's points.

    The bottleneck pattern mapped onto two convolutions: after conv1's norm+ReLU, after conv2's
    norm (the last one before the addition) and on the shortcut branch before the addition.
    """

    stock_class = BasicBlock
    dropblock_points = ("conv1", "conv2", "shortcut")

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = self.dropblock_conv1(out)
        out = self.dropblock_conv2(self.conv2(out))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += self.dropblock_shortcut(shortcut)
        return F.relu_(out)


class StageOutputDropBlock(DropBlock2d):
    """A DropBlock2d appended to a ResNet stage's ``nn.Sequential`` (PLACEMENT "stage").

    ``ResNet.freeze`` calls ``freeze()`` on every child of a stage; this one has nothing to
    freeze, so it keeps that call working after insertion.
    """

    def freeze(self):
        """Nothing to freeze (no parameters).

        Returns:
            StageOutputDropBlock: self, as ``CNNBlockBase.freeze`` does.
        """
        return self


_DROPBLOCK_BLOCK_CLASSES = {
    c.stock_class: c for c in (DropBlockBottleneckBlock, DropBlockBasicBlock)
}


def insert_dropblock_into_resnet(resnet: ResNet, cfg) -> ResNet:
    """Insert DropBlock into the stages ``cfg.MODEL.DROPBLOCK.STAGES`` of a stock ResNet.

    Args:
        resnet (ResNet): built by Detectron2's ``build_resnet_backbone``; changed in place.
        cfg (CfgNode): a config with the ``MODEL.DROPBLOCK`` keys, already validated.

    Returns:
        ResNet: ``resnet`` itself.

    Raises:
        ValueError: if a chosen stage is not built (MODEL.RESNETS.OUT_FEATURES stops earlier) or a
            chosen stage holds blocks PLACEMENT "block" cannot take (deformable bottlenecks).
    """
    d = cfg.MODEL.DROPBLOCK
    missing = [s for s in d.STAGES if s not in resnet.stage_names]
    if missing:
        raise ValueError(
            f"cfg.MODEL.DROPBLOCK.STAGES = {list(d.STAGES)} names {missing}, which this ResNet "
            f"does not build (it has {list(resnet.stage_names)}; see "
            f"MODEL.RESNETS.OUT_FEATURES = {list(cfg.MODEL.RESNETS.OUT_FEATURES)})."
        )
    for stage_name in d.STAGES:
        stage = getattr(resnet, stage_name)
        if d.PLACEMENT == "stage":
            dropblock = build_dropblock(cfg, stage_name, module_class=StageOutputDropBlock)
            stage.add_module("dropblock", dropblock)
            continue
        for block in stage:
            dropblock_class = _DROPBLOCK_BLOCK_CLASSES.get(type(block))
            if dropblock_class is None:
                raise ValueError(
                    f"cfg.MODEL.DROPBLOCK.PLACEMENT = 'block' cannot take the "
                    f"{type(block).__name__} blocks of {stage_name} (only BottleneckBlock and "
                    f"BasicBlock; see MODEL.RESNETS.DEFORM_ON_PER_STAGE = "
                    f"{list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)}). Use PLACEMENT 'stage' or "
                    f"drop {stage_name} from MODEL.DROPBLOCK.STAGES."
                )
            dropblock_class.convert(block, functools.partial(build_dropblock, cfg, stage_name))
    return resnet
