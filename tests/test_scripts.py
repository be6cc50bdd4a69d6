"""The scripts that make the docs' tables run in the suite, on the committed results (small JSON files,
seconds) and on a tiny fresh ``bench gmm`` run, and print the values the docs quote."""
import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _script(name, *args) -> str:
    """Run scripts/NAME as ``python scripts/NAME ARGS`` would, in this process (no second torch import);
    returns what it printed."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(ROOT / "scripts" / name), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as stop:
                assert stop.code in (0, None), stop.code
    finally:
        sys.argv = argv
    return out.getvalue()


def test_gmm_solvers_table_prints_t_intervals_and_verdicts():
    out = _script("gmm_solvers_table.py", RESULTS / "gmm_solvers_d80_m4.json", RESULTS / "gmm_solvers_d800_m1.json")
    # CMI+TMPD - TMPD at (80, 4), 6 seeds: +0.43 ± 0.48 with t_{0.975,5} (it was ± 0.37 with 1.96)
    assert "| cmi+tmpd vs tmpd | 1/6 | +0.43 ± 0.48 | includes 0 | 1.18x |" in out
    assert "| 2 | cmi+tmpd | 1.25 ± 1.28 | +0.43 ± 0.48 | includes 0 |" in out
    # d=800, m=1 has 4 seeds: no verdict
    assert "| cmi+dps vs dps | 4/4 | -0.21 ± 0.23 | too few to test | 1.43x |" in out


def test_gmm_solvers_table_on_a_tiny_fresh_run(tmp_path):
    out_json = tmp_path / "g.json"
    from cmidps.cli import main

    assert main(["bench", "gmm", "--dim", "4", "--meas", "1", "--seeds", "0", "1", "2", "3", "4", "--methods",
                 "dps,cmi+dps", "--steps", "3", "--samples", "30", "--ref-samples", "30", "--directions", "10",
                 "--json", str(out_json), "--no-progress"]) == 0
    data = json.loads(out_json.read_text())
    out = _script("gmm_solvers_table.py", out_json)
    from cmidps.bench.intervals import paired

    by = {m: {r["seed"]: r["sw2"] for r in data["results"] if r["method"] == m} for m in ("dps", "cmi+dps")}
    iv = paired(by["cmi+dps"], by["dps"])
    assert iv.n == 5
    assert f"{iv.mean:+.2f} ± {iv.half_width:.2f} | {iv.verdict} |" in out


def test_interval_verdicts_lists_the_changed_verdicts():
    out = _script("interval_verdicts.py")
    assert "| gmm_solvers_d80_m4.json | SW2 cmi+tmpd - tmpd | 6 | +0.4258 | 0.369 | 0.484 | excludes 0 | " \
           "includes 0 (changed) |" in out
    assert "| mnist_heldout | inpaint_box fdd (set-level) cmi+dps - dps | 2 | +8.59 | 4.78 | 31 | excludes 0 | " \
           "too few to test (changed) |" in out
    assert "verdicts change." in out


@pytest.mark.parametrize("name", ["speed_mnist32.json", "speed_solvers_mnist32.json"])
def test_speed_tables_print_the_committed_ratios(name):
    res = json.loads((RESULTS / name).read_text())
    out = _script("speed_tables.py", RESULTS / name)
    base = res["network_fwd_bwd_ms"]
    assert f"Bare forward+backward: {base:.1f} ms." in out
    for method, entry in res["methods"].items():
        ms = entry["ms_per_step"]
        assert f"| {method} | {ms:.1f} | {ms / base:.2f} |" in out, method
