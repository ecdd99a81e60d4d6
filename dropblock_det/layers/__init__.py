"""The DropBlock operator: :func:`drop_block_2d`, :class:`DropBlock2d` and their constants."""

from ._backend import AUTO_BACKEND, BACKENDS, auto_backend
from ._keep_prob import KeepProb, share_keep_prob
from .drop_block import GAMMA_MODES, NORMALIZE_MODES, DropBlock2d, drop_block_2d, seed_rate

__all__ = ["AUTO_BACKEND", "BACKENDS", "GAMMA_MODES", "NORMALIZE_MODES", "DropBlock2d", "KeepProb"]
__all__ += ["auto_backend", "drop_block_2d", "seed_rate", "share_keep_prob"]
