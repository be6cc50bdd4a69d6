#!/usr/bin/env bash
# One-command set-up and run. Usage:
#   ./run.sh demo [cmidps demo options]   # the main job: five tasks, DPS vs CMI+DPS, on the bundled prior
#   ./run.sh test [pytest options]        # the test suite
#   ./run.sh cmidps ARGS...               # any cmidps command inside the project's environment
# The first run creates .venv/ (CPU torch 2.13.0 and the package with its test extras); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# The install is stamped with a hash of what defines it (pyproject.toml and this script): a matching
# stamp skips the check, so a call costs no imports; an edit of either re-runs the install.
STAMP=.venv/.cmidps-install
WANT=$(cat pyproject.toml run.sh | cksum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setting up .venv (first run only) ..." >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # The CPU build of torch; a bare 'torch' requirement would pull a multi-GB CUDA build.
  if ! { .venv/bin/pip install -q "torch==2.13.0" && .venv/bin/pip install -q -e ".[test]" &&
         .venv/bin/python -c "import cmidps, torch, pytest, diffusers, torchmetrics"; } > .venv/install.log 2>&1; then
    tail -20 .venv/install.log >&2; echo "set-up failed; full log: .venv/install.log" >&2; exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cmd=${1:-demo}
shift || true
case "$cmd" in
  demo) exec .venv/bin/cmidps demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  cmidps) exec .venv/bin/cmidps "$@" ;;
  *) echo "usage: ./run.sh demo|test|cmidps [args]" >&2; exit 2 ;;
esac
