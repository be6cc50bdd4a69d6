"""Restoring measurements made outside the package (issue 18's done-when): a blurred and noised image
with its kernel, a masked image with its mask, a low-resolution image, each written here with PIL /
numpy (not with ``measure()``), restored by ``cmidps restore --measurement`` with the bundled prior on
held-out digits, beat the simplest inverse (A^+ y; bicubic upsampling for sr4) by a margin."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmidps.cli import main

HELDOUT = Path(cmidps.__file__).parent / "assets" / "mnist32" / "heldout"
DIGITS = ["digit0_901", "digit3_932", "digit7_970"]
STEPS = 30
SIGMA01 = 0.02  # the noise added to each measurement, in [0, 1] image units


def _digit(name) -> np.ndarray:
    return np.asarray(Image.open(HELDOUT / f"{name}.png").convert("L"), dtype=np.float64) / 255.0


def _png(arr01, path) -> None:
    Image.fromarray(np.round(np.clip(arr01, 0, 1) * 255).astype(np.uint8), "L").save(path)


def _gauss_kernel(size=9, std=1.5) -> np.ndarray:
    t = np.arange(size) - size // 2
    g = np.exp(-0.5 * (t / std) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def _blur_wrap(img, k) -> np.ndarray:
    """Circular convolution of img with k (centre at k's middle), by FFT."""
    H, W = img.shape
    pad = np.zeros((H, W))
    kh, kw = k.shape
    pad[:kh, :kw] = k
    pad = np.roll(pad, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.fft.fft2(pad)))


def make_measurements(folder: Path, task: str) -> dict:
    """Write y (and the mask / kernel) for every digit of DIGITS; returns the restore options."""
    rng = np.random.default_rng(18)
    ys, truth = folder / "y", folder / "truth"
    ys.mkdir(parents=True)
    truth.mkdir()
    opts = {"--measurement": str(ys), "--truth": str(truth), "--task": task, "--sigma-y": str(2 * SIGMA01)}
    if task == "deblur_gauss":
        k = _gauss_kernel()
        np.save(folder / "kernel.npy", k)
        opts["--kernel"] = str(folder / "kernel.npy")
    if task == "inpaint_random":
        masks = folder / "masks"
        masks.mkdir()
        opts["--mask"] = str(masks)
    for name in DIGITS:
        x = _digit(name)
        _png(x, truth / f"{name}.png")
        if task == "deblur_gauss":
            y = _blur_wrap(x, k) + SIGMA01 * rng.standard_normal(x.shape)
        elif task == "inpaint_random":
            keep = rng.random(x.shape) >= 0.8  # 80% of the pixels missing, a new mask per image
            y = np.where(keep, x + SIGMA01 * rng.standard_normal(x.shape), rng.random(x.shape))  # holes: junk
            Image.fromarray((keep * 255).astype(np.uint8), "L").save(masks / f"{name}.png")
        else:  # sr4: PIL's antialiased bicubic reduction to 8x8
            small = Image.fromarray(x).resize((8, 8), Image.BICUBIC, reducing_gap=None)
            y = np.asarray(small, dtype=np.float64) + SIGMA01 * rng.standard_normal((8, 8))
        _png(y, ys / f"{name}.png")
    return opts


@pytest.mark.parametrize("task,baseline,margin", [
    ("deblur_gauss", "A_pinv_y", 5.0),
    ("inpaint_random", "A_pinv_y", 5.0),
    ("sr4", "bicubic", 2.0),
])
def test_restores_outside_measurements_better_than_the_simple_inverse(tmp_path, task, baseline, margin, device):
    opts = make_measurements(tmp_path, task)
    out = tmp_path / "out"
    argv = ["restore", "--model", "bundled:mnist32", "--method", "dps", "--steps", str(STEPS), "--seed", "0",
            "--out", str(out), "--quiet", "--device", device] + [a for kv in opts.items() for a in kv]
    assert main(argv) == 0
    gains = []
    for name in DIGITS:
        rec = json.loads((out / f"{name}.json").read_text())
        assert Image.open(out / f"{name}.png").size == (32, 32)
        m = rec["metrics"]
        gains.append(m["restoration"]["psnr"] - m[baseline]["psnr"])
        if task == "sr4":
            assert m["restoration"]["psnr"] > m["A_pinv_y"]["psnr"]
    assert np.mean(gains) > margin, (task, gains)
    assert (out / "summary.csv").read_text().count("\n") == len(DIGITS) + 2
