"""Every command in the README parses as written, names files that exist in a fresh clone, and the
restore example runs verbatim (the long benchmarks and training are only parsed here; tests of their
own run them at small sizes)."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import re
import shlex
from pathlib import Path

import pytest

from cmidps.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("./run.sh cmidps "):
                    cmds.append(part[len("./run.sh cmidps "):])
    return cmds


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert any(c.startswith("restore ") for c in COMMANDS) and any(c.startswith("bench ") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_and_its_inputs_exist(command):
    args = build_parser().parse_args(shlex.split(command))
    names = ("image", "model") if command.startswith("train ") else \
        ("image", "data", "model", "measurement", "mask", "kernel", "truth")  # train's --data is a name
    for name in names:
        value = getattr(args, name, None)
        if value and value != "heldout" and not str(value).startswith("bundled:"):
            assert (ROOT / value).exists(), f"{command}: {value} is not in the repository"


def test_the_restore_examples_run_verbatim(tmp_path, monkeypatch):
    """The first restore command (a user's own measurement) and the first with --image (the benchmark
    case) run as written and write only under their output folder."""
    for name in ("cmidps", "docs"):  # the examples' relative input paths
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    first = next(c for c in COMMANDS if c.startswith("restore "))
    simulated = next(c for c in COMMANDS if c.startswith("restore ") and "--image" in c)
    for restore in (first, simulated):
        assert main(shlex.split(restore)) == 0
        args = build_parser().parse_args(shlex.split(restore))
        for out in (args.out, args.grid):
            if out:
                assert Path(out).is_file() and Path(out).parts[0] == "restore_out", out
        assert Path(args.out).with_suffix(".json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmidps", "docs", "restore_out"]
