"""The DropBlock operator: :func:`drop_block_2d`, :class:`DropBlock2d` and their constants."""

from ._backend import AUTO_BACKEND, auto_backend
from .drop_block import (
    BACKENDS,
    GAMMA_MODES,
    NORMALIZE_MODES,
    DropBlock2d,
    KeepProb,
    drop_block_2d,
    seed_rate,
    share_keep_prob,
)

__all__ = [
    "AUTO_BACKEND",
    "BACKENDS",
    "GAMMA_MODES",
    "NORMALIZE_MODES",
    "DropBlock2d",
    "KeepProb",
    "auto_backend",
    "drop_block_2d",
    "seed_rate",
    "share_keep_prob",
]
