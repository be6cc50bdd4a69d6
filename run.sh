#!/usr/bin/env bash
# One-command set-up and run. Usage:
#   ./run.sh demo [cmidps demo options]   # the main job: five tasks, DPS vs CMI+DPS, on the bundled prior
#   ./run.sh test [pytest options]        # the test suite
#   ./run.sh cmidps ARGS...               # any cmidps command inside the project's environment
# The first run creates .venv/ (torch 2.13.0 and the package with its test extras); later runs reuse it.
#
# Which torch build: CUDA when an NVIDIA GPU answers (`nvidia-smi` runs and lists a GPU), CPU otherwise;
# CMIDPS_TORCH=cuda|cpu forces either (auto by default). The script says which it chose and why.
#   cpu:  `pip install torch==2.13.0` with CMIDPS_TORCH_INDEX as pip's index when set (e.g. PyTorch's
#         own index of CPU wheels: on a machine with internet a plain PyPI torch for Linux is the
#         multi-GB CUDA build, which also runs on the CPU); where a CPU wheel lies in pip's find-links
#         (as on the project's CI machines) pip takes that file.
#   cuda: `pip install torch==2.13.0` from PyPI (its Linux wheels are CUDA builds), or from
#         CMIDPS_TORCH_INDEX when set; a CPU build found in the venv is replaced. After the install the
#         script checks torch.version.cuda and says so if a CPU build came instead.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC="torch==2.13.0"
choose_torch() {  # prints "cuda REASON" or "cpu REASON"
  case "${CMIDPS_TORCH:-auto}" in
    cuda) echo "cuda (CMIDPS_TORCH=cuda)" ;;
    cpu) echo "cpu (CMIDPS_TORCH=cpu)" ;;
    auto)
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
        echo "cuda (nvidia-smi lists a GPU; CMIDPS_TORCH=cpu forces the CPU build)"
      else
        echo "cpu (no NVIDIA GPU answered nvidia-smi; CMIDPS_TORCH=cuda forces the CUDA build)"
      fi ;;
    *) echo "bad" ;;
  esac
}
TORCH_CHOICE=$(choose_torch)
if [ "$TORCH_CHOICE" = "bad" ]; then
  echo "CMIDPS_TORCH must be cuda, cpu or auto, got '${CMIDPS_TORCH}'" >&2; exit 2
fi
TORCH_BUILD=${TORCH_CHOICE%% *}
# The install is stamped with a hash of what defines it (pyproject.toml, this script and the torch build
# chosen): a matching stamp skips the check, so a call costs no imports; a change re-runs the install.
STAMP=.venv/.cmidps-install
WANT=$( (cat pyproject.toml run.sh; echo "$TORCH_BUILD ${CMIDPS_TORCH_INDEX:-}") | cksum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setting up .venv (first run, or its definition changed) ..." >&2
  echo "torch: the $TORCH_CHOICE" | sed 's/the cuda (/the CUDA build (/; s/the cpu (/the CPU build (/' >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  INDEX=()
  [ -n "${CMIDPS_TORCH_INDEX:-}" ] && INDEX=(--index-url "$CMIDPS_TORCH_INDEX")
  have=$(.venv/bin/python -c "import torch; print('cuda' if torch.version.cuda else 'cpu')" 2>/dev/null || echo none)
  if ! {
    # replace a CPU build by a CUDA one; a CUDA build by a CPU one only from an index that has one
    if [ "$have" = cpu ] && [ "$TORCH_BUILD" = cuda ] ||
       { [ "$have" = cuda ] && [ "$TORCH_BUILD" = cpu ] && [ -n "${CMIDPS_TORCH_INDEX:-}" ]; }; then
      echo "replacing the $have build of torch" >&2; .venv/bin/pip uninstall -y -q torch
    fi
    .venv/bin/pip install -q ${INDEX[@]+"${INDEX[@]}"} "$TORCH_SPEC" &&
    .venv/bin/pip install -q -e ".[test]" &&
    .venv/bin/python -c "import cmidps, torch, pytest, diffusers, torchmetrics"; } > .venv/install.log 2>&1; then
    tail -20 .venv/install.log >&2; echo "set-up failed; full log: .venv/install.log" >&2; exit 1
  fi
  got=$(.venv/bin/python -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda) if torch.version.cuda else print(torch.__version__, 'CPU build')")
  echo "torch installed: $got" >&2
  if [ "$TORCH_BUILD" = "cuda" ] && [[ "$got" == *"CPU build"* ]]; then
    echo "warning: a CUDA build was asked for but pip chose a CPU build (a CPU wheel in pip's find-links " \
         "ranks first); set CMIDPS_TORCH_INDEX to an index of CUDA wheels, or PIP_FIND_LINKS= to ignore it" >&2
  fi
  if [ "$TORCH_BUILD" = "cpu" ] && [[ "$got" == *"CUDA"* ]]; then
    echo "note: this torch is a CUDA build (PyPI's Linux wheels are); it runs on the CPU as well. For the " \
         "smaller CPU-only build set CMIDPS_TORCH_INDEX to an index of CPU wheels (e.g. PyTorch's own)" >&2
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
