"""Shared fixtures: small CPU configs built from the repository's own yaml files."""

import os

import pytest
from detectron2.config import get_cfg

import dropblock_det  # noqa: F401  (registers the backbone, meta-architecture and datasets)
from dropblock_det import add_dropblock_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BASE_CONFIG = os.path.join(REPO_ROOT, "configs", "tiny", "Base-Tiny.yaml")

# A ResNet-50 layout (BottleneckBlock, 3-4-6-3 blocks) at 1/8 of the width, for fast CPU tests of
# the bottleneck placement.
NARROW_R50_OPTS = (
    "MODEL.RESNETS.DEPTH", 50,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
    "MODEL.RESNETS.STRIDE_IN_1X1", False,
)  # fmt: skip


def load_config(config_file, opts=()):
    """Read a yaml config the way tools/train_net.py does, for CPU and without weights.

    Args:
        config_file (str): path of the yaml file.
        opts (Sequence): "KEY", value pairs merged after the file.

    Returns:
        CfgNode: the (unfrozen) config.
    """
    cfg = get_cfg()
    add_dropblock_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.fixture
def tiny_cfg():
    """Factory: ``tiny_cfg("KEY", value, ...)`` is configs/tiny/Base-Tiny.yaml plus those values.

    The base has DropBlock off; R-18 (BasicBlock) at 128 px, 10 classes.
    """

    def make(*opts):
        return load_config(TINY_BASE_CONFIG, opts)

    return make


@pytest.fixture
def narrow_r50_cfg(tiny_cfg):
    """Factory like ``tiny_cfg`` with a narrow ResNet-50 (BottleneckBlock) backbone."""

    def make(*opts):
        return tiny_cfg(*NARROW_R50_OPTS, *opts)

    return make
