"""Command line of the DropBlock search (``tools/tune.py``).

Every input is checked before any training: the flags, the base config and the datasets it names
(as ``tools/train_net.py`` checks them), every key of the search space against that config and
every candidate value in it, and an existing study's setup against this command. A bad one stops
with a message naming it and exit status 2.
"""

import argparse
import hashlib
import os
import shlex
import shutil
import signal
import sys
import time
import warnings

import optuna

from ..errors import InputError
from ..train_net import add_coco_dataset_argument
from ..trainer import check_inputs
from .report import format_ap, format_duration, hide_password, log, write_report
from .runs import BASELINE_OPTS, RunCommand, RunStore
from .space import check_space, default_space, load_space, space_to_yaml
from .study import Search, SearchFailed, SearchSetup, check_storage_url, open_storage

__all__ = ["main", "parse_args"]

# The default space written out, named where the default space does not fit a config.
DEFAULT_SPACE_FILE = "configs/search/default_space.yaml"
# What a refused value of the default space tells the user to do.
DEFAULT_SPACE_ADVICE = (
    f"The default space does not fit this config: copy {DEFAULT_SPACE_FILE}, change or remove "
    "that key, and give the copy with --space."
)
# numpy's seed range, which Optuna's TPE sampler takes.
_MAX_SAMPLER_SEED = 2**32 - 1

_EXAMPLE = """KEY VALUE config options come last, as with train_net.py; right after --seeds or
--heldout-seeds, put -- before them (e.g. --heldout-seeds 100 101 -- MODEL.DEVICE cpu).

examples:
  # a search on this machine (the study lives in output/tune/<name>/study.db; rerun to resume)
  python tools/tune.py --config-file configs/search/tiny_search.yaml --n-trials 6 \\
      MODEL.DEVICE cpu
  # on your own COCO files (every trial and held-out run trains and scores on them)
  python tools/tune.py --config-file configs/search/tiny_search.yaml --n-trials 6 \\
      --coco-dataset my_train data/train.json data/images \\
      --coco-dataset my_val data/val.json data/images \\
      DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.DEVICE cpu
  # many workers, one study: start the same command on every machine
  python tools/tune.py --config-file my_cfg.yaml --n-trials 50 --num-gpus 8 \\
      --storage postgresql+psycopg://user:password@dbhost:5432/optuna
"""


def parse_args(argv=None):
    """Parse tune.py's command line (None: ``sys.argv``); ``opts`` holds the ``KEY VALUE`` options."""
    parser = argparse.ArgumentParser(
        prog="tune.py",
        description="Search the best DropBlock setting for a Detectron2 config with Optuna.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--config-file", required=True, help="base config (DropBlock backbone)")
    add("--space", help="search space yaml (default: the DropBlock default space)")
    add("--n-trials", type=int, default=20, help="finished trials of the study")
    add("--seeds", type=int, nargs="+", default=[0, 1], help="search seeds")
    add("--heldout-seeds", type=int, nargs="+", default=[100, 101, 102], help="verdict seeds")
    add("--study-name", help="default: dropblock-<config file name>")
    add("--out", help="output folder (default: output/tune/<study name>)")
    add("--storage", help="SQLAlchemy URL (default: sqlite:///<out>/study.db)")
    add("--pruner", choices=("median", "hyperband", "none"), default="median")
    add("--pruner-startup", type=int, default=2, help="trials finished before the median prunes")
    add("--startup-trials", type=int, default=5, help="random trials before TPE models the space")
    add("--sampler-seed", type=int, help="TPE seed (give each worker its own)")
    add("--num-gpus", type=int, default=1, help="GPUs per trial (Detectron2 launch)")
    add("--heartbeat", type=float, default=10.0, help="heartbeat interval, s")
    add("--max-retry", type=int, default=2, help="retries of a killed trial")
    add("--poll", type=float, default=1.0, help="seconds between checks of a run")
    add("--report-only", action="store_true", help="only rewrite the report")
    add("--no-verdict", action="store_true", help="search only (a later run adds the verdict)")
    add_coco_dataset_argument(parser)
    add("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every run")
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    return args


