"""Parity with the DPS code (DPS2022/diffusion-posterior-sampling): cmidps's DPS and MCG updates
against a plain re-implementation of the DPS code's step, written here from its behaviour, on a tiny
random ADM UNet with learned-range variance, 20 respaced steps and the same noise.

The DPS code's step (guided_diffusion/gaussian_diffusion.py, condition_methods.py), for index
``idx`` of the respaced chain (training step ``timestep_map[idx]`` fed to the network):

    out = p_mean_variance(x)       # clip_denoised=True: pred_xstart = clamp(x0_hat, -1, 1),
                                   # mean = q_posterior_mean(pred_xstart, x), learned-range log-variance
    sample = mean + exp(0.5 log_var) noise          (no noise at idx 0)
    norm = linalg.norm(y - A(pred_xstart));  grad = d norm / d x
    x = sample - zeta grad                          (PosteriorSampling, "ps")

Everything is float64 here, so that the comparison is of the algorithm and not of float32 rounding.
"""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import math

import pytest
import torch
import torch.nn.functional as F

from cmidps.models import create_model
from cmidps.operators import MaskOperator, RandomInpainting, ReflectBlur, make_operator
from cmidps.prior import NetworkPrior, to_model
from cmidps.restore import measure
from cmidps.methods.samplers import make_rule, mcg_project
from cmidps.sampling import sample

D = torch.float64
STEPS = 20
SHAPE = (3, 16, 16)


def _randomize(model, seed=0):
    """Random weights everywhere (ADM zero-initialises the last conv of each branch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def net():
    model = create_model(image_size=16, num_channels=16, num_res_blocks=1, channel_mult=(1, 2),
                         attention_resolutions="8", num_head_channels=8, use_scale_shift_norm=True,
                         resblock_updown=True, in_channels=3, learn_sigma=True)
    return _randomize(model).to(D).eval()


# --- the DPS code's diffusion, re-derived -------------------------------------------------------
class DPSDiffusion:
    """The DPS code's SpacedDiffusion (linear betas, ``timestep_respacing=steps``), from scratch."""

    def __init__(self, steps, num_train=1000):
        betas = torch.linspace(1e-4, 0.02, num_train, dtype=D)
        ac = torch.cumprod(1 - betas, 0)
        stride = 1 if steps <= 1 else (num_train - 1) / (steps - 1)  # space_timesteps, one section
        idx, kept = 0.0, []
        for _ in range(steps):
            kept.append(round(idx))
            idx += stride
        self.timestep_map = sorted(set(kept))
        last, new_betas = 1.0, []
        for i in self.timestep_map:
            new_betas.append(1 - ac[i] / last)
            last = ac[i]
        b = torch.stack(new_betas)
        self.betas = b
        self.ac = torch.cumprod(1 - b, 0)
        self.ac_prev = torch.cat([torch.ones(1, dtype=D), self.ac[:-1]])
        self.sqrt_recip_ac = torch.sqrt(1 / self.ac)
        self.sqrt_recipm1_ac = torch.sqrt(1 / self.ac - 1)
        post_var = b * (1 - self.ac_prev) / (1 - self.ac)
        self.post_log_var_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        self.coef1 = b * torch.sqrt(self.ac_prev) / (1 - self.ac)
        self.coef2 = (1 - self.ac_prev) * torch.sqrt(1 - b) / (1 - self.ac)

    def p_mean_variance(self, net, x, idx):
        out = net(x, torch.full((x.shape[0],), self.timestep_map[idx], dtype=torch.long))
        eps, v = out[:, : x.shape[1]], out[:, x.shape[1]:]
        pred_xstart = (self.sqrt_recip_ac[idx] * x - self.sqrt_recipm1_ac[idx] * eps).clamp(-1, 1)
        mean = self.coef1[idx] * pred_xstart + self.coef2[idx] * x
        frac = (v + 1) / 2
        log_var = frac * torch.log(self.betas[idx]) + (1 - frac) * self.post_log_var_clipped[idx]
        return mean, log_var, pred_xstart


