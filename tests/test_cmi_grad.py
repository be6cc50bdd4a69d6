"""The CMI gradient by differences of vector-Jacobian products (CMIConfig.grad fd / central) against
the autodiff reference, the network evaluations they cost, and their precision rules."""
import cmidps  # noqa: F401
from functools import partial

import pytest
import torch

from cmidps.cmi import GRADS, CMIConfig, cmi_gradient, fd_steps
from cmidps.diffusion import x0_from_eps
from cmidps.methods.samplers import make_rule
from cmidps.operators import DenseOperator, MaskOperator
from cmidps.prior import GaussianMixturePrior, NetworkPrior
from cmidps.sampling import _tweedie_at, sample

D = torch.float64
TINY = dict(image_size=8, num_channels=8, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
            num_head_channels=8, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)


def _tiny_prior(dtype=torch.float32):
    """A tiny ADM UNet (1x8x8) with every zero-initialised layer re-drawn, so J and H are not zero."""
    from cmidps.models.unet import create_model

    torch.manual_seed(0)
    net = create_model(**TINY)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.nn.Parameter) and w.ndim >= 2 and not bool(w.any()):
                w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) / w[0].numel() ** 0.5)
    net.requires_grad_(False)
    return NetworkPrior(net.to(dtype), (1, 8, 8)).to(dtype)


def _mask_op(dtype):
    mask = (torch.rand(8, 8, generator=torch.Generator().manual_seed(3)) < 0.5).to(dtype)
    return MaskOperator((1, 8, 8), mask)


def _grads(prior, dtype, rels, grad, clip=False, i=40):
    op = _mask_op(dtype)
    c = prior.schedule.respace(100).at(i)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=dtype).requires_grad_(True)
    eps, _ = prior.eps(x, c.t)
    x0 = x0_from_eps(x, eps, c)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ref = cmi_gradient(x, x0, c, op, 0.05, CMIConfig(), gen(), clip=clip)
    errs = []
    for rel in rels:
        g = cmi_gradient(x, x0, c, op, 0.05, CMIConfig(grad=grad, fd_rel=rel), gen(), clip=clip,
                         x0_fn=_tweedie_at(prior, c))
        errs.append(float((g - ref).norm() / ref.norm()))
    assert float(ref.norm()) > 0
    return errs


def test_grads_exported():
    assert GRADS == ("autodiff", "fd", "central")
    with pytest.raises(ValueError, match="unknown CMI gradient"):
        CMIConfig(grad="forward")


@pytest.mark.parametrize("grad", ["fd", "central"])
def test_difference_gradient_converges_to_autodiff_in_float64_on_a_unet(grad):
    """Float64: the error against the autodiff gradient falls as e falls over a decade (about 10x for
    the forward difference, 100x for the central one) and is small."""
    errs = _grads(_tiny_prior(D), D, [1e-3, 1e-4], grad)
    assert errs[1] < (0.2 if grad == "fd" else 0.05) * errs[0], errs
    assert errs[1] < 1e-3, errs


@pytest.mark.parametrize("grad", ["fd", "central"])
def test_difference_gradient_in_float32_with_the_default_step(grad):
    errs = _grads(_tiny_prior(torch.float32), torch.float32, [None], grad)
    assert errs[0] < 0.05, errs


def test_difference_gradient_under_the_likelihood_clamp():
    """clip=True (ClampLinearized: the probes carry the clamp's mask) agrees with autodiff too."""
    prior = _tiny_prior(D)
    errs = _grads(prior, D, [1e-5], "fd", clip=True, i=5)
    assert errs[0] < 1e-3, errs


def test_step_rule_is_per_sample():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=D)
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D)
    e = fd_steps(x, b, 1e-3)
    torch.testing.assert_close((e[:, None] * b).norm(dim=1), 1e-3 * x.norm(dim=1))


def _mixture_problem(m=2, d=8):
    prior = GaussianMixturePrior.mcgdiff(d, torch.Generator().manual_seed(0))
    op = DenseOperator(torch.randn(m, d, generator=torch.Generator().manual_seed(1), dtype=D))
    y = torch.randn(1, m, generator=torch.Generator().manual_seed(2), dtype=D)
    return prior, op, y


