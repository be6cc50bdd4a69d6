"""Bad input on the command line (issue 9, section 3): one clear line, exit 2, before any sampling,
no traceback, nothing written."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import random
import shutil

import pytest
import torch
from PIL import Image

import cmidps.sampling as sampling
from cmidps.cli import main
from cmidps.models.loading import ASSETS_DIR
from conftest import assert_one_error_line

@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model, digit_png):
    """The shared tiny model and digit (tests/conftest.py), an RGB copy, random bytes, a plain file."""
    root = tmp_path_factory.mktemp("inputs")
    shutil.copytree(tiny_model, root / "tiny")
    shutil.copy(digit_png, root / "digit.png")
    Image.open(digit_png).convert("RGB").save(root / "rgb.png")
    (root / "random.pt").write_bytes(b"\x00" + random.Random(0).randbytes(2048))
    (root / "a_file").write_text("not a folder")
    return root


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if sampling starts: these errors must come before it. Every command module is
    imported first, so none binds the stand-in by ``from .sampling import sample``."""
    from cmidps.cli import build_parser

    build_parser()

    def refuse(*a, **k):
        raise AssertionError("sampling started before the bad input was reported")

    monkeypatch.setattr(sampling, "sample", refuse)
    import cmidps.restore as restore_mod

    monkeypatch.setattr(restore_mod, "sample", refuse)


def _restore(files, out, *extra, model=None):
    return ["restore", "--image", str(files / "digit.png"), "--task", "sr4", "--model", model or str(files / "tiny"),
            "--steps", "3", "--quiet", "--out", str(out), *extra]


def _written(folder):
    return sorted(p.name for p in folder.rglob("*"))


CASES = {
    # name: (argv builder(files, out_dir) -> argv, expected message regex)
    "eta_nan": (lambda f, o: _restore(f, o / "r.png", "--cmi", "lowrank", "--eta", "nan"), r"--eta"),
    "eta_inf": (lambda f, o: _restore(f, o / "r.png", "--cmi", "lowrank", "--eta", "inf"), r"--eta"),
    "sigma_y_negative": (lambda f, o: _restore(f, o / "r.png", "--sigma-y", "-1"), r"--sigma-y"),
    "zeta_nan": (lambda f, o: _restore(f, o / "r.png", "--zeta", "nan"), r"--zeta"),
    "probes_zero": (lambda f, o: _restore(f, o / "r.png", "--cmi", "lowrank", "--probes", "0"), r"--probes"),
    "steps_zero": (lambda f, o: _restore(f, o / "r.png", "--steps", "0"), r"--steps"),
    "out_is_a_directory": (lambda f, o: _restore(f, o), r"--out .*(folder|directory)"),
    "out_unknown_extension": (lambda f, o: _restore(f, o / "o.xyz"), r"--out .*extension"),
    "out_parent_is_a_file": (lambda f, o: _restore(f, f / "a_file" / "r.png"), r"--out"),
    "out_not_writable": (lambda f, o: _restore(f, "/proc/cmidps_test/r.png"), r"--out"),
    "grid_not_writable": (lambda f, o: _restore(f, o / "r.png", "--grid", "/proc/cmidps_test/g.png"), r"--grid"),
    "grid_unknown_extension": (lambda f, o: _restore(f, o / "r.png", "--grid", str(o / "g.xyz")), r"--grid .*extension"),
    "rgb_into_grey_model": (lambda f, o: ["restore", "--image", str(f / "rgb.png"), "--task", "sr4", "--model",
                                          str(f / "tiny"), "--steps", "3", "--quiet", "--out", str(o / "r.png")],
                            r"3 channels.*--to-gray"),
    "random_bytes_checkpoint": (lambda f, o: _restore(f, o / "r.png", model=str(f / "random.pt")),
                                r"not a readable checkpoint"),
    "weights_file_of_a_folder": (lambda f, o: _restore(f, o / "r.png", model=str(f / "tiny" / "model.safetensors")),
                                 r"pass the folder"),
    "cuda_without_gpu": (lambda f, o: _restore(f, o / "r.png", "--device", "cuda"), r"no CUDA device"),
    "demo_zero_images": (lambda f, o: ["demo", "--images", "0", "--out", str(o / "demo"), "--quiet"], r"--images"),
    "demo_out_not_writable": (lambda f, o: ["demo", "--out", "/proc/cmidps_test/demo", "--quiet"], r"--out"),
    "bench_eta_nan": (lambda f, o: ["bench", "images", "--data", str(f / "digit.png"), "--model", str(f / "tiny"),
                                    "--tasks", "sr4", "--methods", "cmi+dps", "--eta", "nan", "--steps", "3",
                                    "--out", str(o / "bench")], r"--eta"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, files, tmp_path, capsys, no_sampling):
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    build, message = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    before = _written(files)
    code = main(build(files, out))
    err = capsys.readouterr().err
    assert_one_error_line(code, err, message)
    assert _written(out) == [], _written(out)
    assert _written(files) == before


def test_rgb_is_converted_only_when_asked(files, tmp_path):
    out = tmp_path / "r.png"
    code = main(["restore", "--image", str(files / "rgb.png"), "--task", "sr4", "--model", str(files / "tiny"),
                 "--steps", "2", "--quiet", "--out", str(out), "--to-gray"])
    assert code == 0 and out.is_file()


def test_a_failed_run_leaves_no_temporary_file(files, tmp_path, capsys):
    """A run that diverges after the checks writes nothing, not even NAME.tmp."""
    code = main(_restore(files, tmp_path / "r.png", "--zeta", "1e12", "--steps", "8"))  # blows up at step 4 of 8
    assert code == 2
    assert "--zeta" in capsys.readouterr().err
    assert _written(tmp_path) == []


def test_ctrl_c_during_restore_has_its_own_message(files, tmp_path, capsys, monkeypatch):
    import cmidps.restore as restore_mod

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_mod, "sample", interrupt)
    code = main(_restore(files, tmp_path / "r.png"))
    err = capsys.readouterr().err
    assert code == 130
    assert "bench" not in err and "restore" in err, err
    assert _written(tmp_path) == []


def test_bundled_weights_path_suggests_the_folder(files, tmp_path, capsys, no_sampling):
    code = main(_restore(files, tmp_path / "r.png", model=str(ASSETS_DIR / "mnist32" / "model.safetensors")))
    assert code == 2
    assert "pass the folder" in capsys.readouterr().err
