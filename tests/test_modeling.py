"""Tests of the Detectron2 integration: where DropBlock goes, and that it changes nothing else."""

import glob
import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, load_config
from detectron2.layers import CycleBatchNormList
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers import seeded_generator
from torch import nn

from dropblock_det import DropBlock2d, check_placements, validate_dropblock_config
from dropblock_det.modeling import DropBlockBasicBlock, DropBlockBottleneckBlock, DropBlockFPN

# Every Detectron2 config of the repository (search spaces, *_space.yaml, are not configs).
CONFIG_FILES = sorted(
    f
    for f in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not f.endswith("_space.yaml")
)


def _dropblock_names(model):
    return sorted(name for name, m in model.named_modules() if isinstance(m, DropBlock2d))


def _stock_twin(cfg):
    """The same config as stock Detectron2 RetinaNet: stock names, DropBlock off."""
    stock = cfg.clone()
    stock.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    stock.MODEL.DROPBLOCK.ENABLED = False
    return stock


def _images(seed=0):
    """Two images of different, non-square sizes (Detectron2 pads them into one batch)."""
    generator = seeded_generator(seed)
    return [
        {"image": torch.randint(0, 256, (3, 128, 96), generator=generator).float()},
        {"image": torch.randint(0, 256, (3, 100, 128), generator=generator).float()},
    ]


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    "config_file", CONFIG_FILES, ids=[os.path.relpath(f, REPO_ROOT) for f in CONFIG_FILES]
)
def test_every_config_builds_on_cpu_without_weights(config_file):
    cfg = load_config(config_file)
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert bool(_dropblock_names(model)) == cfg.MODEL.DROPBLOCK.ENABLED


# The LazyConfig twins too (configs/**/*.py).
CONFIG_AND_LAZY_FILES = CONFIG_FILES + sorted(
    glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.py"), recursive=True)
)


@pytest.mark.parametrize(
    "config_file",
    CONFIG_AND_LAZY_FILES,
    ids=[os.path.relpath(f, REPO_ROOT) for f in CONFIG_AND_LAZY_FILES],
)
def test_every_config_opens_with_a_header_naming_the_expected_result(config_file):
    with open(config_file, encoding="utf-8") as f:
        header = []
        for line in f:
            if not line.startswith("#"):
                break
            header.append(line[1:].strip())
    text = " ".join(header)
    match = re.search(r"Expected: (.+)", text)
    assert match, f"{config_file}'s header has no 'Expected:' statement"
    expected = match.group(1)
    # A figure with its metric (e.g. "37.9 box AP"), or a plain statement that there is none.
    stated = re.search(r"\d+\.\d+ (box |mask )?AP", expected) or re.search(
        r"not a run of its own|no reference number|no published number", expected
    )
    assert stated, f"{config_file}: 'Expected: {expected}' names neither an AP nor its absence"


def test_tiny_baseline_and_dropblock_configs_differ_only_in_model_dropblock():
    tiny = os.path.join(REPO_ROOT, "configs", "tiny")
    baseline = load_config(os.path.join(tiny, "tiny_retinanet_R18_FPN_baseline.yaml"))
    dropblock = load_config(os.path.join(tiny, "tiny_retinanet_R18_FPN_dropblock.yaml"))
    assert dropblock.MODEL.DROPBLOCK.ENABLED and not baseline.MODEL.DROPBLOCK.ENABLED
    baseline.MODEL.DROPBLOCK = dropblock.MODEL.DROPBLOCK.clone()
    assert baseline.dump() == dropblock.dump()


# ---------------------------------------------------------------------------------------------
# Where the DropBlocks go


def test_block_placement_in_basic_blocks(tiny_cfg):
    model = build_model(tiny_cfg("MODEL.DROPBLOCK.ENABLED", True))
    expected = [
        f"backbone.bottom_up.{stage}.{block}.dropblock_{point}"
        for stage in ("res4", "res5")
        for block in (0, 1)
        for point in ("conv1", "conv2", "shortcut")
    ]
    assert _dropblock_names(model) == sorted(expected)
    resnet = model.backbone.bottom_up
    assert all(type(b) is BasicBlock for b in [*resnet.res2, *resnet.res3])
    assert all(type(b) is DropBlockBasicBlock for b in [*resnet.res4, *resnet.res5])
    assert type(model.backbone) is FPN