@pytest.mark.parametrize("method", ["dps", "pigdm", "mcg", "dsg", "ddnm", "diffpir", "tmpd", "none"])
def test_every_sampler_with_the_difference_gradient_matches_autodiff(method):
    """Float64, a small step: CMI+X with grad fd equals CMI+X with autodiff over a whole run."""
    prior, op, y = _mixture_problem()
    params = {"dps": dict(zeta=0.3), "mcg": dict(zeta=0.3), "pigdm": dict(weight=0.5)}.get(method, {})
    out = {}
    for grad in ("autodiff", "fd", "central"):
        out[grad] = sample(prior, op, y, make_rule(method, **params), steps=5, sigma_y=0.5, batch=4,
                           generator=torch.Generator().manual_seed(3), cmi_generator=torch.Generator().manual_seed(4),
                           cmi=CMIConfig(eta=0.2, probes=2, grad=grad, fd_rel=1e-6), progress=False)
    torch.testing.assert_close(out["fd"], out["autodiff"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["central"], out["autodiff"], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("grad,probes,batch_probes,per_step", [
    ("autodiff", 1, False, 1), ("fd", 1, False, 2), ("fd", 3, False, 4), ("central", 1, False, 3),
    ("central", 2, False, 5), ("fd", 3, True, 2), ("central", 2, True, 2)])
@pytest.mark.parametrize("method", ["dps", "dsg", "ddnm"])
def test_network_evaluations_per_step(method, grad, probes, batch_probes, per_step):
    """Without CMI: one evaluation per step; with it: fd one more per probe, central two more per
    probe (autodiff none); batch_probes runs all the shifted points as one batch."""
    prior, op, y = _mixture_problem()
    kw = dict(steps=5, sigma_y=0.5, batch=3, generator=torch.Generator().manual_seed(0), progress=False)
    sample(prior, op, y, make_rule(method), **kw)
    assert prior.nfe == 5
    prior.nfe = 0
    sample(prior, op, y, make_rule(method), cmi=CMIConfig(eta=0.1, grad=grad, probes=probes, batch_probes=batch_probes),
           cmi_generator=torch.Generator().manual_seed(1), **kw)
    assert prior.nfe == 5 * per_step


def test_batched_probes_equal_the_loop():
    prior, op, y = _mixture_problem()
    run = lambda bp: sample(prior, op, y, make_rule("dps", zeta=0.3), steps=6, sigma_y=0.5, batch=3,  # noqa: E731
                            generator=torch.Generator().manual_seed(0), cmi_generator=torch.Generator().manual_seed(1),
                            cmi=CMIConfig(eta=0.2, probes=3, grad="fd", batch_probes=bp), progress=False)
    torch.testing.assert_close(run(True), run(False))


def test_the_graph_is_freed_by_guided_and_later_use_is_refused():
    prior, op, y = _mixture_problem()

    def rule(s):
        out = s.guided(s.residual_norm_grad_x0(), -0.3)
        with pytest.raises(RuntimeError, match="freed by guided"):
            s.vjp(torch.ones_like(s.x0_lik))
        return out

    sample(prior, op, y, rule, steps=2, sigma_y=0.5, batch=2, generator=torch.Generator().manual_seed(0),
           cmi=CMIConfig(eta=0.1, grad="fd"), cmi_generator=torch.Generator().manual_seed(1), progress=False)


class _AutocastSpy:
    """Wraps a prior and records, per network evaluation, the input dtype and whether autocast is on."""

    def __init__(self, prior):
        self.prior, self.seen = prior, []

    def __getattr__(self, name):
        return getattr(self.prior, name)

    def eps(self, x, t):
        self.seen.append(torch.is_autocast_enabled("cpu") if hasattr(torch, "is_autocast_enabled") else None)
        return self.prior.eps(x, t)


def test_bf16_refuses_fd_and_runs_central_passes_in_float32():
    prior = _tiny_prior(torch.float32)
    op = _mask_op(torch.float32)
    y = torch.zeros(1, 1, 8, 8)
    kw = dict(steps=2, batch=1, generator=torch.Generator().manual_seed(0), progress=False, amp=torch.bfloat16,
              cmi_generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="--cmi-grad central"):
        sample(prior, op, y, make_rule("dps"), cmi=CMIConfig(grad="fd"), **kw)
    spy = _AutocastSpy(prior)
    x = sample(spy, op, y, partial(make_rule("dps")), cmi=CMIConfig(grad="central"), **kw)
    assert torch.isfinite(x).all()
    assert spy.seen == [True, False, False] * 2  # the step's pass under bf16, the two differenced ones in float32


def test_bench_speed_times_both_gradients_and_checks_them(tmp_path):
    import json

    from cmidps.cli import main
    from cmidps.models.loading import save_network

    prior = _tiny_prior()
    save_network(tmp_path / "m", prior.net, TINY, channels=1, image_size=8, learn_sigma=False)
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(tmp_path / "m"), "--methods", "dps", "--estimators", "lowrank",
               "--probes", "1", "--timed-steps", "1", "--repeats", "1", "--image-batches", "", "--task", "sr4",
               "--cmi-grad", "fd,autodiff", "--check-grad", "--json", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    m = res["methods"]
    assert set(m) == {"dps", "cmi+dps", "cmi+dps[autodiff]"}
    assert (m["dps"]["network_evals_per_step"], m["cmi+dps"]["network_evals_per_step"],
            m["cmi+dps[autodiff]"]["network_evals_per_step"]) == (1.0, 2.0, 1.0)
    assert res["config"]["cmi_grads"] == ["fd", "autodiff"]
    assert 0 < res["grad_check"]["fd"]["default"]["0.5"] < 0.05
    assert 0 < res["grad_check"]["central"]["default"]["0.5"] < 0.05
