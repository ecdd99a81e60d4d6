"""The DropBlock search (tools/tune.py): inputs, workers sharing a study, killed workers, pruning,
PostgreSQL, the report and the best yaml.

Every search here trains the tiny search config for 4 iterations on 2 images a step and scores it
on the first 8 validation scenes, registered in each process through Detectron2's
DETECTRON2_ENV_MODULE hook, or, in the study on the user's data, given with --coco-dataset.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import optuna
import pytest
import yaml
from conftest import load_config
from helpers import (
    REPO_ROOT,
    TOOL_TIMEOUT_S,
    TRAIN_NET,
    TUNE,
    read_log,
    run_tool,
    start_tool,
    wait_tool,
    write_coco,
)
from optuna.trial import TrialState

from dropblock_det.tools.tune import main as tune_main

SEARCH_CONFIG = os.path.join(REPO_ROOT, "configs", "search", "tiny_search.yaml")
RCNN_CONFIG = os.path.join(REPO_ROOT, "configs", "tiny", "tiny_faster_rcnn_R18_FPN_dropblock.yaml")
SMALL_VAL = "tune_test_val"
QUICK_OPTS = (
    "MODEL.DEVICE", "cpu",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(3,)",
    # The final evaluation only: one evaluation less per training (the pruner test evaluates
    # during training).
    "TEST.EVAL_PERIOD", "0",
    "DATASETS.TEST", f"('{SMALL_VAL}',)",
    # Every box counts, so that a 4-iteration model's AP is a number rather than "no detections".
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
)  # fmt: skip
SPACE = {
    "MODEL.DROPBLOCK.BLOCK_SIZE": {"choices": [1, 3]},
    "MODEL.DROPBLOCK.KEEP_PROB": {"low": 0.8, "high": 0.95},
}
ENV_MODULE = """
import os


def setup_environment():
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances(
        "{name}", {{}}, os.environ["TUNE_TEST_VAL_JSON"], os.environ["TUNE_TEST_VAL_IMAGES"]
    )
"""
CPU = ("MODEL.DEVICE", "cpu")


def write_digits_subset(folder, dataset, num_images, file_name):
    """Write the first ``num_images`` scenes of an embedded digits split as a COCO json.

    Returns:
        tuple(str, str): the json file and the split's image folder.
    """
    from detectron2.data import MetadataCatalog

    from dropblock_det.tools.data import ensure_dataset, register_dropblock_digits

    register_dropblock_digits()
    ensure_dataset(dataset)
    metadata = MetadataCatalog.get(dataset)
    with open(metadata.json_file) as f:
        coco = json.load(f)
    coco["images"] = coco["images"][:num_images]
    ids = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    json_path = os.path.join(folder, file_name)
    write_coco(json_path, coco)
    return json_path, metadata.image_root


@pytest.fixture(scope="module")
def small_val_env(tmp_path_factory):
    """Environment variables that register SMALL_VAL (8 validation scenes) in every process."""
    from dropblock_det.tools.data import VAL_DATASET

    folder = tmp_path_factory.mktemp("small_val")
    json_path, image_root = write_digits_subset(str(folder), VAL_DATASET, 8, "val8.json")
    module = folder / "tune_test_env.py"
    module.write_text(ENV_MODULE.format(name=SMALL_VAL))
    return {
        "DETECTRON2_ENV_MODULE": str(module),
        "TUNE_TEST_VAL_JSON": json_path,
        "TUNE_TEST_VAL_IMAGES": image_root,
    }


def write_space(folder, space=SPACE):
    path = os.path.join(folder, "space.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(space, f)
    return path


def tune_argv(out, *, space, n_trials, storage=None, extra=(), opts=QUICK_OPTS):
    argv = ["--config-file", SEARCH_CONFIG, "--space", space, "--n-trials", str(n_trials)]
    argv += ["--seeds", "0", "--heldout-seeds", "1", "--out", str(out), "--study-name", "test"]
    argv += ["--heartbeat", "1", "--poll", "0.2", "--pruner", "none", *extra]
    if storage:
        argv += ["--storage", storage]
    return [*argv, "--", *opts]  # "--": a list flag in extra must not swallow the options


def read(path):
    with open(path) as f:
        return f.read()


def kill_during_a_trial_run(proc, out, timeout=TOOL_TIMEOUT_S):
    """SIGKILL a worker once it trains a trial's run; return that run's folder."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in read_log(proc).splitlines():
            if line.startswith("[tune] trial") and "training run #" in line:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return line.rsplit(" in ", 1)[1]
        if proc.poll() is not None:
            pytest.fail(f"the worker ended before training a trial:\n{read_log(proc)}")
        time.sleep(0.1)
    pytest.fail("the worker never started a trial's training")


