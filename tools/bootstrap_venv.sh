#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#
# The venv is keyed on the pinned requirements: .venv/.requirements.sha256 holds the hash of
# requirements/*.txt it was built from; when the hash differs (or the venv is missing or broken)
# the venv is rebuilt from scratch. Detectron2 comes from the registry build (sal-detectron2) here,
# in the bootstrap, so that `pip install -e .` never replaces a user's own Detectron2.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
REQS="requirements/base.txt requirements/detectron2.txt requirements/test.txt requirements/tune.txt"
want=$(cat $REQS setup.py | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$want" ] \
    && "$VENV/bin/python" -c "import detectron2, dropblock_det" 2>/dev/null; then
  exit 0
fi

find_python310() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if python3.10 -c "import sys" >/dev/null 2>&1; then echo python3.10; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
    if [ -n "$v" ]; then echo "$(pyenv prefix "$v")/bin/python3.10"; return; fi
  fi
  echo "error: Python 3.10 is required (sal-detectron2 ships a CPython 3.10 wheel only)." >&2
  echo "       Install python3.10 or set PYTHON=/path/to/python3.10." >&2
  exit 1
}
PY=$(find_python310)
echo "[bootstrap] creating $VENV with $($PY --version 2>&1) (requirements changed or venv missing)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
start=$(date +%s)
"$VENV/bin/python" -m pip install -q --upgrade "pip<26"
echo "[bootstrap] installing pinned requirements (first run downloads PyTorch, ~2-4 minutes)"
"$VENV/bin/python" -m pip install -q --progress-bar off $(printf -- '-r %s ' $REQS)
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import detectron2, dropblock_det, torch; print('[bootstrap] ready: torch', torch.__version__)"
echo "$want" > "$VENV/.requirements.sha256"
echo "[bootstrap] done in $(( $(date +%s) - start )) s"
