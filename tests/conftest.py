"""Shared fixtures: small CPU configs built from the repository's own yaml files, the catalog
clean-up, and training runs of tools/train_net.py recorded step by step.

Plain helpers (the tool runner, the COCO writer, seeded generators) are in helpers.py.
"""

import collections
import hashlib
import json
import os
import signal

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from helpers import REPO_ROOT, TRAIN_NET, run_tool  # noqa: F401  (TRAIN_NET: imported from here)

import dropblock_det  # noqa: F401  (registers the backbone and meta-architecture)
from dropblock_det import DropBlock2d, add_dropblock_config
from dropblock_det.tools.config import add_training_config
from dropblock_det.tools.data import register_dropblock_digits

# The embedded datasets, as the training tools register them.
register_dropblock_digits()

TINY_BASE_CONFIG = os.path.join(REPO_ROOT, "configs", "tiny", "Base-Tiny.yaml")

# A ResNet-50 layout (BottleneckBlock, 3-4-6-3 blocks) at 1/8 of the width, for fast CPU tests of
# the bottleneck placement.
NARROW_R50_OPTS = (
    "MODEL.RESNETS.DEPTH", 50,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
    "MODEL.RESNETS.STRIDE_IN_1X1", False,
)  # fmt: skip


def load_config(config_file, opts=()):
    """Read a yaml config the way tools/train_net.py does, for CPU and without weights.

    Args:
        config_file (str): path of the yaml file.
        opts (Sequence): "KEY", value pairs merged after the file.

    Returns:
        CfgNode: the (unfrozen) config.
    """
    cfg = get_cfg()
    add_dropblock_config(cfg)
    add_training_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.fixture
def tiny_cfg():
    """Factory: ``tiny_cfg("KEY", value, ...)`` is configs/tiny/Base-Tiny.yaml plus those values.

    The base has DropBlock off; R-18 (BasicBlock), BN in the head, 96 px input, 10 classes.
    """

    def make(*opts):
        return load_config(TINY_BASE_CONFIG, opts)

    return make


@pytest.fixture
def catalog():
    """Removes the DatasetCatalog and MetadataCatalog entries a test adds, once it is done.

    Whatever the test registers (itself, through a fixture or through the code under test) is
    found by comparing both catalogs with their content when the fixture started.

    Yields:
        CatalogEntries: ``catalog.unique_name(prefix)`` gives names no other test uses.
    """
    entries = CatalogEntries()
    yield entries
    entries.remove_added()


class CatalogEntries:
    """The catalogs' names at creation, to remove what was added since (see :func:`catalog`)."""

    def __init__(self):
        self._datasets = set(DatasetCatalog.list())
        self._metadata = set(MetadataCatalog.list())
        self._count = 0

    def unique_name(self, prefix="test_dataset"):
        """A dataset name not in either catalog, starting with ``prefix``."""
        while True:
            self._count += 1
            name = f"{prefix}_{os.getpid()}_{self._count}"
            if name not in DatasetCatalog.list() and name not in MetadataCatalog.list():
                return name

    def remove_added(self):
        """Remove every entry of either catalog that was not there at creation."""
        for name in set(DatasetCatalog.list()) - self._datasets:
            DatasetCatalog.remove(name)
        for name in set(MetadataCatalog.list()) - self._metadata:
            MetadataCatalog.remove(name)


@pytest.fixture
def narrow_r50_cfg(tiny_cfg):
    """Factory like ``tiny_cfg`` with a narrow ResNet-50 (BottleneckBlock) backbone."""

    def make(*opts):
        return tiny_cfg(*NARROW_R50_OPTS, *opts)

    return make


# ----------------------------------------------------------------------------------------------
# Training runs through tools/train_net.py, recorded step by step (reliability tests: resume,
# distributed, determinism, non-finite losses).

