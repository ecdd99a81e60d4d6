"""Plain helpers shared by the tests: the tools' runner, the COCO writer and seeded generators.

Fixtures live in conftest.py; what is here is imported (``from helpers import run_tool``).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
LAZYCONFIG_TRAIN_NET = os.path.join(REPO_ROOT, "tools", "lazyconfig_train_net.py")
TUNE = os.path.join(REPO_ROOT, "tools", "tune.py")
DEMO = os.path.join(REPO_ROOT, "tools", "demo.py")

# Seconds a tool may run before its whole process group is killed and the test fails.
TOOL_TIMEOUT_S = 300
# Characters of a failed run's stdout and of its stderr that its failure message quotes.
OUTPUT_TAIL = 4000
# The pixels write_coco paints: a dark background and every annotated box bright.
BACKGROUND, INK = 20, 230


def tool_env(env=None):
    """The environment of a tool run: this one, on the CPU with one thread, this tree importable.

    CUDA stays hidden even where GPUs are visible: ``launch`` would otherwise pick NCCL and check
    GPU counts. The tests folder is on the path too, for runners that import its modules.

    Args:
        env (dict or None): variables set on top (they win).

    Returns:
        dict: the environment.
    """
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    run_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (TESTS_DIR, REPO_ROOT, run_env.get("PYTHONPATH")) if p
    )
    return run_env


def _describe(args):
    return " ".join(os.path.relpath(a, REPO_ROOT) if os.path.isabs(a) else a for a in args)[:300]


def _tail(text):
    return text[-OUTPUT_TAIL:] if text else "(empty)"


def start_tool(args, *, log_path, env=None):
    """Start ``python *args`` from the repository root, its stdout and stderr into ``log_path``.

    The process gets its own session so that :func:`wait_tool` can kill it with every process it
    spawned.

    Args:
        args (Sequence): the interpreter's arguments: a script (``TRAIN_NET``) and its arguments,
            or ``"-c", code, ...`` or ``"-m", module, ...``.
        log_path (str or Path): the file that receives both streams.
        env (dict or None): variables set on top of :func:`tool_env`'s.

    Returns:
        subprocess.Popen: the process, with ``log_path`` and ``args`` attributes.
    """
    args = [str(a) for a in args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=tool_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = str(log_path)
    return proc


def read_log(proc):
    """What a :func:`start_tool` process has written so far."""
    with open(proc.log_path) as f:
        return f.read()


def wait_tool(proc, *, timeout=TOOL_TIMEOUT_S, returncode=0):
    """Wait for a :func:`start_tool` process; kill its process group and fail if it hangs.

    Args:
        proc (subprocess.Popen): from :func:`start_tool`.
        timeout (float): seconds to wait.
        returncode (int or None): the exit status to assert (the log's tail is the message);
            None asserts nothing.

    Returns:
        int: the exit status.
    """
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(
            f"python {_describe(proc.args[1:])} hung for {timeout} s:\n{_tail(read_log(proc))}"
        )
    if returncode is not None:
        assert proc.returncode == returncode, (
            f"python {_describe(proc.args[1:])} exited {proc.returncode}, expected {returncode}:\n"
            f"{_tail(read_log(proc))}"
        )
    return proc.returncode


def run_tool(args, *, env=None, timeout=TOOL_TIMEOUT_S, returncode=0):
    """Run ``python *args`` from the repository root as a user would, on the CPU with one thread.

    Args:
        args (Sequence): the interpreter's arguments: a script (``TRAIN_NET``) and its arguments,
            or ``"-c", code, ...`` or ``"-m", module, ...``.
        env (dict or None): variables set on top of :func:`tool_env`'s.
        timeout (float): seconds before the process and every process it spawned are killed and
            the test fails (a hang fails instead of blocking the suite).
        returncode (int or None): the exit status to assert, with the tails of stdout and stderr
            as the message; None asserts nothing.

    Returns:
        subprocess.CompletedProcess: ``returncode``, ``stdout`` and ``stderr`` (text).
    """
    args = [str(a) for a in args]
    command = [sys.executable, *args]
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=tool_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"python {_describe(args)} hung for {timeout} s:\n"
            f"--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )
    if returncode is not None:
        assert proc.returncode == returncode, (
            f"python {_describe(args)} exited {proc.returncode}, expected {returncode}:\n"
            f"--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _paint(image, annotations):
    """An image entry's pixels: BACKGROUND, and INK inside its annotations' (clipped) boxes."""
    width, height = image["width"], image["height"]
    pixels = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for annotation in annotations:
        box = annotation.get("bbox")
        if annotation.get("image_id") != image["id"] or not isinstance(box, list | tuple):
            continue
        if len(box) != 4 or not all(isinstance(v, int | float) for v in box):
            continue
        x, y, w, h = (int(v) for v in box)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            pixels[y0:y1, x0:x1] = INK
    return pixels


def write_coco(json_path, content, *, image_root=None):
    """Write a COCO instances file and, with ``image_root``, an image for each of its entries.

    Each image is ``width`` x ``height`` as its entry says, BACKGROUND with its annotations' boxes
    painted INK (boxes clipped to the image; malformed ones, which tests of the checks write,
    are left unpainted), in the format its ``file_name`` says.

    Args:
        json_path (str or Path): the json file to write.
        content (dict): the json's content ("images", "annotations", "categories"; any may be
            missing, as tests of the checks need).
        image_root (str or Path or None): folder of the images, made if missing; None writes none.

    Returns:
        str: ``json_path``.
    """
    if image_root is not None:
        os.makedirs(image_root, exist_ok=True)
        annotations = content.get("annotations", [])
        for image in content.get("images", []):
            pixels = _paint(image, annotations)
            Image.fromarray(pixels).save(os.path.join(image_root, image["file_name"]))
    with open(json_path, "w") as f:
        json.dump(content, f)
    return str(json_path)


def seeded_generator(seed=0, device="cpu"):
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: the tests' one source of draws."""
    return torch.Generator(device=device).manual_seed(seed)
