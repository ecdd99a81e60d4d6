"""Tests of run reports (tools/compare.py) and DropBlock mask pictures (tools/visualize_dropblock.py).

Run folders are built in tmp_path in the format tools/train_net.py writes: config.yaml (Detectron2
dump), metrics.json (JSONWriter lines) and eval_results.json.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO_ROOT
from PIL import Image

from dropblock_det.tools.reporting import write_report
from dropblock_det.tools.reporting.masks import feature_map_size, sample_dropped_cells
from dropblock_det.tools.reporting.plots import smooth
from dropblock_det.tools.reporting.runs import (
    BBOX_METRICS,
    NotARunFolderError,
    read_metrics_json,
    read_run,
    read_runs,
)
from dropblock_det.tools.reporting.table import build_rows, format_markdown_table, format_text_table

BASELINE_EVAL = {"AP": 31.25, "AP50": 55.1, "AP75": 30.2, "APs": 12.3, "APm": 35.0, "APl": 45.7}
DROPBLOCK_EVAL = {"AP": 33.0, "AP50": 56.0, "AP75": 32.9, "APs": math.nan, "APm": 36.1, "APl": 47.0}


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, Path(REPO_ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_run(
    path,
    *,
    max_iter=100,
    logged_to=100,
    dropblock=False,
    keep_prob=0.9,
    eval_results=None,
    metrics_evals=(),
    broken_last_line=False,
    final_checkpoint=False,
    test_datasets=("digits_val",),
    meta_architecture="DropBlockRetinaNet",
    mask_on=False,
    roi_heads=False,
):
    """Write a run folder; ``metrics_evals`` is a list of (iteration, {metric: value}) logged."""
    path.mkdir(parents=True)
    config = {
        "DATASETS": {"TEST": list(test_datasets), "TRAIN": ["digits_train"]},
        "MODEL": {
            "META_ARCHITECTURE": meta_architecture,
            "MASK_ON": mask_on,
            "DROPBLOCK": {
                "ENABLED": dropblock,
                "KEEP_PROB": keep_prob,
                "BLOCK_SIZE": 7,
                "STAGES": ["res4", "res5"],
                "FPN": [],
                "HEAD": False,
                "ROI_HEADS": roi_heads,
            },
        },
        "SOLVER": {"MAX_ITER": max_iter},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for iteration in range(9, logged_to, 10):  # PeriodicWriter every 10 iterations
        entry = {
            "iteration": iteration,
            "total_loss": 2.0 - iteration / max_iter,
            "loss_cls": 1.2 - 0.5 * iteration / max_iter,
            "loss_box_reg": 0.8 - 0.5 * iteration / max_iter,
            "lr": 0.01,
            "time": 0.2,
        }
        if dropblock:
            entry["dropblock/keep_prob"] = 1.0 - (1.0 - keep_prob) * iteration / max_iter
        lines.append(json.dumps(entry, sort_keys=True))
    for iteration, metrics in metrics_evals:
        lines.append(
            json.dumps({"iteration": iteration, **{f"bbox/{k}": v for k, v in metrics.items()}})
        )
    text = "\n".join(lines) + ("\n" if lines else "")
    if broken_last_line:
        text += '{"data_time": 0.01, "iteration": 10'  # killed in the middle of a write
    (path / "metrics.json").write_text(text)
    if eval_results is not None:
        (path / "eval_results.json").write_text(json.dumps(eval_results))
    if final_checkpoint:
        (path / "model_final.pth").write_bytes(b"")
    return path


@pytest.fixture
def runs(tmp_path):
    """A finished baseline, a finished DropBlock run evaluated in training, an unfinished run with
    a broken last line, and a finished run that was never evaluated."""
    root = tmp_path / "runs"
    return [
        _make_run(
            root / "baseline",
            eval_results={"iteration": 99, "results": {"bbox": BASELINE_EVAL}},
            final_checkpoint=True,
        ),
        _make_run(
            root / "dropblock",
            dropblock=True,
            # Detectron2 logs the final evaluation at iteration MAX_ITER, after the last step.
            metrics_evals=[(49, {m: 1.0 for m in BBOX_METRICS}), (100, DROPBLOCK_EVAL)],
        ),
        _make_run(
            root / "running", dropblock=True, keep_prob=0.8, logged_to=40, broken_last_line=True
        ),
        _make_run(root / "no_eval", dropblock=True),
    ]


def _assert_valid_png(path, min_side=200):
    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as image:
        assert min(image.size) >= min_side


# ----------------------------------------------------------------------------- reading runs


def test_metrics_json_broken_last_line_and_resumed_iterations(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        '{"iteration": 9, "total_loss": 3.0}\n'
        '{"iteration": 19, "total_loss": 2.0}\n'
        # resumed from iteration 9: iteration 19 is logged again and wins
        '{"iteration": 19, "total_loss": 1.5, "lr": 0.01}\n'
        # an evaluation logged on its own line at the same iteration is merged in
        '{"bbox/AP": 10.0, "iteration": 19}\n'
        '{"iteration": 29, "total_l'
    )
    log = read_metrics_json(path)
    assert [e["iteration"] for e in log.entries] == [9, 19]
    assert log.entries[1] == {"iteration": 19, "total_loss": 1.5, "lr": 0.01, "bbox/AP": 10.0}
    assert log.skipped_lines == [5] and log.line_count == 5
    assert log.series("total_loss") == ([9, 19], [3.0, 1.5])
    assert log.series("dropblock/keep_prob") == ([], [])


def test_eval_results_json_preferred_over_metrics_json(tmp_path):
    run = read_run(
        _make_run(
            tmp_path / "r",
            eval_results={"iteration": 99, "results": {"bbox": BASELINE_EVAL}},
            metrics_evals=[(99, {m: 1.0 for m in BBOX_METRICS})],
            final_checkpoint=True,
        )
    )
    assert run.evaluation.source == "eval_results.json"
    assert run.evaluation.metrics == BASELINE_EVAL
    assert run.evaluation.dataset == "digits_val"
    assert run.status == "evaluated"


def test_last_metrics_json_evaluation_used_without_eval_results(runs):
    run = read_run(runs[1])
    assert run.evaluation.source == "metrics.json"
    assert run.evaluation.iteration == 100  # the later of the two evaluations
    assert run.iterations_done == 100  # evaluation lines are not training steps
    assert run.training_finished is True and run.status == "evaluated"
    assert run.evaluation.metrics["AP"] == 33.0
    assert math.isnan(run.evaluation.metrics["APs"])
    assert run.dropblock_label == "kp 0.9 bs 7 res4,res5"


def test_unevaluated_runs_say_whether_training_finished(runs):
    running, no_eval = read_run(runs[2]), read_run(runs[3])
    assert running.evaluation is None and no_eval.evaluation is None
    assert running.training_finished is False
    assert running.status == "not evaluated: training unfinished (40/100 iters)"
    assert any("partial last line" in note for note in running.notes)
    assert no_eval.training_finished is True
    assert no_eval.status == "not evaluated: training finished, no evaluation"


def test_intermediate_evaluation_of_unfinished_run(tmp_path):
    run = read_run(_make_run(tmp_path / "r", logged_to=60, metrics_evals=[(49, BASELINE_EVAL)]))
    assert run.status == "evaluated at iter 49; training unfinished (60/100 iters)"


def test_several_test_datasets(tmp_path):
    other = dict(BASELINE_EVAL, AP=50.0)
    path = _make_run(
        tmp_path / "r",
        test_datasets=("val_b", "val_a"),
        eval_results={
            "iteration": None,
            "results": {"val_a": {"bbox": other}, "val_b": {"bbox": BASELINE_EVAL}},
        },
    )
    default = read_run(path)
    assert default.evaluation.dataset == "val_b"  # DATASETS.TEST[0], not the first key
    assert default.evaluation.other_datasets == ["val_a"]
    assert default.evaluation.iteration is None
    assert read_run(path, dataset="val_a").evaluation.metrics["AP"] == 50.0
    with pytest.raises(ValueError, match="val_c"):
        read_run(path, dataset="val_c")


def test_flattened_multi_dataset_keys_in_metrics_json(tmp_path):
    path = _make_run(tmp_path / "r", test_datasets=("val_a", "val_b"))
    with open(path / "metrics.json", "a") as f:
        entry = {f"{d}/bbox/{m}": v for d in ("val_a", "val_b") for m, v in BASELINE_EVAL.items()}
        entry["val_b/bbox/AP"] = 12.0
        f.write(json.dumps({"iteration": 99, **entry}) + "\n")
    assert read_run(path).evaluation.metrics["AP"] == BASELINE_EVAL["AP"]
    assert read_run(path, dataset="val_b").evaluation.metrics["AP"] == 12.0


def test_unreadable_eval_results_falls_back_with_a_note(tmp_path):
    path = _make_run(tmp_path / "r", metrics_evals=[(99, BASELINE_EVAL)])
    (path / "eval_results.json").write_text('{"iteration": 99, "resu')
    run = read_run(path)
    assert run.evaluation.source == "metrics.json"
    assert any("eval_results.json unreadable" in note for note in run.notes)


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "file"])
def test_not_a_run_folder_names_the_path(tmp_path, kind):
    path = tmp_path / "not_a_run"
    if kind == "empty_dir":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    with pytest.raises(NotARunFolderError, match="not_a_run"):
        read_run(path)


def test_names_must_match_runs(runs):
    with pytest.raises(ValueError, match="--names has 1 name"):
        read_runs(runs[:2], names=["only_one"])
    assert [r.name for r in read_runs(runs[:2], names=["a", "b"])] == ["a", "b"]


def test_duplicate_folder_names_get_their_parent(tmp_path):
    a = _make_run(tmp_path / "exp_a" / "output")
    b = _make_run(tmp_path / "exp_b" / "output")
    assert [r.name for r in read_runs([a, b])] == ["exp_a/output", "exp_b/output"]


# ----------------------------------------------------------------------------- table


def test_table_values_deltas_and_paper_rows(runs):
    rows = build_rows(read_runs(runs), include_paper=True)
    assert [r.label for r in rows][:4] == ["baseline", "dropblock", "running", "no_eval"]
    assert rows[0].deltas is None  # the reference
    assert rows[1].deltas["AP"] == pytest.approx(33.0 - 31.25)
    assert rows[1].deltas["APs"] is None  # NaN has no difference
    assert all(v is None for v in rows[2].values.values())
    assert rows[2].deltas == {m: None for m in BBOX_METRICS}
    paper = rows[4:]
    assert [r.values["AP"] for r in paper] == [36.8, 38.4]
    assert paper[1].deltas["AP"] == pytest.approx(1.6)
    assert all(r.values[m] is None for r in paper for m in BBOX_METRICS if m != "AP")

    text = format_text_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["Run", "DropBlock", "AP"]
    assert "33.0 (+1.8)" in text  # 1.75 rounds to 1.8
    assert "38.4 (+1.6)" in text
    assert "not evaluated: training unfinished (40/100 iters)" in text

    markdown = format_markdown_table(rows)
    assert markdown.splitlines()[1].startswith("| :-- | :-- | --: |")
    assert "| baseline | off | 31.2 | 55.1 | 30.2 | 12.3 | 35.0 | 45.7 | evaluated |" in markdown
    assert "| NaN |" in markdown


def test_text_table_columns_align(runs):
    lines = format_text_table(build_rows(read_runs(runs), include_paper=True)).splitlines()
    header = lines[0]
    # Right-aligned metric columns: each metric's header ends where its cells end.
    for metric in ("AP50", "APl"):
        end = header.index(f" {metric} ") + len(metric) + 1
        for line in lines[2:]:
            if not line.startswith("-"):
                assert line[end - 1] != " ", (metric, line)
                assert line[end] == " ", (metric, line)


def test_no_paper_rows_and_unevaluated_reference(runs):
    rows = build_rows(read_runs([runs[3], runs[0]]), include_paper=False)
    assert len(rows) == 2
    assert rows[1].values["AP"] == 31.25
    assert rows[1].deltas == {m: None for m in BBOX_METRICS}


# ----------------------------------------------------------------------------- report and plots


def test_compare_cli_writes_report_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "report"
    compare = _load_tool("compare")
    argv = [*map(str, runs), "--out", str(out), "--names", "base,db,run,noeval"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert "33.0 (+1.8)" in printed and "38.4 (+1.6)" in printed
    assert "NaN: COCOeval had no detections" in printed  # the DropBlock run's APs
    assert f"Wrote {out / 'report.md'}" in printed
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| base | off | 31.2 |" in markdown
    assert "| db | kp 0.9 bs 7 res4,res5 | 33.0 (+1.8) |" in markdown
    assert "not evaluated: training unfinished (40/100 iters)" in markdown
    assert "not evaluated: training finished, no evaluation" in markdown
    assert "*Paper: RetinaNet R50-FPN, random init* | off | 36.8 |" in markdown
    assert "*Paper: + DropBlock kp 0.9* | kp 0.9 | 38.4 (+1.6) |" in markdown
    assert "Ghiasi et al. 2018" in markdown
    assert "partial last line" in markdown
    assert "`../runs/baseline`" in markdown  # relative to the report folder
    for name in ("ap.png", "keep_prob.png", "loss.png"):
        assert f"]({name})" in markdown
        _assert_valid_png(out / name)


def _mask_rcnn_runs(root):
    """A Mask R-CNN baseline and its twin with DropBlock in res4, res5 and the RoI heads."""
    segm = {"AP": 27.5, "AP50": 50.0, "AP75": 26.0, "APs": 10.0, "APm": 30.0, "APl": 40.0}
    common = dict(meta_architecture="GeneralizedRCNN", mask_on=True, final_checkpoint=True)
    return [
        _make_run(
            root / "mask_base",
            eval_results={"iteration": 99, "results": {"bbox": BASELINE_EVAL, "segm": segm}},
            **common,
        ),
        _make_run(
            root / "mask_db",
            dropblock=True,
            roi_heads=True,
            eval_results={
                "iteration": 99,
                "results": {"bbox": DROPBLOCK_EVAL, "segm": dict(segm, AP=29.0)},
            },
            **common,
        ),
    ]


def test_mask_rcnn_table_has_segm_ap_the_roi_groups_and_no_retinanet_paper_rows(tmp_path):
    result = write_report(_mask_rcnn_runs(tmp_path / "runs"), tmp_path / "out")
    header = result.table_text.splitlines()[0].split("  ")
    assert [c.strip() for c in header if c.strip()] == [
        "Run",
        "DropBlock",
        *BBOX_METRICS,
        "segm AP",
        "Status",
    ]
    assert "| mask_base | off | 31.2 | 55.1 | 30.2 | 12.3 | 35.0 | 45.7 | 27.5 | evaluated |" in (
        result.markdown
    )
    # The DropBlock column names every group the config asks for, the RoI heads' included.
    db_row = next(r for r in result.rows if r.label == "mask_db")
    assert db_row.dropblock == "kp 0.9 bs 7 res4,res5,roi_box,roi_mask"
    assert db_row.values["segm AP"] == 29.0 and db_row.deltas["segm AP"] == pytest.approx(1.5)
    assert "29.0 (+1.5)" in result.table_text
    # The paper's rows are RetinaNet results: left out for R-CNN runs, and the report says why.
    assert not any(r.is_paper for r in result.rows)
    assert "Paper:" not in result.markdown
    assert "No paper rows: the paper's COCO results" in result.table_text
    assert "GeneralizedRCNN" in result.table_text


def test_roi_group_without_masks_and_segm_from_metrics_json(tmp_path):
    path = _make_run(
        tmp_path / "faster",
        dropblock=True,
        roi_heads=True,
        meta_architecture="GeneralizedRCNN",
        metrics_evals=[(100, BASELINE_EVAL)],
    )
    run = read_run(path)
    assert run.dropblock_label == "kp 0.9 bs 7 res4,res5,roi_box"  # no mask head, no roi_mask
    assert run.evaluation.segm_ap is None
    with open(path / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": 100, "segm/AP": 12.5}) + "\n")
    assert read_run(path).evaluation.segm_ap == 12.5


def test_retinanet_runs_keep_the_paper_rows_and_have_no_segm_column(runs, tmp_path):
    result = write_report(runs[:2], tmp_path / "out")
    assert sum(r.is_paper for r in result.rows) == 2
    assert "segm AP" not in result.table_text and "No paper rows" not in result.table_text


def test_write_report_without_any_evaluation_or_metrics(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(yaml.safe_dump({"SOLVER": {"MAX_ITER": 10}}))
    result = write_report([bare], tmp_path / "out", include_paper=False)
    assert result.report_path == tmp_path / "out" / "report.md"
    assert result.report_path.read_text(encoding="utf-8") == result.markdown
    assert "not evaluated: no training logged" in result.markdown
    assert "not evaluated: no training logged" in result.table_text
    assert "Paper" not in result.markdown
    assert set(result.figures) == {"ap", "keep_prob", "loss"}
    for path in result.figures.values():
        _assert_valid_png(path)


def test_smooth():
    assert np.allclose(smooth([2.0] * 50, span=9), 2.0)  # bias correction: no pull towards 0
    assert np.array_equal(smooth([3.0, 1.0, 2.0], span=1), [3.0, 1.0, 2.0])
    values = np.r_[np.zeros(20), np.ones(20)]
    smoothed = smooth(values, span=5)
    assert smoothed[0] == 0.0 and 0.0 < smoothed[20] < 1.0 and smoothed[-1] > 0.99


def test_compare_cli_error_names_the_path(runs, tmp_path, capsys):
    compare = _load_tool("compare")
    bogus = tmp_path / "nothing_here"
    assert compare.main([str(runs[0]), str(bogus), "--out", str(tmp_path / "o")]) == 2
    assert str(bogus) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on bad input


# ----------------------------------------------------------------------------- masks


def test_feature_map_size_matches_detectron2_resnet():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    height, width = 77, 50  # odd sizes exercise the ceil rounding
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, height, width))
    for name, stride in (("res3", 8), ("res4", 16), ("res5", 32)):
        assert tuple(features[name].shape[-2:]) == feature_map_size(height, width, stride)
    with pytest.raises(ValueError, match="power of two"):
        feature_map_size(64, 64, 12)


def test_sample_dropped_cells_is_seeded():
    first = sample_dropped_cells(20, 30, keep_prob=0.7, block_size=3, seed=5)
    again = sample_dropped_cells(20, 30, keep_prob=0.7, block_size=3, seed=5)
    assert first.shape == (20, 30) and first.dtype == bool
    assert np.array_equal(first, again)
    assert not sample_dropped_cells(20, 30, keep_prob=1.0, block_size=3).any()


def test_visualize_dropblock_writes_png(tmp_path, capsys):
    image_path = tmp_path / "synthetic.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image_path)
    out = tmp_path / "masks.png"
    visualize = _load_tool("visualize_dropblock")
    argv = ["--image", str(image_path), "--out", str(out), "--block-sizes", "1", "5"]
    assert visualize.main(argv) == 0
    assert "res4 6x8" in capsys.readouterr().out
    _assert_valid_png(out)


def test_visualize_dropblock_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("text")
    visualize = _load_tool("visualize_dropblock")
    assert visualize.main(["--image", str(bad), "--out", str(tmp_path / "o.png")]) == 2
    assert "not_an_image.png" in capsys.readouterr().err
