"""Tests of cmidps.operators.motion: the camera-shake family against the reference's statistics, the random
draws it is made of, the statistics themselves, and kernels loaded from files."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmidps.operators import motion
from cmidps.operators.motion import kernel_statistics, load_kernel, motion_kernel
from cmidps.operators import CircularBlur

DT = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- the statistics
def test_elongation_is_the_ratio_of_the_principal_axes():
    """A sampled anisotropic Gaussian with stds 4 and 1.5 rotated by 0.6 rad: the second moment is
    R diag(16, 2.25) R^T (by Poisson summation the sampled moments equal the continuous ones up to
    ~exp(-2 pi^2 1.5^2) ~ 1e-19; the 61 px window cuts the tails at 7.5 stds)."""
    t = torch.arange(61, dtype=DT) - 30
    a, b = t[:, None], t[None, :]
    c, s = math.cos(0.6), math.sin(0.6)
    u, v = c * a + s * b, -s * a + c * b
    k = torch.exp(-0.5 * (u / 4.0) ** 2 - 0.5 * (v / 1.5) ** 2)
    assert kernel_statistics(k)["elongation"] == pytest.approx(4.0 / 1.5, rel=1e-9)


def test_extent_is_the_larger_side_of_the_box_above_five_percent():
    k = torch.zeros(61, 61, dtype=DT)
    k[30, 10:27] = 1.0  # a 17 px horizontal bar
    k[20:25, 15] = 0.5  # 5 px tall, so the box is 11 rows x 17 columns
    k[0, 0] = 0.04  # below 5% of the maximum: ignored
    assert kernel_statistics(k)["extent"] == 17
    k[0, 60] = 0.06  # above 5%: the box now spans rows 0..30 and columns 10..60
    assert kernel_statistics(k)["extent"] == 51


def test_near_zero_share_of_a_box_and_a_delta():
    """A w-px horizontal box zero-padded to 256: |K^[p, q]| = |sin(pi q w / 256) / (w sin(pi q / 256))|
    (Dirichlet kernel), the same for every row p; count its near-zero columns directly."""
    for w in (8, 13):
        k = torch.zeros(61, 61, dtype=DT)
        k[30, 5 : 5 + w] = 1.0
        q = np.arange(1, 256)
        mag = np.abs(np.sin(np.pi * q * w / 256) / (w * np.sin(np.pi * q / 256)))
        expected = (mag < 1e-3).sum() / 256  # every row p has the same column profile
        assert kernel_statistics(k)["near_zero"] == pytest.approx(expected, abs=1e-12)
        if w == 8:
            assert expected == pytest.approx(7 / 256)  # exact zeros at q = 32, 64, ..., 224
    delta = torch.zeros(61, 61, dtype=DT)
    delta[30, 30] = 1.0
    assert kernel_statistics(delta)["near_zero"] == 0.0


# ---------------------------------------------------------------------------- the random draws
def test_beta_and_triangular_draws_have_their_laws_moments():
    g = gen(0)
    u = torch.rand(200_000, generator=g, dtype=DT)
    x = motion._beta_1b(u, 30.0)  # Beta(1, 30): mean 1/31, var 30 / (31^2 * 32)
    assert float(x.mean()) == pytest.approx(1 / 31, rel=0.01)
    assert float(x.var()) == pytest.approx(30 / (31**2 * 32), rel=0.02)
    y = motion._triangular(u, 0.3, 1.1)  # Triangular(0, 0.3, 1.1): mean 1.4 / 3, var (1.21 + 0.09 - 0.33) / 18
    assert float(y.mean()) == pytest.approx(1.4 / 3, rel=0.01)
    assert float(y.var()) == pytest.approx((1.21 + 0.09 - 0.33) / 18, rel=0.02)
    assert 0 <= float(y.min()) and float(y.max()) <= 1.1
    z = np.array([motion._beta_int(2, 20, g) for _ in range(4000)])  # Beta(2, 20): mean 1/11
    assert z.mean() == pytest.approx(1 / 11, abs=4 * math.sqrt(2 * 20 / (22**2 * 23) / 4000))


def test_step_lengths_stop_when_both_sums_are_reached():
    for seed in range(20):
        steps = motion.step_lengths(5.0, 2.0, gen(seed), min_drawn=3.0)
        total = torch.cumsum(steps, 0)
        assert float(steps.max()) < 5.0
        assert float(total[-1]) >= 5.0 and float(total[-1] - steps[0]) >= 3.0
        if len(steps) > 1:  # one step fewer would not do
            assert float(total[-2]) < 5.0 or float(total[-2] - steps[0]) < 3.0


def test_headings_zigzag_inside_their_cone():
    for seed in range(20):
        g = gen(seed)
        state = g.get_state()
        theta = motion.headings(200, 0.5, g)
        g.set_state(state)
        half_angle = math.pi * 0.5 * float(torch.rand((), generator=g, dtype=DT))
        assert abs(float(theta[0])) <= half_angle
        assert float(theta.abs().max()) <= half_angle + 0.1
    assert torch.equal(motion.headings(50, 0.0, gen(1)), torch.zeros(50, dtype=DT))  # linear motion


def test_path_is_centred_on_the_kernel():
    for seed in range(5):
        v = motion.shake_path(61, 0.5, gen(seed))
        assert torch.allclose(v.mean(0), torch.full((2,), 30.5, dtype=DT))


# ---------------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("size", [9, 15, 61])
@pytest.mark.parametrize("intensity", [0.0, 0.5, 1.0])
def test_motion_kernel_is_a_normalised_seeded_kernel(size, intensity):
    k = motion_kernel(size, intensity, gen(3))
    assert k.shape == (size, size) and k.dtype == DT
    assert float(k.min()) >= 0 and abs(float(k.sum()) - 1) < 1e-12
    assert torch.equal(k, motion_kernel(size, intensity, gen(3)))
    assert not torch.equal(k, motion_kernel(size, intensity, gen(4)))


def minor_std(k):
    """The std of ``k`` across its principal axis (the smaller eigenvalue of its second moment)."""
    k = k.numpy() / float(k.sum())
    r, c = np.mgrid[: k.shape[0], : k.shape[1]]
    pts = np.stack([r.ravel(), c.ravel()], 1).astype(float)
    mean = k.ravel() @ pts
    cov = (pts - mean).T @ ((pts - mean) * k.ravel()[:, None])
    return math.sqrt(np.linalg.eigvalsh(cov)[0])


def test_intensity_zero_is_a_straight_stroke():
    """At intensity 0 the path is a line: across it the kernel is only the 0.5 px line width, the
    0.5 px blur and the resizing filter wide; shaken paths (intensity 0.5) are wider."""
    straight = [minor_std(motion_kernel(61, 0.0, gen(seed))) for seed in range(10)]
    shaken = [minor_std(motion_kernel(61, 0.5, gen(seed))) for seed in range(10)]
    assert max(straight) < 0.7 and np.mean(shaken) > 1.0


def test_small_kernels_are_blurs_not_deltas():
    """At 9x9 (the small preset) no kernel is nearly a delta: the path is at least 3 px long."""
    for seed in range(60):
        k = motion_kernel(9, 0.5, gen(seed))
        assert float(k.max()) < 0.4
        assert int((k > 1e-3).sum()) >= 8
        assert kernel_statistics(k)["extent"] >= 3


# The reference family: LeviBorodenko/motionblur at 61x61, intensity 0.5, numpy seeds 0..299
# (scripts/kernel_stats.py --reference), quartiles (25%, 50%, 75%) of each statistic.
REFERENCE = {"elongation": (5.4, 9.3, 13.9), "extent": (22.0, 35.0, 47.0), "near_zero": (0.0017, 0.0036, 0.0062)}


def test_statistics_match_the_reference_family():
    """Issue 9: each statistic's median and quartiles within 20% of the reference's, over 300 kernels."""
    stats = [kernel_statistics(motion_kernel(61, 0.5, gen(seed))) for seed in range(300)]
    for name, ref in REFERENCE.items():
        ours = np.percentile([s[name] for s in stats], [25, 50, 75])
        for q, r in zip(ours, ref):
            assert abs(q - r) <= 0.2 * r, (name, ours, ref)


# --------------------------------------------------------------------------------- kernel files
def asymmetric_kernel():
    k = torch.zeros(7, 5, dtype=DT)
    k[1, 1], k[2, 1], k[3, 2], k[5, 4], k[6, 0] = 3.0, 1.0, 2.0, 0.5, 1.5
    return k


def test_load_npy_and_png(tmp_path):
    k = asymmetric_kernel()
    np.save(tmp_path / "k.npy", k.numpy()[None, None])  # (1, 1, h, w) as torch weights are saved
    got = load_kernel(tmp_path / "k.npy")
    assert got.dtype == DT and torch.allclose(got, k / k.sum(), atol=0, rtol=1e-15)
    assert torch.equal(load_kernel(tmp_path / "k.npy", flip=True), torch.flip(got, (0, 1)))

    from PIL import Image

    img = (k / k.max() * 255).round().to(torch.uint8).numpy()
    Image.fromarray(img, mode="L").save(tmp_path / "k.png")
    Image.fromarray(np.stack([img] * 3, -1), mode="RGB").save(tmp_path / "k_rgb.png")
    ref = torch.from_numpy(img.astype(np.float64))
    for name in ("k.png", "k_rgb.png"):
        assert torch.allclose(load_kernel(tmp_path / name), ref / ref.sum(), rtol=1e-15, atol=0)


def test_correlating_with_k_is_convolving_with_the_flipped_k(tmp_path):
    """The DPS code applies a kernel with nn.Conv2d (a correlation); cmidps convolves. Loading with
    flip=True makes cmidps's blur the DPS one (circular padding here, to compare exactly)."""
    k = asymmetric_kernel()
    np.save(tmp_path / "k.npy", k.numpy())
    x = torch.randn(2, 3, 16, 12, generator=gen(0), dtype=DT)
    kn = k / k.sum()
    padded = F.pad(x, (2, 2, 3, 3), mode="circular")  # kernel 7x5: centre (3, 2)
    correlation = F.conv2d(padded, kn.expand(3, 1, 7, 5), groups=3)
    ours = CircularBlur((3, 16, 12), load_kernel(tmp_path / "k.npy", flip=True)).A(x)
    assert torch.allclose(ours, correlation, atol=1e-13)
    unflipped = CircularBlur((3, 16, 12), load_kernel(tmp_path / "k.npy")).A(x)
    assert not torch.allclose(unflipped, correlation, atol=1e-3)


