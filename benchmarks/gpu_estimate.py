"""GPU time of the Triton DropBlock backend, estimated on a machine without a GPU.

Runs ``drop_block_2d(x, 0.9, 7, gamma="exact", backend="triton")`` forward and backward under
Triton's interpreter, captures every kernel launch, compiles each distinct launch for sm_90 and
counts its SASS instructions, counts the bytes the kernels and the torch ops around them move, and
estimates the time against the floor's (``y = x * c`` forward, ``dx = dy * c`` backward: reading
and writing four tensors of x's size)::

    time = max(thread_instructions / ISSUE_RATE, bytes / BANDWIDTH)
    floor = 4 * element_size * elements / BANDWIDTH

How each number is obtained:

* Launches. A child process with ``TRITON_INTERPRET=1`` (Triton reads it when the kernels are
  decorated) wraps the ``run`` method of every kernel object of ``dropblock_det.layers`` (an
  instance attribute, removed afterwards): each launch is recorded with its kernel, arguments,
  constexprs, grid and options. At the case's real shape the wrapper skips the kernel body (a
  "dry" run: the host code, the grids and the argument values are the real ones, in no time),
  then runs a sample of its programs (below).
* Instructions. The parent process (no interpreter) binds each recorded launch with Triton's own
  argument specialisation for the target (pointers divisible by 16 when aligned, integers
  divisible by 16 or equal to 1 unless in ``do_not_specialize``), compiles it with
  ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` and counts the
  instructions of ``cuobjdump -sass`` (Triton ships it), NOPs and the closing self-branch left
  out. A branch to a lower address is a loop, so the static count is weighted: ``nvdisasm -gi``
  gives each instruction's kernel source line, and the child runs a few programs of each real
  launch (``--samples``, spread over the grid) under the interpreter, counting how often each
  statement of the kernel runs; an instruction runs as often as its statement, scaled from the
  sampled programs to the grid (a launch that differs from an earlier one only in its tensors'
  dtypes reuses that one's runs once its last sampled program runs the same statements).
  Thread-instructions are warp instructions x 32 x num_warps.
* Bytes, the traffic counter's way (``../shared/tools/triton_traffic.py``, reimplemented here
  because the project cannot import outside itself): every Triton load and store counted by unique
  address per launch, every torch op outside the kernels by the bytes of its tensors. The torch
  ops are counted in the dry run at the real shape. The kernels' loads and stores are counted in a
  second interpreter run at a reduced batch and channel count (``--reduced``, same H and W): per
  launch and pointer argument, the fraction of the tensor touched, times that tensor's size at the
  real shape.

Usage::

    python benchmarks/gpu_estimate.py                       # the 18 cases, plain table
    python benchmarks/gpu_estimate.py --markdown --json estimate.json
    python benchmarks/gpu_estimate.py --shapes 8x512x80x80 --dtypes fp16 --masks shared
"""

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Thread-instructions per second of an H200: 132 SMs x 4 schedulers x 32 lanes x ~1.98 GHz.
# Source: ../shared/reference/gpu-kernel.md, "Counting a kernel's instructions without a GPU".
ISSUE_RATE = 33.4e12
# Bytes per second of an H200's HBM3e; same source.
BANDWIDTH = 4.8e12
# The compilation target: sm_90 (Hopper), 32 lanes a warp.
TARGET = ("cuda", 90, 32)
WARP = TARGET[2]

KEEP_PROB, BLOCK_SIZE, GAMMA = 0.9, 7, "exact"
SHAPES = ((8, 512, 80, 80), (8, 1024, 40, 40), (8, 2048, 20, 20))
DTYPES = ("fp16", "bf16", "fp32")
MASKS = ("per-channel", "shared")
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4}
TORCH_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# Batch and channels of the interpreter run that counts the kernels' loads and stores.
REDUCED = (2, 4)
# Programs of each real-shape launch run under the interpreter to count statement runs.
SAMPLED_PROGRAMS = 8
# The package whose kernel objects are recorded.
KERNEL_PACKAGE = "dropblock_det.layers"
# Torch ops that move no data and launch nothing (as the traffic counter has them).
FREE_OPS = frozenset(
    "empty empty_like empty_strided new_empty new_empty_strided detach view alias _unsafe_view "
    "as_strided t expand unsqueeze squeeze select slice lift_fresh set_ size stride".split()
)


def floor_bytes_per_element(dtype: str) -> int:
    """The floor's bytes per element: read x, write y, read dy, write dx."""
    return 4 * ELEMENT_SIZE[dtype]


