"""``cmidps restore`` with files a user has: replay of a simulated run, folders (batched, resumable),
run records and --config, the file conventions' errors; on the tiny random model (fast)."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmidps.cli import main
from cmidps.data.images import load_image
from cmidps.models.loading import load_prior
from cmidps.operators import make_operator
from cmidps.restore import measurement_from_image, restore


def _png(arr01, path):
    Image.fromarray(np.round(np.clip(arr01, 0, 1) * 255).astype(np.uint8), "L").save(path)
    return path


DEVICE = "cpu"


@pytest.fixture(autouse=True)
def _on_device(device):
    """Every test here runs on the ``device`` fixture's device (cuda when present)."""
    global DEVICE
    DEVICE = device


def _run(*argv):
    return main(["restore", "--quiet", "--device", DEVICE, *map(str, argv)])


def test_replay_of_a_saved_measurement_gives_the_simulated_restoration(tiny_model, digit_png, tmp_path):
    """--image ... --save-measurement Y.png, then --measurement Y.png --mask Y_mask.png: the same operator,
    seeds and noise level; the only difference is y's 8-bit quantisation (and clipping to [0, 1])."""
    common = ["--task", "inpaint_random", "--model", tiny_model, "--steps", 4, "--seed", 3]
    assert _run("--image", digit_png, "--save-measurement", tmp_path / "y.png", "--out", tmp_path / "sim.png",
                *common) == 0
    assert (tmp_path / "y_mask.png").is_file()
    assert _run("--measurement", tmp_path / "y.png", "--mask", tmp_path / "y_mask.png", "--out",
                tmp_path / "replay.png", *common) == 0
    # exactly the API's restoration of the quantised y with that operator and seed
    prior = load_prior(str(tiny_model), device=DEVICE)
    mask = torch.from_numpy(np.asarray(Image.open(tmp_path / "y_mask.png"), dtype=np.float64) / 255)
    op = make_operator("inpaint_random", (1, 16, 16), mask=mask).to(DEVICE)
    y = measurement_from_image(load_image(tmp_path / "y.png")[None].to(DEVICE), op)
    api = restore(prior, op, y, "dps", steps=4, seed=3, task="inpaint_random", progress=False).cpu()
    replay = load_image(tmp_path / "replay.png")
    expected = torch.round(api[0].clamp(0, 1) * 255) / 255
    if DEVICE == "cpu":
        assert torch.equal(replay, expected)
    else:  # CUDA kernels need not be bit-reproducible across calls
        assert (replay - expected).abs().max() <= 1.5 / 255
    # and close to the simulated run, whose y was not quantised
    sim = load_image(tmp_path / "sim.png")
    assert (replay - sim).abs().mean() < 0.05
    rec = json.loads((tmp_path / "replay.json").read_text())
    assert rec["resolved"]["sigma_y"] == 0.05 and rec["resolved"]["item"] == 0
    sim_rec = json.loads((tmp_path / "sim.json").read_text())
    assert sim_rec["metrics"]["restoration"]["psnr"] > 0  # --image is its own truth


def test_blur_kernel_file_and_preset_gaussian(tiny_model, digit_png, tmp_path):
    y = _png(np.asarray(Image.open(digit_png), dtype=np.float64) / 255 * 0.8, tmp_path / "y.png")
    k = np.zeros((3, 5)); k[1, 1:4] = 1.0
    np.save(tmp_path / "k.npy", k)
    assert _run("--measurement", y, "--task", "deblur_motion", "--kernel", tmp_path / "k.npy", "--model", tiny_model,
                "--steps", 2, "--out", tmp_path / "m.png") == 0
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["resolved"]["operator"]["kernel_shape"] == [3, 5] and rec["files"]["kernel_sha256"]
    assert len(rec["model"]["sha256"]) == 64 and rec["versions"]["torch"] == torch.__version__
    assert _run("--measurement", y, "--task", "deblur_gauss", "--model", tiny_model, "--steps", 2,
                "--out", tmp_path / "g.png") == 0  # no kernel: the preset's Gaussian
    assert json.loads((tmp_path / "g.json").read_text())["resolved"]["operator"]["std"] == 1.5


