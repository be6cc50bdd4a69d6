"""Theorem 1, second-order Tweedie, and the CMI gradient (Theorem 2) against exact values."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import math

import pytest
import torch

from cmidps.cmi import CMIConfig, cmi_gradient, mutual_information, mutual_information_paper, sigma_post_dense
from cmidps.diffusion import Schedule, x0_from_eps
from cmidps.operators import DenseOperator
from cmidps.prior import GaussianMixturePrior

D = torch.float64


def _spd(d, g, scale=1.0):
    q = torch.randn(d, d, generator=g, dtype=D)
    return scale * (q @ q.T / d + 0.3 * torch.eye(d, dtype=D))


def _x0_fn(prior, c):
    return lambda x: x0_from_eps(x, prior.eps(x, c.t)[0], c)


@pytest.fixture
def step():
    return Schedule.linear().respace(50).at(30)


def test_second_order_tweedie_is_exact_for_a_gaussian(step):
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixturePrior(torch.ones(1, dtype=D), torch.randn(1, 4, generator=g, dtype=D), _spd(4, g)[None])
    x = torch.randn(3, 4, generator=g, dtype=D)
    sp = sigma_post_dense(x, _x0_fn(prior, step), step)
    exact = prior.x0_given_xt_cov(x, step.abar)
    torch.testing.assert_close(sp, exact.expand_as(sp), atol=1e-10, rtol=1e-9)


def test_theorem1_both_forms_equal_the_entropy_difference(step):
    g = torch.Generator().manual_seed(1)
    d, m = 5, 3
    prior = GaussianMixturePrior(torch.ones(1, dtype=D), torch.zeros(1, d, dtype=D), _spd(d, g)[None])
    A = torch.randn(m, d, generator=g, dtype=D)
    sigma_n = _spd(m, g, 0.2)
    x = torch.randn(1, d, generator=g, dtype=D)
    p = sigma_post_dense(x, _x0_fn(prior, step), step)[0]
    # h(x0 | x_t) - h(x0 | x_t, y) from the joint Gaussian of (x0, y) given x_t (Schur complement).
    s_y = A @ p @ A.T + sigma_n
    cond = p - p @ A.T @ torch.linalg.solve(s_y, A @ p)
    h = lambda cov: 0.5 * torch.logdet(2 * math.pi * math.e * cov)  # noqa: E731
    entropy_diff = h(p) - h(cond)
    torch.testing.assert_close(mutual_information(p, A, sigma_n), entropy_diff, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(mutual_information_paper(p, A, sigma_n), entropy_diff, atol=1e-8, rtol=1e-8)
    assert entropy_diff > 0.1  # a non-trivial case


def _mixture(d=4, k=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=D)
    cov = torch.stack([_spd(d, g, 0.5) for _ in range(k)])
    return GaussianMixturePrior(torch.rand(k, generator=g, dtype=D) + 0.2, means, cov)


def _problem(d=4, m=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    prior = _mixture(d)
    op = DenseOperator(torch.randn(m, d, generator=g, dtype=D))
    x = 1.5 * torch.randn(1, d, generator=g, dtype=D)
    return prior, op, x, 0.3


def _cmi_value(prior, op, x, sigma_y, c):
    p = sigma_post_dense(x, _x0_fn(prior, c), c)[0]
    return mutual_information(p, op.matrix, sigma_y**2 * torch.eye(op.matrix.shape[0], dtype=D))


def _grad(prior, op, x, sigma_y, c, cfg, gen=None):
    x = x.clone().requires_grad_(True)
    x0 = _x0_fn(prior, c)(x)
    return cmi_gradient(x, x0, c, op, sigma_y, cfg, gen)


def test_cmi_gradient_matches_finite_differences(step):
    prior, op, x, sigma_y = _problem()
    exact = _grad(prior, op, x, sigma_y, step, CMIConfig(estimator="exact", kinv="cg", cg_iters=20))[0]
    h = 1e-5
    fd = torch.zeros(4, dtype=D)
    for k in range(4):
        e = torch.zeros(1, 4, dtype=D)
        e[0, k] = h
        fd[k] = (_cmi_value(prior, op, x + e, sigma_y, step) - _cmi_value(prior, op, x - e, sigma_y, step)) / (2 * h)
    assert fd.abs().max() > 1e-3  # the gradient is not trivially zero here
    torch.testing.assert_close(exact, fd, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("estimator,kinv", [("hutchinson", "cg"), ("lowrank", "cg"),
                                            ("hutchinson", "isotropic"), ("lowrank", "isotropic")])
def test_estimators_are_unbiased(step, estimator, kinv):
    """Mean over many independent probes (one per batch copy of x) equals the exact gradient."""
    prior, op, x, sigma_y = _problem()
    exact = _grad(prior, op, x, sigma_y, step, CMIConfig(estimator="exact", kinv=kinv, cg_iters=20))[0]
    n = 4000
    gen = torch.Generator().manual_seed(5)
    est = _grad(prior, op, x.expand(n, -1), sigma_y, step, CMIConfig(estimator=estimator, kinv=kinv, cg_iters=20), gen)
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    assert (est.std(0) > 0).any()  # really stochastic
    assert ((mean - exact).abs() <= 5 * se + 1e-9).all(), (mean, exact, se)


def test_isotropic_differs_from_exact_K(step):
    """The isotropic K^-1 is an approximation: on a mixture it must give a different gradient."""
    prior, op, x, sigma_y = _problem()
    g_cg = _grad(prior, op, x, sigma_y, step, CMIConfig(estimator="exact", kinv="cg", cg_iters=20))
    g_iso = _grad(prior, op, x, sigma_y, step, CMIConfig(estimator="exact", kinv="isotropic"))
    assert not torch.allclose(g_cg, g_iso, rtol=1e-3)


def test_lowrank_has_lower_variance_than_hutchinson():
    prior, op, x, sigma_y = _problem(d=16, m=2)
    c = Schedule.linear().respace(50).at(30)
    gen = torch.Generator().manual_seed(6)
    xs = x.expand(500, -1)
    var = {}
    for est in ("hutchinson", "lowrank"):
        g = _grad(prior, op, xs, sigma_y, c, CMIConfig(estimator=est, kinv="isotropic"), gen)
        var[est] = g.var(0).sum()
    assert var["lowrank"] < var["hutchinson"]


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="estimator"):
        CMIConfig(estimator="magic")
    with pytest.raises(ValueError, match="K\\^-1"):
        CMIConfig(kinv="svd")


# --- the frozen-convolution path of the UNet (cmidps.models.layers._FrozenConv) ----------------------
def _tiny_unet():
    from cmidps.models.unet import create_model

    torch.manual_seed(0)
    net = create_model(image_size=16, num_channels=16, num_res_blocks=1, channel_mult="1,2",
                       attention_resolutions="8", num_head_channels=8, use_scale_shift_norm=True,
                       resblock_updown=True, learn_sigma=True).to(D)
    with torch.no_grad():  # zero-initialised layers get weights, so every path carries gradient
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _cmi_like_gradient(net, x, a, b, v):
    """grad_x [<J^T a, b> + <x0, v>] by the double vjp, with x0 = the network's first 3 channels."""
    x = x.clone().requires_grad_(True)
    x0 = net(x, torch.tensor([300]))[:, :3]
    (jt_a,) = torch.autograd.grad(x0, x, a, create_graph=True)
    (g,) = torch.autograd.grad((jt_a * b).sum() + (x0 * v).sum(), x)
    return x0.detach(), jt_a.detach(), g