def floor_seconds_per_element(dtype: str) -> float:
    """The floor's time per element, at the card's bandwidth."""
    return floor_bytes_per_element(dtype) / BANDWIDTH


def instruction_budget(dtype: str) -> float:
    """Thread-instructions per element that fit in the floor's time (~56 fp16, ~111 fp32)."""
    return floor_seconds_per_element(dtype) * ISSUE_RATE


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8x512x80x80"`` -> ``(8, 512, 80, 80)``."""
    shape = tuple(int(part) for part in text.lower().split("x"))
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is NxCxHxW with positive sizes, got {text!r}")
    return shape


def case_label(shape, dtype: str, mask: str) -> str:
    return f"{mask} {dtype} {'x'.join(map(str, shape))}"


# --------------------------------------------------------------------------------------------
# Capture: runs in the child, under the interpreter.
# --------------------------------------------------------------------------------------------


def _kernel_objects():
    """Name -> kernel object for every Triton kernel defined in ``KERNEL_PACKAGE``."""
    from triton.runtime.jit import KernelInterface

    package = importlib.import_module(KERNEL_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        try:
            importlib.import_module(f"{KERNEL_PACKAGE}.{info.name}")
        except ImportError:
            continue
    kernels = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(KERNEL_PACKAGE):
            continue
        for value in vars(module).values():
            if isinstance(value, KernelInterface) and value.fn.__module__ == name:
                kernels[f"{name}:{value.fn.__name__}"] = value
    return kernels


def _describe(value):
    """A launch argument as JSON: tensors by dtype, alignment and size, scalars as they are."""
    if hasattr(value, "data_ptr"):
        return {
            "dtype": str(value.dtype).replace("torch.", ""),
            "aligned": value.data_ptr() % 16 == 0,
            "nbytes": value.numel() * value.element_size(),
        }
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


class _Traffic:
    """Unique addresses of the interpreter's loads and stores, per pointer argument of a launch.

    Installed on the interpreter's builder object for the launches it wraps (the interpreter has
    no public hook for memory operations); each address is attributed to the argument whose
    tensor contains it.
    """

    def __init__(self, builder):
        self.builder = builder
        self.ranges = []
        self.seen = {}

    def track(self, tensors):
        import numpy as np

        self.ranges = [
            (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), index)
            for index, t in tensors
        ]
        self.seen = {}
        self._starts = np.array([start for start, _, _ in self.ranges], dtype=np.uint64)

    def _record(self, kind, ptrs, mask):
        import numpy as np

        addresses = ptrs.data[mask.data] if mask is not None else ptrs.data.ravel()
        addresses = addresses.ravel().astype(np.uint64)
        if addresses.size == 0:
            return
        order = np.argsort(self._starts)
        slot = np.searchsorted(self._starts[order], addresses, side="right") - 1
        for position in np.unique(slot):
            if position < 0:
                continue
            start, end, index = self.ranges[order[position]]
            picked = addresses[(slot == position) & (addresses < end)]
            self.seen.setdefault((kind, index), []).append(picked)

    def touched(self, element_sizes):
        """(kind, argument index) -> unique bytes touched."""
        import numpy as np

        return {
            key: int(np.unique(np.concatenate(parts)).size) * element_sizes[key[1]]
            for key, parts in self.seen.items()
        }

    def __enter__(self):
        load, store = self.builder.create_masked_load, self.builder.create_masked_store

        def counted_load(ptrs, mask, *args, **kwargs):
            self._record("load", ptrs, mask)
            return load(ptrs, mask, *args, **kwargs)

        def counted_store(ptrs, value, mask, *args, **kwargs):
            self._record("store", ptrs, mask)
            return store(ptrs, value, mask, *args, **kwargs)

        self.builder.create_masked_load = counted_load
        self.builder.create_masked_store = counted_store
        return self

    def __exit__(self, *exc):
        del self.builder.create_masked_load, self.builder.create_masked_store


class _LineTransitions:
    """Counts (previous line, line) pairs of the kernel function's frames while it runs.

    The interpreter runs the kernel body once per program as Python, so these counts say how often
    each statement ran, loop bodies included: what weights the SASS of a loop by its trips.
    """

    def __init__(self, fn):
        self.file = os.path.realpath(inspect.getsourcefile(fn))
        self.name = fn.__name__
        self.pairs = {}

    def _local(self, frame, event, arg):
        if event == "line":
            previous = self.previous.get(id(frame))
            key = (previous, frame.f_lineno)
            self.pairs[key] = self.pairs.get(key, 0) + 1
            self.previous[id(frame)] = frame.f_lineno
        return self._local

    def _global(self, frame, event, arg):
        code = frame.f_code
        if code.co_name == self.name and os.path.realpath(code.co_filename) == self.file:
            self.previous[id(frame)] = None
            return self._local
        return None

    def as_list(self):
        return [[p, line, n] for (p, line), n in self.pairs.items()]

    def __enter__(self):
        self.previous = {}
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)