@pytest.mark.parametrize("case,message", [
    ("grey_mask", r"neither black .* nor white"),
    ("motion_without_kernel", r"deblur_motion needs --kernel"),
    ("inpaint_without_mask", r"needs --mask"),
    ("sr4_wrong_size", r"quarter of the model's 16x16 on each side, 4x4"),
    ("nonlinear", r"phase_retrieval is not restored from files"),
    ("out_is_input", r"--out .* is the input --measurement"),
    ("mask_wrong_size", r"must be the model's size, 16x16"),
    ("both_inputs", r"exactly one of --measurement"),
])
def test_file_convention_errors(tiny_model, digit_png, tmp_path, capsys, case, message):
    y = _png(np.full((16, 16), 0.5), tmp_path / "y.png")
    mask = np.full((16, 16), 255, np.uint8)
    mask[2:5, 2:5] = 0
    Image.fromarray(mask, "L").save(tmp_path / "m.png")
    grey = mask.copy(); grey[0, 0] = 128
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "m8.png")
    base = ["--model", tiny_model, "--steps", 2, "--out", tmp_path / "o.png"]
    argv = {
        "grey_mask": ["--measurement", y, "--task", "inpaint_box", "--mask", tmp_path / "grey.png"],
        "motion_without_kernel": ["--measurement", y, "--task", "deblur_motion"],
        "inpaint_without_mask": ["--measurement", y, "--task", "inpaint_random"],
        "sr4_wrong_size": ["--measurement", y, "--task", "sr4"],
        "nonlinear": ["--measurement", y, "--task", "phase_retrieval"],
        "out_is_input": ["--measurement", y, "--task", "sr4", "--model", tiny_model, "--out", y],
        "mask_wrong_size": ["--measurement", y, "--task", "inpaint_box", "--mask", tmp_path / "m8.png"],
        "both_inputs": ["--measurement", y, "--image", digit_png, "--task", "sr4"],
    }[case]
    assert _run(*base, *argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.json").exists()


def test_sigma_auto_is_estimated_and_printed(tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = _png(0.5 + 0.05 * rng.standard_normal((16, 16)), tmp_path / "y.png")  # std 0.05 in [0, 1] = 0.1 in [-1, 1]
    assert _run("--measurement", y, "--task", "deblur_gauss", "--sigma-y", "auto", "--model", tiny_model,
                "--steps", 2, "--out", tmp_path / "o.png") == 0
    est = json.loads((tmp_path / "o.json").read_text())["resolved"]["sigma_y"]
    assert 0.06 < est < 0.14
    assert "estimated sigma_y" in capsys.readouterr().err
    # with a mask: the holes (here black, an edge that is not noise) are filled before estimating
    mask = np.full((16, 16), 255, np.uint8)
    mask[4:12, 4:12] = 0
    Image.fromarray(mask, "L").save(tmp_path / "m.png")
    _png(np.where(mask > 0, 0.5 + 0.05 * rng.standard_normal((16, 16)), 0.0), tmp_path / "holes.png")
    assert _run("--measurement", tmp_path / "holes.png", "--mask", tmp_path / "m.png", "--task", "inpaint_box",
                "--sigma-y", "auto", "--model", tiny_model, "--steps", 2, "--out", tmp_path / "h.png") == 0
    assert 0.05 < json.loads((tmp_path / "h.json").read_text())["resolved"]["sigma_y"] < 0.15


def test_a_folder_is_batched_resumable_and_summarised(tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "y").mkdir(); (tmp_path / "masks").mkdir(); (tmp_path / "truth").mkdir()
    for i in range(3):
        x = rng.random((16, 16))
        keep = rng.random((16, 16)) > 0.5
        _png(x, tmp_path / "truth" / f"im{i}.png")
        _png(np.where(keep, x, 0), tmp_path / "y" / f"im{i}.png")
        Image.fromarray((keep * 255).astype(np.uint8), "L").save(tmp_path / "masks" / f"im{i}.png")
    argv = ["--measurement", tmp_path / "y", "--mask", tmp_path / "masks", "--truth", tmp_path / "truth",
            "--task", "inpaint_random", "--model", tiny_model, "--steps", 2, "--batch", 2, "--out", tmp_path / "out"]
    assert _run(*argv) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["im0.json", "im0.png", "im1.json", "im1.png", "im2.json",
                                                      "im2.png", "run.json", "summary.csv"]
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("image,psnr_restoration") and summary[-1].startswith("mean,")
    first = (out / "im1.png").read_bytes()
    im1 = load_image(out / "im1.png")
    # the result of an image does not depend on its batch: im1 alone (a folder of one) gives the same file
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "im1.png").write_bytes((tmp_path / "y" / "im1.png").read_bytes())
    assert _run("--measurement", tmp_path / "one", "--mask", tmp_path / "masks", "--task", "inpaint_random",
                "--model", tiny_model, "--steps", 2, "--out", tmp_path / "out1") == 0
    assert (load_image(tmp_path / "out1" / "im1.png") - im1).abs().max() <= 1.5 / 255  # float rounding only
    # a rerun skips the finished images; a lost one is redone
    (out / "im2.png").unlink()
    capsys.readouterr()
    assert _run(*argv) == 0
    assert "2 of 3 images already restored" in capsys.readouterr().err
    assert (out / "im2.png").is_file() and (out / "im1.png").read_bytes() == first
    # other settings into the same folder: refused without --overwrite
    assert _run(*argv, "--seed", 5) == 2


def test_a_saved_folder_replays_with_its_own_side_files(tiny_model, digit_png, tmp_path):
    """--image DIR --save-measurement YDIR writes NAME.png + NAME_mask.png; YDIR is then both the
    measurement and the mask folder (the _mask files are not taken as measurements)."""
    (tmp_path / "x").mkdir()
    for name in ("a", "b"):
        (tmp_path / "x" / f"{name}.png").write_bytes(digit_png.read_bytes())
    common = ["--task", "inpaint_box", "--model", tiny_model, "--steps", 2]
    assert _run("--image", tmp_path / "x", "--save-measurement", tmp_path / "y", "--out", tmp_path / "sim", *common) == 0
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["a.png", "a_mask.png", "b.png", "b_mask.png"]
    assert _run("--measurement", tmp_path / "y", "--mask", tmp_path / "y", "--out", tmp_path / "rep", *common) == 0
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["a.png", "b.png"]
    rec = json.loads((tmp_path / "rep" / "b.json").read_text())
    assert rec["options"]["mask"].endswith("b_mask.png") and rec["resolved"]["item"] == "b.png"


def test_config_reruns_a_record_with_overrides(tiny_model, digit_png, tmp_path):
    assert _run("--image", digit_png, "--task", "sr4", "--model", tiny_model, "--steps", 2, "--seed", 1,
                "--out", tmp_path / "a.png") == 0
    assert _run("--config", tmp_path / "a.json", "--out", tmp_path / "b.png") == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    rec = json.loads((tmp_path / "b.json").read_text())
    assert rec["options"]["seed"] == 1 and rec["options"]["steps"] == 2
    assert _run("--config", tmp_path / "a.json", "--seed", 2, "--out", tmp_path / "c.png") == 0
    assert json.loads((tmp_path / "c.json").read_text())["resolved"]["seed"] == 2
    yaml = pytest.importorskip("yaml")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"image": str(digit_png), "task": "sr4", "model": str(tiny_model),
                                                       "steps": 2, "seed": 1, "out": str(tmp_path / "d.png")}))
    assert _run("--config", tmp_path / "run.yaml") == 0
    assert (tmp_path / "d.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_make_operator_from_a_mask_and_a_kernel():
    mask = torch.ones(8, 8); mask[2:4] = 0
    op = make_operator("inpaint_box", (1, 8, 8), mask=mask)
    assert torch.equal(op.A(torch.ones(1, 1, 8, 8))[0, 0], mask.double())
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        make_operator("inpaint_random", (1, 8, 8), mask=mask * 0.5)
    with pytest.raises(ValueError, match="inpainting task"):
        make_operator("sr4", (1, 8, 8), mask=mask)
    k = torch.zeros(3, 3); k[1, 2] = 1.0  # the kernel is the picture of a point: this one moves it one pixel right
    op = make_operator("deblur_motion", (1, 8, 8), kernel=k)
    x = torch.zeros(1, 1, 8, 8); x[0, 0, 4, 4] = 1
    assert op.A(x)[0, 0, 4, 5] > 0.99


def test_lpips_is_reported_when_its_weights_load(tiny_model, digit_png, tmp_path, monkeypatch):
    """Where LPIPS's weight files are present its score goes beside PSNR/SSIM (here a randomly initialised
    LPIPS stands in for the weights, which are not shipped)."""
    import importlib

    lp = importlib.import_module("cmidps.metrics.lpips")  # the module (cmidps.metrics.lpips the name is a function)
    net = lp.LPIPS("alex", pretrained=False)
    monkeypatch.setattr(lp, "get_lpips", lambda *a, **k: net.to(k.get("device", "cpu")))
    digit = Path(cmidps.__file__).parent / "assets" / "mnist32" / "heldout" / "digit7_970.png"  # LPIPS needs >= 31 px
    assert _run("--image", digit, "--task", "sr4", "--model", "bundled:mnist32", "--steps", 2,
                "--out", tmp_path / "o.png") == 0
    m = json.loads((tmp_path / "o.json").read_text())["metrics"]
    assert set(m) == {"restoration", "A_pinv_y", "bicubic"} and all("lpips" in v for v in m.values())


def test_an_interrupted_folder_leaves_whole_files_and_resumes(tiny_model, tmp_path, monkeypatch, capsys):
    import cmidps.restore as api

    (tmp_path / "y").mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        _png(rng.random((4, 4)), tmp_path / "y" / f"im{i}.png")
    argv = ["--measurement", tmp_path / "y", "--task", "sr4", "--model", tiny_model, "--steps", 2, "--batch", 1,
            "--out", tmp_path / "out"]
    real, calls = api.sample, []

    def interrupted_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(api, "sample", interrupted_second)
    assert _run(*argv) == 130
    assert "nothing partial was written" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.json", "im0.png", "run.json"]
    monkeypatch.setattr(api, "sample", real)
    assert _run(*argv) == 0
    assert "1 of 3 images already restored" in capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
