#!/usr/bin/env bash
# GPU check of dropblock_det: one call, from the repository root, on a machine with a CUDA GPU.
#
#   OUT=<folder> bash benchmarks/gpu_check.sh
#
# 0. The device machine has no network (its torch, torchvision and triton are preinstalled): the
#    other wheels travel with the working tree. Make them once on a machine with network, for the
#    device's Python and platform, e.g. for the Detectron2 stack, the COCO API and timm:
#      pip download --no-deps --only-binary=:all: --python-version 3.12 \
#          --platform manylinux2014_x86_64 -d .whl sal-detectron2 fvcore iopath yacs omegaconf \
#          antlr4-python3-runtime pycocotools portalocker termcolor timm
#    (versions as pinned in requirements/*.txt; pytest and friends into .whl/perf_helper/ the same
#    way) and pass the folder along: the device tool's carry [".whl"] (.whl/ is git-ignored).
# 1. Installs the prepared wheels of .whl/ (no network) into $SITE (default /tmp/site): every
#    wheel but sal_detectron2 with pip --target; sal_detectron2 (pure Python except a _C extension
#    that does not load, tagged cp310) unzipped. .whl/perf_helper/ holds fallbacks (pytest and its
#    dependencies, tabulate, cloudpickle, tqdm), each installed only where its import fails.
# 2. python -m pytest: the operator tests with their CUDA cases (tests/test_drop_block.py,
#    tests/test_drop_block_backends.py, the operator half of tests/test_nonfinite.py) and
#    tests/test_cuda_dropblock.py: no host sync under torch.cuda.set_sync_debug_mode("error"),
#    torch.compile without recompiles, CUDA-graph capture, the Triton kernels against the Philox
#    replay (every skip is listed: on a GPU there should be none in the CUDA file).
# 3. tools/train_net.py on configs/tiny/tiny_retinanet_R18_FPN_dropblock.yaml on CUDA with
#    SOLVER.AMP.ENABLED: 30 iterations (DropBlock schedule, AMPTrainer), then COCO evaluation on
#    dropblock_digits_val (generated on first use under $DETECTRON2_DATASETS).
# 4. benchmarks/bench_graph.py: the goal shapes (8x512x80x80, 8x1024x40x40, 8x2048x20x20; fp16,
#    bf16, fp32) forward+backward as CUDA-graph replays of 20 calls against the true floor (x * c
#    forward, dy * c backward) and the measured copy bandwidth, ours (triton, dense; per-channel,
#    shared) beside torchvision's and timm's DropBlock: $OUT/summary_operator.md.
# 5. benchmarks/bench_cuda.py: the operator table (floor, peers, every backend of ours; fp32, fp16,
#    bf16) and the training-step overhead of every backend (2 x 512 px fp32 and AMP, 8 x 640 px AMP).
#
# Everything is printed and also written under $OUT (default: a new temporary folder): one log per
# step (bench_cuda.log holds the benchmark tables), the training run's log.txt, metrics.json and
# eval_results.json, and summary.md: the CUDA-graph operator table, the training-step table
# (8 x 640 AMP, DropBlock off and on) and the failed steps.
# A failed install or import stops the script at once (exit 1: nothing after it can run); a failed
# later step does not stop the ones after it; the exit status is the number of failed steps.
# About 4-6 minutes on an H100, most of it the benchmark; each step has its own time limit, and
# the limits add up to under 10 minutes (one device command).
#
# Without a GPU, check the script itself (CPU, no AMP, 4 iterations, tiny benchmark):
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --cpu-smoke
set -u -o pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
SITE=${SITE:-/tmp/site}
SMOKE=0
LIMIT_FACTOR=1
if [ "${1:-}" = "--cpu-smoke" ]; then
    SMOKE=1
    LIMIT_FACTOR=4  # the same steps take longer on a CPU
fi
mkdir -p "$OUT"
FAILED=0

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, count failures
    local name=$1 limit=$(($2 * LIMIT_FACTOR))
    shift 2
    echo
    echo "=== $name: $*"
    local begin=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - begin)) s"
    if [ "$rc" -ne 0 ]; then
        FAILED=$((FAILED + 1))
        echo "$name: exit $rc" >> "$OUT/FAILED"
    fi
}