TINY_DROPBLOCK_CONFIG = os.path.join(
    REPO_ROOT, "configs", "tiny", "tiny_retinanet_R18_FPN_dropblock.yaml"
)
# The tiny DropBlock config made quick: 96 px images (res5 is 3x3, still >= BLOCK_SIZE 3), two
# images a step (BN in the head needs at least two per process), no evaluation.
QUICK_TINY_OPTS = (
    "MODEL.DEVICE", "cpu",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "DATASETS.TEST", "()",
)  # fmt: skip
# Read by recording_main in the training process: SIGKILL it before this iteration starts.
KILL_AT_ITER_ENV = "DROPBLOCK_TEST_KILL_AT_ITER"
_RECORDING_FILE = "recording_rank{rank}.jsonl"
# Run in a fresh interpreter: tools/train_net.py's cli with every rank's main wrapped by
# recording_main. ``launch`` pickles the wrapper by name, so spawned ranks import it from here.
_RECORDING_RUNNER = """
import sys
import conftest
from dropblock_det.tools.train_net import cli
sys.exit(cli(sys.argv[1:], main=conftest.recording_main))
"""


class TrainingRecorder(HookBase):
    """Test-only hook: what each training step did, one JSON line per step and rank.

    A line holds ``iter``, ``lr`` (every parameter group's, as the step used it), ``keep_probs``
    (every DropBlock call's keep_prob, in call order), ``masks`` (SHA-256 of the blocks those
    calls dropped), ``dropped`` (units dropped), ``replay_ok`` (the replayed masks explain the
    zeros of the real outputs) and ``loss`` (the sum of the model's losses). ``after_train`` adds
    ``{"final_params": <SHA-256 of the parameters>}``.

    The mask of a call is recovered independently of the data: the RNG state before the call is
    restored and the module is run again on ones, which draws the same blocks. CPU RNG only.
    """

    def __init__(self, output_dir, *, kill_at_iter=None, nan_loss_at_iter=None):
        """
        Args:
            output_dir (str): where ``recording_rank<r>.jsonl`` is written.
            kill_at_iter (int or None): SIGKILL the process before this iteration (a crash).
            nan_loss_at_iter (int or None): make every loss NaN at this iteration.
        """
        self._path = os.path.join(output_dir, _RECORDING_FILE.format(rank=comm.get_rank()))
        self._kill_at_iter = kill_at_iter
        self._nan_loss_at_iter = nan_loss_at_iter
        self._handles = []
        self._step = None

    def before_train(self):
        model = self.trainer.model
        model = getattr(model, "module", model)  # DistributedDataParallel's inner model
        for module in model.modules():
            if isinstance(module, DropBlock2d):
                self._handles.append(module.register_forward_pre_hook(self._save_rng_state))
                self._handles.append(module.register_forward_hook(self._record_mask))
        self._handles.append(model.register_forward_hook(self._record_loss))

    def before_step(self):
        if self.trainer.iter == self._kill_at_iter:
            os.kill(os.getpid(), signal.SIGKILL)
        self._step = {
            "iter": self.trainer.iter,
            "lr": [group["lr"] for group in self.trainer.optimizer.param_groups],
            "keep_probs": [],
            "masks": hashlib.sha256(),
            "dropped": 0,
            "replay_ok": True,
            "loss": None,
        }

    def _save_rng_state(self, module, inputs):
        module._recorder_rng_state = torch.get_rng_state()

    def _record_mask(self, module, inputs, output):
        if not module.training or self._step is None:
            return
        x = inputs[0]
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.set_rng_state(module._recorder_rng_state)
            replay = module.forward(torch.ones_like(x))
        dropped = replay == 0
        self._step["keep_probs"].append(module.keep_prob)
        self._step["masks"].update(np.packbits(dropped.cpu().numpy()).tobytes())
        self._step["dropped"] += int(dropped.sum())
        explained = torch.equal(output == 0, dropped | (x == 0))
        self._step["replay_ok"] = self._step["replay_ok"] and explained

    def _record_loss(self, model, inputs, losses):
        if not model.training or self._step is None:
            return None
        if self.trainer.iter == self._nan_loss_at_iter:
            losses = {name: value * float("nan") for name, value in losses.items()}
        self._step["loss"] = float(sum(value.detach() for value in losses.values()))
        return losses

    def after_step(self):
        step = dict(self._step, masks=self._step["masks"].hexdigest())
        self._write(step)
        self._step = None

    def after_train(self):
        for handle in self._handles:
            handle.remove()
        digest = hashlib.sha256()
        for name, param in self.trainer.model.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().cpu().numpy().tobytes())
        self._write({"final_params": digest.hexdigest()})

    def _write(self, record):
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")


