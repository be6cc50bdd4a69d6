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
    """The first restore command (a user's own measurement, the Quick start's, DPS at 100 steps) runs as
    written and writes only under its output folder (the others run with tiny settings below)."""
    for name in ("cmidps", "docs"):  # the examples' relative input paths
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    first = next(c for c in COMMANDS if c.startswith("restore "))
    assert "--measurement" in first
    for restore in (first,):
        assert main(shlex.split(restore)) == 0
        args = build_parser().parse_args(shlex.split(restore))
        for out in (args.out, args.grid):
            if out:
                assert Path(out).is_file() and Path(out).parts[0] == "restore_out", out
        assert Path(args.out).with_suffix(".json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmidps", "docs", "restore_out"]


# --- every snippet of the README runs (issue 16): shell commands with tiny settings, the Python API ---------
# Appended arguments win (argparse keeps the last value), so a command keeps every option it is written
# with and only gets smaller. Commands that are not cmidps itself are listed with the reason they do not run.
TINY = {
    "restore ": ["--steps", "2", "--quiet"],
    "demo": ["--steps", "2", "--images", "1", "--quiet"],
    "bench gmm ": ["--steps", "2", "--samples", "16", "--ref-samples", "16", "--directions", "8", "--grid-dps", "1",
                   "--eta-grid", "0.01", "--no-progress"],
    "bench images ": ["--steps", "2", "--limit", "1", "--metrics", "psnr,ssim", "--quiet"],
    "bench speed ": ["--repeats", "1", "--timed-steps", "1", "--image-batches", "", "--estimators", "lowrank",
                     "--probes", "1", "--methods", "dps", "--quiet"],
    # --data mnist needs scripts/get_mnist.sh (a download): the 20 shipped digits stand in, with a tiny network
    "train ": ["--data", "heldout", "--steps", "2", "--batch", "4", "--eval-every", "1", "--eval-n", "4",
               "--ckpt-every", "1", "--log-every", "1", "--num-channels", "8", "--num-res-blocks", "1",
               "--channel-mult", "1,2", "--attention-resolutions", "", "--num-head-channels", "8", "--threads", "0",
               "--no-progress"],
}
NOT_RUN = {
    "./run.sh test": "the test suite itself",
    "scripts/get_mnist.sh": "downloads MNIST (tests never download); train runs on the shipped digits instead",
}
SPELLED = {"./run.sh cmidps ": "", "./run.sh demo": "demo"}  # how the README spells a cmidps command


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def readme_shell_commands() -> list[str]:
    """Every command of the README's bash blocks (continuation lines joined, comments dropped, ``&&``
    split), as written."""
    out = []
    for block in readme_blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("#", 1)[0].strip()
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def _as_cmidps(command: str) -> list[str] | None:
    for spelled, prefix in SPELLED.items():
        if command.startswith(spelled):
            return shlex.split(prefix + command[len(spelled):])
    return None


SHELL = readme_shell_commands()


def test_every_readme_shell_command_is_run_or_says_why_not():
    for command in SHELL:
        assert _as_cmidps(command) is not None or command in NOT_RUN, \
            f"README command {command!r} is neither a cmidps command nor in NOT_RUN"
    assert any(c.startswith("./run.sh demo") for c in SHELL) and any(" train " in c for c in SHELL)


@pytest.mark.parametrize("command", [c for c in SHELL if _as_cmidps(c) is not None])
def test_readme_shell_command_runs_with_tiny_settings(command, tmp_path, monkeypatch, capsys):
    """Each README command runs (exit 0) in a clean folder, with its inputs where a clone has them,
    made small by TINY; what it writes stays under the output folders the README names."""
    for name in ("cmidps", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    argv = _as_cmidps(command)
    key = next(k for k in TINY if (" ".join(argv) + " ").startswith(k.rstrip() + " "))
    code = main(argv + TINY[key])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "Traceback" not in captured.err
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("cmidps", "docs"))
    assert made and set(made) <= {"restore_out", "demo_out", "bench_out", "runs"}, made


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API block, with ``steps=100`` made ``steps=3`` (the example as written runs
    100 steps, too slow here): it runs as written otherwise and its images are finite and in [0, 1]."""
    (code,) = [b for b in readme_blocks("python") if "restore(" in b]
    assert "steps=100" in code
    (tmp_path / "docs").symlink_to(ROOT / "docs")  # the user's-own-measurement lines read docs/examples
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(re.sub(r"steps=100\b", "steps=3", code), "README.md (Python API)", "exec"), scope)
    import torch

    for name in ("x_dps", "x_cmi"):
        x = scope[name]
        assert x.shape == scope["x"].shape and torch.isfinite(x).all() and 0 <= float(x.min()) <= float(x.max()) <= 1
    own = scope["x_own"]
    assert own.shape == (1, 1, 32, 32) and torch.isfinite(own).all()


def test_restore_takes_the_task_and_its_step_size_from_the_operator(tiny_model):
    """restore() without task= uses the task's preset step size (as the CLI does), not the rule's default;
    an operator that does not record its task needs task= where the step size depends on it."""
    import torch

    from cmidps.models.loading import load_prior
    from cmidps.operators import SuperResolution
    from cmidps.restore import measure, restore

    prior = load_prior(str(tiny_model))
    x = torch.rand(1, *prior.shape, generator=torch.Generator().manual_seed(0))
    op, y = measure(x, "sr4", seed=0)
    assert op.task == "sr4" and op.preset == "small"
    kw = dict(steps=3, seed=0, progress=False)
    implied = restore(prior, op, y, "dps", **kw)
    assert torch.equal(implied, restore(prior, op, y, "dps", task="sr4", **kw))
    assert not torch.equal(implied, restore(prior, op, y, "dps", params={"zeta": 1.0}, task="sr4", **kw))
    bare = SuperResolution(tuple(prior.shape), factor=4)
    with pytest.raises(ValueError, match="pass task="):
        restore(prior, bare, y, "dps", **kw)
    assert torch.equal(restore(prior, bare, y, "dps", task="sr4", **kw), implied)