def training_processes_of(run_dir):
    """Processes whose command line names run_dir (a training still running there)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if run_dir.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def load(storage, name="test"):
    study = optuna.load_study(study_name=name, storage=storage)
    runs = optuna.load_study(study_name=f"{name}.runs", storage=storage)
    return study, runs


def assert_complete_without_loss_or_duplicates(study, runs, n_trials):
    """n_trials finished trials; every other trial is a retried lost one or an untrained surplus;
    every (setting, seed) trained to completion exactly once."""
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials, [(t.number, t.state) for t in trials]
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.number in retried or t.user_attrs.get("surplus"), t
        assert t.state != TrialState.RUNNING and t.state != TrialState.WAITING, t
    jobs = [r.user_attrs["job"] for r in runs.get_trials(states=(TrialState.COMPLETE,))]
    assert len(jobs) == len(set(jobs)), sorted(jobs)
    assert "baseline/seed0" in jobs
    for t in finished:
        assert t.user_attrs["ap"].keys() == {"0"} and t.user_attrs["baseline_ap"].keys() == {"0"}
    return trials


# ---------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"MODEL.DROPBLOCK.BLOK_SIZE": {"choices": [1, 3]}},
            "Did you mean MODEL.DROPBLOCK.BLOCK_SIZE",
        ),
        ({"MODEL.DROPBLOCK.KEEP_PROB": {"low": 0.9, "high": 0.8}}, "'low' (0.9) must be below"),
        ({"MODEL.DROPBLOCK.KEEP_PROB": {"low": 0.8, "high": 1.5}}, "KEEP_PROB = 1.5 is invalid"),
        ({"MODEL.DROPBLOCK.STAGES": {"choices": [["res4"], ["res6"]]}}, "MODEL.DROPBLOCK.STAGES"),
        ({"MODEL.DROPBLOCK.STAGES": {"low": 1, "high": 2}}, "needs a numeric key"),
        ({"MODEL.DROPBLOCK.BLOCK_SIZE": {"low": 1.5, "high": 7}}, "is an integer key"),
        ({"SEED": {"choices": [1, 2]}}, "is set by the search itself"),
        ({"MODEL.DROPBLOCK.HEAD": {"choices": [True], "low": 0}}, "cannot be combined"),
        ({"MODEL.DROPBLOCK.HEAD": {"choices": []}}, "non-empty list"),
    ],
)
def test_bad_search_space_stops_before_training_naming_the_key(tmp_path, capsys, space, message):
    out = tmp_path / "out"
    rc = tune_main(tune_argv(out, space=write_space(str(tmp_path), space), n_trials=1, opts=CPU))
    error = capsys.readouterr().err
    assert rc == 2
    assert error.startswith("tune.py: error: ") and message in error, error
    assert next(iter(space)) in error
    assert not out.exists()  # nothing trained, no study created


def test_heldout_seeds_that_overlap_the_search_seeds_are_refused(tmp_path, capsys):
    argv = tune_argv(
        tmp_path / "out",
        space=write_space(str(tmp_path)),
        n_trials=1,
        extra=["--heldout-seeds", "0", "5"],
        opts=CPU,
    )
    assert tune_main(argv) == 2
    assert "--heldout-seeds shares [0] with --seeds" in capsys.readouterr().err


def test_missing_space_file_is_refused(tmp_path, capsys):
    argv = tune_argv(tmp_path / "out", space=str(tmp_path / "nope.yaml"), n_trials=1, opts=CPU)
    assert tune_main(argv) == 2
    assert "nope.yaml' cannot be read" in capsys.readouterr().err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error(stderr):
    """The one ``tune.py: error:`` line of a refused command (import warnings aside)."""
    errors = [line for line in stderr.splitlines() if line.startswith("tune.py:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize(
    "extra, opts, flag",
    [
        (["--n-trials", "0"], CPU, "--n-trials"),
        (["--seeds", "-1", "2"], CPU, "--seeds"),
        (["--seeds", "3", "3"], CPU, "--seeds"),
        (["--heldout-seeds", "-5"], CPU, "--heldout-seeds"),
        (["--sampler-seed", "-1"], CPU, "--sampler-seed"),
        (["--num-gpus", "0"], CPU, "--num-gpus"),
        (["--pruner-startup", "-1"], CPU, "--pruner-startup"),
        (["--startup-trials", "-1"], CPU, "--startup-trials"),
        (["--max-retry", "-1"], CPU, "--max-retry"),
        (["--heartbeat", "0"], CPU, "--heartbeat"),
        (["--poll", "-1"], CPU, "--poll"),
        (["--study-name", " "], CPU, "--study-name"),
        (["--storage", "study.db"], CPU, "not an SQLAlchemy URL"),
        (["--storage", "postgres://user@localhost/optuna"], CPU, "'postgres://' is spelled"),
        (["--storage", "mysql+notadriver://user@localhost/optuna"], CPU, "--storage"),
        (["--report-only"], CPU, "--report-only"),
        ([], ["--coco-dataset", "a", "b.json", "images"], "--coco-dataset comes after the KEY"),
        ([], ["--eval-only", "x"], "--eval-only is not a flag of tune.py"),
        (["--coco-dataset", "mine", "missing.json", "."], CPU, "--coco-dataset mine missing.json"),
        (["--config-file", "missing.yaml"], CPU, "missing.yaml' does not exist"),
    ],
)
def test_bad_flag_exits_2_naming_it_with_nothing_written(tmp_path, capsys, extra, opts, flag):
    out = tmp_path / "out"
    argv = tune_argv(out, space=write_space(str(tmp_path)), n_trials=1, extra=extra, opts=opts)
    assert tune_main(argv) == 2
    assert flag in one_error(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("inside", [False, True])
def test_out_naming_a_file_exits_2_and_leaves_the_file_as_it_was(tmp_path, capsys, inside):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    out = existing / "study" if inside else existing
    argv = tune_argv(out, space=write_space(str(tmp_path)), n_trials=1, opts=CPU)
    assert tune_main(argv) == 2
    assert f"--out '{out}'" in one_error(capsys.readouterr().err)
    assert existing.read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "space.yaml"]


def test_unreachable_storage_exits_2_without_its_password_and_leaves_no_output_folder(
    tmp_path, capsys
):
    out = tmp_path / "new" / "out"
    port = free_port()
    url = f"postgresql+psycopg://optuna:secret@127.0.0.1:{port}/postgres"
    argv = tune_argv(out, space=write_space(str(tmp_path)), n_trials=1, storage=url, opts=CPU)
    assert tune_main(argv) == 2
    error = one_error(capsys.readouterr().err)
    shown = f"postgresql+psycopg://optuna:***@127.0.0.1:{port}/postgres"
    assert f"--storage '{shown}' cannot be opened" in error and "secret" not in error
    assert not (tmp_path / "new").exists()


def test_default_space_is_accepted_by_the_tiny_config_and_written_out_in_configs():
    from dropblock_det.tools.tune.space import check_space, default_space, load_space

    build = build_checked(SEARCH_CONFIG)
    space = check_space(default_space(build()), build(), build)
    written = load_space(os.path.join(REPO_ROOT, "configs", "search", "default_space.yaml"))
    assert {k: p.candidates() for k, p in written.items()} == {
        k: p.candidates() for k, p in space.items()
    }
    assert space["MODEL.DROPBLOCK.BLOCK_SIZE"].candidates() == [1, 3, 5, 7]
    assert space["MODEL.DROPBLOCK.KEEP_PROB"].candidates() == [0.8, 0.95]


def test_the_studys_record_of_the_space_is_its_yaml_and_reads_back_as_the_same_space(tmp_path):
    from dropblock_det.tools.tune.space import load_space, space_to_yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "MODEL.DROPBLOCK.FPN": {"choices": [[], ["p3"]]}}))
    params = load_space(str(path))
    record = space_to_yaml(params)
    # The form a study stores: a rerun of the same command (any version reading this yaml) joins.
    assert yaml.safe_load(record) == yaml.safe_load(path.read_text())
    (tmp_path / "again.yaml").write_text(record)
    assert load_space(str(tmp_path / "again.yaml")) == params


def build_checked(config_file, *opts):
    """A config as a trial builds it (DropBlock on), with the model checks of train_net."""

    def build(extra=()):
        from dropblock_det.config import requested_groups
        from dropblock_det.tools.train_net import build_parser
        from dropblock_det.tools.trainer import build_cfg
        from dropblock_det.tools.validation import check_training_inputs

        argv = ["--config-file", config_file, *CPU, "MODEL.DROPBLOCK.ENABLED", "True", *opts]
        cfg = build_cfg(build_parser().parse_args([*argv, *extra]))
        if requested_groups(cfg):
            check_training_inputs(cfg, check_train=False, check_test=False)
        return cfg

    return build


def test_default_space_of_an_rcnn_config_has_its_own_levels_and_roi_heads_not_head():
    from dropblock_det.tools.tune.space import check_space, default_space

    build = build_checked(RCNN_CONFIG)
    space = check_space(default_space(build()), build(), build)
    assert "MODEL.DROPBLOCK.HEAD" not in space
    assert space["MODEL.DROPBLOCK.ROI_HEADS"].candidates() == [False, True]
    # The levels the RPN and the RoI heads read (p2..p6), not RetinaNet's p3..p7.
    assert space["MODEL.DROPBLOCK.FPN"].candidates()[1] == ["p2"]
    assert space["MODEL.DROPBLOCK.FPN"].candidates()[-1] == ["p2", "p3", "p4", "p5", "p6"]
    assert space["MODEL.DROPBLOCK.STAGES"].candidates()[-1] == ["res2", "res3", "res4", "res5"]


def test_default_space_of_a_c4_backbone_leaves_out_fpn_and_res5():
    from detectron2.config import get_cfg

    from dropblock_det.tools.tune.space import default_space

    cfg = get_cfg()  # Detectron2's default: GeneralizedRCNN on a C4 ResNet (OUT_FEATURES res4)
    space = default_space(cfg)
    assert "MODEL.DROPBLOCK.FPN" not in space and "MODEL.DROPBLOCK.HEAD" not in space
    assert space["MODEL.DROPBLOCK.STAGES"].candidates()[1:] == [
        ["res4"], ["res3", "res4"], ["res2", "res3", "res4"]
    ]  # fmt: skip


def test_a_config_whose_model_cannot_be_built_is_refused_before_the_space(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config-file", RCNN_CONFIG, "--out", str(out), *CPU]
    argv += ["MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p7']"]
    assert tune_main(argv) == 2
    error = one_error(capsys.readouterr().err)
    assert "the model cannot be built from this config" in error and "'p7'" in error
    assert not out.exists()


def test_default_space_a_config_refuses_names_the_file_to_copy():
    from dropblock_det.tools.tune.cli import DEFAULT_SPACE_ADVICE, DEFAULT_SPACE_FILE
    from dropblock_det.tools.tune.space import SpaceError, check_space, default_space
    from dropblock_det.tools.validation import InputError

    cfg = load_config(RCNN_CONFIG, ())

    def refuse_p7(opts):
        if "p7" in str(opts):
            raise InputError("cfg.MODEL.DROPBLOCK.FPN = ['p7'] is invalid: the FPN builds no p7.")
        return cfg

    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p7"]
    with pytest.raises(SpaceError) as refused:
        check_space(default_space(cfg), cfg, refuse_p7, "the default space", DEFAULT_SPACE_ADVICE)
    error = str(refused.value)
    assert "the default space: MODEL.DROPBLOCK.FPN" in error and "'p7'" in error
    assert f"copy {DEFAULT_SPACE_FILE}" in error and "--space" in error


def test_stock_backbone_is_refused_as_the_config_not_the_space(tmp_path, capsys):
    argv = tune_argv(tmp_path / "out", space=write_space(str(tmp_path)), n_trials=1,
                     opts=[*CPU, "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone"])  # fmt: skip
    assert tune_main(argv) == 2
    error = one_error(capsys.readouterr().err)
    assert f"--config-file '{SEARCH_CONFIG}' with MODEL.DROPBLOCK.ENABLED True" in error
    assert "build_retinanet_resnet_fpn_dropblock_backbone" in error


@pytest.mark.parametrize(
    "value, signed, text",
    [
        (35.24, False, "35.2"),
        (1.0, False, "1.0"),
        (0.7, True, "+0.70"),
        (-0.31, True, "-0.31"),
        (0.0123, False, "0.012"),
        (0.00123, False, "0.0012"),
        (0.00012, False, "1.2e-04"),
        (0.0, False, "0.0"),
        (None, False, "–"),
    ],
)
def test_small_aps_keep_two_significant_digits(value, signed, text):
    from dropblock_det.tools.tune.report import format_ap

    assert format_ap(value, signed=signed) == text


# ----------------------------------------------------------------------- workers, kill, resume


@pytest.fixture(scope="module")
def two_worker_study(small_val_env, tmp_path_factory):
    """Two workers started at the same instant on one SQLite study of 2 trials and the verdict."""
    folder = tmp_path_factory.mktemp("two_workers")
    out = folder / "out"
    argv = tune_argv(out, space=write_space(str(folder)), n_trials=2)
    workers = [
        start_tool([TUNE, *argv], env=small_val_env, log_path=folder / f"w{i}.log")
        for i in range(2)
    ]
    codes = [wait_tool(w, returncode=None) for w in workers]
    assert codes == [0, 0], [read_log(w)[-3000:] for w in workers]
    return out, f"sqlite:///{out / 'study.db'}"


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_complete_the_trials_once_each(two_worker_study):
    out, storage = two_worker_study
    study, runs = load(storage)
    assert_complete_without_loss_or_duplicates(study, runs, n_trials=2)
    # The baseline on seed 0 was trained by one worker and reused by the other.
    baseline = [r for r in runs.get_trials() if r.user_attrs.get("job") == "baseline/seed0"]
    assert [r.state for r in baseline if not r.user_attrs.get("yielded")] == [TrialState.COMPLETE]


@pytest.mark.slow
def test_report_table_lists_every_finished_trial_best_first(two_worker_study):
    from dropblock_det.tools.tune.report import format_ap

    out, storage = two_worker_study
    study, _ = load(storage)
    report = read(out / "report.md")
    rows = [line for line in report.splitlines() if line.startswith("| ") and "COMPLETE" in line]
    complete = sorted(
        study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number)
    )
    assert [int(row.split("|")[1]) for row in rows] == [t.number for t in complete]
    assert "optimization_history.png" in report
    # The verdict: the best setting and the baseline on the held-out seed, in the study and report.
    verdict = study.user_attrs[f"verdict/{study.best_trial.number}"]
    assert verdict["seeds"] == [1] and len(verdict["best_ap"]) == len(verdict["baseline_ap"]) == 1
    row = f"| 1 | {format_ap(verdict['baseline_ap'][0])} | {format_ap(verdict['best_ap'][0])} |"
    assert row in report.split("## Held-out verdict", 1)[1]
    assert (out / "optimization_history.png").stat().st_size > 0


@pytest.mark.slow
def test_best_yaml_trains_with_train_net_as_it_is(two_worker_study, small_val_env, tmp_path):
    out, storage = two_worker_study
    study, _ = load(storage)
    best = study.best_trial
    run = tmp_path / "best_run"
    argv = ["--config-file", str(out / "best.yaml"), "SOLVER.MAX_ITER", "1"]
    argv += ["DATASETS.TEST", "()", "OUTPUT_DIR", str(run)]
    run_tool([TRAIN_NET, *argv], env=small_val_env)
    trained = yaml.safe_load(read(run / "config.yaml"))["MODEL"]["DROPBLOCK"]
    assert trained["ENABLED"] is True
    assert trained["BLOCK_SIZE"] == best.params["MODEL.DROPBLOCK.BLOCK_SIZE"]
    assert trained["KEEP_PROB"] == pytest.approx(best.params["MODEL.DROPBLOCK.KEEP_PROB"])


@pytest.mark.slow
def test_killed_worker_leaves_a_study_the_next_run_resumes(small_val_env, tmp_path):
    out = tmp_path / "out"
    argv = tune_argv(out, space=write_space(str(tmp_path)), n_trials=1, extra=["--no-verdict"])
    first = start_tool([TUNE, *argv], env=small_val_env, log_path=tmp_path / "first.log")
    run_dir = kill_during_a_trial_run(first, out)
    time.sleep(1)
    assert training_processes_of(run_dir) == []  # the training died with its worker
    second = start_tool([TUNE, *argv], env=small_val_env, log_path=tmp_path / "second.log")
    wait_tool(second)
    study, runs = load(f"sqlite:///{out / 'study.db'}")
    trials = assert_complete_without_loss_or_duplicates(study, runs, n_trials=1)
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert [t.state for t in retry] == [TrialState.COMPLETE]
    assert retry[0].params == killed[0].params
    # The killed training's claim was failed and its run trained again, once.
    lost = [r for r in runs.get_trials() if r.user_attrs.get("output_dir") == run_dir]
    assert [r.state for r in lost] == [TrialState.FAIL]


# ------------------------------------------------------------------------------ the user's data


@pytest.fixture(scope="module")
def own_data_study(tmp_path_factory):
    """A 1-trial study with its verdict on COCO files given with --coco-dataset (no env module)."""
    from dropblock_det.tools.data import TRAIN_DATASET, VAL_DATASET

    folder = tmp_path_factory.mktemp("own_data")
    train = write_digits_subset(str(folder), TRAIN_DATASET, 16, "train16.json")
    val = write_digits_subset(str(folder), VAL_DATASET, 8, "val8.json")
    out = folder / "out"
    opts = [o.replace(SMALL_VAL, "tune_own_val") for o in QUICK_OPTS]
    opts += ["DATASETS.TRAIN", "('tune_own_train',)"]
    extra = ["--coco-dataset", "tune_own_train", *train, "--coco-dataset", "tune_own_val", *val]
    argv = tune_argv(out, space=write_space(str(folder)), n_trials=1, extra=extra, opts=opts)
    worker = start_tool([TUNE, *argv], log_path=folder / "worker.log")
    wait_tool(worker)
    return out, train, val, read_log(worker)


@pytest.mark.slow
def test_search_on_coco_dataset_files_trains_every_run_on_them(own_data_study):
    out, (train_json, _), (val_json, _), _ = own_data_study
    study, runs = load(f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    trained = runs.get_trials(states=(TrialState.COMPLETE,))
    # The baseline and the trial on the search seed, the best and the baseline on the held-out one.
    assert sorted(r.user_attrs["arm"] for r in trained) == [
        "baseline",
        "baseline",
        "best",
        "trial 0",
    ]
    for run in trained:
        run_dir = run.user_attrs["output_dir"]
        config = yaml.safe_load(read(os.path.join(run_dir, "config.yaml")))
        assert config["DATASETS"]["TRAIN"] == ["tune_own_train"], run_dir
        assert config["DATASETS"]["TEST"] == ["tune_own_val"], run_dir
        log = read(os.path.join(run_dir, "train.log"))
        assert f"Loaded 16 images in COCO format from {train_json}" in log, run_dir
        assert f"Loaded 8 images in COCO format from {val_json}" in log, run_dir
    # best.yaml says how to train it on the same files.
    assert f"--coco-dataset tune_own_train {train_json}" in read(out / "best.yaml")


@pytest.mark.slow
def test_report_and_console_show_the_same_digits_of_small_aps(own_data_study):
    from dropblock_det.tools.tune.report import format_ap

    out, _, _, console = own_data_study
    study, runs = load(f"sqlite:///{out / 'study.db'}")
    baseline = [r for r in runs.get_trials() if r.user_attrs.get("job") == "baseline/seed0"]
    ap = format_ap(baseline[0].value)
    assert f"seed 0: {ap} " in read(out / "report.md")
    assert f"run #{baseline[0].number} done, bbox/AP {ap} in" in console
    trial = study.best_trial
    assert f"COMPLETE, Δ {format_ap(trial.value, signed=True)} AP" in console


# --------------------------------------------------------------------------------------- pruning


@pytest.mark.slow
def test_median_pruner_stops_a_worse_trial_and_its_training(small_val_env, tmp_path):
    # A score threshold of 1.0 keeps no detection (AP 0); 0.0 keeps them all (AP > 0). Sampler
    # seed 10 draws 0.0 first, then 1.0, which the median of the first trial must prune.
    space = {"MODEL.RETINANET.SCORE_THRESH_TEST": {"choices": [0.0, 1.0]}}
    max_iter = 8  # evaluations at iterations 4 and 8
    opts = [*QUICK_OPTS, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "(6,)"]
    opts += ["TEST.EVAL_PERIOD", "4"]
    argv = tune_argv(
        tmp_path / "out",
        space=write_space(str(tmp_path), space),
        n_trials=2,
        extra=[
            "--no-verdict",
            "--pruner",
            "median",
            "--pruner-startup",
            "1",
            "--sampler-seed",
            "10",
        ],
        opts=opts,
    )
    worker = start_tool([TUNE, *argv], env=small_val_env, log_path=tmp_path / "worker.log")
    wait_tool(worker)
    study, runs = load(f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    first, second = study.get_trials()
    key = "MODEL.RETINANET.SCORE_THRESH_TEST"
    assert (first.params[key], second.params[key]) == (0.0, 1.0)
    assert first.state == TrialState.COMPLETE and max(first.intermediate_values.values()) > 0
    assert second.state == TrialState.PRUNED
    pruned = [r for r in runs.get_trials() if r.state == TrialState.PRUNED]
    assert len(pruned) == 1
    # Stopped at an evaluation before the last (iteration max_iter), so before the final checkpoint.
    curve = pruned[0].user_attrs["curve"]
    assert curve and curve[-1][0] < max_iter, curve
    assert not os.path.exists(os.path.join(pruned[0].user_attrs["output_dir"], "model_final.pth"))


# ------------------------------------------------------------------------------------ PostgreSQL

PG_BINDIR = None
if shutil.which("pg_config"):
    PG_BINDIR = subprocess.run(
        ["pg_config", "--bindir"], capture_output=True, text=True
    ).stdout.strip()
HAVE_PG = bool(PG_BINDIR) and os.path.exists(os.path.join(PG_BINDIR, "initdb"))


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1, stopped and removed in every case."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="tune_pg_")
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port, bindir = os.path.join(folder, "data"), free_port(), PG_BINDIR
    started = False
    try:
        subprocess.run(
            [*as_postgres, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "optuna"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [*as_postgres, f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", f"{folder}/log"]
            + ["-w", "start"],
            check=True,
            capture_output=True,
        )
        started = True
        yield f"postgresql+psycopg://optuna@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*as_postgres, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_PG, reason="PostgreSQL server binaries (initdb, pg_ctl in `pg_config --bindir`) absent"
)
def test_two_workers_on_postgres_one_killed_complete_the_study(
    small_val_env, postgres_url, tmp_path
):
    space = write_space(str(tmp_path))
    argv = [tune_argv(tmp_path / f"worker{i}", space=space, n_trials=2, storage=postgres_url,
                      extra=["--no-verdict"]) for i in range(2)]  # fmt: skip
    # Started at the same instant against an empty database: the schema is created once.
    workers = [
        start_tool([TUNE, *a], env=small_val_env, log_path=tmp_path / f"w{i}.log")
        for i, a in enumerate(argv)
    ]
    kill_during_a_trial_run(workers[0], tmp_path / "worker0")
    wait_tool(workers[1])
    study, runs = load(postgres_url)
    trials = assert_complete_without_loss_or_duplicates(study, runs, n_trials=2)
    killed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert len(killed) == 1
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert [t.state for t in retry] == [TrialState.COMPLETE]
    assert os.path.exists(tmp_path / "worker1" / "report.md")
