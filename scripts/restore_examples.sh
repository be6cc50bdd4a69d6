#!/usr/bin/env bash
# The worked examples of docs/restore_your_own.md, verbatim: each restores one measurement file of
# docs/examples/ (made by scripts/make_restore_examples.py with numpy/PIL) with the bundled prior, into
# restore_out/; then the grids are copied to docs/img/restore_*.png and the seconds per image printed.
set -euo pipefail
cd "$(dirname "$0")/.."
E=docs/examples
./run.sh cmidps restore --measurement $E/blurred.png --kernel $E/gauss_kernel.npy --task deblur_gauss \
    --sigma-y 0.04 --truth $E/truth.png --out restore_out/deblurred.png --grid restore_out/deblurred_grid.png
./run.sh cmidps restore --measurement $E/motion_blurred.png --kernel $E/motion_kernel.png --task deblur_motion \
    --sigma-y 0.04 --truth $E/truth.png --out restore_out/motion.png --grid restore_out/motion_grid.png
./run.sh cmidps restore --measurement $E/holes.png --mask $E/holes_mask.png --task inpaint_random \
    --sigma-y 0.04 --truth $E/truth.png --out restore_out/holes.png --grid restore_out/holes_grid.png
./run.sh cmidps restore --measurement $E/box.png --mask $E/box_mask.png --task inpaint_box \
    --sigma-y 0.04 --truth $E/truth.png --out restore_out/box.png --grid restore_out/box_grid.png
./run.sh cmidps restore --measurement $E/lowres.png --task sr4 \
    --sigma-y 0.04 --truth $E/truth.png --out restore_out/sr4.png --grid restore_out/sr4_grid.png
for n in deblurred motion holes box sr4; do
  cp restore_out/${n}_grid.png docs/img/restore_${n}.png
  .venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1])); m=r['metrics']; print(sys.argv[1], r['device'], r['seconds'], 's/image', {k: round(v['psnr'], 2) for k, v in m.items()})" restore_out/$n.json
done
