"""DropBlock operator. PLACEHOLDER: simple dense version; the real one replaces it (issue 2)."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["drop_block_2d", "DropBlock2d"]


def drop_block_2d(
    x, keep_prob, block_size, *, training=True, share_channels=False, gamma="paper",
    normalize="batch", generator=None,
):
    if not training or float(keep_prob) == 1.0:
        return x
    b, c, h, w = x.shape
    bh, bw = min(block_size, h), min(block_size, w)
    g = (1 - float(keep_prob)) * h * w / (bh * bw * (h - bh + 1) * (w - bw + 1))
    seeds = (torch.rand(b, 1 if share_channels else c, h - bh + 1, w - bw + 1, device=x.device,
                        generator=generator) < g).float()
    seeds = F.pad(seeds, (bw - 1, bw - 1, bh - 1, bh - 1))
    mask = 1 - F.max_pool2d(seeds, (bh, bw), stride=1)
    scale = mask.numel() / mask.sum().clamp(min=1.0)
    return x * (mask * scale).to(x.dtype)


class DropBlock2d(nn.Module):
    def __init__(self, keep_prob=0.9, block_size=7, *, share_channels=False, gamma="paper",
                 normalize="batch"):
        super().__init__()
        self.register_buffer("_keep_prob", torch.tensor(float(keep_prob)), persistent=False)
        self.block_size = block_size
        self.share_channels = share_channels
        self.gamma = gamma
        self.normalize = normalize

    @property
    def keep_prob(self):
        return float(self._keep_prob)

    @keep_prob.setter
    def keep_prob(self, value):
        self._keep_prob.fill_(float(value))

    def forward(self, x):
        return drop_block_2d(x, self.keep_prob, self.block_size, training=self.training,
                             share_channels=self.share_channels, gamma=self.gamma,
                             normalize=self.normalize)
