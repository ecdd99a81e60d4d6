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
import signal
import sys
import time
import warnings

from detectron2.engine import default_argument_parser

__all__ = ["main", "parse_args"]

_EXAMPLE = """KEY VALUE config options come last, as with train_net.py; right after --seeds or
--heldout-seeds, put -- before them (e.g. --heldout-seeds 100 101 -- MODEL.DEVICE cpu).

examples:
  # a search on this machine (the study lives in output/tune/<name>/study.db; rerun to resume)
  python tools/tune.py --config-file configs/search/tiny_search.yaml --n-trials 6 \\
      MODEL.DEVICE cpu
  # many workers, one study: start the same command on every machine
  python tools/tune.py --config-file my_cfg.yaml --n-trials 50 --num-gpus 8 \\
      --storage postgresql+psycopg://user:password@dbhost:5432/optuna
"""


def parse_args(argv=None):
    """Parse tune.py's command line.

    Args:
        argv (list[str] or None): the arguments; None reads ``sys.argv``.

    Returns:
        argparse.Namespace: the arguments; ``opts`` holds the trailing ``KEY VALUE`` options.
    """
    parser = argparse.ArgumentParser(
        prog="tune.py",
        description="Search the best DropBlock setting for a Detectron2 config with Optuna.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, help="base config (DropBlock backbone)")
    parser.add_argument("--space", help="search space yaml (default: the DropBlock default space)")
    parser.add_argument("--n-trials", type=int, default=20, help="finished trials of the study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="search seeds")
    parser.add_argument(
        "--heldout-seeds", type=int, nargs="+", default=[100, 101, 102], help="verdict seeds"
    )
    parser.add_argument("--study-name", help="default: dropblock-<config file name>")
    parser.add_argument("--out", help="output folder (default: output/tune/<study name>)")
    parser.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///<out>/study.db)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    parser.add_argument(
        "--pruner-startup", type=int, default=2, help="trials finished before the median prunes"
    )
    parser.add_argument(
        "--startup-trials", type=int, default=5, help="random trials before TPE models the space"
    )
    parser.add_argument("--sampler-seed", type=int, help="TPE seed (give each worker its own)")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="GPUs per trial (Detectron2 launch)"
    )
    parser.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval, s")
    parser.add_argument("--max-retry", type=int, default=2, help="retries of a killed trial")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between checks of a run")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    parser.add_argument(
        "--no-verdict", action="store_true", help="search only (a later run adds the verdict)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every run"
    )
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    return args


class _InputError(ValueError):
    pass


def _check_flags(args):
    if args.n_trials < 1:
        raise _InputError(f"--n-trials {args.n_trials}: expected at least 1.")
    for name in ("seeds", "heldout_seeds"):
        seeds = getattr(args, name)
        if len(set(seeds)) != len(seeds):
            raise _InputError(f"--{name.replace('_', '-')} {seeds}: the seeds must be distinct.")
    shared = sorted(set(args.seeds) & set(args.heldout_seeds))
    if shared:
        raise _InputError(
            f"--heldout-seeds shares {shared} with --seeds: the verdict must use seeds the search "
            "never saw, or the selection bias of the best trial comes back."
        )
    flags = [o for o in args.opts[::2] if o.startswith("--")]
    if flags:
        raise _InputError(
            f"{flags[0]} comes after the KEY VALUE config options; put every tune.py flag first."
        )
    if len(args.opts) % 2:
        raise _InputError(f"config options must come in KEY VALUE pairs, got {args.opts}.")
    if args.heartbeat <= 0 or args.poll <= 0:
        raise _InputError("--heartbeat and --poll must be positive.")


class _ConfigBuilder:
    """Builds the config of the base file, the base options and extra options, as train_net does."""

    def __init__(self, config_file, base_opts):
        from dropblock_det.tools.trainer import build_cfg

        self._build_cfg = build_cfg
        self.config_file, self.base_opts = config_file, list(base_opts)

    def args(self, extra=()):
        return default_argument_parser().parse_args(
            ["--config-file", self.config_file, *self.base_opts, *extra]
        )

    def __call__(self, extra=()):
        return self._build_cfg(self.args(extra))

    def checked(self, extra=()):
        """The config of ``extra``, with the model checks train_net runs (datasets aside)."""
        from dropblock_det.tools.validation import check_training_inputs

        cfg = self(extra)
        check_training_inputs(cfg, check_train=False, check_test=False)
        return cfg