def _check_flags(args):
    for flag, value, least in (
        ("--n-trials", args.n_trials, 1),
        ("--num-gpus", args.num_gpus, 1),
        ("--pruner-startup", args.pruner_startup, 0),
        ("--startup-trials", args.startup_trials, 0),
        ("--max-retry", args.max_retry, 0),
    ):
        if value < least:
            raise InputError(f"{flag} {value}: expected at least {least}.")
    for flag, seeds in (("--seeds", args.seeds), ("--heldout-seeds", args.heldout_seeds)):
        if len(set(seeds)) != len(seeds):
            raise InputError(f"{flag} {seeds}: the seeds must be distinct.")
        if min(seeds) < 0:
            # Detectron2 draws a fresh random seed for SEED < 0: no run could be repeated or
            # paired with the baseline on the same seed.
            raise InputError(f"{flag} {seeds}: seeds must be >= 0.")
    shared = sorted(set(args.seeds) & set(args.heldout_seeds))
    if shared:
        raise InputError(
            f"--heldout-seeds shares {shared} with --seeds: the verdict must use seeds the search "
            "never saw, or the selection bias of the best trial comes back."
        )
    if args.sampler_seed is not None and not 0 <= args.sampler_seed <= _MAX_SAMPLER_SEED:
        raise InputError(
            f"--sampler-seed {args.sampler_seed}: expected an integer in [0, {_MAX_SAMPLER_SEED}]."
        )
    for flag, value in (("--heartbeat", args.heartbeat), ("--poll", args.poll)):
        if not value > 0:
            raise InputError(f"{flag} {value}: expected a positive number of seconds.")
    if args.study_name is not None and not args.study_name.strip():
        raise InputError("--study-name is empty; give the study a name, or leave the flag out.")
    flags = [o for o in args.opts[::2] if o.startswith("--")]
    if flags and flags[0].split("=", 1)[0][2:].replace("-", "_") in vars(args):
        raise InputError(
            f"{flags[0]} comes after the KEY VALUE config options; put every tune.py flag "
            "(--coco-dataset included) before them."
        )
    if flags:
        raise InputError(
            f"{flags[0]} is not a flag of tune.py (see tune.py --help); the config options after "
            "the flags are KEY VALUE pairs."
        )
    if len(args.opts) % 2:
        raise InputError(f"config options must come in KEY VALUE pairs, got {args.opts}.")


