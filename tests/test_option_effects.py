"""Every command option changes what it documents: each test here fails if its option were ignored
(parsed but not used). Restore runs spy on :func:`cmidps.restore.restore` (the call the command makes)
to compare results in float before they are written as 8-bit PNGs."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import json

import numpy as np
import pytest
import torch
from PIL import Image

import cmidps.restore as restore_mod
from cmidps.cli import main
from conftest import TINY_16, random_unet


@pytest.fixture
def spy(monkeypatch):
    """Record (method, cmi config, params, result) of every restore() the command makes."""
    calls = []
    real = restore_mod.restore

    def recording(prior, op, y, method="dps", *args, **kwargs):
        out = real(prior, op, y, method, *args, **kwargs)
        calls.append({"method": method, "cmi": kwargs.get("cmi"), "params": kwargs.get("params"), "out": out,
                      "y": y})
        return out

    monkeypatch.setattr(restore_mod, "restore", recording)
    return calls


def _restore(tiny_model, digit_png, tmp_path, *extra, name="o.png"):
    argv = ["restore", "--quiet", "--image", str(digit_png), "--task", "deblur_gauss", "--model", str(tiny_model),
            "--steps", "3", "--seed", "0", "--out", str(tmp_path / name), *extra]
    return main(argv)


def _run(spy, *argv_parts):
    before = len(spy)
    assert _restore(*argv_parts) == 0
    assert len(spy) == before + 1
    return spy[-1]


# --- restore: the CMI options ---------------------------------------------------------------------
@pytest.mark.parametrize("option,value,field,default", [
    ("--kinv", "cg", "kinv", "isotropic"),
    ("--eta-schedule", "abar", "eta_schedule", "constant"),
])
def test_restore_cmi_option_reaches_the_sampler_and_changes_the_result(tiny_model, digit_png, tmp_path, spy,
                                                                      option, value, field, default):
    base = _run(spy, tiny_model, digit_png, tmp_path, "--method", "cmi+dps", "--eta", "0.05")
    other = _run(spy, tiny_model, digit_png, tmp_path, "--method", "cmi+dps", "--eta", "0.05", option, value)
    assert getattr(base["cmi"], field) == default and getattr(other["cmi"], field) == value
    assert (base["out"] - other["out"]).abs().max() > 1e-5


def test_restore_cg_iters_changes_the_cg_result(tiny_model, digit_png, tmp_path, spy):
    common = ("--method", "cmi+dps", "--eta", "0.05", "--kinv", "cg")
    one = _run(spy, tiny_model, digit_png, tmp_path, *common, "--cg-iters", "1")
    many = _run(spy, tiny_model, digit_png, tmp_path, *common, "--cg-iters", "8")
    assert one["cmi"].cg_iters == 1 and many["cmi"].cg_iters == 8
    assert (one["out"] - many["out"]).abs().max() > 1e-6


# --- restore: every method from the command line ----------------------------------------------------
METHODS = ["pigdm", "mcg", "dsg", "ddnm", "ddnm_plus", "ddnm_svd", "ddrm", "diffpir", "tmpd", "daps", "reddiff",
           "cmi+pigdm", "cmi+mcg", "cmi+dsg", "cmi+ddnm", "cmi+tmpd"]


@pytest.fixture(scope="module")
def dps_result(tiny_model, digit_png, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    calls = []
    real = restore_mod.restore
    mp.setattr(restore_mod, "restore", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    try:
        assert _restore(tiny_model, digit_png, tmp_path_factory.mktemp("dps"), "--method", "dps") == 0
    finally:
        mp.undo()
    return calls[-1]


@pytest.mark.parametrize("method", METHODS)
def test_restore_method_is_the_one_run(tiny_model, digit_png, tmp_path, spy, dps_result, method):
    """Each --method runs that method: its result differs from DPS's on the same measurement and seed."""
    got = _run(spy, tiny_model, digit_png, tmp_path, "--method", method)
    assert got["method"].lower() == method
    assert torch.isfinite(got["out"]).all()
    assert (got["out"] - dps_result).abs().max() > 1e-4, method


# --- restore: image conversion --------------------------------------------------------------------
def test_restore_resize_is_what_lets_a_wrong_size_image_in(tiny_model, tmp_path, spy):
    big = tmp_path / "big.png"
    arr = np.zeros((24, 20), np.uint8)
    arr[4:20, 8:12] = 255
    Image.fromarray(arr, "L").save(big)
    argv = ["restore", "--quiet", "--image", str(big), "--task", "sr4", "--model", str(tiny_model), "--steps", "2",
            "--out", str(tmp_path / "r.png")]
    assert main(argv) == 2 and not (tmp_path / "r.png").exists()  # without --resize: refused
    assert main(argv + ["--resize"]) == 0
    assert Image.open(tmp_path / "r.png").size == (16, 16)
    # the resized stroke is what was measured: sr4 of a 16x16 version of the bar, bright in the middle columns
    y = spy[-1]["y"][0, 0]  # (4, 4) in [-1, 1]
    assert y[:, 1:3].mean() > y[:, [0, 3]].mean() + 0.5


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    from cmidps.models.loading import save_network

    cfg = {**TINY_16, "in_channels": 3}
    folder = tmp_path_factory.mktemp("rgb")
    save_network(folder, random_unet(0, **cfg), cfg, channels=3, image_size=16, learn_sigma=False)
    return folder


def test_restore_to_rgb_lets_a_grey_image_into_an_rgb_model(rgb_model, digit_png, tmp_path, spy):
    argv = ["restore", "--quiet", "--image", str(digit_png), "--task", "sr4", "--model", str(rgb_model), "--steps", "2",
            "--out", str(tmp_path / "r.png")]
    assert main(argv) == 2 and not (tmp_path / "r.png").exists()
    assert main(argv + ["--to-rgb"]) == 0
    assert Image.open(tmp_path / "r.png").mode == "RGB"
    y = spy[-1]["y"]  # the grey image in three equal channels, measured with noise per channel
    assert y.shape[1] == 3 and (y[:, 0] - y[:, 1]).abs().mean() < 0.2 and y[:, 0].std() > 0.2
