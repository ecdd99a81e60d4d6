"""Tests of the entry point: tools/train_net.py end to end, and the Trainer it runs."""

import importlib.util
import json
import math
import os
import re

import pytest
import torch
from conftest import NARROW_R50_OPTS, REPO_ROOT
from detectron2.config import CfgNode as CN
from detectron2.engine import hooks
from detectron2.modeling import build_model
from helpers import TRAIN_NET, run_tool

from dropblock_det import DropBlockSchedule
from dropblock_det.tools.trainer import EVAL_RESULTS_FILE, Trainer, write_eval_results

TINY = os.path.join(REPO_ROOT, "configs", "tiny")
TINY_DROPBLOCK = os.path.join(TINY, "tiny_retinanet_R18_FPN_dropblock.yaml")
TINY_BASELINE = os.path.join(TINY, "tiny_retinanet_R18_FPN_baseline.yaml")
TINY_RCNN = os.path.join(TINY, "tiny_faster_rcnn_R18_FPN_dropblock.yaml")


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_train_net_trains_and_evaluates_the_tiny_dropblock_config(tmp_path):
    """The README's command, shortened: a few iterations, then the COCO evaluation."""
    out = tmp_path / "run"
    max_iter = 4
    cmd = [
        TRAIN_NET, "--config-file", TINY_DROPBLOCK,
        "MODEL.DEVICE", "cpu",
        "OUTPUT_DIR", str(out),
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.IMS_PER_BATCH", "4",
        # Keep every candidate so that the few-iteration model has detections to score.
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    ]  # fmt: skip
    proc = run_tool(cmd, timeout=900)

    assert (out / "config.yaml").is_file()
    assert (out / "model_final.pth").is_file()
    metrics = _read_metrics(out / "metrics.json")
    keep_probs = [row["dropblock/keep_prob"] for row in metrics if "dropblock/keep_prob" in row]
    # Written at the last iteration (3 of 0..3), which runs at the target KEEP_PROB.
    assert keep_probs and keep_probs[-1] == pytest.approx(0.9)

    with open(out / EVAL_RESULTS_FILE) as f:
        eval_results = json.load(f)
    assert eval_results["iteration"] == max_iter
    bbox = eval_results["results"]["bbox"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in bbox
    assert math.isfinite(bbox["AP"]) and 0.0 <= bbox["AP"] <= 100.0
    # The evaluator's metrics also reach metrics.json, as Detectron2's EvalHook writes them.
    assert any("bbox/AP" in row for row in metrics)

    # At start-up, one line per DropBlock group: where, how many, block, keep_prob schedule
    # (R-18: 2 BasicBlocks x 3 points per stage; res4 a quarter of res5's drop rate).
    console = proc.stdout + proc.stderr
    summary = re.findall(
        r"DropBlock ResNet stage (res\d): (\d+) module\(s\), block \[3\], keep_prob 1 -> "
        r"([\d.]+) from iteration 0 to 3 of 0\.\.3",
        console,
    )
    assert summary == [("res4", "6", "0.975"), ("res5", "6", "0.9")]
    # keep_prob on Detectron2's console metrics line: the value of that iteration.
    line = re.search(r"iter: 3 .*keep_prob\[metric\]: ([\d.]+)", console)
    assert line and float(line.group(1)) == pytest.approx(keep_probs[-1])
    # The package's own lines reach log.txt too.
    log_txt = (out / "log.txt").read_text()
    assert "DropBlock ResNet stage res4" in log_txt
    assert "COCO evaluation backend" in log_txt
    assert "Evaluation results written to" in log_txt


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["MODEL.DROPBLOCK.KEEP_PROB", "1.5"], "MODEL.DROPBLOCK.KEEP_PROB"),
        (["MODEL.DROPBLOCK.KEEPPROB", "0.9"], "MODEL.DROPBLOCK.KEEPPROB"),
        (["MODEL.DROPBLOCK.STAGES", "['res1']"], "MODEL.DROPBLOCK.STAGES"),
        (["DATASETS.TRAIN", "('dropblock_digits_trian',)"], "dropblock_digits_trian"),
        # No GPU here (the CI machine has none): refused before config.yaml or log.txt exist.
        (["MODEL.DEVICE", "cuda"], "MODEL.DEVICE = 'cuda'"),
    ],
)
def test_bad_input_exits_with_status_2_before_writing_anything(
    tmp_path, capsys, argv_tail, message
):
    out = tmp_path / "never_created"
    argv = ["--config-file", TINY_DROPBLOCK, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    assert _load_train_net().cli(argv + argv_tail) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "config_file, argv_tail, message",
    [
        # The RetinaNet twin backbone inside Faster R-CNN: P3-P7 where the RPN reads P2-P6.
        (
            TINY_RCNN,
            ["MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_dropblock_backbone"],
            "builds the FPN of 'build_retinanet_resnet_fpn_backbone'",
        ),
        # DropBlock on, but in no stage, level or head.
        (TINY_DROPBLOCK, ["MODEL.DROPBLOCK.STAGES", "[]"], "asks for DropBlock nowhere"),
        # A DropBlock stage that the ResNet does not build (C4: res5 is the stock RoI head's).
        (
            TINY_RCNN,
            [
                "MODEL.BACKBONE.NAME", "build_resnet_dropblock_backbone",
                "MODEL.RESNETS.OUT_FEATURES", "['res4']",
                "MODEL.RPN.IN_FEATURES", "['res4']",
                "MODEL.ROI_HEADS.NAME", "Res5ROIHeads",
                "MODEL.ROI_HEADS.IN_FEATURES", "['res4']",
                "MODEL.ANCHOR_GENERATOR.SIZES", "[[12, 24, 48]]",
                "MODEL.DROPBLOCK.ROI_HEADS", "False",
            ],
            "MODEL.DROPBLOCK.STAGES asks for DropBlock in ['res5']",
        ),  # fmt: skip
        # R-18 widths the BasicBlock stages cannot have.
        (TINY_DROPBLOCK, ["MODEL.RESNETS.RES2_OUT_CHANNELS", "256"], "R18/R34 need"),
        # Deformable bottlenecks in a DropBlock stage.
        (
            TINY_DROPBLOCK,
            [*map(str, NARROW_R50_OPTS), "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[0, 0, 0, 1]"],
            "DeformBottleneckBlock blocks take no DropBlock",
        ),
        # A name Detectron2's registry does not hold (a KeyError of the builder).
        (TINY_RCNN, ["MODEL.PROPOSAL_GENERATOR.NAME", "RPNN"], "No object named 'RPNN'"),
    ],
    ids=["retinanet-backbone-in-rcnn", "nowhere", "stage-not-built", "r18-width", "deform", "rpn"],
)
def test_setting_the_model_builders_refuse_exits_with_status_2_before_writing_anything(
    tmp_path, capsys, config_file, argv_tail, message
):
    out = tmp_path / "never_created"
    argv = ["--config-file", config_file, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    assert _load_train_net().cli(argv + argv_tail) == 2
    err = capsys.readouterr().err
    # One message line, no traceback (a value the config check refuses never reaches the build).
    assert err.startswith("train_net.py: error: ")
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_config_file_exits_with_status_2(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert _load_train_net().cli(["--config-file", missing]) == 2
    assert f"--config-file {missing!r} does not exist." in capsys.readouterr().err
    assert _load_train_net().cli(["--config-file", str(tmp_path)]) == 2
    assert f"--config-file {str(tmp_path)!r} is a folder, not a file." in capsys.readouterr().err


def test_trainer_registers_the_schedule_before_the_lr_scheduler_only_with_dropblock(
    tiny_cfg, tmp_path
):
    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", True, "OUTPUT_DIR", str(tmp_path))
    names = [type(h) for h in Trainer(cfg)._hooks]
    assert names.index(DropBlockSchedule) < names.index(hooks.LRScheduler)

    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", False, "OUTPUT_DIR", str(tmp_path))
    assert DropBlockSchedule not in [type(h) for h in Trainer(cfg)._hooks]


def test_trainer_refuses_enabled_dropblock_that_inserts_nothing(tiny_cfg):
    cfg = tiny_cfg("MODEL.DROPBLOCK.ENABLED", True, "MODEL.DROPBLOCK.STAGES", [])
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.ENABLED is True but"):
        Trainer.build_model(cfg)


def test_optimizer_choice(tiny_cfg):
    cfg = tiny_cfg()
    model = build_model(cfg)
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(Trainer.build_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == cfg.SOLVER.BASE_LR
    cfg.SOLVER.OPTIMIZER = "ADAM"
    with pytest.raises(ValueError, match=r"SOLVER\.OPTIMIZER"):
        Trainer.build_optimizer(cfg, model)


def test_scale_jitter_crops_and_pads_every_training_image_to_the_target_size(tiny_cfg):
    cfg = tiny_cfg("SOLVER.IMS_PER_BATCH", 4)
    target = 96
    cfg.INPUT.SCALE_JITTER = CN(
        {"ENABLED": True, "MIN_SCALE": 0.5, "MAX_SCALE": 1.5, "TARGET_SIZE": target}
    )
    loader = Trainer.build_train_loader(cfg)
    batches = [batch for _, batch in zip(range(3), loader, strict=False)]
    for batch in batches:
        for item in batch:
            assert tuple(item["image"].shape[1:]) == (target, target)
            boxes = item["instances"].gt_boxes.tensor
            assert bool((boxes >= 0).all() and (boxes <= target).all())
            assert bool((item["instances"].gt_boxes.area() > 0).all())


def test_write_eval_results_is_atomic_and_keeps_nan(tmp_path):
    results = {"bbox": {"AP": 12.5, "AP-7": float("nan")}}
    path = write_eval_results(str(tmp_path), results, iteration=99)
    with open(path) as f:
        written = json.load(f)
    assert written["iteration"] == 99
    assert written["results"]["bbox"]["AP"] == 12.5
    assert math.isnan(written["results"]["bbox"]["AP-7"])
    assert os.listdir(tmp_path) == [EVAL_RESULTS_FILE]  # no temporary file left behind