def test_block_placement_in_bottlenecks_of_non_adjacent_stages(narrow_r50_cfg):
    cfg = narrow_r50_cfg(
        "MODEL.DROPBLOCK.ENABLED", True, "MODEL.DROPBLOCK.STAGES", ["res3", "res5"]
    )
    model = build_model(cfg)
    expected = [
        f"backbone.bottom_up.{stage}.{block}.dropblock_{point}"
        for stage, num_blocks in (("res3", 4), ("res5", 3))
        for block in range(num_blocks)
        for point in ("conv1", "conv2", "conv3", "shortcut")
    ]
    assert _dropblock_names(model) == sorted(expected)
    resnet = model.backbone.bottom_up
    assert all(type(b) is BottleneckBlock for b in [*resnet.res2, *resnet.res4])


def test_stage_placement_drops_each_stage_output_once_and_keeps_freeze_working(tiny_cfg):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.ENABLED", True,
        "MODEL.DROPBLOCK.PLACEMENT", "stage",
        "MODEL.DROPBLOCK.STAGES", ["res2", "res4"],
    )  # fmt: skip
    model = build_model(cfg)
    # The output of each chosen stage's last block: what feeds the next stage and the FPN.
    assert _dropblock_names(model) == [
        "backbone.bottom_up.res2.1.dropblock_output",
        "backbone.bottom_up.res4.1.dropblock_output",
    ]
    resnet = model.backbone.bottom_up
    assert all(type(b) is BasicBlock for b in [*resnet.res3, *resnet.res5])
    resnet.freeze(5)  # walks every child of every stage
    assert not any(p.requires_grad for p in resnet.parameters())


def test_stage_placement_drops_the_stage_output_after_the_last_activation(tiny_cfg):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.ENABLED", True,
        "MODEL.DROPBLOCK.PLACEMENT", "stage",
        "MODEL.DROPBLOCK.STAGES", ["res4"],
    )  # fmt: skip
    block = build_model(cfg).eval().backbone.bottom_up.res4[1]
    block.dropblock_output = _Scale(-2.0)
    x = torch.randn(2, block.in_channels, 6, 10)
    with torch.no_grad():
        out = block.conv2(F.relu(block.conv1(x)))
        expected = F.relu(out + x) * -2.0
        torch.testing.assert_close(block(x.clone()), expected, rtol=1e-6, atol=1e-6)


def test_fpn_levels_only(tiny_cfg):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.ENABLED", True,
        "MODEL.DROPBLOCK.STAGES", [],
        "MODEL.DROPBLOCK.FPN", ["p3", "p7"],
    )  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model.backbone, DropBlockFPN)
    assert _dropblock_names(model) == ["backbone.dropblock.p3", "backbone.dropblock.p7"]


@pytest.mark.parametrize("head_norm, relu_indices", [("", (1, 3)), ("BN", (2, 5)), ("GN", (2, 5))])
def test_head_dropblock_after_every_subnet_activation(tiny_cfg, head_norm, relu_indices):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.ENABLED", True,
        "MODEL.DROPBLOCK.STAGES", [],
        "MODEL.DROPBLOCK.HEAD", True,
        "MODEL.RETINANET.NORM", head_norm,
    )  # fmt: skip
    model = build_model(cfg)
    expected = [
        f"head.{subnet}.{index}_dropblock"
        for subnet in ("cls_subnet", "bbox_subnet")
        for index in relu_indices
    ]
    assert _dropblock_names(model) == sorted(expected)
    for subnet in (model.head.cls_subnet, model.head.bbox_subnet):
        for index in relu_indices:
            assert isinstance(getattr(subnet, str(index)), nn.ReLU)


def test_disabled_builds_stock_modules_even_with_everything_requested(tiny_cfg):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.ENABLED", False,
        "MODEL.DROPBLOCK.FPN", ["p3"],
        "MODEL.DROPBLOCK.HEAD", True,
    )  # fmt: skip
    model = build_model(cfg)
    assert _dropblock_names(model) == []
    assert type(model.backbone) is FPN
    assert all(type(b) is BasicBlock for s in model.backbone.bottom_up.stages for b in s)
    assert all(
        type(layer) in (nn.Conv2d, CycleBatchNormList, nn.ReLU)
        for subnet in (model.head.cls_subnet, model.head.bbox_subnet)
        for layer in subnet
    )


