"""LazyConfig recipes: the same models as their yaml twins, and the schedule under LazyConfig training."""

import json
import os
import re

import pytest
import torch
from conftest import REPO_ROOT, load_config
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from helpers import LAZYCONFIG_TRAIN_NET, run_tool, seeded_generator
from omegaconf import DictConfig, ListConfig
from test_own_data import write_coco_dataset
from torch import nn

from dropblock_det.config import dropblock_settings
from dropblock_det.lazyconfig import add_dropblock
from dropblock_det.modeling import DropBlockRetinaNet, dropblock_modules
from dropblock_det.tools import lazyconfig_train_net
from dropblock_det.tools.train_net import parse_command_line

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
    generator = seeded_generator(0)
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
    generator = seeded_generator(0)
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


# Detectron2's own model-zoo LazyConfigs, the settings given to add_dropblock, and the DropBlock
# groups (with their number of modules) the built model must then have.
ZOO_TWINS = [
    (
        "COCO-Detection/retinanet_R_50_FPN_1x.py",
        dict(STAGES=["res3", "res4", "res5"], FPN=["p3"], HEAD=True),
        # R-50 bottleneck blocks, 4 points each: res3 4 blocks, res4 6, res5 3; the head 2 x 4 convs.
        {"res3": 16, "res4": 24, "res5": 12, "p3": 1, "head": 8},
    ),
    (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
        dict(STAGES=["res5"], PLACEMENT="stage", ROI_HEADS=True),
        # One drop at the output of res5, one on the pooled box features, one per mask conv.
        {"res5": 1, "roi_box": 1, "roi_mask": 4},
    ),
    (
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
        dict(BLOCK_SIZE=5),
        {"res4": 24, "res5": 12},
    ),
    (
        # C4: the backbone is the ResNet itself, up to res4.
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.py",
        dict(STAGES=["res4"], BLOCK_SIZE=3),
        {"res4": 24},
    ),
]


def _groups(model):
    counts = {}
    for _, _, group in dropblock_modules(model):
        counts[group] = counts.get(group, 0) + 1
    return counts


@pytest.mark.parametrize("zoo_config, settings, groups", ZOO_TWINS, ids=[z[0] for z in ZOO_TWINS])
def test_add_dropblock_turns_a_model_zoo_lazyconfig_into_the_dropblock_model_asked_for(
    zoo_config, settings, groups
):
    cfg = add_dropblock(model_zoo.get_config(zoo_config), **settings)
    model = instantiate(cfg.model)
    assert _groups(model) == groups
    assert instantiate(cfg.dropblock) == dropblock_settings(ENABLED=True, **settings)
    block_size = {m.block_size for _, m, _ in dropblock_modules(model)}
    assert block_size == {settings.get("BLOCK_SIZE", 7)}
    if "LSJ" in zoo_config:
        # The recipe's own values stay: SyncBN in the backbone, no frozen stages.
        conv = model.backbone.bottom_up.res4[0].conv1
        assert isinstance(conv.norm, nn.SyncBatchNorm)
        assert all(p.requires_grad for p in model.backbone.bottom_up.parameters())


