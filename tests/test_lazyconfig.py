"""LazyConfig recipes: the same models as their yaml twins, and the schedule under LazyConfig training."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, load_config
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig
from torch import nn

from dropblock_det.config import dropblock_settings
from dropblock_det.modeling import dropblock_modules

# (yaml, LazyConfig) twins, relative to configs/.
TWINS = [
    ("tiny/tiny_retinanet_R18_FPN_baseline.yaml", "tiny/tiny_retinanet_R18_FPN_baseline.py"),
    ("tiny/tiny_retinanet_R18_FPN_dropblock.yaml", "tiny/tiny_retinanet_R18_FPN_dropblock.py"),
    (
        "COCO-Paper/retinanet_R_50_FPN_scratch_150ep_dropblock_bs7.yaml",
        "COCO-Paper/retinanet_R_50_FPN_scratch_150ep_dropblock_bs7.py",
    ),
    ("tiny/tiny_faster_rcnn_R18_FPN_dropblock.yaml", "tiny/tiny_faster_rcnn_R18_FPN_dropblock.py"),
    (
        "COCO-Detection/faster_rcnn_R_50_FPN_1x_dropblock.yaml",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x_dropblock.py",
    ),
    (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_dropblock.yaml",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_dropblock.py",
    ),
]
TINY_RCNN_TWIN = TWINS[3]


def _config(relative):
    return os.path.join(REPO_ROOT, "configs", relative)


def _dropblock_settings_of(model):
    return [
        (name, group, m.block_size, m.gamma, m.normalize, m.share_channels, round(m.keep_prob, 9))
        for name, m, group in dropblock_modules(model)
    ]


def _anchors(model):
    # R-CNN's anchors belong to its RPN, RetinaNet's to the model.
    owner = getattr(model, "proposal_generator", model)
    return [a.clone() for a in owner.anchor_generator.cell_anchors]


def _plain(value, depth=0):
    """``value`` as plain Python, comparable across the yaml and LazyConfig builds."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple, ListConfig)):
        return [_plain(v, depth) for v in value]
    if isinstance(value, (dict, DictConfig)):
        return {k: _plain(v, depth) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    # Helper objects the modules hold (Matcher, Box2BoxTransform): their settings, one level.
    if depth == 0 and hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        return {k: _plain(v, depth + 1) for k, v in vars(value).items() if not k.startswith("_")}
    return type(value).__name__


def _module_settings(model):
    # What repr leaves out: thresholds, top-k, loss weights, in_features, matcher and box coder.
    return {
        name: {
            k: _plain(v) for k, v in vars(m).items() if not k.startswith("_") and k != "training"
        }
        for name, m in model.named_modules()
    }


@pytest.mark.parametrize("yaml_file, lazy_file", TWINS, ids=[t[1] for t in TWINS])
def test_lazyconfig_builds_the_same_model_as_its_yaml_twin(yaml_file, lazy_file):
    torch.manual_seed(0)
    from_yaml = build_model(load_config(_config(yaml_file)))
    lazy = LazyConfig.load(_config(lazy_file))
    torch.manual_seed(0)
    from_lazy = instantiate(lazy.model)

    # Same module tree (types and constructor arguments, as printed), same DropBlock settings.
    assert repr(from_lazy) == repr(from_yaml)
    assert [type(m) for m in from_lazy.modules()] == [type(m) for m in from_yaml.modules()]
    assert _module_settings(from_lazy) == _module_settings(from_yaml)
    assert _dropblock_settings_of(from_lazy) == _dropblock_settings_of(from_yaml)
    # Same parameters and buffers in the same order, the same anchors and pixel normalisation.
    yaml_state, lazy_state = from_yaml.state_dict(), from_lazy.state_dict()
    assert [(k, v.shape) for k, v in lazy_state.items()] == [
        (k, v.shape) for k, v in yaml_state.items()
    ]
    assert all(
        torch.equal(a, b) for a, b in zip(_anchors(from_lazy), _anchors(from_yaml), strict=True)
    )
    assert torch.equal(from_lazy.pixel_mean, from_yaml.pixel_mean)
    assert torch.equal(from_lazy.pixel_std, from_yaml.pixel_std)
    assert from_lazy.input_format == from_yaml.input_format
    # The yaml's DropBlock node and the LazyConfig's are the same settings.
    yaml_settings = load_config(_config(yaml_file)).MODEL.DROPBLOCK
    assert instantiate(lazy.dropblock) == yaml_settings


def test_tiny_lazyconfig_detects_exactly_as_its_yaml_twin_with_the_same_weights():
    from_yaml = build_model(
        load_config(_config(TWINS[1][0]), ("MODEL.RETINANET.SCORE_THRESH_TEST", 0.0))
    )
    lazy = LazyConfig.load(_config(TWINS[1][1]))
    lazy.model.test_score_thresh = 0.0
    from_lazy = instantiate(lazy.model)
    from_lazy.load_state_dict(from_yaml.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(0)
    images = [{"image": torch.randint(0, 256, (3, 96, 80), generator=generator).float()}]
    with torch.no_grad():
        expected, actual = from_yaml.eval()(images), from_lazy.eval()(images)
    e, a = expected[0]["instances"], actual[0]["instances"]
    assert len(e) > 0
    assert torch.equal(e.pred_boxes.tensor, a.pred_boxes.tensor)
    assert torch.equal(e.scores, a.scores)


def test_tiny_rcnn_lazyconfig_detects_exactly_as_its_yaml_twin_with_the_same_weights():
    yaml_file, lazy_file = TINY_RCNN_TWIN
    from_yaml = build_model(
        load_config(_config(yaml_file), ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0))
    )
    lazy = LazyConfig.load(_config(lazy_file))
    lazy.model.roi_heads.box_predictor.test_score_thresh = 0.0
    from_lazy = instantiate(lazy.model)
    from_lazy.load_state_dict(from_yaml.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(0)
    images = [{"image": torch.randint(0, 256, (3, 96, 80), generator=generator).float()}]
    with torch.no_grad():
        expected, actual = from_yaml.eval()(images), from_lazy.eval()(images)
    e, a = expected[0]["instances"], actual[0]["instances"]
    assert len(e) > 0
    assert torch.equal(e.pred_boxes.tensor, a.pred_boxes.tensor)
    assert torch.equal(e.scores, a.scores)
    assert torch.equal(e.pred_classes, a.pred_classes)


def test_settings_node_rejects_unknown_keys_and_bad_values_naming_them():
    with pytest.raises(KeyError, match="KEEP_PROBABILITY"):
        dropblock_settings(KEEP_PROBABILITY=0.9)
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.BLOCK_SIZE"):
        dropblock_settings(BLOCK_SIZE=0)


def test_schedule_hook_drives_keep_prob_under_lazyconfig_training(tmp_path):
    out = tmp_path / "lazy"
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "lazyconfig_train_net.py"),
        "--config-file", _config(TWINS[1][1]),
        f"train.output_dir={out}", "train.device=cpu", "train.max_iter=4", "train.log_period=1",
        "train.eval_period=0", "train.checkpointer.period=4",
        "dataloader.train.total_batch_size=2", "dataloader.evaluator=null",
        "dropblock.KEEP_PROB=0.5",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    keep_probs = {
        r["iteration"]: r["dropblock/keep_prob"] for r in records if "dropblock/keep_prob" in r
    }
    # The paper's ramp from 1.0 to the overridden 0.5 over the steps 0..3, one value per step:
    # the last one runs at the target.
    assert keep_probs == pytest.approx({i: 1.0 - 0.5 * i / 3 for i in range(4)})
    assert (out / "model_final.pth").is_file()