def test_keep_prob_at_build_is_the_group_scaled_target(tiny_cfg):
    def keep_probs(group_scaling):
        cfg = tiny_cfg(
            "MODEL.DROPBLOCK.ENABLED", True,
            "MODEL.DROPBLOCK.KEEP_PROB", 0.8,
            "MODEL.DROPBLOCK.STAGES", ["res3", "res5"],
            "MODEL.DROPBLOCK.FPN", ["p4"],
            "MODEL.DROPBLOCK.HEAD", True,
            "MODEL.DROPBLOCK.GROUP_SCALING", group_scaling,
        )  # fmt: skip
        model = build_model(cfg)
        values = {}
        for m in model.modules():
            if isinstance(m, DropBlock2d):
                values.setdefault(m.group, set()).add(round(m.keep_prob, 6))
        return values

    # res3 is two stages below res5: 1 - 0.2 / 4**2.
    assert keep_probs(True) == {"res3": {0.9875}, "res5": {0.8}, "p4": {0.8}, "head": {0.8}}
    assert keep_probs(False) == {"res3": {0.8}, "res5": {0.8}, "p4": {0.8}, "head": {0.8}}


class _Scale(nn.Module):
    """Stands in for a DropBlock: multiplies by a constant, so a misplaced one shows."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_bottleneck_dropblocks_sit_at_the_tf_reference_points(narrow_r50_cfg):
    model = build_model(narrow_r50_cfg("MODEL.DROPBLOCK.ENABLED", True)).eval()
    # Block 0 of res4 has a projection shortcut, block 1 an identity one.
    for block in model.backbone.bottom_up.res4[:2]:
        # Negative factors tell "before the ReLU" from "after"; eval-mode BN is affine, so they
        # also tell "before the norm" from "after".
        factors = {"conv1": -2.0, "conv2": 3.0, "conv3": -0.5, "shortcut": 1.5}
        for point, factor in factors.items():
            setattr(block, f"dropblock_{point}", _Scale(factor))
        x = torch.randn(2, block.in_channels, 6, 10)
        with torch.no_grad():
            out = F.relu(block.conv1(x)) * factors["conv1"]
            out = F.relu(block.conv2(out)) * factors["conv2"]
            out = block.conv3(out) * factors["conv3"]
            shortcut = block.shortcut(x) if block.shortcut is not None else x
            expected = F.relu(out + shortcut * factors["shortcut"])
            torch.testing.assert_close(block(x.clone()), expected, rtol=1e-6, atol=1e-6)
    assert model.backbone.bottom_up.res4[0].shortcut is not None
    assert model.backbone.bottom_up.res4[1].shortcut is None


def test_basic_block_dropblocks_sit_after_conv1_act_conv2_norm_and_on_the_shortcut(tiny_cfg):
    model = build_model(tiny_cfg("MODEL.DROPBLOCK.ENABLED", True)).eval()
    for block in model.backbone.bottom_up.res4:
        factors = {"conv1": -2.0, "conv2": -0.5, "shortcut": 1.5}
        for point, factor in factors.items():
            setattr(block, f"dropblock_{point}", _Scale(factor))
        x = torch.randn(2, block.in_channels, 6, 10)
        with torch.no_grad():
            out = F.relu(block.conv1(x)) * factors["conv1"]
            out = block.conv2(out) * factors["conv2"]
            shortcut = block.shortcut(x) if block.shortcut is not None else x
            expected = F.relu(out + shortcut * factors["shortcut"])
            torch.testing.assert_close(block(x.clone()), expected, rtol=1e-6, atol=1e-6)


def test_dropblock_blocks_build_directly_through_make_stage():
    def make_dropblock():
        return DropBlock2d(keep_prob=0.9, block_size=3)

    kwargs = dict(in_channels=16, out_channels=32, bottleneck_channels=8)
    torch.manual_seed(0)
    stock = nn.Sequential(*ResNet.make_stage(BottleneckBlock, 2, **kwargs))
    torch.manual_seed(0)
    blocks = ResNet.make_stage(DropBlockBottleneckBlock, 2, make_dropblock=make_dropblock, **kwargs)
    dropblock = nn.Sequential(*blocks)
    assert len(_dropblock_names(dropblock)) == 8
    assert stock.state_dict().keys() == dropblock.state_dict().keys()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(stock.eval()(x), dropblock.eval()(x))


@pytest.mark.parametrize("placement", ["block", "stage"])
def test_deformable_stages_are_refused_naming_the_keys(narrow_r50_cfg, placement):
    cfg = narrow_r50_cfg(
        "MODEL.DROPBLOCK.ENABLED", True,
        "MODEL.DROPBLOCK.PLACEMENT", placement,
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, False, True, False],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.STAGES.*res4.*DeformBottleneckBlock"):
        build_model(cfg)


# ---------------------------------------------------------------------------------------------
# Nothing else changes: checkpoints and eval-mode detections are stock RetinaNet's


# name: (backbone fixture, extra options); DropBlock is on in every case.
STOCK_EQUIVALENCE_CASES = {
    "basic-block+fpn+head": (
        "tiny_cfg", ("MODEL.DROPBLOCK.FPN", ["p3", "p6"], "MODEL.DROPBLOCK.HEAD", True)
    ),
    "stage+head-bn": ("tiny_cfg", (
        "MODEL.DROPBLOCK.PLACEMENT", "stage",
        "MODEL.DROPBLOCK.STAGES", ["res3", "res4", "res5"],
        "MODEL.DROPBLOCK.HEAD", True,
        "MODEL.RETINANET.NORM", "BN",
    )),
    "bottleneck": ("narrow_r50_cfg", ()),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(STOCK_EQUIVALENCE_CASES))
def test_state_dict_and_eval_detections_equal_stock_retinanet(request, case):
    fixture, opts = STOCK_EQUIVALENCE_CASES[case]
    make_cfg = request.getfixturevalue(fixture)
    # Score threshold 0 so that the randomly initialised model returns detections to compare.
    cfg = make_cfg("MODEL.DROPBLOCK.ENABLED", True, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, *opts)
    torch.manual_seed(0)
    stock = build_model(_stock_twin(cfg))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert _dropblock_names(model)

    # Same keys in the same order, and the same random initialisation under the same seed.
    stock_state, state = stock.state_dict(), model.state_dict()
    assert list(state) == list(stock_state)
    assert all(torch.equal(state[k], stock_state[k]) for k in state)

    # A stock checkpoint loads strictly; then eval mode is bit-identical whatever the keep_prob.
    torch.manual_seed(1)
    model = build_model(cfg)
    incompatible = model.load_state_dict(stock_state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for m in model.modules():
        if isinstance(m, DropBlock2d):
            m.keep_prob = 0.5
    stock.eval()
    model.eval()
    with torch.no_grad():
        expected, actual = stock(_images()), model(_images())
    for e, a in zip(expected, actual, strict=True):
        e, a = e["instances"], a["instances"]
        assert len(e) > 0
        assert torch.equal(e.pred_boxes.tensor, a.pred_boxes.tensor)
        assert torch.equal(e.scores, a.scores)
        assert torch.equal(e.pred_classes, a.pred_classes)


def test_training_step_runs_through_every_dropblock_and_drops(tiny_cfg):
    cfg = tiny_cfg(
        "MODEL.DROPBLOCK.ENABLED", True,
        "MODEL.DROPBLOCK.FPN", ["p3"],
        "MODEL.DROPBLOCK.HEAD", True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).train()
    calls = {}

    def record(name):
        def hook(module, inputs, output):
            dropped = bool((output == 0).logical_and(inputs[0] != 0).any())
            calls.setdefault(name, []).append(dropped)

        return hook

    for name, m in model.named_modules():
        if isinstance(m, DropBlock2d):
            m.keep_prob = 0.7
            m.register_forward_hook(record(name))
    batch = _images()
    for item in batch:
        instances = Instances(item["image"].shape[1:])
        instances.gt_boxes = Boxes(
            torch.tensor([[10.0, 12.0, 40.0, 60.0], [50.0, 20.0, 90.0, 70.0]])
        )
        instances.gt_classes = torch.tensor([1, 7])
        item["instances"] = instances
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert set(calls) == set(_dropblock_names(model))
    # Each DropBlock zeroed some non-zero activation at keep_prob 0.7 (the head ones once per
    # FPN level).
    assert all(any(dropped) for dropped in calls.values())


# ---------------------------------------------------------------------------------------------
# Invalid values fail in the value check, a model without a requested group in the model check,
# each naming the key


@pytest.mark.parametrize(
    "opts, key",
    [
        (("MODEL.DROPBLOCK.KEEP_PROB", 0.0), "MODEL.DROPBLOCK.KEEP_PROB"),
        (("MODEL.DROPBLOCK.KEEP_PROB", 1.5), "MODEL.DROPBLOCK.KEEP_PROB"),
        (("MODEL.DROPBLOCK.BLOCK_SIZE", 0), "MODEL.DROPBLOCK.BLOCK_SIZE"),
        (("MODEL.DROPBLOCK.STAGES", ["res6"]), "MODEL.DROPBLOCK.STAGES"),
        (("MODEL.DROPBLOCK.PLACEMENT", "everywhere"), "MODEL.DROPBLOCK.PLACEMENT"),
        (("MODEL.DROPBLOCK.SCHEDULE.RAMP", 1.5), "MODEL.DROPBLOCK.SCHEDULE.RAMP"),
    ],
)
def test_invalid_values_fail_the_value_check_naming_the_key(tiny_cfg, opts, key):
    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", True, *opts)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_dropblock_config(cfg)


@pytest.mark.parametrize(
    "opts, pattern",
    [
        # RetinaNet's FPN produces p3-p7: p2 does not exist.
        (
            ("MODEL.DROPBLOCK.FPN", ["p2"]),
            r"MODEL\.DROPBLOCK\.FPN asks for DropBlock in \['p2'\].*'p3', 'p4', 'p5', 'p6', 'p7'",
        ),
        (
            ("MODEL.DROPBLOCK.HEAD", True, "MODEL.META_ARCHITECTURE", "RetinaNet"),
            r"MODEL\.DROPBLOCK\.HEAD.*MODEL\.META_ARCHITECTURE = 'RetinaNet'.*'DropBlockRetinaNet'",
        ),
        (
            ("MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone"),
            r"MODEL\.DROPBLOCK\.STAGES.*MODEL\.BACKBONE\.NAME to "
            r"'build_retinanet_resnet_fpn_dropblock_backbone'.*ignores MODEL\.DROPBLOCK",
        ),
    ],
)
def test_a_model_without_a_requested_group_fails_the_model_check_naming_the_key(
    tiny_cfg, opts, pattern
):
    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", True, *opts)
    validate_dropblock_config(cfg)  # the values themselves are valid
    with pytest.raises(ValueError, match=pattern):
        check_placements(build_model(cfg), cfg)


def test_invalid_values_fail_even_with_dropblock_disabled(tiny_cfg):
    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", False, "MODEL.DROPBLOCK.FPN", ["p9"])
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.FPN"):
        validate_dropblock_config(cfg)
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.FPN"):
        check_placements(build_model(cfg), cfg)


def test_model_check_takes_a_lazyconfig_root_with_or_without_a_dropblock_node():
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(
        os.path.join(REPO_ROOT, "configs", "tiny", "tiny_retinanet_R18_FPN_dropblock.py")
    )
    cfg.dropblock.HEAD = True
    model = instantiate(cfg.model)
    check_placements(model, cfg)  # every group it asks for is there
    assert {m.group for m in model.modules() if isinstance(m, DropBlock2d)} >= {"head", "res5"}

    # The same model config with the head built stock: the head group is missing.
    cfg.model.head._target_ = "detectron2.modeling.meta_arch.retinanet.RetinaNetHead"
    del cfg.model.head.dropblock
    with pytest.raises(
        ValueError, match=r"MODEL\.DROPBLOCK\.HEAD asks for DropBlock in \['head'\].*retinanet_head"
    ):
        check_placements(instantiate(cfg.model), cfg)

    # A baseline LazyConfig (a stock model-zoo one) has no dropblock node: nothing is asked for.
    stock = instantiate(cfg.model)
    del cfg.dropblock
    check_placements(stock, cfg)
