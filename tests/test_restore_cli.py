"""The restore API and the command line on a tiny random network (fast; no bundled weights needed)."""
import cmidps  # noqa: F401
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cmidps.cli import main
from cmidps.models.loading import load_prior
from cmidps.restore import measure, parse_method, restore



def test_parse_method():
    assert parse_method("cmi+dps") == ("dps", True)
    assert parse_method("DPS") == ("dps", False)
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("cmi+magic")


def test_measure_is_seeded_per_task_and_item():
    x = torch.rand(3, 1, 16, 16)
    op1, y1 = measure(x, "inpaint_random", seed=4)
    op2, y2 = measure(x, "inpaint_random", seed=4)
    assert torch.equal(op1.mask, op2.mask) and torch.equal(y1, y2)
    _, y3 = measure(x, "inpaint_random", seed=5)
    assert not torch.equal(y1, y3)
    # the third image's measurement does not depend on the batch it is in
    _, y_single = measure(x[2:], "inpaint_random", seed=4, items=[2])
    torch.testing.assert_close(y_single, y1[2:])
    # masked pixels carry no noise: the measurement space of a mask is its kept pixels
    assert torch.all(y1[:, :, op1.mask[0] == 0] == 0)


def test_restore_does_not_depend_on_the_batch(tiny_model):
    """With CMI on (and shown to act) on a network whose eps depends on x, the second image of a batch
    of two is restored as it is alone (float64, so that the batch and the single run agree to rounding)."""
    from cmidps.cmi import CMIConfig

    prior = load_prior(str(tiny_model)).double()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op, y = measure(x, "deblur_gauss", seed=0)
    cmi = CMIConfig(eta=0.05)
    kw = dict(steps=3, seed=1, progress=False)
    both = restore(prior, op, y, "cmi+dps", cmi=cmi, **kw)
    second = restore(prior, op, y[1:], "cmi+dps", items=[1], cmi=cmi, **kw)
    assert both.shape == (2, 1, 16, 16) and (both[0] - both[1]).abs().max() > 0.05
    torch.testing.assert_close(second, both[1:], atol=1e-9, rtol=1e-9)
    # CMI really acts here: the same run without it differs
    assert (both - restore(prior, op, y, "dps", **kw)).abs().max() > 1e-4


def test_restore_rejects_a_shape_mismatch(tiny_model):
    prior = load_prior(str(tiny_model))
    op, y = measure(torch.rand(1, 1, 32, 32), "sr4", seed=0)
    with pytest.raises(ValueError, match="operator acts on"):
        restore(prior, op, y, "dps", steps=2, progress=False)


def test_cli_restore_writes_the_image_and_grid(tiny_model, digit_png, tmp_path):
    out, grid = tmp_path / "out.png", tmp_path / "grid.png"
    rc = main(["restore", "--image", str(digit_png), "--task", "sr4", "--method", "dps", "--cmi", "lowrank",
               "--eta", "0.05", "--model", str(tiny_model), "--steps", "3", "--seed", "0", "--out", str(out),
               "--grid", str(grid), "--quiet"])
    assert rc == 0
    assert Image.open(out).size == (16, 16)
    assert Image.open(grid).size[0] > 3 * 16
    # --cmi lowrank --eta 0.05 acted: the same command without them writes another image
    plain = tmp_path / "plain.png"
    assert main(["restore", "--image", str(digit_png), "--task", "sr4", "--method", "dps", "--model", str(tiny_model),
                 "--steps", "3", "--seed", "0", "--out", str(plain), "--quiet"]) == 0
    diff = np.abs(np.asarray(Image.open(out), float) - np.asarray(Image.open(plain), float))
    assert diff.max() >= 2, diff.max()


def _restore_args(tiny_model, digit_png, tmp_path, **over):
    args = {"--image": str(digit_png), "--task": "sr4", "--model": str(tiny_model),
            "--out": str(tmp_path / "o.png"), "--steps": "2"}
    args.update(over)
    return ["restore", "--quiet"] + [a for kv in args.items() for a in kv]


@pytest.mark.parametrize("over,message", [
    ({"--model": "/nonexistent/ffhq_10m.pt"}, "not found"),
    ({"--image": "/nonexistent.png"}, "image not found"),
    ({"--method": "cmi+magic"}, "unknown method"),
])
def test_cli_clear_errors(tiny_model, digit_png, tmp_path, capsys, over, message):
    assert main(_restore_args(tiny_model, digit_png, tmp_path, **over)) == 2
    assert message in capsys.readouterr().err.lower()
    assert not (tmp_path / "o.png").exists()


def test_cli_wrong_image_size_is_a_clear_error(tiny_model, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 24), np.uint8), "L").save(big)
    assert main(_restore_args(tiny_model, big, tmp_path)) == 2
    assert "24x20, the model needs 16x16" in capsys.readouterr().err


def test_cli_unknown_task_is_rejected(capsys):
    assert main(["restore", "--image", "x.png", "--task", "denoise_magic", "--out", "o.png"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_divergence_is_reported_not_written(tiny_model, digit_png, tmp_path, capsys):
    out = tmp_path / "nan.png"
    rc = main(["restore", "--image", str(digit_png), "--task", "deblur_gauss", "--model", str(tiny_model),
               "--zeta", "1e30", "--steps", "4", "--out", str(out), "--quiet"])
    assert rc == 2 and not out.exists()
    assert "non-finite at step" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert json.dumps(cmidps.__version__) in json.dumps(capsys.readouterr().out.split()[-1])
