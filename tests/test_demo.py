"""The demo path end to end, seconds-long: dataset -> both trainings -> evaluation -> report + pictures.

Runs ``tools/demo.py`` once, exactly as ``make demo`` does with 4 iterations instead of the full
schedule, then checks what it wrote against the runs' own files: the numbers of report.md and of
the printed table against each run's eval_results.json, the DropBlock column against its
config.yaml, and the figures against the metrics.json series they were drawn from.
"""

import inspect
import json
import math
import re
from itertools import pairwise
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml
from helpers import DEMO, run_tool
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image

from dropblock_det.hooks import KEEP_PROB_METRIC
from dropblock_det.tools.demo import RUNS
from dropblock_det.tools.reporting import write_report
from dropblock_det.tools.reporting.plots import LOSS_KEYS, run_colors
from dropblock_det.tools.reporting.report import FIGURE_NAMES, REPORT_NAME
from dropblock_det.tools.reporting.runs import BBOX_METRICS
from dropblock_det.tools.reporting.table import PAPER_RESULTS

# Every test here reads the one run of tools/demo.py (a subprocess that trains twice).
pytestmark = pytest.mark.slow

NAMES = [name for name, _ in RUNS]
HEADER = ["Run", "DropBlock", *BBOX_METRICS, "Status"]
# The digits after the point the demo's report uses (write_report's default).
DECIMALS = inspect.signature(write_report).parameters["decimals"].default
# How the report shows a metric with no number (paper rows), as its first footnote says.
MISSING = "–"
# Ghiasi et al. 2018, Table 3: the published AP of RetinaNet without and with DropBlock.
PAPER_AP_CELLS = ("36.8", "38.4 (+1.6)")
MASKS_PNG = "dropblock_masks.png"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of tools/demo.py; its output folder and the captured console output."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    cmd = [
        DEMO, "--out", str(out), "--max-iter", "4",
        # Few-iteration models: keep every candidate so that there are detections to score, and a
        # small batch to keep the test short.
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "SOLVER.IMS_PER_BATCH", "2",
    ]  # fmt: skip
    proc = run_tool(cmd, timeout=900)
    return out, proc.stdout


def _run_files(out, name):
    """(config, eval bbox metrics, eval iteration, metrics.json entries) of one run folder."""
    run_dir = out / name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    evaluation = json.loads((run_dir / "eval_results.json").read_text())
    lines = (run_dir / "metrics.json").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return config, evaluation["results"]["bbox"], evaluation["iteration"], entries


def _series(entries, key):
    """(iterations, values) of one scalar in metrics.json entries, in the file's order."""
    points = [(e["iteration"], e[key]) for e in entries if key in e]
    return [it for it, _ in points], [v for _, v in points]


def _metric_cell(value, reference):
    """A metric cell as the report rounds it: value, then (+x.x) to the reference when both exist."""
    if math.isnan(value):
        return "NaN"
    text = f"{value:.{DECIMALS}f}"
    if reference is not None and not math.isnan(reference):
        text += f" ({round(value - reference, DECIMALS) + 0.0:+.{DECIMALS}f})"
    return text


def _dropblock_label(config):
    d = config["MODEL"]["DROPBLOCK"]
    if not d["ENABLED"]:
        return "off"
    where = list(d["STAGES"]) + list(d["FPN"]) + (["head"] if d["HEAD"] else [])
    return f"kp {d['KEEP_PROB']:g} bs {d['BLOCK_SIZE']} {','.join(where)}"


def _expected_run_rows(out):
    """Run name -> its table cells, derived from the run's config.yaml and eval_results.json."""
    rows = {}
    reference = None
    for name in NAMES:
        config, bbox, _, _ = _run_files(out, name)
        values = [float(bbox[m]) for m in BBOX_METRICS]
        refs = reference or [None] * len(values)
        metrics = [_metric_cell(v, r) for v, r in zip(values, refs, strict=True)]
        rows[name] = [name, _dropblock_label(config), *metrics, "evaluated"]
        reference = reference or values
    return rows


