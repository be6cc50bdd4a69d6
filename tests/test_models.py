"""Tests for cmidps.models: the ADM UNet, checkpoint loading and the diffusers adapter.

CPU only, nothing downloaded: checkpoints are made here with random weights in the exact published
architectures. The whole file is meant to run in well under a minute on 2 cores.
"""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import json

import pytest
import torch

from cmidps.models import FFHQ_256, IMAGENET_256_UNCOND, create_model
from cmidps.models.loading import CheckpointError, load_adm_checkpoint, load_prior, save_network
from cmidps.prior import NetworkPrior

TINY = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), attention_resolutions="8",
            num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)


def _randomize(model, seed=0):
    """Random weights everywhere (ADM zero-initialises each branch's last conv and the output conv,
    which would make the network output identically zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name or name.startswith("out.0") or ".in_layers.0" in name or ".out_layers.0" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def _double_backward(net, x, t):
    """grad_x <grad_x <net(x, t), v>, w>: finite and nonzero when second derivatives exist."""
    g = torch.Generator().manual_seed(1)
    x = x.clone().requires_grad_(True)
    out = net(x, t)
    v = torch.randn(out.shape, generator=g)
    w = torch.randn(x.shape, generator=g)
    (grad,) = torch.autograd.grad((out * v).sum(), x, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * w).sum(), x)
    return out, hvp


# --- the ADM UNet ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_adm_unet_output_shapes(learn_sigma):
    net = create_model(**{**TINY, "learn_sigma": learn_sigma})
    out = net(torch.randn(2, 1, 32, 32), torch.tensor([0, 999]))
    assert out.shape == (2, 2 if learn_sigma else 1, 32, 32)
    rgb = create_model(**{**TINY, "in_channels": 3, "learn_sigma": learn_sigma, "resblock_updown": False,
                          "use_scale_shift_norm": False, "num_heads": 2, "num_head_channels": -1})
    assert rgb(torch.randn(1, 3, 32, 32), torch.tensor([5])).shape == (1, 6 if learn_sigma else 3, 32, 32)


def test_adm_unet_double_backward_and_float64():
    net = _randomize(create_model(**TINY))
    out, hvp = _double_backward(net, torch.randn(2, 1, 32, 32), torch.tensor([10, 500]))
    assert torch.isfinite(hvp).all() and hvp.abs().sum() > 0
    net64 = net.double()
    assert net64(torch.randn(1, 1, 32, 32, dtype=torch.float64), torch.tensor([3])).dtype == torch.float64


def test_adm_batch_elements_independent():
    net = _randomize(create_model(**TINY)).eval()
    x = torch.randn(3, 1, 32, 32)
    t = torch.tensor([7, 7, 7])
    with torch.no_grad():
        full = net(x, t)
        x2 = x.clone()
        x2[1:] = torch.randn(2, 1, 32, 32)
        assert torch.allclose(net(x2, t)[0], full[0], atol=1e-5)


def test_named_configs_match_published_architectures():
    """Parameter counts of the exact public architectures, built on the meta device (no memory).

    93,563,910 for DPS's FFHQ model and 552,814,086 for ADM ImageNet-256 unconditional are the counts
    reported publicly for the loaded checkpoints (the latter also equals the checkpoint's 2,211,383,297
    bytes as fp32 minus about 127 kB of container overhead)."""
    with torch.device("meta"):
        ffhq = create_model(**FFHQ_256)
        imnet = create_model(**IMAGENET_256_UNCOND)
    assert sum(p.numel() for p in ffhq.parameters()) == 93_563_910
    assert sum(p.numel() for p in imnet.parameters()) == 552_814_086
    sd = ffhq.state_dict()
    assert sd["input_blocks.0.0.weight"].shape == (128, 3, 3, 3)
    assert sd["out.2.weight"].shape == (6, 128, 3, 3)
    assert sd["time_embed.0.weight"].shape == (512, 128)
    assert sd["middle_block.1.qkv.weight"].shape == (1536, 512, 1)
    assert sd["input_blocks.2.0.emb_layers.1.weight"].shape == (256, 512)  # resblock_updown downsampler
    attn = {k.rsplit(".qkv", 1)[0] for k in sd if k.endswith("qkv.weight")}
    assert len(attn) == 1 + 1 + 2  # at 16x16: one encoder block, the middle, two decoder blocks
    assert imnet.state_dict()["middle_block.1.qkv.weight"].shape == (3072, 1024, 1)


# --- ADM checkpoints ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ffhq_checkpoint(tmp_path_factory):
    """The exact FFHQ_256 architecture with random weights, saved as DPS's plain state_dict."""
    with torch.device("meta"):
        model = create_model(**FFHQ_256)
    model = _randomize(model.to_empty(device="cpu")).eval()
    path = tmp_path_factory.mktemp("ckpt") / "ffhq_10m.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_load_ffhq_checkpoint_matches_original(ffhq_checkpoint):
    model, path = ffhq_checkpoint
    x = torch.randn(2, 3, 32, 32)  # the FFHQ net downsamples 5x: any multiple of 32 works
    with torch.no_grad():
        ref = model(x, torch.tensor([500, 500]))
    for prior in (load_adm_checkpoint(path, "ffhq"), load_prior(str(path))):  # explicit, and guessed
        assert isinstance(prior, NetworkPrior)
        assert prior.shape == (3, 256, 256) and prior.learn_sigma
        assert len(prior.schedule) == 1000
        loaded = prior.net.state_dict()
        original = model.state_dict()
        assert loaded.keys() == original.keys()
        for k, v in original.items():
            assert loaded[k].shape == v.shape and torch.equal(loaded[k], v), k
        with torch.no_grad():
            eps, var = prior.eps(x, 500)
        assert torch.equal(torch.cat([eps, var], 1), ref)
        assert ref.abs().mean() > 1e-3


