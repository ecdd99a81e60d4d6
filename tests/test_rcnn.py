"""DropBlock in Faster and Mask R-CNN: the R-CNN backbones, the RoI placement, and their checks."""

import os

import pytest
import torch
from conftest import REPO_ROOT, load_config, read_recording, run_recorded_train_net
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers import seeded_generator

from dropblock_det.modeling import DropBlockFastRCNNConvFCHead, check_placements, dropblock_modules
from dropblock_det.tools.trainer import Trainer

TINY_RCNN = os.path.join(REPO_ROOT, "configs", "tiny", "tiny_faster_rcnn_R18_FPN_dropblock.yaml")


def _cfg(*opts):
    return load_config(TINY_RCNN, opts)


def _stock_twin(cfg):
    """The same config as stock Detectron2 R-CNN: stock builders and heads, DropBlock off."""
    stock = cfg.clone()
    stock.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    stock.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    stock.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    stock.MODEL.DROPBLOCK.ENABLED = False
    return stock


def _groups(model):
    groups = {}
    for name, _, group in dropblock_modules(model):
        groups.setdefault(group, []).append(name)
    return groups


def _images(seed=0):
    generator = seeded_generator(seed)
    return [
        {"image": torch.randint(0, 256, (3, 96, 80), generator=generator).float()},
        {"image": torch.randint(0, 256, (3, 72, 96), generator=generator).float()},
    ]


MASK_OPTS = ("MODEL.MASK_ON", True)


def test_faster_rcnn_gets_its_own_fpn_and_roi_dropblock():
    model = build_model(_cfg())
    assert type(model.backbone) is FPN and isinstance(model.backbone.top_block, LastLevelMaxPool)
    groups = _groups(model)
    assert sorted(groups) == ["res4", "res5", "roi_box"]
    assert groups["roi_box"] == ["roi_heads.box_head.dropblock"]


def test_mask_rcnn_drops_after_every_mask_head_conv():
    model = build_model(_cfg(*MASK_OPTS))
    groups = _groups(model)
    assert groups["roi_mask"] == [
        f"roi_heads.mask_head.mask_fcn{k}_dropblock" for k in (1, 2, 3, 4)
    ]


@pytest.mark.parametrize(
    "opts",
    [pytest.param((), id="faster"), pytest.param(MASK_OPTS, id="mask", marks=pytest.mark.slow)],
)
def test_state_dict_and_eval_detections_equal_stock_rcnn(opts):
    cfg = _cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *opts)
    torch.manual_seed(0)
    stock = build_model(_stock_twin(cfg))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert dropblock_modules(model)
    stock_state, state = stock.state_dict(), model.state_dict()
    # Same keys in the same order, and the same random initialisation under the same seed.
    assert list(state) == list(stock_state)
    assert all(torch.equal(state[k], stock_state[k]) for k in state)
    for _, m, _ in dropblock_modules(model):
        m.keep_prob = 0.5
    with torch.no_grad():
        expected, actual = stock.eval()(_images()), model.eval()(_images())
    for e, a in zip(expected, actual, strict=True):
        e, a = e["instances"], a["instances"]
        assert len(e) > 0
        assert torch.equal(e.pred_boxes.tensor, a.pred_boxes.tensor)
        assert torch.equal(e.scores, a.scores)
        if "pred_masks" in e.get_fields():
            assert torch.equal(e.pred_masks, a.pred_masks)


def test_disabled_builds_exactly_the_stock_modules():
    cfg = _cfg("MODEL.DROPBLOCK.ENABLED", False, *MASK_OPTS)
    model, stock = build_model(cfg), build_model(_stock_twin(cfg))
    assert not dropblock_modules(model)
    assert repr(model.backbone) == repr(stock.backbone)
    # The registered heads are subclasses of the stock ones; apart from the name, the same layers.
    assert repr(model.roi_heads).replace("DropBlock", "") == repr(stock.roi_heads)


def test_a_training_step_drops_in_every_r_cnn_group():
    torch.manual_seed(0)
    model = build_model(_cfg(*MASK_OPTS)).train()
    dropped = {}

    def record(group):
        def hook(module, inputs, output):
            zeroed = bool((output == 0).logical_and(inputs[0] != 0).any())
            dropped[group] = dropped.get(group, False) or zeroed

        return hook

    for _, m, group in dropblock_modules(model):
        m.keep_prob = 0.6
        m.register_forward_hook(record(group))
    batch = _images()
    for item in batch:
        instances = Instances(item["image"].shape[1:])
        instances.gt_boxes = Boxes(
            torch.tensor([[10.0, 12.0, 40.0, 60.0], [30.0, 20.0, 70.0, 66.0]])
        )
        instances.gt_classes = torch.tensor([1, 7])
        masks = torch.zeros(2, *item["image"].shape[1:], dtype=torch.bool)
        masks[0, 12:60, 10:40] = masks[1, 20:66, 30:70] = True
        instances.gt_masks = BitMasks(masks)
        item["instances"] = instances
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    assert dropped == {"res4": True, "res5": True, "roi_box": True, "roi_mask": True}