def dps_code_loop(net, A, y, zeta, generator, project=None):
    """The DPS code's p_sample_loop with PosteriorSampling (batch of one: its norm is over the whole
    batch) and, with ``project``, MCG's projection after the gradient step."""
    diff = DPSDiffusion(STEPS)
    x = torch.randn((1, *SHAPE), generator=generator, dtype=D)
    for idx in reversed(range(STEPS)):
        x = x.detach().requires_grad_(True)
        mean, log_var, pred_xstart = diff.p_mean_variance(net, x, idx)
        noise = torch.randn(x.shape, generator=generator, dtype=D)
        x_next = mean + torch.exp(0.5 * log_var) * noise if idx != 0 else mean
        norm = torch.linalg.norm(y - A(pred_xstart))
        (grad,) = torch.autograd.grad(norm, x)
        x_next = x_next - zeta * grad
        if project is not None:
            x_next = project(x_next, diff.ac_prev[idx], noise)
        x = x_next.detach()
    return x


def _prior(net):
    return NetworkPrior(net, SHAPE, learn_sigma=True, clip_x0=True)


def _image(seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, *SHAPE), generator=g, dtype=D)


def _mask_problem():
    """Random inpainting as the dps preset measures it: noise on every pixel, masked ones included."""
    op, y = measure(_image(), "inpaint_random", seed=3, preset="dps")
    assert isinstance(op, MaskOperator) and op.per_sample
    mask = op.mask[0].clone()  # (1, H, W), one image

    def A(x):
        return x * mask

    return op, y, A, mask


