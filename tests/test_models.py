"""Tests for cmidps.models: the ADM UNet, checkpoint loading, the diffusers adapter (CPU, tiny configs)."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import pytest
import torch

from cmidps.models.unet import create_model

TINY = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), attention_resolutions="8",
            num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)


def _randomize(model, std=0.05, seed=0):
    """Give the zero-initialised layers (ADM zeroes each branch's last conv) random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if p.ndim == 1 and p.abs().sum() == p.numel() else 0.0))
    return model


def _double_backward(net, x, t):
    """grad_x <grad_x <net(x, t), v>, w>: finite and nonzero when second derivatives exist."""
    x = x.clone().requires_grad_(True)
    out = net(x, t)
    v = torch.randn_like(out)
    w = torch.randn_like(x)
    (g,) = torch.autograd.grad((out * v).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * w).sum(), x)
    return out, gg


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_adm_unet_shapes(learn_sigma):
    net = create_model(**{**TINY, "learn_sigma": learn_sigma})
    out = net(torch.randn(2, 1, 32, 32), torch.tensor([0, 999]))
    assert out.shape == (2, 2 if learn_sigma else 1, 32, 32)


def test_adm_unet_double_backward():
    torch.manual_seed(0)
    net = _randomize(create_model(**TINY))
    _, gg = _double_backward(net, torch.randn(2, 1, 32, 32), torch.tensor([10, 500]))
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