def _parse_markdown_table(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [
        [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in lines
    ]
    header, align, *rows = cells
    assert all(set(a) <= set(":-") for a in align), align
    return header, rows


def _parse_text_table(stdout):
    """The printed fixed-width table: cut each line at the columns of its dashed rule."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Run", "DropBlock"])
    rule = lines[start + 1]
    assert set(rule) == {"-", " "}, rule
    spans = [m.span() for m in re.finditer(r"-+", rule)]

    def cut(line):
        return [line[a:b].strip() for a, b in spans[:-1]] + [line[spans[-1][0] :].strip()]

    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        if line != rule:
            rows.append(cut(line))
    return cut(lines[start]), rows


def _check_table(header, rows, out, paper_label=lambda label: label):
    assert header == HEADER
    expected = _expected_run_rows(out)
    assert [row[0] for row in rows[: len(NAMES)]] == NAMES
    for row in rows[: len(NAMES)]:
        assert row == expected[row[0]], (row, expected[row[0]])
    paper_rows = rows[len(NAMES) :]
    assert [paper_label(row[0]) for row in paper_rows] == [p.label for p in PAPER_RESULTS]
    for row, paper, ap_cell in zip(paper_rows, PAPER_RESULTS, PAPER_AP_CELLS, strict=True):
        assert row[1] == paper.dropblock
        assert row[2] == ap_cell
        assert row[3 : 2 + len(BBOX_METRICS)] == [MISSING] * (len(BBOX_METRICS) - 1)


def test_report_table_has_each_runs_rounded_eval_results_deltas_and_config(demo):
    out, _ = demo
    markdown = (out / "report" / REPORT_NAME).read_text()
    header, rows = _parse_markdown_table(markdown)
    _check_table(header, rows, out, paper_label=lambda label: label.strip("*"))
    assert f"'{MISSING}': no number" in markdown
    assert "not evaluated" not in markdown


def test_printed_table_has_each_runs_rounded_eval_results_deltas_and_config(demo):
    out, stdout = demo
    header, rows = _parse_text_table(stdout)
    _check_table(header, rows, out)


def test_report_run_details_match_config_metrics_and_eval_files(demo):
    out, _ = demo
    markdown = (out / "report" / REPORT_NAME).read_text()
    for name in NAMES:
        config, _, eval_iteration, entries = _run_files(out, name)
        assert (out / name / "model_final.pth").is_file(), name
        assert (out / f"{name}.log").is_file(), name
        trained, _ = _series(entries, "total_loss")
        max_iter = config["SOLVER"]["MAX_ITER"]
        assert trained[-1] + 1 == max_iter == eval_iteration
        d = config["MODEL"]["DROPBLOCK"]
        label = _dropblock_label(config)
        if d["ENABLED"]:
            label += (
                f" (placement {d['PLACEMENT']}, gamma {d['GAMMA']}, keep_prob "
                f"{d['SCHEDULE']['START']:g} → {d['KEEP_PROB']:g} over "
                f"{d['SCHEDULE']['RAMP']:.0%} of the run)"
            )
        expected = [
            f"- **{name}** (`../{name}`): evaluated.",
            f"  - DropBlock: {label}",
            f"  - training: {max_iter}/{max_iter} iterations (SOLVER.MAX_ITER) logged, "
            "model_final.pth present",
            f"  - numbers from eval_results.json (iteration {eval_iteration}), dataset "
            f"{config['DATASETS']['TEST'][0]}",
        ]
        assert "\n".join(expected) in markdown, name


def test_dropblock_run_logs_keep_prob_falling_as_the_schedule_says(demo):
    out, _ = demo
    _, _, _, baseline_entries = _run_files(out, "baseline")
    assert not any(KEEP_PROB_METRIC in e for e in baseline_entries)
    config, _, _, entries = _run_files(out, "dropblock")
    d, max_iter = config["MODEL"]["DROPBLOCK"], config["SOLVER"]["MAX_ITER"]
    start, target, ramp = d["SCHEDULE"]["START"], d["KEEP_PROB"], d["SCHEDULE"]["RAMP"]
    assert start == 1.0 and 0 < target < 1.0
    iterations, keep_prob = _series(entries, KEEP_PROB_METRIC)
    assert iterations and iterations[-1] == max_iter - 1, iterations
    for it, value in zip(iterations, keep_prob, strict=True):
        # The ramp spans the steps 0 .. MAX_ITER - 1: the last one runs at KEEP_PROB.
        fraction = min(it / (ramp * (max_iter - 1)), 1.0) if ramp > 0 else 1.0
        assert value == pytest.approx(start - (start - target) * fraction, abs=1e-9), it
    assert all(a >= b for a, b in pairwise(keep_prob))
    assert keep_prob[-1] == pytest.approx(target, abs=1e-12)


def _redraw_report(out, tmp_path, monkeypatch):
    """Re-run the report on the demo's run folders; PNG name -> (the Figure, the dpi it asked)."""
    drawn = {}
    savefig = Figure.savefig

    def recording_savefig(self, fname, *args, **kwargs):
        drawn[Path(fname).name] = (self, kwargs["dpi"])
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    again = tmp_path / "report_again"
    # With the style the demo process drew in, whatever an earlier test set (optuna's plots set
    # ggplot globally).
    with matplotlib.rc_context():
        matplotlib.rc_file_defaults()
        write_report([out / name for name in NAMES], again, names=NAMES)
    return again, drawn


def _pixels(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _assert_drawn(pixels, name):
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) >= 64, (name, len(colours))  # text, lines, bars: antialiased shades
    assert pixels.std() > 10, name  # not a uniform canvas


def _colour_count(pixels, colour):
    rgb = np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)
    return int(np.all(pixels == rgb, axis=-1).sum())


def test_figures_are_the_plots_of_the_runs_at_the_size_the_plotting_code_asks(
    demo, tmp_path, monkeypatch
):
    out, _ = demo
    again, drawn = _redraw_report(out, tmp_path, monkeypatch)
    assert set(drawn) == set(FIGURE_NAMES.values())
    colours = run_colors(len(NAMES))
    for picture, (figure, dpi) in drawn.items():
        pixels = _pixels(out / "report" / picture)
        width, height = figure.get_size_inches() * dpi
        assert pixels.shape[:2] == (round(height), round(width)), picture
        _assert_drawn(pixels, picture)
        # Drawn from these run folders: the same figure, pixel for pixel, and every run's colour.
        assert np.array_equal(pixels, _pixels(again / picture)), picture
        for name, colour in zip(NAMES, colours, strict=True):
            assert _colour_count(pixels, colour) >= 10, (picture, name)

    runs = {name: _run_files(out, name) for name in NAMES}

    # keep_prob.png: the dropblock run's logged series, the baseline flat at 1.0 over its training.
    (axes,) = drawn[FIGURE_NAMES["keep_prob"]][0].axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    iterations, keep_prob = _series(runs["dropblock"][3], KEEP_PROB_METRIC)
    assert list(lines["dropblock"].get_xdata()) == iterations
    assert list(lines["dropblock"].get_ydata()) == keep_prob
    (baseline_label,) = [label for label in lines if label.startswith("baseline")]
    trained, _ = _series(runs["baseline"][3], "total_loss")
    assert list(lines[baseline_label].get_xdata()) == [trained[0], trained[-1]]
    assert list(lines[baseline_label].get_ydata()) == [1.0, 1.0]
    assert lines[baseline_label].get_linestyle() == "--"

    # ap.png: the AP labels are the table's AP cells; the metric bars are eval_results.json's.
    left, right = drawn[FIGURE_NAMES["ap"]][0].axes
    expected = _expected_run_rows(out)
    assert [t.get_text() for t in left.texts] == [expected[n][2] for n in NAMES] + list(
        PAPER_AP_CELLS
    )
    for container, name in zip(right.containers, NAMES, strict=True):
        bbox = runs[name][1]
        heights = [bar.get_height() for bar in container]
        assert heights == list(np.nan_to_num([float(bbox[m]) for m in BBOX_METRICS]))

    # loss.png: one panel per loss, each run's raw curve from its metrics.json.
    panels = drawn[FIGURE_NAMES["loss"]][0].axes
    assert [ax.get_ylabel() for ax in panels] == [key for key, _ in LOSS_KEYS]
    for ax in panels:
        curves = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
        for name in NAMES:
            assert _series(runs[name][3], ax.get_ylabel()) in curves, name


def test_mask_picture_is_a_drawn_grid_with_red_dropped_cells(demo):
    out, _ = demo
    pixels = _pixels(out / "report" / MASKS_PNG)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 400, (width, height)  # panels of two strides x four blocks
    _assert_drawn(pixels, MASKS_PNG)
    red = pixels[..., 0].astype(int)
    reddish = (red - pixels[..., 1] > 60) & (red - pixels[..., 2] > 60)
    assert reddish.sum() > 1_000, reddish.sum()  # the dropped cells' overlay


def test_console_streams_both_runs_progress_with_their_prefix_and_the_one_seed_note(demo):
    out, stdout = demo
    lines = stdout.splitlines()
    for name in NAMES:
        config, *_ = _run_files(out, name)
        prefix = f"[{name:>9}] "
        own = [line[len(prefix) :] for line in lines if line.startswith(prefix)]
        assert any("Starting training from iteration 0" in line for line in own), name
        last = config["SOLVER"]["MAX_ITER"] - 1
        assert any(re.search(rf"\beta: .*\biter: {last}\b", line) for line in own), name
        assert any("Overall training speed" in line for line in own), name
        stages = config["MODEL"]["DROPBLOCK"]["STAGES"] if name == "dropblock" else []
        for stage in stages:
            assert any(f"DropBlock ResNet stage {stage}:" in line for line in own), stage
    assert not any("DropBlock ResNet stage" in line for line in lines if "[ baseline]" in line)
    seed = _run_files(out, "baseline")[0]["SEED"]
    assert f"[demo] one seed (SEED {seed})" in stdout
    assert "[demo] done in" in stdout