@pytest.mark.parametrize(
    "opts, wanted",
    [
        # R-CNN with RetinaNet's DropBlock backbone (LastLevelP6P7): refused, naming the right one.
        (
            ("MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_dropblock_backbone"),
            "build_resnet_fpn_dropblock_backbone",
        ),
        # RetinaNet with the R-CNN one.
        (
            (
                "MODEL.META_ARCHITECTURE", "RetinaNet",
                "MODEL.BACKBONE.NAME", "build_resnet_fpn_dropblock_backbone",
                "MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"],
            ),
            "build_retinanet_resnet_fpn_dropblock_backbone",
        ),
    ],
    ids=["rcnn-with-retinanet-fpn", "retinanet-with-rcnn-fpn"],
)  # fmt: skip
def test_a_backbone_whose_top_block_does_not_match_the_meta_architecture_is_refused(opts, wanted):
    with pytest.raises(ValueError, match=rf"MODEL\.BACKBONE\.NAME.*{wanted}"):
        build_model(_cfg(*opts))


def test_model_check_names_the_r_cnn_backbone_for_a_stock_one():
    cfg = _cfg("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone")
    with pytest.raises(ValueError, match="'build_resnet_fpn_dropblock_backbone'"):
        check_placements(build_model(cfg), cfg)


def test_roi_dropblock_with_a_stock_box_head_is_refused_naming_the_key():
    cfg = _cfg("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead")
    with pytest.raises(
        ValueError,
        match=r"MODEL\.DROPBLOCK\.ROI_HEADS.*roi_box.*MODEL\.ROI_BOX_HEAD\.NAME to "
        r"'DropBlockFastRCNNConvFCHead'",
    ):
        Trainer.build_model(cfg)


def test_c4_backbone_takes_stages_up_to_res4_and_refuses_res5():
    opts = (
        "MODEL.BACKBONE.NAME", "build_resnet_dropblock_backbone",
        "MODEL.RESNETS.OUT_FEATURES", ["res4"],
        "MODEL.RPN.IN_FEATURES", ["res4"],
        "MODEL.ROI_HEADS.NAME", "Res5ROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES", ["res4"],
        "MODEL.ANCHOR_GENERATOR.SIZES", [[12, 24, 48]],
        "MODEL.DROPBLOCK.ROI_HEADS", False,
    )  # fmt: skip
    model = build_model(_cfg(*opts, "MODEL.DROPBLOCK.STAGES", ["res3", "res4"]))
    assert type(model.backbone) is ResNet
    assert sorted(_groups(model)) == ["res3", "res4"]
    cfg = _cfg(*opts)
    with pytest.raises(ValueError, match=r"MODEL\.DROPBLOCK\.STAGES.*res5.*OUT_FEATURES"):
        check_placements(build_model(cfg), cfg)


def test_box_head_registered_in_detectron2s_registry():
    from detectron2.modeling import ROI_BOX_HEAD_REGISTRY

    assert ROI_BOX_HEAD_REGISTRY.get("DropBlockFastRCNNConvFCHead") is DropBlockFastRCNNConvFCHead


@pytest.mark.slow
def test_two_processes_train_faster_rcnn_with_one_schedule(tmp_path):
    out = str(tmp_path / "rcnn_ddp")
    argv = [
        "--num-gpus", "2", "--dist-url", "auto",
        "--config-file", TINY_RCNN,
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out, "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.CHECKPOINT_PERIOD", "1000",
    ]  # fmt: skip
    run_recorded_train_net(argv, timeout=420)
    steps = [read_recording(out, rank)[0] for rank in (0, 1)]
    for it in range(3):
        first, second = steps[0][it], steps[1][it]
        # Every DropBlock call (backbone and RoI head) of both ranks used the same keep_prob.
        assert first["keep_probs"] and first["keep_probs"] == second["keep_probs"]
    # The schedule moved: keep_prob 1 at step 0, below 1 after.
    assert set(steps[0][0]["keep_probs"]) == {1.0}
    assert max(steps[0][2]["keep_probs"]) < 1.0
