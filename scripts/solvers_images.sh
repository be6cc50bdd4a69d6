#!/usr/bin/env bash
# docs/solvers.md, "Every solver on the held-out digits": tune each method's step size on training digits
# (scripts/tune_solvers.py), then run `cmidps bench images` for it on the 20 held-out digits x 2 seeds x
# the five tasks, one resumable output folder per method. Rerun to resume (both steps skip what is done).
#   usage: scripts/solvers_images.sh [METHOD ...]     (default: every method, cheapest first)
# Needs the training digits: scripts/get_mnist.sh. Env: PYTHON (default .venv/bin/python), OUT (default
# runs/mnist_solvers: the restored images), RES (default docs/results/mnist_solvers: results + tuning),
# CMI_GRAD (default autodiff: the CMI gradient the published table's cmi+X rows were tuned and run with;
# cmidps's default is fd, which needs a tuning JSON of its own, e.g. RES=docs/results/mnist_solvers_fd),
# BASES (a tuning JSON whose plain methods' step sizes a cmi+X run here reuses, e.g. the autodiff table's).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
out="${OUT:-$root/runs/mnist_solvers}"
res="${RES:-$root/docs/results/mnist_solvers}"
tune="$res/tuning.json"
grad="${CMI_GRAD:-autodiff}"
steps=20
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(dps ddnm ddnm_plus ddnm_svd ddrm pigdm mcg dsg diffpir daps reddiff
  cmi+dps cmi+pigdm cmi+mcg cmi+dsg cmi+ddnm cmi+ddnm_plus cmi+ddnm_svd cmi+ddrm cmi+diffpir tmpd cmi+tmpd)
tuned() {  # methods with a step size to tune: the GRIDS of tune_solvers.py, and every cmi+X (eta)
  case "$1" in cmi+*|dps|pigdm|mcg|dsg|diffpir|tmpd|daps|reddiff) return 0 ;; *) return 1 ;; esac
}
mkdir -p "$out/params" "$res"
for m in "${methods[@]}"; do
  args=()
  if tuned "$m"; then
    "$py" "$root/scripts/tune_solvers.py" --methods "$m" --steps $steps --images 4 --seed 100 --cmi-grad "$grad" ${BASES:+--bases-from "$BASES"} --json "$tune"
    # this method's rows of the tuning table (a cmi+X run also needs X's step size)
    "$py" - "$tune" "$m" "$out/params/$m.json" <<'PY'
import json, sys
table = json.load(open(sys.argv[1]))["params"]
m = sys.argv[2]
keep = {k: table[k] for k in (m, m[4:] if m.startswith("cmi+") else None) if k in table}
json.dump(keep, open(sys.argv[3], "w"), indent=1, sort_keys=True)
PY
    args=(--params "$out/params/$m.json")
  fi
  "$py" -m cmidps.cli bench images --data heldout --model bundled:mnist32 --tasks all --methods "$m" \
    --steps $steps --seeds 0 1 --batch 20 --metrics psnr,ssim --keep-going --quiet --cmi-grad "$grad" --out "$out/$m" "${args[@]}"
  mkdir -p "$res/$m"
  cp "$out/$m/results.jsonl" "$out/$m/config.json" "$out/$m/table.md" "$res/$m/"
  [ ${#args[@]} -eq 0 ] || cp "$out/params/$m.json" "$res/$m/params.json"
done