def _blur_problem():
    """Gaussian blur as the DPS code builds it (scipy-filtered delta, ReflectionPad2d + Conv2d), at a
    size the tiny model fits (7x7, std 1.5)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    delta = np.zeros((7, 7))
    delta[3, 3] = 1
    k = torch.from_numpy(ndimage.gaussian_filter(delta, sigma=1.5))
    weight = k.expand(3, 1, 7, 7)

    def A(x):  # Blurkernel: nn.ReflectionPad2d(3), nn.Conv2d(3, 3, 7, groups=3, bias=False)
        return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), weight, groups=3)

    op = make_operator("deblur_gauss", SHAPE, None, "dps", kernel_size=7, std=1.5)
    assert isinstance(op, ReflectBlur)
    g = torch.Generator().manual_seed(8)
    y = A(to_model(_image())) + 0.05 * torch.randn((1, *SHAPE), generator=g, dtype=D)
    return op, y, A


@pytest.mark.parametrize("zeta", [0.3, 1.0])
@pytest.mark.parametrize("task", ["inpaint_random", "deblur_gauss"])
def test_dps_matches_the_dps_code_step_by_step(net, task, zeta):
    if task == "inpaint_random":
        op, y, A, _ = _mask_problem()
    else:
        op, y, A = _blur_problem()
    ref = dps_code_loop(net, A, y, zeta, torch.Generator().manual_seed(11))
    ours = sample(_prior(net), op, y, make_rule("dps", zeta=zeta), STEPS, torch.Generator().manual_seed(11),
                  sigma_y=0.05, likelihood_clip=True, progress=False)
    err = float((ours - ref).abs().max())
    assert err < 1e-6, err
    assert float(ref.abs().max()) > 0.1  # a real trajectory, not zeros
    # Algorithm 1 literally (no clamp in the likelihood) is a different trajectory on this network.
    literal = sample(_prior(net), op, y, make_rule("dps", zeta=zeta), STEPS, torch.Generator().manual_seed(11),
                     sigma_y=0.05, likelihood_clip=False, progress=False)
    assert float((literal - ref).abs().max()) > 1e3 * max(err, 1e-12)


def test_dps_code_norm_couples_a_batch_ours_does_not(net):
    """The DPS code takes one norm over the whole batch; cmidps one per sample (never coupling
    samples). With a batch of one they coincide (the test above); per sample, each element of a batch
    of two follows the one-image trajectory."""
    op, y, A = _blur_problem()
    y2 = torch.cat([y, y.flip(-1)])
    both = sample(_prior(net), op, y2, make_rule("dps", zeta=0.5), 6, [torch.Generator().manual_seed(s) for s in (1, 2)],
                  sigma_y=0.05, progress=False)
    one = sample(_prior(net), op, y2[1:], make_rule("dps", zeta=0.5), 6, [torch.Generator().manual_seed(2)],
                 sigma_y=0.05, progress=False)
    assert float((both[1:] - one).abs().max()) < 1e-10


# --- MCG ------------------------------------------------------------------------------------------
def test_mcg_projection_for_masks_is_the_inpainting_formula():
    """For a mask, cmidps's general (I - P) x + P(noised A^+ y) is MCG's inpainting projection
    x <- (1 - m) x + m (sqrt(abar_{t-1}) y + sqrt(1 - abar_{t-1}) z)."""
    from types import SimpleNamespace

    from cmidps.diffusion import Schedule

    g = torch.Generator().manual_seed(0)
    op = RandomInpainting(SHAPE, 0.6, g)
    m = op.mask
    x, z, y = (torch.randn((2, *SHAPE), generator=g, dtype=D) for _ in range(3))
    for i in (0, 4):
        c = Schedule.linear().respace(10).at(i)
        out = mcg_project(SimpleNamespace(op=op, y=y, c=c, noise=z), x)
        ref = (1 - m) * x + m * (c.abar_prev**0.5 * y + (1 - c.abar_prev) ** 0.5 * z)
        assert float((out - ref).abs().max()) < 1e-14


def test_mcg_matches_the_dps_code_step_with_mcgs_inpainting_projection(net):
    """The DPS code's ManifoldConstraintGradient: the DPS gradient step (its ``scale``), then
    ``operator.project(x, noisy_measurement)``. For inpainting the reference projection is MCG's
    x <- (1 - m) x + m q(y), q(y) = y noised to the level of x_{t-1} (Chung et al. 2022, Eq. 15), which
    cmidps implements with the step's own noise z. Departures of the DPS code, named and not followed:
    (i) its ``project`` evaluates ``ortho_project(y_t) - forward(x)`` = (1 - m) y_t - m x (the two
    masks swapped and x negated; with it x_0 is not consistent with y); (ii) it noises y to the level of
    x_t (``q_sample(y, t)``, before the step), not of x_{t-1}; (iii) with fresh noise."""
    op, y, A, mask = _mask_problem()

    def project(x, abar_prev, noise):
        return (1 - mask) * x + mask * (abar_prev.sqrt() * y + (1 - abar_prev).sqrt() * noise)

    ref = dps_code_loop(net, A, y, 0.5, torch.Generator().manual_seed(12), project=project)
    ours = sample(_prior(net), op, y, make_rule("mcg", zeta=0.5), STEPS, torch.Generator().manual_seed(12),
                  sigma_y=0.05, likelihood_clip=True, progress=False)
    assert float((ours - ref).abs().max()) < 1e-6
    assert torch.allclose(ours * mask, y * mask, atol=1e-12)  # measurement-consistent at the end
    # (i) the DPS code's literal projection is not: A x_0 = -A x, whatever y is
    literal = (1 - mask) * y - mask * ours
    assert not torch.allclose(literal * mask, y * mask, atol=0.1)


# --- the measurement ----------------------------------------------------------------------------
def test_dps_preset_noises_every_pixel_small_only_the_kept_ones():
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0), dtype=D)
    op, y = measure(x, "inpaint_random", seed=0, preset="paper")  # 90% masked, as the figure
    residual = (y - op.A(to_model(x)))
    hidden = op.mask.expand_as(y) == 0
    assert float(residual[hidden].std()) == pytest.approx(0.05, rel=0.02)
    # the residual norm at the true image: sqrt(all entries) * 0.05 = 22.2, not sqrt(kept) * 0.05 = 7.0
    assert float(residual.norm()) == pytest.approx(0.05 * math.sqrt(3 * 256 * 256), rel=0.02)
    small_op, small_y = measure(x[..., :32, :32], "inpaint_random", seed=0, preset="small")
    assert torch.equal(small_y * (1 - small_op.mask), torch.zeros_like(small_y))


def test_dps_preset_draws_a_mask_per_image_independent_of_batching():
    x = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(1), dtype=D)
    op, y = measure(x, "inpaint_random", seed=2, preset="dps")
    fractions = [1 - float(m.mean()) for m in op.mask]
    assert len(set(fractions)) == 3 and all(0.3 <= f <= 0.7 for f in fractions)
    op1, y1 = measure(x[2:], "inpaint_random", seed=2, preset="dps", items=[2])
    assert torch.equal(op1.mask[0], op.mask[2]) and torch.equal(y1[0], y[2])
