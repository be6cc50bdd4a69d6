"""The VP schedule: respacing, posterior coefficients, learned-range variance, against diffusers."""
import cmidps  # noqa: F401
import math

import pytest
import torch

from cmidps.diffusion import Schedule, learned_log_variance, space_timesteps, x0_from_eps


def test_linear_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    s = Schedule.linear()
    torch.testing.assert_close(s.abar.float(), ref.alphas_cumprod.float(), rtol=1e-5, atol=1e-7)
    # the "small" posterior variance of step t (diffusers computes in float32, hence rtol 1e-3)
    for t in (1, 10, 500, 999):
        torch.testing.assert_close(float(s.posterior_var[t]), float(ref._get_variance(t)), rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("n", [1, 10, 50, 1000])
def test_respacing_keeps_the_kept_abar(n):
    full = Schedule.linear()
    s = full.respace(n)
    assert len(s) == n and s.timesteps[-1] == (999 if n > 1 else 0)  # guided-diffusion keeps step 0 for N = 1
    torch.testing.assert_close(s.abar, full.abar[s.timesteps])
    assert float(s.abar_prev[0]) == 1.0
    assert ((s.betas > 0) & (s.betas < 1)).all()
    torch.testing.assert_close(torch.cumprod(1 - s.betas, 0), s.abar)


def test_posterior_mean_of_a_noise_free_x_t_is_sqrt_abar_prev_x0():
    s = Schedule.linear().respace(25)
    x0 = torch.randn(4, dtype=torch.float64)
    for i in range(len(s)):
        c = s.at(i)
        mean = c.coef_xt * c.abar**0.5 * x0 + c.coef_x0 * x0
        torch.testing.assert_close(mean, c.abar_prev**0.5 * x0)


def test_tweedie_inverts_q_sample():
    s = Schedule.linear().respace(10)
    x0, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    c = s.at(6)
    torch.testing.assert_close(x0_from_eps(s.q_sample(x0, 6, eps), eps, c), x0, rtol=1e-4, atol=1e-4)


def test_learned_range_variance_interpolates_between_bounds():
    c = Schedule.linear().respace(100).at(40)
    lo = learned_log_variance(-torch.ones(1), c)
    hi = learned_log_variance(torch.ones(1), c)
    assert math.isclose(float(lo), c.posterior_log_var_clipped, rel_tol=1e-5)
    assert math.isclose(float(hi), math.log(c.beta), rel_tol=1e-5)


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError):
        Schedule.linear().respace(0)
    with pytest.raises(ValueError):
        Schedule(torch.tensor([0.5, 1.5]))


def _guided_diffusion_kept(num_train, n):
    """guided-diffusion's space_timesteps(num_train, [n]), re-derived as plainly as possible: a float
    index advanced by the fractional stride, rounded (Python's round, half to even) at each kept step."""
    stride = 1 if n <= 1 else (num_train - 1) / (n - 1)
    kept, idx = [], 0.0
    while len(kept) < n:
        kept.append(int(round(idx)))
        idx = idx + stride
    return sorted(set(kept))


def test_respacing_matches_guided_diffusion_for_every_step_count():
    full = Schedule.linear()
    differ_from_plain_rounding = 0
    for n in range(1, 1001):
        expected = _guided_diffusion_kept(1000, n)
        assert len(expected) == n
        assert full.respace(n).timesteps == expected, n
        assert space_timesteps(1000, n) == expected, n
        plain = [999] if n == 1 else [round(k * 999 / (n - 1)) for k in range(n)]
        differ_from_plain_rounding += plain != expected
    # Measured: 283 of the step counts 2..1000 differ from rounding k * stride (by one step at a tie),
    # and N = 1 (step 0, not 999): 284 in all. (The issue counted 279.)
    assert differ_from_plain_rounding == 284
    assert full.respace(1).timesteps == [0]
    assert full.respace(100).timesteps[:3] == [0, 10, 20] and full.respace(100).timesteps[-1] == 999