def recording_main(args):
    """``dropblock_det.tools.trainer.main`` with a :class:`TrainingRecorder` after the trainer's hooks.

    Runs in each training process (``launch`` calls it per rank); reads KILL_AT_ITER_ENV.

    Args:
        args (argparse.Namespace): from Detectron2's ``default_argument_parser``.

    Returns:
        what ``main`` returns.
    """
    from dropblock_det.tools import trainer as engine

    kill_at = os.environ.get(KILL_AT_ITER_ENV)

    class RecordingTrainer(engine.Trainer):
        def build_hooks(self):
            recorder = TrainingRecorder(
                self.cfg.OUTPUT_DIR, kill_at_iter=None if kill_at is None else int(kill_at)
            )
            return super().build_hooks() + [recorder]

    return engine.main(args, trainer_class=RecordingTrainer)


def run_recorded_train_net(argv, *, timeout=300, env=None, returncode=0):
    """Run tools/train_net.py's cli with :func:`helpers.run_tool`, recording every step.

    See recording_main; a hang kills every rank and fails the test.

    Args:
        argv (Sequence[str]): train_net.py's arguments.
        timeout (float): seconds before the whole process group is killed and the test fails.
        env (dict or None): extra environment variables.
        returncode (int or None): the exit status to assert; None asserts nothing.

    Returns:
        subprocess.CompletedProcess: with ``returncode``, ``stdout`` and ``stderr`` (text).
    """
    return run_tool(
        ["-c", _RECORDING_RUNNER, *argv], env=env, timeout=timeout, returncode=returncode
    )


def read_recording(output_dir, rank=0):
    """The steps a :class:`TrainingRecorder` wrote, and the final parameter hash if it got there.

    Args:
        output_dir (str or Path): the run's OUTPUT_DIR.
        rank (int): the process.

    Returns:
        tuple(dict[int, dict], str or None): steps by iteration (a later line replaces an earlier
        one of the same iteration, as a resumed process's steps do), and ``final_params`` or None.
    """
    steps, final_params = {}, None
    with open(os.path.join(output_dir, _RECORDING_FILE.format(rank=rank))) as f:
        for line in f:
            record = json.loads(line)
            if "final_params" in record:
                final_params = record["final_params"]
            else:
                steps[record["iter"]] = record
    return steps, final_params


def recorded_run_argv(output_dir, *opts):
    """train_net.py arguments of a quick tiny DropBlock run (QUICK_TINY_OPTS) into output_dir."""
    opts = ("OUTPUT_DIR", output_dir, *opts)
    return ["--config-file", TINY_DROPBLOCK_CONFIG, *QUICK_TINY_OPTS, *opts]


# Shared by the resume and determinism tests: 8 steps, checkpoints after steps 3 and 7, warmup
# over 3 steps and an LR step at 5, so that both keep_prob and LR change along the run.
SCHEDULED_RUN_OPTS = (
    "SOLVER.MAX_ITER", "8",
    "SOLVER.CHECKPOINT_PERIOD", "4",
    "SOLVER.WARMUP_ITERS", "3",
    "SOLVER.STEPS", "(5,)",
)  # fmt: skip
# The interrupted run is killed before this step: after the checkpoint of step 3, so that the
# resumed run repeats steps 4 and 5.
SCHEDULED_RUN_KILLED_AT = 6


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory):
    """OUTPUT_DIR of the tiny DropBlock run of SCHEDULED_RUN_OPTS, trained to the end."""
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    run_recorded_train_net(recorded_run_argv(out, *SCHEDULED_RUN_OPTS))
    return out


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory):
    """OUTPUT_DIR of the same run, SIGKILLed before step SCHEDULED_RUN_KILLED_AT."""
    out = str(tmp_path_factory.mktemp("interrupted"))
    run_recorded_train_net(
        recorded_run_argv(out, *SCHEDULED_RUN_OPTS),
        env={KILL_AT_ITER_ENV: str(SCHEDULED_RUN_KILLED_AT)},
        returncode=-signal.SIGKILL,
    )
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Run the files with the most slow tests first, each file's tests together.

    ``make test`` sends whole files to its pytest-xdist workers (``--dist loadfile``: a file's
    module-scoped training runs are built once), in this order: the long files first leave the
    short ones to even out the end, instead of one worker finishing a long file alone.
    """
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    first = {}
    for index, item in enumerate(items):
        first.setdefault(item.path, index)
    items.sort(key=lambda item: (-slow[item.path], first[item.path]))