def test_frozen_conv_path_matches_torch_convolutions():
    """Frozen weights take the transposed-convolution backward: same forward bit for bit, same first
    and second derivatives (to rounding) as torch's own convolution (trainable weights), strided
    convolutions and the attention's Conv1d included."""
    net = _tiny_unet()
    g = torch.Generator().manual_seed(0)
    x, a, b, v = (torch.randn(2, 3, 16, 16, generator=g, dtype=D) for _ in range(4))
    net.requires_grad_(False)
    frozen = _cmi_like_gradient(net, x, a, b, v)
    net.requires_grad_(True)
    native = _cmi_like_gradient(net, x, a, b, v)
    assert torch.equal(frozen[0], native[0])
    for f, n in zip(frozen[1:], native[1:]):
        assert n.abs().max() > 1e-3
        torch.testing.assert_close(f, n, rtol=1e-10, atol=1e-12)


def test_frozen_conv_runs_fewer_convolutions_per_double_backward():
    """A double backward through a frozen convolution: the frozen path runs fewer convolution-sized ops
    than torch's own (which also runs a weight-gradient-shaped one for weights that need no gradient;
    2 against 3 with torch 2.13; the exact counts depend on the torch version, the ordering does not)."""
    from cmidps.models.unet import Conv2d

    conv = Conv2d(4, 4, 3, stride=2, padding=1).to(D).requires_grad_(False)
    x = torch.randn(1, 4, 9, 9, dtype=D, requires_grad=True)

    def count():
        y = torch.nn.functional.silu(conv(x))
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        with torch.profiler.profile() as prof:
            torch.autograd.grad(gx.sum(), x)
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::convolution", "aten::convolution_backward"))

    frozen = count()
    conv.requires_grad_(True)
    native = count()
    assert 1 <= frozen < native, (frozen, native)


