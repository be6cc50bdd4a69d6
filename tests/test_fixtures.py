"""Guard: the shared test networks compute something (eps depends on x and on t), so tests of the
CMI step, of batch independence and of loading cannot pass on an all-zero network."""
import cmidps  # noqa: F401

import torch

from conftest import TINY_16, random_unet
from cmidps.models.loading import load_prior
from cmidps.models.unet import create_model


def _eps_spread(prior_or_net, x, t, is_prior):
    with torch.no_grad():
        if is_prior:
            return prior_or_net.eps(x, t)[0]
        return prior_or_net(x, torch.full((x.shape[0],), t))


def test_a_fresh_adm_unet_outputs_zero():
    """Why the fixtures re-draw layers: ADM's zero-initialised output convolution gives eps = 0."""
    torch.manual_seed(0)
    net = create_model(**TINY_16).eval()
    with torch.no_grad():
        assert torch.count_nonzero(net(torch.randn(2, 1, 16, 16), torch.tensor([5, 500]))) == 0


def test_fixture_network_eps_varies_with_x_and_t(tiny_model):
    prior = load_prior(str(tiny_model))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=g)
    with torch.no_grad():
        e1 = prior.eps(x, 500)[0]
        e2 = prior.eps(x, 20)[0]
        e3 = prior.eps(torch.randn(3, 1, 16, 16, generator=g), 500)[0]
    assert e1.std() > 0.05  # not constant over pixels and samples
    assert (e1 - e1[:1]).abs().max() > 1e-2  # differs between samples of a batch
    assert (e1 - e2).abs().max() > 1e-3  # depends on t
    assert (e1 - e3).abs().max() > 1e-2  # depends on x
    # and its Jacobian is not trivial, so the CMI gradient (a second derivative) is not zero
    xx = x[:1].clone().requires_grad_(True)
    (jac_v,) = torch.autograd.grad(prior.eps(xx, 500)[0].sum(), xx, create_graph=True)
    (hvp,) = torch.autograd.grad((jac_v * torch.randn_like(xx)).sum(), xx)
    assert jac_v.abs().max() > 1e-3 and hvp.abs().max() > 0


def test_random_unet_is_seeded_and_non_zero():
    a, b, c = random_unet(0), random_unet(0), random_unet(1)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 10])
    with torch.no_grad():
        ya, yb, yc = a(x, t), b(x, t), c(x, t)
    assert torch.equal(ya, yb) and not torch.allclose(ya, yc)
    assert ya.abs().mean() > 0.05