class _LaunchRecorder:
    """Records every launch of the given kernel objects; runs them only when ``execute``.

    Each kernel's ``run`` is replaced by an instance attribute for the duration of the ``with``
    block (``kernel[grid](...)`` calls ``self.run``), and the class method is back afterwards.
    """

    def __init__(self, kernels, execute, traffic=None):
        self.kernels, self.execute, self.traffic = kernels, execute, traffic
        self.launches, self.calls = [], []

    def _wrap(self, name, kernel, run):
        parameters = [p.name for p in inspect.signature(kernel.fn).parameters.values()]

        def recording_run(*args, grid, warmup, **kwargs):
            bound = dict(zip(parameters, args, strict=False))
            bound.update({k: v for k, v in kwargs.items() if k in parameters})
            launch_grid = grid(bound) if callable(grid) else grid
            launch_grid = tuple(int(g) for g in launch_grid) + (1,) * (3 - len(launch_grid))
            launch = {
                "kernel": name,
                "args": [_describe(a) for a in args],
                "kwargs": {k: _describe(v) for k, v in kwargs.items()},
                "grid": launch_grid,
            }
            self.launches.append(launch)
            if not self.execute:
                self.calls.append((kernel, args, kwargs, launch_grid))
                return None
            if self.traffic is None:
                return run(*args, grid=grid, warmup=warmup, **kwargs)
            tensors = [(i, a) for i, a in enumerate(args) if hasattr(a, "data_ptr")]
            self.traffic.track(tensors)
            result = run(*args, grid=grid, warmup=warmup, **kwargs)
            touched = self.traffic.touched({i: a.element_size() for i, a in tensors})
            launch["touched"] = {
                f"{kind}:{index}": count / max(1, args[index].numel() * args[index].element_size())
                for (kind, index), count in touched.items()
            }
            return result

        return recording_run

    def __enter__(self):
        for name, kernel in self.kernels.items():
            kernel.run = self._wrap(name, kernel, kernel.run)
        return self

    def __exit__(self, *exc):
        for kernel in self.kernels.values():
            del kernel.run