# --- mixed precision: the network in bfloat16, the CMI probes and K^-1 in float32 -----------------
def _bf16_problem():
    from cmidps.operators import make_operator
    from cmidps.prior import NetworkPrior

    net = _tiny_unet().float().requires_grad_(False)
    prior = NetworkPrior(net, (3, 16, 16), learn_sigma=True)
    op = make_operator("sr4", (3, 16, 16), torch.Generator().manual_seed(0), preset="small")
    return prior, op


def test_bf16_network_keeps_the_cmi_estimator_variance():
    """With the network under bf16 autocast, each probe's CMI gradient moves by a few percent (bf16
    rounding, about 4% here), far below the estimator's own probe-to-probe spread (about its norm):
    the variance is unchanged to 5% and the shift of the mean is under 1% of the variance."""
    prior, op = _bf16_problem()
    c = prior.schedule.respace(50).at(25)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def grad(amp, seed):
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            eps, _ = prior.eps(xx, c.t)
        x0 = x0_from_eps(xx, eps.float(), c)
        return cmi_gradient(xx, x0, c, op, 0.05, CMIConfig(), torch.Generator().manual_seed(seed))

    g32 = torch.stack([grad(False, s) for s in range(20)]).flatten(1)
    g16 = torch.stack([grad(True, s) for s in range(20)]).flatten(1)
    rel = (g16 - g32).norm(dim=1) / g32.norm(dim=1)
    assert 1e-4 < rel.max() < 0.1  # bf16 really ran, and moved each probe by little
    spread = (g32 - g32.mean(0)).norm(dim=1) / g32.norm(dim=1)
    assert rel.median() < 0.2 * spread.median()
    v32, v16 = g32.var(0).sum(), g16.var(0).sum()
    assert abs(v16 / v32 - 1) < 0.05
    assert ((g16.mean(0) - g32.mean(0)) ** 2).sum() < 0.01 * v32


def test_sample_with_bf16_network_runs_and_stays_close():
    from cmidps.methods.samplers import make_rule
    from cmidps.sampling import sample

    prior, op = _bf16_problem()
    y = op.A(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    out = {}
    for amp in (None, torch.bfloat16):
        out[amp] = sample(prior, op, y, make_rule("dps", zeta=0.3), 4, torch.Generator().manual_seed(0),
                          cmi=CMIConfig(eta=1e-3, grad="autodiff"), cmi_generator=torch.Generator().manual_seed(1),
                          progress=False, amp=amp)
    assert out[torch.bfloat16].dtype == torch.float32 and torch.isfinite(out[torch.bfloat16]).all()
    diff = (out[torch.bfloat16] - out[None]).norm() / out[None].norm()
    assert 0 < diff < 0.1
