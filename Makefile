# dropblock_det: `make demo` and `make test` each set up .venv first (see tools/bootstrap_venv.sh).
SHELL := /bin/bash
PY := .venv/bin/python
# Two threads per run; the demo runs its two trainings side by side with one thread each.
export OMP_NUM_THREADS ?= 2

.PHONY: venv test test-fast demo bench estimate format lint clean

venv:
	@bash tools/bootstrap_venv.sh

# Test processes (pytest-xdist); each runs one thread and takes whole files, so that a file's shared
# training runs are built once (tests/conftest.py orders the files).
TEST_WORKERS ?= 2

# Every test, the slow ones (trainings, subprocesses, see pytest.ini) included.
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The unit tests only: everything not marked slow.
test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

demo: venv
	$(PY) tools/demo.py

bench: venv
	$(PY) benchmarks/bench_dropblock.py

# GPU time of the Triton kernels estimated without a GPU (SASS for sm_90, bytes, x the floor).
estimate: venv
	$(PY) benchmarks/gpu_estimate.py --markdown

format: venv
	$(PY) -m ruff check --fix dropblock_det tools tests benchmarks configs
	$(PY) -m black -l 100 dropblock_det tools tests benchmarks configs
	$(PY) -m isort --profile black -l 100 dropblock_det tools tests benchmarks configs

lint: venv
	$(PY) -m ruff check dropblock_det tools tests benchmarks configs
	$(PY) -m black -l 100 --check dropblock_det tools tests benchmarks configs
	$(PY) -m isort --profile black -l 100 --check-only dropblock_det tools tests benchmarks configs

clean:
	rm -rf .venv build *.egg-info