def _save(tmp_path, name, arr):
    p = tmp_path / name
    np.save(p, arr)
    return p


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.ones((2, 3, 3)), "must be 2-D"),
        (np.ones((4, 5)), "odd height and width"),
        (np.ones(5), "must be 2-D"),
        (np.array([[1.0, np.nan, 1.0]] * 3), "non-finite"),
        (np.array([[1.0, -0.5, 1.0]] * 3), "negative"),
        (np.zeros((3, 3)), "sums to zero"),
        (np.array([["a", "b", "c"]] * 3), "real numbers"),
        (np.ones((3, 3), dtype=complex), "real numbers"),
    ],
)
def test_bad_kernel_arrays_are_refused(tmp_path, arr, message):
    with pytest.raises(ValueError, match=message):
        load_kernel(_save(tmp_path, "bad.npy", arr))


def test_bad_kernel_files_are_refused(tmp_path):
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="kernel file not found"):
        load_kernel(tmp_path / "missing.npy")
    (tmp_path / "k.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"\.npy or \.png"):
        load_kernel(tmp_path / "k.txt")
    (tmp_path / "junk.npy").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_kernel(tmp_path / "junk.npy")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage" * 10)
    with pytest.raises(ValueError, match="not a readable PNG"):
        load_kernel(tmp_path / "junk.png")
    colour = np.zeros((5, 5, 3), dtype=np.uint8)
    colour[2, 2] = (255, 0, 0)
    Image.fromarray(colour, mode="RGB").save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="greyscale"):
        load_kernel(tmp_path / "colour.png")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_kernel(tmp_path / "obj.npy")


