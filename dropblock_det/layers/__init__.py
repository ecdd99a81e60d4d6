from .drop_block import DropBlock2d, drop_block_2d

__all__ = ["DropBlock2d", "drop_block_2d"]