def _check_out(out):
    """Refuse an output folder that cannot be made or written; return the topmost one to create.

    The first missing folder on the way to ``out`` (None if it exists) is what to remove to leave
    nothing behind.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(
            f"--out {out!r} is a file; name a folder (a new one, or a study's output to resume)."
        )
    top, existing = None, out
    while not os.path.exists(existing):
        top, existing = existing, os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"--out {out!r} cannot be created: {existing!r} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out!r}: {existing!r} is not writable.")
    return top


def _prepare(args):
    """Check every input and build what the search needs; nothing is written.

    Raises:
        InputError: naming the flag, key or file at fault.
    """
    _check_flags(args)
    config_file = os.path.abspath(args.config_file)
    name = args.study_name or f"dropblock-{os.path.splitext(os.path.basename(config_file))[0]}"
    out = os.path.abspath(args.out or os.path.join("output", "tune", name))
    to_create = _check_out(out)
    default_db = os.path.join(out, "study.db")
    storage_url = args.storage or f"sqlite:///{default_db}"
    check_storage_url(storage_url)
    if args.report_only and not args.storage and not os.path.isfile(default_db):
        raise InputError(
            f"--report-only: there is no study to report in {out!r} (no study.db); run the "
            "search first, or give the --out or --storage of the study."
        )
    params = load_space(args.space) if args.space else None  # its form, before the slower checks
    runs = RunCommand(config_file, args.opts, args.coco_dataset, args.num_gpus)
    cfg = runs()
    check_inputs(runs.args(BASELINE_OPTS))  # the datasets, once, as train_net checks them
    # Every run is trained in its own process, in this working directory or not: absolute paths.
    runs.coco_datasets = [
        [dataset, os.path.abspath(json_file), os.path.abspath(image_root)]
        for dataset, json_file, image_root in runs.coco_datasets
    ]
    tests = list(cfg.DATASETS.TEST)
    if len(tests) != 1:
        raise InputError(
            f"DATASETS.TEST = {tests}: the search scores each run on one validation set; name "
            "exactly one, e.g. DATASETS.TEST \"('dropblock_digits_val',)\"."
        )
    try:
        runs.checked()
    except InputError as error:
        raise InputError(
            f"--config-file {args.config_file!r} with MODEL.DROPBLOCK.ENABLED True, as every "
            f"trial trains it: {error}"
        ) from error
    if args.space:
        params = check_space(params, cfg, runs.checked, args.space)
    else:
        source = "the default space"
        params = check_space(default_space(cfg), cfg, runs.checked, source, DEFAULT_SPACE_ADVICE)
    setup = SearchSetup(  # OUTPUT_DIR aside, every worker trains the same config
        config_hash=hashlib.sha1(runs(["OUTPUT_DIR", ""]).dump().encode()).hexdigest()[:16],
        seeds=list(args.seeds),
        heldout_seeds=list(args.heldout_seeds),
        space=space_to_yaml(params),
        metric="bbox/AP",
        max_iter=int(cfg.SOLVER.MAX_ITER),
    )
    return runs, params, name, out, to_create, storage_url, setup


def _sampler_and_pruner(args, setup):
    # Parallel workers: pending trials count as if they had the worst value (constant liar), so
    # that two workers do not draw the same point.
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=args.startup_trials,
        multivariate=True,
        constant_liar=True,
        seed=args.sampler_seed,
    )
    if args.pruner == "median":
        return sampler, optuna.pruners.MedianPruner(n_startup_trials=args.pruner_startup)
    if args.pruner == "hyperband":
        max_resource = len(setup.seeds) * setup.max_iter
        return sampler, optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource)
    return sampler, optuna.pruners.NopPruner()


def _error(message):
    print(f"tune.py: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """Run one worker of a search (any number may run the same command at once).

    Args:
        argv (list[str] or None): the arguments; None reads ``sys.argv``.

    Returns:
        int: the exit status (2: bad input, nothing trained; 1: the search failed).
    """
    args = parse_args(argv)
    try:
        runs, params, name, out, to_create, storage_url, setup = _prepare(args)
    except InputError as error:
        return _error(error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    shown_url = hide_password(storage_url)
    try:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as error:
            raise InputError(f"--out {out!r} cannot be created: {error}") from error
        storage = open_storage(storage_url, args.heartbeat, args.max_retry)
        runs_storage = open_storage(storage_url, args.heartbeat, args.max_retry, retry=False)
        if args.report_only and name not in optuna.study.get_all_study_names(storage):
            raise InputError(
                f"--report-only: the storage {shown_url!r} holds no study {name!r}; run the "
                "search first, or give the --study-name of the study."
            )
        sampler, pruner = _sampler_and_pruner(args, setup)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
        )
        Search.agree(study, setup)
    except InputError as error:
        if to_create is not None:
            shutil.rmtree(to_create, ignore_errors=True)  # nothing of this command is left behind
        return _error(error)
    store = RunStore(runs_storage, name, out, runs.command, setup.metric, args.poll)
    search = Search(study, store, params, setup, runs.has_dropblock)
    given = argv if argv is not None else sys.argv[1:]
    # The study and its report keep the command, never a storage password.
    command = shlex.join(["python", "tools/tune.py", *map(hide_password, given)])
    # SIGTERM ends the worker like Ctrl-C: the running training is stopped, and the trial, left
    # RUNNING, is re-queued by the next worker once its heartbeat is stale.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start = time.time()
    if not args.report_only:
        if "command" not in study.user_attrs:  # the report quotes the command that searched
            study.set_user_attr("command", command)
        log(
            f"[tune] study {name!r} in {shown_url}: {args.n_trials} trials, seeds {setup.seeds},"
            f" held-out seeds {setup.heldout_seeds}, {len(params)} searched keys; output in {out}"
        )
        try:
            search.run(args.n_trials)
            if not args.no_verdict:
                search.verdict()
        except SearchFailed as error:
            _error(error)
            write_report(search, out, runs, command, storage_url)
            return 1
        except KeyboardInterrupt:
            print(
                "tune.py: interrupted; everything finished so far is in the study: run the same "
                "command again to resume.",
                file=sys.stderr,
            )
            return 130
    report = write_report(search, out, runs, command, storage_url)
    best = search.best()
    if best is not None:
        log(
            f"[tune] best: trial {best.number}, Δ {format_ap(best.value, signed=True)} AP on the "
            "search seeds: " + search.describe(best.params)
        )
        verdict = study.user_attrs.get(f"verdict/{best.number}")
        if verdict and verdict.get("p") is not None:
            log(
                f"[tune] held-out seeds {verdict['seeds']}: Δ "
                f"{format_ap(verdict['mean'], signed=True)} ± {format_ap(verdict['sd'])} AP, "
                f"paired t {verdict['t']:.2f}, p {verdict['p']:.3f}"
            )
    log(f"[tune] report: {report} ({format_duration(int(time.time() - start))} in this worker)")
    return 0