# ------------------------------------------------------------------ kernels from files: API and CLI
def test_measure_blurs_with_a_given_kernel(tmp_path):
    from cmidps.restore import measure

    k = asymmetric_kernel()
    x = torch.rand(1, 1, 16, 16, generator=gen(0), dtype=DT)
    for task, preset in (("deblur_motion", "small"), ("deblur_gauss", "small"), ("deblur_motion", "dps")):
        op, _ = measure(x, task, seed=0, preset=preset, kernel=k / k.sum())
        assert torch.equal(op.kernel, k / k.sum())
    with pytest.raises(ValueError, match="blur task"):
        measure(x, "inpaint_box", seed=0, kernel=k)


def _restore(tiny_model, tmp_path, *extra, task="deblur_motion"):
    from PIL import Image

    from cmidps.cli import main

    img = tmp_path / "digit.png"
    arr = np.zeros((16, 16), np.uint8)
    arr[3:13, 7:9] = 255
    Image.fromarray(arr, "L").save(img)
    return main(["restore", "--quiet", "--image", str(img), "--task", task, "--model", str(tiny_model),
                 "--steps", "1", "--out", str(tmp_path / "o.png"), *extra])


def test_cli_restore_with_a_kernel_file(tiny_model, tmp_path, monkeypatch):
    """--kernel is the blur that is measured with, and --kernel-as-dps flips it (an asymmetric kernel:
    another measurement)."""
    import cmidps.restore as restore_mod

    seen = []
    real = restore_mod.restore
    monkeypatch.setattr(restore_mod, "restore", lambda prior, op, y, *a, **k: seen.append((op, y)) or real(prior, op, y, *a, **k))
    k = asymmetric_kernel()
    np.save(tmp_path / "k.npy", k.numpy())
    assert _restore(tiny_model, tmp_path, "--kernel", str(tmp_path / "k.npy"), "--kernel-as-dps") == 0
    assert (tmp_path / "o.png").exists()
    assert _restore(tiny_model, tmp_path, "--kernel", str(tmp_path / "k.npy")) == 0
    (op_flip, y_flip), (op_plain, y_plain) = seen
    kk = (k / k.sum()).to(op_plain.kernel.dtype)
    torch.testing.assert_close(op_plain.kernel, kk)
    torch.testing.assert_close(op_flip.kernel, kk.flip(-1, -2))
    assert (y_flip - y_plain).abs().max() > 1e-3


@pytest.mark.parametrize("case, message", [
    ("even", "--kernel: "),
    ("missing", "kernel file not found"),
    ("not_blur", "applies to the blur tasks"),
    ("flip_alone", "--kernel-as-dps needs --kernel"),
])
def test_cli_kernel_errors(tiny_model, tmp_path, capsys, case, message):
    np.save(tmp_path / "even.npy", np.ones((4, 4)))
    np.save(tmp_path / "ok.npy", np.ones((3, 3)))
    extra = {"even": ["--kernel", str(tmp_path / "even.npy")],
             "missing": ["--kernel", str(tmp_path / "none.npy")],
             "not_blur": ["--kernel", str(tmp_path / "ok.npy")],
             "flip_alone": ["--kernel-as-dps"]}[case]
    rc = _restore(tiny_model, tmp_path, *extra, task="sr4" if case == "not_blur" else "deblur_motion")
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