def _sampled_programs(grid, samples):
    """Up to ``samples`` program ids spread evenly over the grid, the first and the last included."""
    total = grid[0] * grid[1] * grid[2]
    count = min(samples, total)
    picks = sorted({round(i * (total - 1) / max(1, count - 1)) for i in range(count)})
    return [(p % grid[0], p // grid[0] % grid[1], p // (grid[0] * grid[1])) for p in picks]


def run_programs(kernel, args, kwargs, grid, programs):
    """Runs some programs of a launch under the interpreter, at the launch's real arguments.

    The interpreter runs a whole grid or nothing; this is the core of its ``GridExecutor`` for a
    chosen set of program ids (CPU tensors need none of its host copies). It uses the
    interpreter's module functions, a benchmark's licence: only this estimator depends on them.
    """
    import triton.runtime.interpreter as interpreter

    fn = kernel.rewrite()
    names = inspect.getfullargspec(kernel.fn).args
    kwargs = {k: v for k, v in kwargs.items() if k in names}
    constexprs = interpreter.GridExecutor(kernel.fn, kernel.arg_names, grid).constexprs
    scope = interpreter._patch_lang(kernel.fn)
    try:
        call = inspect.getcallargs(fn, *args, **kwargs)
        call = {
            name: value if name in constexprs else interpreter._implicit_cvt(value)
            for name, value in call.items()
        }
        interpreter.interpreter_builder.set_grid_dim(*grid)
        for program in programs:
            interpreter.interpreter_builder.set_grid_idx(*program)
            fn(**call)
    finally:
        scope.restore()


def _torch_ops_counter():
    """A dispatch mode summing the bytes of the torch ops it sees and listing them."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TorchOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes, self.ops = 0, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            if name not in FREE_OPS:
                # An ``out=`` tensor is the op's result: written once, counted once.
                inputs = {k: v for k, v in (kwargs or {}).items() if k != "out"}
                leaves = tree_leaves((args, inputs, out))
                self.bytes += sum(
                    t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor)
                )
                self.ops.append(name)
            return out

    return TorchOps()


def _forward_backward(shape, dtype, mask, backend="triton", device="cpu"):
    """The operator's forward and backward on random x and dy of ``shape``, as a callable.

    The backward is ``torch.autograd.grad``: dx is returned, not accumulated into a leaf's
    ``.grad`` (a layer's input in a network is no leaf, and accumulating may copy dx).
    """
    import torch

    from dropblock_det.layers import drop_block_2d

    torch_dtype = getattr(torch, TORCH_DTYPE[dtype])
    x = torch.randn(shape, dtype=torch_dtype, device=device).requires_grad_(True)
    dy = torch.randn(shape, dtype=torch_dtype, device=device)

    def step():
        y = drop_block_2d(
            x, KEEP_PROB, BLOCK_SIZE, share_channels=mask == "shared", gamma=GAMMA, backend=backend
        )
        torch.autograd.grad(y, x, dy)

    return step


def dense_count(shape, dtype, mask, device="meta"):
    """The dense backend's aten ops and bytes per element, forward + backward.

    Every aten op the call dispatches is counted with the bytes of its input and output tensors
    (an ``out=`` tensor once), as the traffic counter counts loads and stores. On the ``meta``
    device (the default) nothing is computed or allocated, so the goal shapes cost no memory, and
    the ops are those of a non-CPU device (``max_pool2d`` returns its int64 indices there, as on
    CUDA).

    Returns:
        dict: ``case``, ``ops`` (the aten op names in order), ``launches``, ``bytes_per_element``
        and ``bytes_x_floor``.
    """
    step = _forward_backward(shape, dtype, mask, backend="dense", device=device)
    counter = _torch_ops_counter()
    with counter:
        step()
    elements = shape[0] * shape[1] * shape[2] * shape[3]
    per_element = counter.bytes / elements
    return {
        "case": case_label(shape, dtype, mask),
        "ops": counter.ops,
        "launches": len(counter.ops),
        "bytes_per_element": per_element,
        "bytes_x_floor": per_element / floor_bytes_per_element(dtype),
    }


def format_dense_table(rows, markdown=False):
    """The dense backend's table: aten ops and bytes per element (x the floor's bytes)."""
    header = ["case", "aten ops", "bytes/element (x floor)"]
    lines = [
        [r["case"], str(r["launches"]), f"{r['bytes_per_element']:.1f} ({r['bytes_x_floor']:.2f}x)"]
        for r in rows
    ]
    return _table(header, lines, markdown)


def _control_key(kernel, args, kwargs, grid):
    """What a launch's statement runs can depend on: everything but its tensors' element types.

    Tensors enter by alignment and element count; a launch that differs from another only in the
    dtype of a tensor (fp16/bf16/fp32 x, or dy in backward) then shares its sampled runs, after
    the check of :func:`_sampled_runs`.
    """

    def control(value):
        if hasattr(value, "data_ptr"):
            return ("tensor", value.data_ptr() % 16 == 0, value.numel())
        return value

    return repr(
        (
            kernel.fn.__module__,
            kernel.fn.__name__,
            tuple(grid),
            [control(a) for a in args],
            sorted((k, control(v)) for k, v in kwargs.items()),
        )
    )


def _transitions(kernel, args, kwargs, grid, programs):
    with _LineTransitions(kernel.fn) as lines:
        run_programs(kernel, args, kwargs, grid, programs)
    return lines.pairs


def _sampled_runs(kernel, args, kwargs, grid, programs, runs):
    """(previous line, line, count) of the kernel statements that ``programs`` run.

    ``runs`` holds earlier results by :func:`_control_key`. A launch with the key of an earlier
    one runs only the last of its sampled programs; if that program's statement runs equal the
    earlier launch's last program's, the earlier runs stand for all of them (forward and
    backward apply launches, cases that differ only in dtype); otherwise all programs run.
    """
    key = _control_key(kernel, args, kwargs, grid)
    last = _transitions(kernel, args, kwargs, grid, programs[-1:])
    known = runs.get(key)
    if known is None or known["last"] != last:
        pairs = dict(last)
        for pair, count in _transitions(kernel, args, kwargs, grid, programs[:-1]).items():
            pairs[pair] = pairs.get(pair, 0) + count
        known = runs[key] = {"last": last, "all": pairs}
    return [[p, line, n] for (p, line), n in known["all"].items()]


def capture(shape, dtype, mask, reduced, samples, runs=None):
    """The launches of one case: real-shape grids, arguments and sampled statement runs, and the
    traffic fractions of the reduced run.

    ``runs``: sampled statement runs shared between the launches and the cases of one process
    (see :func:`_sampled_runs`).
    """
    runs = {} if runs is None else runs
    import torch
    import triton.runtime.interpreter as interpreter

    torch.manual_seed(0)
    kernels = _kernel_objects()
    step = _forward_backward(shape, dtype, mask)
    counter = _torch_ops_counter()
    with _LaunchRecorder(kernels, execute=False) as dry, counter:
        step()
    # Statement runs at the real shape, from a sample of each launch's programs.
    for launch, (kernel, args, kwargs, grid) in zip(dry.launches, dry.calls, strict=True):
        programs = _sampled_programs(grid, samples)
        launch["sampled_programs"] = len(programs)
        launch["line_transitions"] = _sampled_runs(kernel, args, kwargs, grid, programs, runs)
    small = (min(reduced[0], shape[0]), min(reduced[1], shape[1])) + tuple(shape[2:])
    small_step = _forward_backward(small, dtype, mask)
    with _Traffic(interpreter.interpreter_builder) as traffic:
        with _LaunchRecorder(kernels, execute=True, traffic=traffic) as wet:
            small_step()
    names = [launch["kernel"] for launch in dry.launches]
    if names != [launch["kernel"] for launch in wet.launches]:
        other = [launch["kernel"] for launch in wet.launches]
        raise RuntimeError(f"the reduced run launched other kernels: {names} vs {other}")
    for real, reduced_launch in zip(dry.launches, wet.launches, strict=True):
        real["touched"] = reduced_launch["touched"]
    return {
        "shape": list(shape),
        "dtype": dtype,
        "mask": mask,
        "reduced_shape": list(small),
        "launches": dry.launches,
        "torch_ops": counter.ops,
        "torch_bytes": counter.bytes,
    }


# --------------------------------------------------------------------------------------------
# Compilation and SASS counting: runs in the parent, without the interpreter.
# --------------------------------------------------------------------------------------------

_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.+?)\s*;", re.MULTILINE)
_BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA(?:\.\S+)?\s+(?:`?\(?)(0x[0-9a-f]+)")


_LINE_INFO = re.compile(r'^\s*//## File "([^"]+)", line (\d+)(.*)$')


@dataclass(frozen=True)
class SassCount:
    """Static SASS of one compiled kernel.

    Attributes:
        instructions (int): instructions, NOPs and the closing self-branch left out.
        loops (int): backward branches (each a loop, whose body runs more than once).
        registers (int): registers per thread.
        lines (tuple): per counted instruction, the (file, line) of the kernel source it comes
            from (the outermost frame of inlined calls), or None without line information.
        depths (tuple): per counted instruction, how many SASS loops (backward branch spans)
            hold it.
    """

    instructions: int
    loops: int
    registers: int
    lines: tuple = ()
    depths: tuple = ()


def _counted(sass: str):
    """(address, counted, branch target of a backward branch or None) per SASS instruction."""
    for address_text, text in _SASS_LINE.findall(sass):
        opcode = text.split()[0] if not text.startswith("@") else text.split()[1]
        address = int(address_text, 16)
        if opcode.startswith("NOP"):
            yield address, False, None
            continue
        branch = _BRANCH.match(text)
        if branch:
            target = int(branch.group(1), 16)
            if target == address:
                yield address, False, None  # the trap after EXIT: never reached
                continue
            yield address, True, target if target < address else None
            continue
        yield address, True, None


def count_sass(sass: str) -> tuple[int, int]:
    """(instructions, loops) of ``cuobjdump -sass`` text."""
    marks = [(counted, target is not None) for _, counted, target in _counted(sass)]
    return sum(counted for counted, _ in marks), sum(backward for _, backward in marks)


def source_lines(nvdisasm: str) -> dict:
    """Address -> (file, line) of the outermost source frame, from ``nvdisasm -gi`` text."""
    where, lines = None, {}
    for text in nvdisasm.splitlines():
        info = _LINE_INFO.match(text)
        if info:
            if "inlined at" not in info.group(3):
                where = (os.path.realpath(info.group(1)), int(info.group(2)))
            continue
        found = _SASS_LINE.match(text)
        if found:
            lines[int(found.group(1), 16)] = where
    return lines


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def sass_of(compiled) -> SassCount:
    """Counts the SASS of a ``triton.compile`` result, with each instruction's source line."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()

        def tool(*command):
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout

        sass = tool(_nvidia_tool("cuobjdump"), "-sass", cubin.name)
        where = source_lines(tool(_nvidia_tool("nvdisasm"), "-gi", "-c", cubin.name))
    instructions, loops = count_sass(sass)
    marks = [(address, target) for address, counted, target in _counted(sass) if counted]
    lines = tuple(where.get(address) for address, _ in marks)
    spans = [(target, address) for address, target in marks if target is not None]
    depths = tuple(sum(t <= address <= b for t, b in spans) for address, _ in marks)
    registers = compiled.n_regs if hasattr(compiled, "n_regs") else -1
    return SassCount(instructions, loops, registers, lines, depths)


@dataclass
class _Statement:
    first: int
    last: int
    body_first: int  # first line of the body (compound statements), else last + 1
    kind: str  # "simple", "runtime-loop", "static-loop" or "compound"
    parent: object  # the enclosing _Statement, or None
    body: list


def _statements(fn):
    """The statements of a kernel function's source, with their line ranges and nesting."""
    import ast
    import textwrap

    lines, start = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    offset = start - 1
    found = []

    def kind_of(node):
        if isinstance(node, ast.For):
            call = node.iter
            name = getattr(getattr(call, "func", None), "attr", None) or getattr(
                getattr(call, "func", None), "id", None
            )
            return "static-loop" if name == "static_range" else "runtime-loop"
        if isinstance(node, ast.While):
            return "runtime-loop"
        return "compound" if hasattr(node, "body") else "simple"

    def visit(nodes, parent):
        for node in nodes:
            if not isinstance(node, ast.stmt):
                continue
            kind = kind_of(node)
            body = getattr(node, "body", None) or []
            statement = _Statement(
                node.lineno + offset,
                node.end_lineno + offset,
                (body[0].lineno + offset) if body else node.end_lineno + offset + 1,
                kind,
                parent,
                [],
            )
            found.append(statement)
            if parent is not None:
                parent.body.append(statement)
            for field in ("body", "orelse", "handlers", "finalbody"):
                visit(getattr(node, field, None) or [], statement)

    function = tree.body[0]
    visit(function.body, None)
    return found, (function.lineno + offset, function.end_lineno + offset)


def _statement_runs(statements, transitions):
    """How often each statement started, from (previous line, line, count) of the traced frames.

    A statement starts when its first line runs coming from outside it (a multi-line call returns
    to its first line from inside itself; a loop's header from its body).
    """
    first = {}
    for statement in statements:
        first.setdefault(statement.first, []).append(statement)
    runs = {id(s): 0 for s in statements}
    for previous, line, count in transitions:
        for statement in first.get(line, ()):
            if previous is None or not statement.first <= previous <= statement.last:
                runs[id(statement)] += count
    return runs


def _package_version() -> str:
    """A hash of the kernel package's files: their paths and contents."""
    import hashlib

    package = importlib.import_module(KERNEL_PACKAGE)
    digest = hashlib.sha256()
    for folder in package.__path__:
        for name in sorted(os.listdir(folder)):
            path = os.path.realpath(os.path.join(folder, name))
            if name.endswith(".py"):
                digest.update(path.encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:16]


class _Pointer:
    """What Triton's argument specialisation reads of a tensor: its dtype and address."""

    def __init__(self, dtype, aligned):
        self.dtype, self._address = dtype, 0 if aligned else 2

    def data_ptr(self):
        return self._address


class Compiler:
    """Compiles recorded launches for ``TARGET`` and counts their SASS, once per specialisation."""

    def __init__(self):
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend

        self.triton, self.ASTSource = triton, ASTSource
        # Triton's cache keys a kernel by its source text, not its file or lines: a cubin
        # compiled from another checkout would bring that checkout's line information. One
        # cache folder per version of the kernel package's files keeps the lines right.
        triton.knobs.cache.dir = os.path.join(
            tempfile.gettempdir(), "dropblock_gpu_estimate", _package_version()
        )
        self.target = GPUTarget(*TARGET)
        self.backend = make_backend(self.target)
        self.cache = {}
        self.binders = {}

    def kernel(self, name):
        module, function = name.split(":")
        return getattr(importlib.import_module(module), function)

    def _value(self, described):
        import torch

        if isinstance(described, dict):
            return _Pointer(getattr(torch, described["dtype"]), described["aligned"])
        return described

    def count(self, launch):
        """(SassCount, num_warps) of a recorded launch."""
        from triton.runtime.jit import create_function_from_signature

        kernel = self.kernel(launch["kernel"])
        if launch["kernel"] not in self.binders:
            self.binders[launch["kernel"]] = create_function_from_signature(
                kernel.signature, kernel.params, self.backend
            )
        args = [self._value(a) for a in launch["args"]]
        kwargs = {k: self._value(v) for k, v in launch["kwargs"].items()}
        bound, specialization, options = self.binders[launch["kernel"]](*args, **kwargs)
        names = list(bound)
        signature = {name: spec[0] for name, spec in zip(names, specialization, strict=True)}
        constexprs = {
            (i,): bound[name]
            for i, (name, spec) in enumerate(zip(names, specialization, strict=True))
            if spec[0] == "constexpr"
        }
        attrs = {
            (i,): self.backend.parse_attr(spec[1])
            for i, spec in enumerate(specialization)
            if spec[0] != "constexpr" and isinstance(spec[1], str)
        }
        num_warps = self.backend.parse_options(options).num_warps
        key = (launch["kernel"], repr(signature), repr(constexprs), repr(attrs), repr(options))
        if key not in self.cache:
            source = self.ASTSource(
                fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs
            )
            compiled = self.triton.compile(source, target=self.target, options=options)
            self.cache[key] = sass_of(compiled)
        return self.cache[key], num_warps


def _innermost(statements, line):
    """The innermost statement whose lines hold ``line``, or None."""
    inside = [s for s in statements if s.first <= line <= s.last]
    return max(inside, key=lambda s: s.first) if inside else None


def _counted_statement(statement):
    """The statement whose runs an instruction of ``statement`` follows.

    An unrolled ``tl.static_range`` body runs once per run of its loop (its copies are in the
    SASS already); a runtime loop's header once per trip, as its first body statement.
    """
    static, node = None, statement
    while node is not None and node.kind != "runtime-loop":
        if node.kind == "static-loop":
            static = node
        node = node.parent
    counted = static or statement
    if counted.kind == "runtime-loop" and counted.body:
        counted = counted.body[0]
    return counted


def _runtime_loops(statement):
    """The runtime loops around ``statement`` (itself excluded), outermost first."""
    loops, node = [], statement.parent
    while node is not None:
        if node.kind == "runtime-loop":
            loops.append(node)
        node = node.parent
    return loops[::-1]


def warp_instructions(kernel_fn, sass, launch):
    """Warp-level instructions a launch issues per kernel statement (by its first source line;
    None: no line), loops weighted by their trips.

    Each instruction runs as often as the kernel statement it comes from, counted in the sampled
    programs of the real launch and scaled to the whole grid. An unrolled ``tl.static_range``
    body counts once per run of its loop (its copies are in the SASS already); an instruction
    with no line in the kernel runs once per program.
    """
    statements, _ = _statements(kernel_fn)
    runs = _statement_runs(statements, launch["line_transitions"])
    programs = launch["grid"][0] * launch["grid"][1] * launch["grid"][2]
    scale = programs / launch["sampled_programs"]
    source = os.path.realpath(inspect.getsourcefile(kernel_fn))
    by_line = {}
    for where, depth in zip(sass.lines, sass.depths, strict=True):
        statement = _innermost(statements, where[1]) if where and where[0] == source else None
        if statement is None:
            by_line[None] = by_line.get(None, 0.0) + programs
            continue
        counted = _counted_statement(statement)
        # Code the compiler hoisted out of loops (a loop's set-up, attributed to its lines) sits
        # in fewer SASS loops than its statement has runtime loops around it: it runs as often
        # as the outermost loop it left.
        enclosing = _runtime_loops(counted)
        if depth < len(enclosing):
            counted = enclosing[depth]
        by_line[statement.first] = by_line.get(statement.first, 0.0) + runs[id(counted)] * scale
    return by_line


def estimate(case, compiler):
    """Per-case figures from a captured case: instructions, bytes, launches, time x floor."""
    shape, dtype = case["shape"], case["dtype"]
    elements = shape[0] * shape[1] * shape[2] * shape[3]
    kernels, statics, bytes_by_kernel, kernel_bytes, loops, hot = {}, {}, {}, 0.0, 0, {}
    for launch in case["launches"]:
        sass, num_warps = compiler.count(launch)
        kernel_fn = compiler.kernel(launch["kernel"]).fn
        by_line = warp_instructions(kernel_fn, sass, launch)
        per_element = sum(by_line.values()) * WARP * num_warps / elements
        short = launch["kernel"].split(":")[1]
        for line, count in by_line.items():
            key = f"{short}:{line}"
            hot[key] = hot.get(key, 0.0) + count * WARP * num_warps / elements
        programs = launch["grid"][0] * launch["grid"][1] * launch["grid"][2]
        static = sass.instructions * WARP * num_warps * programs / elements
        kernels[short] = kernels.get(short, 0.0) + per_element
        statics[short] = statics.get(short, 0.0) + static
        loops += sass.loops
        moved = sum(
            fraction * launch["args"][int(key.split(":")[1])]["nbytes"]
            for key, fraction in launch["touched"].items()
        )
        kernel_bytes += moved
        bytes_by_kernel[short] = bytes_by_kernel.get(short, 0.0) + moved / elements
    instructions = sum(kernels.values())
    bytes_per_element = (kernel_bytes + case["torch_bytes"]) / elements
    floor = floor_seconds_per_element(dtype)
    seconds = max(instructions / ISSUE_RATE, bytes_per_element / BANDWIDTH)
    return {
        "case": case_label(shape, dtype, case["mask"]),
        "shape": shape,
        "dtype": dtype,
        "mask": case["mask"],
        "triton_launches": len(case["launches"]),
        "torch_launches": len(case["torch_ops"]),
        "torch_ops": case["torch_ops"],
        "instructions_per_element": instructions,
        "kernel_instructions_per_element": kernels,
        "kernel_static_instructions_per_element": statics,
        # Where the instructions go: kernel:first line of the statement -> per element, top ten.
        "hot_statements": dict(sorted(hot.items(), key=lambda kv: -kv[1])[:10]),
        "instruction_budget": instruction_budget(dtype),
        "bytes_per_element": bytes_per_element,
        "kernel_bytes_per_element": bytes_by_kernel,
        "torch_bytes_per_element": case["torch_bytes"] / elements,
        "bytes_x_floor": bytes_per_element / floor_bytes_per_element(dtype),
        "time_x_floor": seconds / floor,
        "loops": loops,
        "reduced_shape": case["reduced_shape"],
    }


def capture_in_child(cases, reduced, samples):
    """Runs :func:`capture` for ``cases`` in a child process with ``TRITON_INTERPRET=1``."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "launches.json")
        request = os.path.join(folder, "cases.json")
        with open(request, "w") as f:
            json.dump({"cases": cases, "reduced": list(reduced), "samples": samples}, f)
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--capture", request, out],
            env=env,
            check=True,
        )
        with open(out) as f:
            return json.load(f)


def run_estimate(
    shapes=SHAPES, dtypes=DTYPES, masks=MASKS, reduced=REDUCED, samples=SAMPLED_PROGRAMS
):
    """Estimates for every (shape, dtype, mask); the list of :func:`estimate` dicts."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("run the estimator without TRITON_INTERPRET=1: it compiles for sm_90")
    cases = [(list(s), d, m) for s in shapes for m in masks for d in dtypes]
    captured = capture_in_child(cases, reduced, samples)
    compiler = Compiler()
    return [estimate(case, compiler) for case in captured]


def format_table(rows, markdown=False):
    """The per-case table, plain or Markdown."""
    header = [
        "case",
        "launches (triton + torch)",
        "instructions/element (budget)",
        "bytes/element (x floor)",
        "time x floor",
    ]
    lines = []
    for row in rows:
        per_kernel = " + ".join(f"{v:.0f}" for v in row["kernel_instructions_per_element"].values())
        lines.append(
            [
                row["case"],
                f"{row['triton_launches']} + {row['torch_launches']}",
                f"{row['instructions_per_element']:.1f} ({per_kernel}; "
                f"{row['instruction_budget']:.0f})",
                f"{row['bytes_per_element']:.2f} ({row['bytes_x_floor']:.2f}x)",
                f"{row['time_x_floor']:.2f}",
            ]
        )
    return _table(header, lines, markdown)


def _table(header, lines, markdown):
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
        for r in [header] + lines
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=SHAPES)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--masks", nargs="+", choices=MASKS, default=MASKS)
    parser.add_argument(
        "--reduced",
        type=lambda t: tuple(int(v) for v in t.split("x")),
        default=REDUCED,
        help="NxC of the interpreter run that counts the kernels' bytes (default 2x4)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=SAMPLED_PROGRAMS,
        help="programs of each launch run under the interpreter to count loop trips (default 8)",
    )
    parser.add_argument(
        "--dense",
        action="store_true",
        help="count the dense backend's aten ops and bytes instead (meta tensors, no Triton)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", metavar="FILE", help="write the per-case figures to FILE")
    parser.add_argument("--capture", nargs=2, metavar=("CASES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.capture:
        with open(args.capture[0]) as f:
            request = json.load(f)
        runs = {}
        captured = [
            capture(s, d, m, request["reduced"], request["samples"], runs)
            for s, d, m in request["cases"]
        ]
        with open(args.capture[1], "w") as f:
            json.dump(captured, f)
        return 0
    if args.dense:
        rows = [dense_count(s, d, m) for s in args.shapes for m in args.masks for d in args.dtypes]
        print(format_dense_table(rows, markdown=args.markdown))
    else:
        rows = run_estimate(args.shapes, args.dtypes, args.masks, args.reduced, args.samples)
        print(format_table(rows, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
