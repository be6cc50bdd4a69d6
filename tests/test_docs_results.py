"""The docs are true to the results files: every table marked ``<!-- from: scripts/X.py ... -->`` in
README.md and docs/*.md is what that script prints from the committed results (scripts/check_docs.py),
and the help of the commands names every method the docs describe."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import check_docs  # noqa: E402


def _docs():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", [d for d in _docs() if check_docs.markers(d)], ids=lambda d: d.name)
def test_marked_tables_match_their_results(doc):
    problems = check_docs.check(doc)
    assert problems == [], "\n".join(problems)


def test_the_checker_catches_a_changed_number(tmp_path):
    docs = [d for d in _docs() if check_docs.markers(d)]
    assert docs, "no marked tables at all"
    doc = docs[0]
    _, _, block = check_docs.markers(doc)[0]
    row = next(ln for ln in block if ln.startswith("|") and any(c.isdigit() for c in ln))
    i = max(k for k, c in enumerate(row) if c.isdigit())  # the last digit of the row
    fake = tmp_path / doc.name
    fake.write_text(doc.read_text().replace(row, row[:i] + str((int(row[i]) + 1) % 10) + row[i + 1:], 1))
    assert check_docs.check(fake)


@pytest.mark.parametrize("command", [["restore"], ["bench", "images"], ["bench", "gmm"], ["bench", "speed"]])
def test_help_names_every_method(command):
    from cmidps.methods.drivers import DRIVERS
    from cmidps.methods.samplers import RULES

    out = subprocess.run([sys.executable, "-m", "cmidps.cli", *command, "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join(out.stdout.split())
    words = text.replace(",", " ").replace("-", "").replace("(", " ").replace(")", " ").split()
    missing = [m for m in [*RULES, *DRIVERS] if m != "none" and m not in words and m not in text.replace(" ", "")]
    assert missing == [], f"`cmidps {' '.join(command)} --help` does not name {missing}"


@pytest.mark.parametrize("table", ["mnist_solvers", "mnist_solvers_fd"])
def test_image_solver_runs_used_the_step_sizes_their_tuning_chose(table):
    """Every method folder of docs/solvers.md's image table ran with the step sizes its tuning.json now
    holds (the method's own and, for cmi+X, X's): a retuned X whose runs were not redone fails here."""
    import json

    folder = ROOT / "docs" / "results" / table
    if not (folder / "tuning.json").is_file():
        pytest.skip(f"no {table} results")
    tuned = json.loads((folder / "tuning.json").read_text())
    bases = tuned["config"].get("bases_from")
    params = dict(tuned["params"])
    checked = 0
    for config in sorted(folder.glob("*/config.json")):
        used = json.loads(config.read_text())["settings"].get("param_table") or {}
        for method, per_task in used.items():
            assert per_task == params.get(method), f"{config.parent.name}: {method} ran with {per_task}, tuned {params.get(method)}"
            checked += 1
    assert checked >= 5 or bases, "too few runs checked"