def _prepare(args):
    """Check every input and build what the search needs; raises _InputError or ValueError."""
    from dropblock_det.tools.trainer import check_inputs

    from .space import check_space, default_space, has_dropblock, load_space, space_to_yaml
    from .study import BASELINE_OPTS, SETTING_OPTS, SearchSetup

    _check_flags(args)
    params = load_space(args.space) if args.space else None  # its form, before the slower checks
    config_file = os.path.abspath(args.config_file)
    build = _ConfigBuilder(config_file, args.opts)
    cfg = build()
    check_inputs(build.args(BASELINE_OPTS))  # the datasets, once
    tests = list(cfg.DATASETS.TEST)
    if len(tests) != 1:
        raise _InputError(
            f"DATASETS.TEST = {tests}: the search scores each run on one validation set; name "
            "exactly one, e.g. DATASETS.TEST \"('dropblock_digits_val',)\"."
        )
    source = args.space or "the default space"
    params = params if params is not None else default_space(cfg)
    params = check_space(params, cfg, lambda extra: build.checked([*SETTING_OPTS, *extra]), source)

    name = args.study_name or f"dropblock-{os.path.splitext(os.path.basename(config_file))[0]}"
    out = os.path.abspath(args.out or os.path.join("output", "tune", name))
    storage_url = args.storage or f"sqlite:///{os.path.join(out, 'study.db')}"
    comparable = cfg.clone()
    comparable.defrost()
    comparable.OUTPUT_DIR = ""
    setup = SearchSetup(
        config_hash=hashlib.sha1(comparable.dump().encode()).hexdigest()[:16],
        seeds=list(args.seeds),
        heldout_seeds=list(args.heldout_seeds),
        space=space_to_yaml(params),
        metric="bbox/AP",
        max_iter=int(cfg.SOLVER.MAX_ITER),
    )
    return build, params, name, out, storage_url, setup, lambda opts: has_dropblock(build(opts))


def _sampler_and_pruner(args, setup):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=args.startup_trials,
            multivariate=True,
            # Parallel workers: pending trials count as if they had the worst value, so that
            # two workers do not draw the same point.
            constant_liar=True,
            seed=args.sampler_seed,
        )
    if args.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=args.pruner_startup)
    elif args.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=len(setup.seeds) * setup.max_iter
        )
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def _log(line):
    print(line, flush=True)


def main(argv=None) -> int:
    """Run one worker of a search; any number may run the same command at once.

    Args:
        argv (list[str] or None): the arguments; None reads ``sys.argv``.

    Returns:
        int: the exit status (2: bad input, nothing trained).
    """
    args = parse_args(argv)
    from dropblock_det.tools.validation import InputError

    from .space import SpaceError

    try:
        build, params, name, out, storage_url, setup, has_dropblock = _prepare(args)
    except (_InputError, InputError, SpaceError) as error:
        print(f"tune.py: error: {error}", file=sys.stderr)
        return 2

    import optuna
    import sqlalchemy

    from .report import write_report
    from .runs import RunStore
    from .study import BaselineFailed, Search, StudyMismatch, TooManyFailures, open_storage

    os.makedirs(out, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        storage = open_storage(storage_url, args.heartbeat, args.max_retry)
        runs_storage = open_storage(storage_url, args.heartbeat, args.max_retry, retry=False)
    except (sqlalchemy.exc.ArgumentError, ImportError, sqlalchemy.exc.OperationalError) as error:
        print(
            f"tune.py: error: --storage {storage_url!r} cannot be opened: {error}", file=sys.stderr
        )
        return 2
    sampler, pruner = _sampler_and_pruner(args, setup)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
    )
    try:
        Search.agree(study, setup)
    except StudyMismatch as error:
        print(f"tune.py: error: {error}", file=sys.stderr)
        return 2
    store = RunStore(
        runs_storage, name, out, build.config_file, build.base_opts, args.num_gpus,
        metric=setup.metric, poll_s=args.poll, log=_log,
    )  # fmt: skip
    search = Search(study, store, params, setup, has_dropblock, log=_log)
    command = shlex.join(["python", "tools/tune.py", *(argv if argv is not None else sys.argv[1:])])
    # SIGTERM ends the worker like Ctrl-C: the running training is stopped, and the trial, left
    # RUNNING, is re-queued by the next worker once its heartbeat is stale.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if not args.report_only and "command" not in study.user_attrs:
        study.set_user_attr("command", command)  # the report quotes the command that searched
    start = time.time()
    if not args.report_only:
        _log(
            f"[tune] study {name!r} in {storage_url}: {args.n_trials} trials, seeds {setup.seeds},"
            f" held-out seeds {setup.heldout_seeds}, {len(params)} searched keys; output in {out}"
        )
        try:
            search.run(args.n_trials)
            if not args.no_verdict:
                search.verdict()
        except (BaselineFailed, TooManyFailures) as error:
            print(f"tune.py: error: {error}", file=sys.stderr)
            write_report(search, out, lambda opts: build(opts), command, storage_url)
            return 1
        except KeyboardInterrupt:
            print(
                "tune.py: interrupted; everything finished so far is in the study: run the same "
                "command again to resume.",
                file=sys.stderr,
            )
            return 130
    report = write_report(search, out, lambda opts: build(opts), command, storage_url)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        _log(
            f"[tune] best: trial {best.number}, Δ {best.value:+.2f} AP on the search seeds: "
            + search.describe(best.params)
        )
        verdict = study.user_attrs.get(f"verdict/{best.number}")
        if verdict and verdict.get("p") is not None:
            _log(
                f"[tune] held-out seeds {verdict['seeds']}: Δ {verdict['mean']:+.2f} ± "
                f"{verdict['sd']:.2f} AP, paired t {verdict['t']:.2f}, p {verdict['p']:.3f}"
            )
    minutes, seconds = divmod(int(time.time() - start), 60)
    _log(f"[tune] report: {report} ({minutes} min {seconds:02d} s in this worker)")
    return 0
