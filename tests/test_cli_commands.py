"""Every subcommand runs through the entry point ``cmidps.cli.main`` (tiny settings) and exits 0."""
import cmidps  # noqa: F401  (OMP_WAIT_POLICY before torch)
import argparse
import json

import pytest

from cmidps.cli import build_parser, main
from cmidps.data import HELDOUT_DIR

TRAIN_TINY = ["--num-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "16",
              "--num-heads", "2", "--num-head-channels", "-1"]


def _commands(parser=None, prefix=()) -> set:
    """The leaf commands of the parser, as tuples of names (("restore",), ("bench", "gmm"), ...)."""
    parser = parser or build_parser()
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, (*prefix, name)) or {(*prefix, name)}
    return found


def _argv(command, tmp, model):
    digit = sorted(HELDOUT_DIR.glob("*.png"))[0]
    return {
        ("restore",): ["restore", "--image", str(digit), "--task", "sr4", "--steps", "2", "--out", str(tmp / "r.png"),
                       "--quiet"],
        ("demo",): ["demo", "--out", str(tmp / "demo"), "--images", "1", "--steps", "2", "--quiet"],
        ("train",): ["train", "--data", "heldout", "--out", str(tmp / "train"), "--steps", "1", "--batch", "2",
                     "--eval-n", "4", "--no-progress", *TRAIN_TINY],
        ("bench", "gmm"): ["bench", "gmm", "--dim", "20", "--meas", "3", "--seeds", "101", "102", "--methods",
                           "dps,cmi+dps", "--steps", "3", "--samples", "20", "--ref-samples", "20", "--directions",
                           "10", "--json", str(tmp / "g.json"), "--no-progress"],
        ("bench", "images"): ["bench", "images", "--data", "heldout", "--limit", "1", "--tasks", "sr4", "--methods",
                              "dps", "--steps", "2", "--metrics", "psnr", "--out", str(tmp / "bi"), "--quiet"],
        ("bench", "speed"): ["bench", "speed", "--model", str(model), "--methods", "dps", "--probes", "1",
                             "--timed-steps", "1", "--repeats", "1", "--image-batches", "1",
                             "--json", str(tmp / "s.json"), "--quiet"],
    }[command]


COMMANDS = [("restore",), ("demo",), ("train",), ("bench", "gmm"), ("bench", "images"), ("bench", "speed")]


def test_every_command_is_covered():
    assert _commands() == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_command_exits_0_through_main_smoke(command, tmp_path, tiny_model, capsys):
    """Smoke test: every command runs through the entry point. What their options do is checked with
    values in tests/test_option_effects.py and the commands' own test files."""
    assert main(_argv(command, tmp_path, tiny_model)) == 0
    assert "Traceback" not in capsys.readouterr().err
    if command == ("bench", "gmm"):
        assert set(json.loads((tmp_path / "g.json").read_text())) >= {"config"}
