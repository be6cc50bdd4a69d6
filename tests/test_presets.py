"""The preset table through the API and the command line: a preset carries its steps, and a run with
other steps says so in one line (its step sizes were tuned for the preset's count)."""
import cmidps  # noqa: F401
import warnings

import pytest
import torch

from cmidps.cli import main
from cmidps.models.loading import load_prior
from cmidps.restore import PresetStepsWarning, default_params, measure, restore



@pytest.mark.parametrize("preset,steps,notice", [
    (None, "2", "note: preset 'small' was tuned for 100 steps; running 2"),
    ("paper", "3", "note: preset 'paper' was tuned for 1000 steps; running 3"),
])
def test_cli_other_steps_print_one_notice_line(tiny_model, digit_png, tmp_path, capsys, preset, steps, notice):
    argv = ["restore", "--quiet", "--image", str(digit_png), "--task", "inpaint_random", "--model", str(tiny_model),
            "--steps", steps, "--out", str(tmp_path / "o.png")] + (["--preset", preset] if preset else [])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PresetStepsWarning)  # the command must not also warn
        assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(notice), err


def test_api_follows_the_operators_preset(tiny_model):
    prior = load_prior(str(tiny_model))
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    op, y = measure(x, "inpaint_random", seed=0, preset="dps")
    assert op.preset == "dps" and 0.3 <= op.masked_fraction <= 0.7
    assert default_params("dps", "inpaint_random", prior.shape, "dps") == {"zeta": 0.5}
    assert default_params("cmi+dps", "sr4", prior.shape) == {"zeta": 8.0}  # small, by size
    with pytest.warns(PresetStepsWarning, match="'dps' was tuned for 1000 steps; running 2"):
        out = restore(prior, op, y, "dps", steps=2, progress=False)
    assert out.shape == x.shape and torch.isfinite(out).all()