install_wheels() {
    local wheels=()
    for wheel in .whl/*.whl; do
        case $(basename "$wheel") in sal_detectron2-*) ;; *) wheels+=("$wheel") ;; esac
    done
    local pip_args=(-q --no-index --no-deps --no-compile --target "$SITE")
    if [ "$SMOKE" = 1 ]; then
        # The local Python is older than the wheels' (pycocotools is cp312): accept their tags.
        pip_args+=(--python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64)
    fi
    "$PYTHON" -m pip install "${pip_args[@]}" "${wheels[@]}" || return 1
    "$PYTHON" -m zipfile -e .whl/sal_detectron2-*.whl "$SITE" || return 1
    if [ "$SMOKE" = 1 ]; then
        rm -rf "$SITE"/pycocotools*  # the venv's own build loads; the cp312 one would not
    fi
    # Fallbacks, only for modules the machine lacks (installing them all could shadow newer ones).
    for pair in pytest:pytest pluggy:pluggy iniconfig:iniconfig packaging:packaging \
        pygments:pygments tabulate:tabulate cloudpickle:cloudpickle tqdm:tqdm; do
        local module=${pair%%:*} wheel_prefix=${pair##*:}
        if ! PYTHONPATH="$SITE:$PWD" "$PYTHON" -c "import $module" 2>/dev/null; then
            echo "installing fallback $module from .whl/perf_helper"
            "$PYTHON" -m pip install "${pip_args[@]}" .whl/perf_helper/"$wheel_prefix"-*.whl || return 1
        fi
    done
    PYTHONPATH="$SITE:$PWD" "$PYTHON" -c "
import detectron2, fvcore, iopath, yacs, omegaconf, pycocotools, pytest, torch, dropblock_det
print('imports ok: detectron2', detectron2.__version__, 'from', detectron2.__file__)
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())
"
}

echo "# dropblock_det GPU check, $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" --version

echo
echo "=== install: $SITE"
install_wheels 2>&1 | tee "$OUT/install.log"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "install: failed (see install.log); stopping: every later step needs these imports" \
        | tee -a "$OUT/FAILED" "$OUT/summary.md"
    exit 1
fi
export PYTHONPATH="$SITE:$PWD"
export PYTHONUNBUFFERED=1

step test_drop_block 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_cuda_dropblock.py \
    tests/test_drop_block.py tests/test_drop_block_backends.py tests/test_nonfinite.py \
    -k "not non_finite_loss"

TRAIN_DIR=$(mktemp -d)
# A private dataset folder: generated in seconds, and never a shared one regenerated under others.
DATASETS_TMP=
if [ -z "${DETECTRON2_DATASETS:-}" ]; then
    DATASETS_TMP=$(mktemp -d)
    export DETECTRON2_DATASETS=$DATASETS_TMP
fi
if [ "$SMOKE" = 1 ]; then
    TRAIN_OPTS=(MODEL.DEVICE cpu SOLVER.MAX_ITER 4 SOLVER.IMS_PER_BATCH 2 SOLVER.STEPS "(3,)"
        SOLVER.WARMUP_ITERS 2)
else
    TRAIN_OPTS=(MODEL.DEVICE cuda SOLVER.AMP.ENABLED True SOLVER.MAX_ITER 30 SOLVER.STEPS "(20,)"
        SOLVER.WARMUP_ITERS 10 DATALOADER.NUM_WORKERS 2)
fi
step train_smoke 90 "$PYTHON" tools/train_net.py \
    --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.yaml \
    "${TRAIN_OPTS[@]}" SOLVER.CHECKPOINT_PERIOD 100000 OUTPUT_DIR "$TRAIN_DIR"
# The run's records, not its weights (model_final.pth is too large to bring back).
for file in log.txt metrics.json eval_results.json; do
    [ -f "$TRAIN_DIR/$file" ] && cp "$TRAIN_DIR/$file" "$OUT/train_smoke_$file"
done
if [ -f "$TRAIN_DIR/metrics.json" ]; then
    echo "last metrics: $(tail -n 1 "$TRAIN_DIR/metrics.json" | head -c 700)"
fi
if [ -f "$TRAIN_DIR/eval_results.json" ]; then
    echo "evaluation: $(tr -d '\n ' < "$TRAIN_DIR/eval_results.json" | head -c 400)"
else
    echo "train_smoke: no eval_results.json"
    FAILED=$((FAILED + 1))
    echo "train_smoke: no eval_results.json" >> "$OUT/FAILED"
fi
rm -rf "$TRAIN_DIR" ${DATASETS_TMP:+"$DATASETS_TMP"}

if [ "$SMOKE" = 1 ]; then
    step bench_cuda 210 "$PYTHON" benchmarks/bench_cuda.py --cpu-smoke --out ""
else
    step bench_graph 100 "$PYTHON" benchmarks/bench_graph.py --out "$OUT/summary_operator.md"
    step bench_cuda 220 "$PYTHON" benchmarks/bench_cuda.py --out ""
fi

{
    echo "# dropblock_det GPU check summary, $(date -u +%Y-%m-%dT%H:%MZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader
    echo
    [ -f "$OUT/summary_operator.md" ] && cat "$OUT/summary_operator.md"
    echo
    echo "## Training step (bench_cuda.py)"
    [ -f "$OUT/bench_cuda.log" ] && grep -E "^\|" "$OUT/bench_cuda.log" | tail -n 40
    echo
    echo "## Failed steps"
    if [ -f "$OUT/FAILED" ]; then cat "$OUT/FAILED"; else echo "none"; fi
} > "$OUT/summary.md"

echo
echo "=== gpu_check: $FAILED failed step(s); outputs in $OUT"
exit "$FAILED"