def test_add_dropblock_switched_off_builds_exactly_the_stock_zoo_model():
    stock_cfg = model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.py")
    twin_cfg = add_dropblock(model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.py"))
    twin_cfg.dropblock.ENABLED = False
    torch.manual_seed(0)
    stock = instantiate(stock_cfg.model)
    torch.manual_seed(0)
    twin = instantiate(twin_cfg.model)
    assert isinstance(twin, DropBlockRetinaNet) and not dropblock_modules(twin)
    assert repr(twin).replace("DropBlockRetinaNet(", "RetinaNet(", 1) == repr(stock)
    stock_state, twin_state = stock.state_dict(), twin.state_dict()
    assert list(twin_state) == list(stock_state)
    assert all(torch.equal(twin_state[k], v) for k, v in stock_state.items())


def test_add_dropblock_refuses_bad_settings_and_backbones_it_cannot_place_in():
    cfg = model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.py")
    with pytest.raises(KeyError, match="KEEPPROB"):
        add_dropblock(cfg, KEEPPROB=0.9)
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.KEEP_PROB"):
        add_dropblock(cfg, KEEP_PROB=0.0)
    assert "dropblock" not in cfg
    regnet = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py")
    with pytest.raises(ValueError, match="builds 'RegNet'.*Detectron2's ResNet"):
        add_dropblock(regnet)


@pytest.mark.slow
def test_lazyconfig_run_on_own_coco_files_logs_groups_and_keep_prob_and_evaluates(tmp_path):
    train_json, train_root = write_coco_dataset(str(tmp_path / "own"), 4)
    val_json, val_root = write_coco_dataset(str(tmp_path / "own"), 2, first_id=10)
    out = tmp_path / "lazy"
    cmd = [
        LAZYCONFIG_TRAIN_NET,
        "--config-file", _config(TWINS[1][1]),
        "--coco-dataset", "own_train", train_json, train_root,
        "--coco-dataset", "own_val", val_json, val_root,
        f"train.output_dir={out}", "train.device=cpu", "train.max_iter=4", "train.log_period=1",
        "train.eval_period=0", "train.checkpointer.period=4",
        "dataloader.train.total_batch_size=2", "dataloader.train.dataset.names=own_train",
        "dataloader.test.dataset.names=own_val", "model.num_classes=2",
        "dropblock.KEEP_PROB=0.5",
    ]  # fmt: skip
    proc = run_tool(cmd)
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    keep_probs = {
        r["iteration"]: r["dropblock/keep_prob"] for r in records if "dropblock/keep_prob" in r
    }
    # The paper's ramp from 1.0 to the overridden 0.5 over the steps 0..3, one value per step:
    # the last one runs at the target.
    assert keep_probs == pytest.approx({i: 1.0 - 0.5 * i / 3 for i in range(4)})
    assert (out / "model_final.pth").is_file()

    # The yaml tool's start-up lines, one per group (R-18: 2 BasicBlocks x 3 points per stage;
    # res4 a quarter of res5's drop rate), on the console and in log.txt.
    console = proc.stdout + proc.stderr
    summary = re.findall(
        r"DropBlock ResNet stage (res\d): (\d+) module\(s\), block \[3\], keep_prob 1 -> "
        r"([\d.]+) from iteration 0 to 3 of 0\.\.3",
        console,
    )
    assert summary == [("res4", "6", "0.875"), ("res5", "6", "0.5")]
    assert "DropBlock ResNet stage res5" in (out / "log.txt").read_text()
    # keep_prob on Detectron2's console metrics line: the value of that iteration.
    for iteration in range(4):
        line = re.search(rf"iter: {iteration} .*keep_prob\[metric\]: ([\d.]+)", console)
        # The console prints 4 significant digits.
        assert line and float(line.group(1)) == pytest.approx(keep_probs[iteration], abs=5e-5)
    # The yaml tool's evaluator, on the user's validation files, after the last step.
    assert "COCO evaluation backend: faster-coco-eval" in console
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["iteration"] == 4
    assert set(eval_results["results"]["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_zoo_config_without_dropblock_node_passes_the_checks_as_the_stock_model(tmp_path):
    train_json, train_root = write_coco_dataset(str(tmp_path / "own"), 2)
    name = f"own_zoo_{tmp_path.name}"
    args = parse_command_line(
        [
            "--config-file", model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.py"),
            "--coco-dataset", name, train_json, train_root,
            f"dataloader.train.dataset.names={name}", f"dataloader.test.dataset.names={name}",
            "model.num_classes=2", "train.device=cpu", f"train.output_dir={tmp_path / 'run'}",
        ]
    )  # fmt: skip
    lazyconfig_train_net.check_inputs(args)  # no InputError: datasets, classes and model all fit
    model, view = lazyconfig_train_net.build_model(lazyconfig_train_net.load_config(args))
    assert type(model).__name__ == "RetinaNet" and not dropblock_modules(model)
    assert view.MODEL.DROPBLOCK.ENABLED is False
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        (TWINS[1][1], ["dropblock.BLOCK_SIZE=0"], "cfg.dropblock.BLOCK_SIZE = 0 is invalid"),
        (TWINS[1][1], ["dropblock.STAGES=[]"], "asks for DropBlock nowhere"),
        (
            TWINS[1][1],
            ["model.backbone.bottom_up.stages.res2_out_channels=256"],
            "R18/R34 need",
        ),
        (
            TWINS[1][1],
            ["dataloader.train.dataset.names=dropblock_digits_trian"],
            "dataloader.train.dataset.names names dataset 'dropblock_digits_trian'",
        ),
        (
            TWINS[1][1],
            ["model.num_classes=3"],
            "model.num_classes = 3 but dataloader.train.dataset.names dataset "
            "'dropblock_digits_train' has 10 categories",
        ),
        (TWINS[1][1], ["train.device=cuda"], "`train.device=cpu`"),
        # Detectron2's own zoo config has no dropblock node to override.
        (
            "zoo:COCO-Detection/retinanet_R_50_FPN_1x.py",
            ["dropblock.KEEP_PROB=0.5"],
            "the config has no 'dropblock' node",
        ),
    ],
    ids=["block-size", "nowhere", "r18-width", "dataset-typo", "num-classes", "no-gpu", "no-node"],
)
def test_bad_lazyconfig_setting_exits_with_status_2_and_one_message_before_writing_anything(
    tmp_path, capsys, config, overrides, message
):
    if config.startswith("zoo:"):
        config_file = model_zoo.get_config_file(config.removeprefix("zoo:"))
    else:
        config_file = _config(config)
    out = tmp_path / "never_created"
    device = [] if any(o.startswith("train.device") for o in overrides) else ["train.device=cpu"]
    argv = ["--config-file", config_file, f"train.output_dir={out}", *device, *overrides]
    assert lazyconfig_train_net.cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lazyconfig_train_net.py: error: ")
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_or_folder_config_file_is_refused_naming_the_flag(tmp_path):
    from dropblock_det.tools.errors import InputError

    missing = str(tmp_path / "nope.py")
    for path, problem in ((missing, "does not exist"), (str(tmp_path), "is a folder, not a file")):
        with pytest.raises(InputError, match=re.escape(f"--config-file {path!r} {problem}; give")):
            lazyconfig_train_net.load_config(parse_command_line(["--config-file", path]))
