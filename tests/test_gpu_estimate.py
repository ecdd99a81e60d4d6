"""The Triton kernels fit an H200's instruction and byte budget, checked without a GPU.

``benchmarks/gpu_estimate.py`` compiles every launch of the operator's forward and backward for
sm_90 and counts its SASS; the time estimate is ``max(instructions / issue rate, bytes /
bandwidth)``. The budget: instructions within 1.3x the floor's time (the floor reads x, writes y,
reads dy, writes dx), bytes within 1.1x the floor's, the estimate within 1.3x the floor's time.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

ESTIMATOR_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_estimate.py"
# The goal shape of the most mask planes per element (the per-channel mask costs most there).
BUDGET_SHAPE = "8x2048x20x20"
DTYPES = ("fp16", "bf16", "fp32")
BYTES_GOAL = 1.10
TIME_GOAL = 1.30


@pytest.fixture(scope="module")
def estimator():
    """The benchmark script as a module (its SASS counter and constants)."""
    spec = importlib.util.spec_from_file_location("gpu_estimate", ESTIMATOR_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jit(fn):
    # A compiled kernel whatever TRITON_INTERPRET says: the counter needs SASS, not the interpreter.
    return triton.runtime.jit.JITFunction(fn)


def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def _row_sum(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        total += tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0)
    tl.store(y_ptr + offs, total)


def _sass(estimator, fn):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    source = ASTSource(fn=_jit(fn), signature=signature, constexprs={(3,): 128})
    compiled = triton.compile(source, target=GPUTarget(*estimator.TARGET), options={"num_warps": 1})
    return estimator.sass_of(compiled)


def test_sass_counter_skips_nops_and_the_trap_and_flags_backward_branches(estimator):
    sass = """
        /*0000*/                   S2R R0, SR_TID.X ;            /* 0x000 */
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x4, PT ;
        /*0020*/              @!P0 BRA 0x10 ;
        /*0030*/                   BRA 0x50 ;
        /*0040*/                   NOP;
        /*0050*/                   EXIT ;
        /*0060*/                   BRA 0x60;
        /*0070*/                   NOP;
    """
    assert estimator.count_sass(sass) == (5, 1)


def test_a_copy_kernel_counts_a_few_instructions_and_no_loop(estimator):
    count = _sass(estimator, _copy)
    assert 5 <= count.instructions <= 40
    assert count.loops == 0


def test_a_kernel_with_a_for_loop_is_flagged(estimator):
    assert _sass(estimator, _row_sum).loops >= 1


@pytest.fixture(scope="module")
def budget_rows(tmp_path_factory):
    """The estimator's rows for the budget shape, every dtype, both mask kinds."""
    out = tmp_path_factory.mktemp("estimate") / "estimate.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(ESTIMATOR_PATH), "--shapes", BUDGET_SHAPE, "--json", str(out)]
    subprocess.run(command + ["--dtypes", *DTYPES], env=env, check=True)
    return json.loads(out.read_text())


def _describe(row):
    kernels = ", ".join(f"{k} {v:.1f}" for k, v in row["kernel_instructions_per_element"].items())
    return f"{row['case']}: {row['instructions_per_element']:.1f} instructions/element ({kernels})"


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["per-channel", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_issue_no_more_instructions_than_the_time_goal_allows(budget_rows, mask, dtype):
    (row,) = [r for r in budget_rows if r["mask"] == mask and r["dtype"] == dtype]
    # instruction_budget is what the floor's time allows; the goal allows TIME_GOAL times that.
    budget = TIME_GOAL * row["instruction_budget"]
    assert row["instructions_per_element"] <= budget, f"{_describe(row)}, budget {budget:.1f}"


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["per-channel", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_move_at_most_a_tenth_more_bytes_than_the_floor(budget_rows, mask, dtype):
    (row,) = [r for r in budget_rows if r["mask"] == mask and r["dtype"] == dtype]
    assert row["bytes_x_floor"] <= BYTES_GOAL, f"{row['case']}: {row['bytes_x_floor']:.3f}x"


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["per-channel", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_estimated_time_is_within_the_goal(budget_rows, mask, dtype):
    (row,) = [r for r in budget_rows if r["mask"] == mask and r["dtype"] == dtype]
    assert row["time_x_floor"] <= TIME_GOAL, f"{row['case']}: {row['time_x_floor']:.2f}x floor"


# The dense backend's bytes, forward + backward, as a multiple of the floor's: a per-channel mask
# is built from float32 noise and applied in two passes each way; a shared one in one.
DENSE_BYTES_GOAL = {"per-channel": 5.0, "shared": 1.05}


@pytest.mark.parametrize("mask", ["per-channel", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backend_moves_at_most_its_bytes_goal_on_the_largest_goal_map(estimator, mask, dtype):
    row = estimator.dense_count(estimator.SHAPES[0], dtype, mask)
    assert row["bytes_x_floor"] <= DENSE_BYTES_GOAL[mask], f"{row['case']}: {row['ops']}"
    # Window sums, not max_pool2d: on a GPU that also writes int64 indices (8 bytes a unit).
    assert "max_pool2d_with_indices" not in row["ops"]


class _Kernel:
    """What the estimator reads of a Triton kernel object to key its launches."""

    def fn():
        pass


def test_launches_differing_only_in_tensor_dtypes_share_a_control_key(estimator):
    import torch

    def key(x, *scalars):
        return estimator._control_key(_Kernel, [x, *scalars], {"BLOCK": 256}, (4, 1, 1))

    half, single = torch.zeros(64, dtype=torch.float16), torch.zeros(64, dtype=torch.float32)
    assert key(half, 3) == key(single, 3)
    assert key(half, 3) != key(torch.zeros(128, dtype=torch.float16), 3)
    assert key(half, 3) != key(half, 4)
    assert key(half, 3) != estimator._control_key(_Kernel, [half, 3], {"BLOCK": 512}, (4, 1, 1))


def static_range(n):
    """Stands in for ``tl.static_range`` in a plain Python function."""
    return range(n)


def _toy(n):
    total = 0
    for i in range(n):
        total += max(
            i,
            1,
        )
        for j in static_range(3):
            total += j
    return total


def test_statement_runs_count_loop_trips_once_per_statement_run(estimator):
    statements, _ = estimator._statements(_toy)
    with estimator._LineTransitions(_toy) as lines:
        _toy(5)
    runs = estimator._statement_runs(statements, lines.as_list())
    by_kind = {(s.kind, s.first - statements[0].first): runs[id(s)] for s in statements}
    # total = 0; the loop entered once; its multi-line body statement once per trip (not once
    # per line); the static loop once per trip, its body three times per trip; return once.
    assert by_kind == {
        ("simple", 0): 1,
        ("runtime-loop", 1): 1,
        ("simple", 2): 5,
        ("static-loop", 6): 5,
        ("simple", 7): 15,
        ("simple", 8): 1,
    }
