"""Check that the tables in README.md and docs/*.md match the results files they were made from.

A checked table is preceded (anywhere above it, before the next marker) by a marker line

    <!-- from: scripts/SCRIPT.py ARG ... -->

The check runs ``.venv/bin/python scripts/SCRIPT.py ARG ...`` (the scripts only read committed files
under docs/results/, in seconds) and requires every markdown table row (a line starting with ``|``)
that the script prints to appear verbatim in the doc between its marker and the next marker or
heading of the same or higher level (or its ``<!-- end -->`` line). A number changed in the doc, or a results file changed without
its table, fails the check.

    .venv/bin/python scripts/check_docs.py            # every marker in README.md and docs/*.md
    .venv/bin/python scripts/check_docs.py docs/solvers.md
    .venv/bin/python scripts/check_docs.py --write docs/solvers.md   # regenerate blocks closed by <!-- end -->

Exit code 0 when every marked table matches, 1 otherwise (the differences are printed).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- from: (?P<cmd>.+?) -->\s*$")
HEADING = re.compile(r"^(#+) ")
END = re.compile(r"^<!-- end -->\s*$")


def markers(doc: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, command, the doc's lines it covers) of each marker in ``doc``."""
    lines = doc.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        level = None
        for back in range(i, -1, -1):  # the heading the marker sits under bounds its block
            h = HEADING.match(lines[back])
            if h:
                level = len(h.group(1))
                break
        end = len(lines)
        closing = next((k for k in range(i + 1, len(lines)) if END.match(lines[k]) or MARKER.match(lines[k])), None)
        if closing is not None and END.match(lines[closing]):
            end = closing  # a block closed by <!-- end -->: what the script printed, headings included
        else:
            for j in range(i + 1, len(lines)):
                h = HEADING.match(lines[j])
                if MARKER.match(lines[j]) or (h and (level is None or len(h.group(1)) <= level)):
                    end = j
                    break
        found.append((i + 1, m.group("cmd"), lines[i + 1:end]))
    return found


def write(doc: Path) -> int:
    """Replace the text between each marker and its ``<!-- end -->`` line by what its script prints now."""
    lines = doc.read_text().splitlines()
    out, i, n = [], 0, 0
    while i < len(lines):
        out.append(lines[i])
        m = MARKER.match(lines[i])
        j = next((k for k in range(i + 1, len(lines)) if END.match(lines[k]) or MARKER.match(lines[k])), None)
        if m and j is not None and END.match(lines[j]):
            code, text = run(m.group("cmd"))
            if code != 0:
                raise SystemExit(f"{doc}:{i + 1}: `{m.group('cmd')}` failed:\n{text}")
            out += ["", *text.strip().splitlines(), ""]
            i, n = j, n + 1
            continue
        i += 1
    doc.write_text("\n".join(out) + "\n")
    return n


def run(cmd: str) -> tuple[int, str]:
    argv = shlex.split(cmd)
    if not argv or not argv[0].startswith("scripts/") or not argv[0].endswith(".py"):
        return 2, f"a marker must name a scripts/*.py file, got {cmd!r}"
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return proc.returncode, proc.stderr[-2000:]
    return 0, proc.stdout


def check(doc: Path) -> list[str]:
    problems = []
    cache: dict[str, tuple[int, str]] = {}
    for lineno, cmd, block in markers(doc):
        if cmd not in cache:
            cache[cmd] = run(cmd)
        code, out = cache[cmd]
        where = f"{doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc}:{lineno}"
        if code != 0:
            problems.append(f"{where}: `{cmd}` failed:\n{out}")
            continue
        rows = [ln.rstrip() for ln in out.splitlines() if ln.startswith("|") and not set(ln) <= set("|-: ")]
        if not rows:
            problems.append(f"{where}: `{cmd}` printed no table rows")
            continue
        have = {ln.rstrip() for ln in block}
        # a script may print several tables; the block must hold every row of at least one of them
        tables, cur = [], []
        for ln in out.splitlines():
            if ln.startswith("|"):
                if not set(ln) <= set("|-: "):
                    cur.append(ln.rstrip())
            elif cur:
                tables.append(cur)
                cur = []
        if cur:
            tables.append(cur)
        doc_tables, cur = [], []  # the doc's tables in the block; those sharing a row with the output are checked
        for ln in [*block, ""]:
            if ln.startswith("|"):
                if not set(ln.rstrip()) <= set("|-: "):
                    cur.append(ln.rstrip())
            elif cur:
                doc_tables.append(cur)
                cur = []
        printed = set(rows)
        doc_rows = [r for t in doc_tables if any(r in printed for r in t) for r in t]
        matched = [t for t in tables if all(r in have for r in t)]
        if not matched:
            best = max(tables, key=lambda t: sum(r in have for r in t))
            missing = [r for r in best if r not in have]
            problems.append(f"{where}: the table does not match `{cmd}`; rows the script prints that the doc "
                            f"lacks:\n  " + "\n  ".join(missing[:12]))
            continue
        covered = {r for t in matched for r in t}
        stale = [r for r in doc_rows if r not in covered]
        if stale:
            problems.append(f"{where}: rows in the doc that `{cmd}` does not print:\n  " + "\n  ".join(stale[:12]))
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--write":  # regenerate the marked blocks that end with <!-- end -->
        for a in argv[1:]:
            print(f"{a}: {write(ROOT / a)} blocks rewritten")
        return 0
    docs = [ROOT / a for a in argv] if argv else [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems, n = [], 0
    for doc in docs:
        n += len(markers(doc))
        problems += check(doc)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{n} marked tables, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
