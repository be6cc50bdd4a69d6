#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of under 8 minutes on one GPU (the parts' time limits add up
# to 7.75 min) with torch
# (a CUDA build) already installed:
#   1. the tests marked 'cuda' (every test taking the 'device' fixture, run on cuda) and the operators'
#      CUDA-against-CPU test;
#   2. one tiny restoration (bundled 32 px prior, 5 steps, sr4) of every method, with and without CMI
#      where CMI fits, on cuda;
#   3. bench speed at 256 px on the FFHQ (ADM) architecture at random weights, on cuda.
# Usage: scripts/gpu_check.sh [OUT_DIR]     (default gpu_check_out/; PYTHON=... picks the interpreter,
#        default .venv/bin/python, else python3). Exit code: the number of failed parts (0 = all passed).
# A dry run of the script's own logic on a machine without a GPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=32.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEV=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-256}
mkdir -p "$OUT"
if [ "$DEV" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1));" \
       "install the CUDA build (CMIDPS_TORCH=cuda ./run.sh test --co -q) on a machine with an NVIDIA GPU" >&2
  exit 2
fi
"$PY" -c "import torch; print('gpu_check on', torch.cuda.get_device_name(0) if '$DEV' == 'cuda' else 'cpu (dry run)', '| torch', torch.__version__, 'CUDA', torch.version.cuda)"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} CMIDPS_TEST_DEVICE=$DEV
failed=0
part() {  # part NAME SECONDS CMD...: run one part under a time limit, log it, count a failure
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "   passed in $((SECONDS - t0)) s"
  else
    echo "   FAILED (exit $?) after $((SECONDS - t0)) s; last lines of $OUT/$name.log:"; tail -15 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
}

part cuda_tests 180 "$PY" -m pytest -p no:cacheprovider -q -m cuda tests/
part cuda_operators 45 "$PY" -m pytest -p no:cacheprovider -q tests/test_operators.py -k cuda_matches_cpu

part every_method 90 "$PY" - "$OUT" "$DEV" <<'EOF'
import json, sys, time, warnings
import torch
from cmidps.models.loading import load_prior
from cmidps.methods.drivers import DRIVERS
from cmidps.methods.samplers import RULES
from cmidps.restore import measure, restore

warnings.simplefilter("ignore")
dev = sys.argv[2]
prior = load_prior("bundled:mnist32", device=dev)
x = torch.rand(2, *prior.shape, generator=torch.Generator().manual_seed(0)).to(dev)
op, y = measure(x, "sr4", seed=0)
methods = [m for m in RULES if m != "none"] + list(DRIVERS)
methods += [f"cmi+{m}" for m in RULES if m != "none"]
rows, bad = [], []
for m in methods:
    t0 = time.perf_counter()
    try:
        out = restore(prior, op, y, m, steps=5, seed=0, task="sr4", progress=False)
        ok = out.device.type == torch.device(dev).type and out.shape == x.shape and bool(torch.isfinite(out).all())
        reason = "" if ok else f"device {out.device}, shape {tuple(out.shape)}, finite {bool(torch.isfinite(out).all())}"
    except Exception as exc:  # report every method, then fail
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    rows.append({"method": m, "ok": ok, "seconds": round(time.perf_counter() - t0, 3), "reason": reason})
    print(f"{m:16s} {'ok' if ok else 'FAILED ' + reason} ({rows[-1]['seconds']} s)")
    if not ok:
        bad.append(m)
json.dump(rows, open(f"{sys.argv[1]}/every_method.json", "w"), indent=1)
sys.exit(1 if bad else 0)
EOF

part "speed_$SIZE" 150 "$PY" -m cmidps.cli bench speed --image-sizes "$SIZE" --device "$DEV" --methods dps,pigdm \
  --estimators lowrank --probes 1 --timed-steps 3 --repeats 2 --image-batches 1 --quiet --json "$OUT/speed_$SIZE.json"

echo "gpu_check: $failed part(s) failed; logs and JSON in $OUT/"
exit $failed