def test_checkpoint_with_wrong_config_names_keys_and_suggests_the_right_one(ffhq_checkpoint):
    _, path = ffhq_checkpoint
    with pytest.raises(CheckpointError) as err:
        load_adm_checkpoint(path, "imagenet")
    msg = str(err.value)
    assert "'imagenet'" in msg and "config='ffhq'" in msg and "input_blocks" in msg


def test_checkpoint_missing_key_and_truncated_file(tmp_path):
    net = create_model(**TINY)
    state = net.state_dict()
    good = tmp_path / "tiny.pt"
    torch.save(state, good)
    prior = load_adm_checkpoint(good, config=dict(TINY))
    assert prior.shape == (1, 32, 32) and not prior.learn_sigma

    del state["middle_block.1.qkv.weight"]
    missing = tmp_path / "missing.pt"
    torch.save(state, missing)
    with pytest.raises(CheckpointError, match=r"missing keys \(e\.g\. middle_block\.1\.qkv\.weight"):
        load_adm_checkpoint(missing, config=dict(TINY))

    truncated = tmp_path / "truncated.pt"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_adm_checkpoint(truncated, config=dict(TINY))

    with pytest.raises(FileNotFoundError, match="diffusion-posterior-sampling"):
        load_prior(str(tmp_path / "ffhq_10m.pt"))
    with pytest.raises(CheckpointError, match="matches none of the named"):
        load_prior(str(good))  # not an ffhq/imagenet checkpoint and no model_config given


# --- cmidps folders, bundled models, specs ---------------------------------------------------------------
def test_network_folder_roundtrip_and_specs(tmp_path):
    net = _randomize(create_model(**{**TINY, "learn_sigma": True})).eval()
    folder = save_network(tmp_path / "m", net, {**TINY, "learn_sigma": True}, channels=1, image_size=32,
                          learn_sigma=True)
    prior = load_prior(str(folder))
    assert prior.shape == (1, 32, 32) and prior.learn_sigma
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        eps, var = prior.eps(x, 100)
        ref = net(x, torch.tensor([100, 100]))
    assert torch.allclose(torch.cat([eps, var], 1), ref, atol=1e-6)
    assert json.loads((folder / "config.json").read_text())["schedule"]["beta_end"] == 0.02

    with pytest.raises(FileNotFoundError, match="not installed"):
        load_prior("bundled:no_such_model")
    with pytest.raises(ValueError, match="accepted model specs"):
        load_prior("huggingface-model-name")


def test_bundled_mnist32_predicts_the_noise_of_pure_noise():
    """The bundled weights ship (no skip). At the noisiest step x_t is almost pure noise, so a trained
    eps-network returns about x_t itself: a value check of the loaded weights."""
    prior = load_prior("bundled:mnist32")
    assert prior.shape == (1, 32, 32)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps, _ = prior.eps(x, 999)
    assert eps.shape == (2, 1, 32, 32)
    assert float(((eps - x) ** 2).mean()) < 0.05 * float((x**2).mean())


# --- diffusers --------------------------------------------------------------------------------------------
def _tiny_diffusers_unet(out_channels=1):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=8).eval()


def test_diffusers_folder_loads_as_prior(tmp_path):
    from diffusers import DDPMScheduler

    unet = _tiny_diffusers_unet()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")

    prior = load_prior(str(tmp_path))
    assert prior.shape == (1, 16, 16) and not prior.learn_sigma
    abar = torch.cumprod(1.0 - prior.schedule.train_betas, 0)
    assert torch.allclose(abar.float(), sched.alphas_cumprod, rtol=1e-5, atol=1e-7)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        eps, var = prior.eps(x, 321)
        ref = unet(x, torch.tensor([321, 321])).sample
    assert var is None and torch.allclose(eps, ref, atol=1e-5)

    _, hvp = _double_backward(prior.net, x, torch.tensor([321, 321]))
    assert torch.isfinite(hvp).all() and hvp.abs().sum() > 0

    # v-prediction is converted to epsilon: eps = sqrt(abar) v + sqrt(1 - abar) x_t
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02,
                  prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    vprior = load_prior(str(tmp_path))
    a = torch.cumprod(1.0 - vprior.schedule.train_betas, 0)[321].float()
    with torch.no_grad():
        eps_v, _ = vprior.eps(x, 321)
    assert torch.allclose(eps_v, a.sqrt() * ref + (1 - a).sqrt() * x, atol=1e-5)


def test_diffusers_learned_range_and_beta_schedules(tmp_path):
    from diffusers import DDPMScheduler

    from cmidps.models.diffusers_adapter import betas_from_scheduler_config

    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        s = DDPMScheduler(beta_schedule=kind)
        assert torch.allclose(betas_from_scheduler_config(dict(s.config)).float(), s.betas, rtol=1e-5, atol=1e-7)

    unet = _tiny_diffusers_unet(out_channels=2)
    unet.save_pretrained(tmp_path)
    DDPMScheduler(variance_type="learned_range").save_pretrained(tmp_path)
    prior = load_prior(str(tmp_path))
    assert prior.learn_sigma
    eps, var = prior.eps(torch.randn(1, 1, 16, 16), 10)
    assert eps.shape == var.shape == (1, 1, 16, 16)
