"""The divergence guard: a blown-up trajectory stops with the option to lower; normal runs never trip it."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import pytest
import torch

import cmidps.sampling as sampling
from cmidps.cmi import CMIConfig
from cmidps.data import load_heldout
from cmidps.diffusion import Schedule
from cmidps.models.loading import load_prior
from cmidps.restore import measure, restore


@pytest.fixture(scope="module")
def prior():
    return load_prior("bundled:mnist32")


@pytest.fixture(scope="module")
def digits():
    return load_heldout()[0][::5][:2]


def test_a_huge_eta_stops_naming_eta(prior, digits):
    op, y = measure(digits, "sr4", seed=0)
    # with the difference CMI gradient (the default) the first huge step overflows at once: non-finite
    with pytest.raises(sampling.SamplingDiverged, match=r"(blew up .*|became non-finite) at step \d+ of 12 .*--eta"):
        restore(prior, op, y, "cmi+dps", steps=12, cmi=CMIConfig(eta=1e6), progress=False)


def test_a_huge_zeta_stops_naming_the_step_size(prior, digits):
    op, y = measure(digits, "inpaint_random", seed=0)
    with pytest.raises(sampling.SamplingDiverged, match=r"--zeta"):
        restore(prior, op, y, "dps", steps=12, params={"zeta": 1e7}, progress=False)


@pytest.mark.parametrize("task", ["inpaint_random", "deblur_motion"])  # all five, 100 steps: docs (demo runs)
def test_default_runs_stay_far_inside_the_bound(prior, digits, task, monkeypatch):
    seen = []
    orig = sampling.trajectory_ratio

    def recording(x, c, radius):
        r = orig(x, c, radius)
        seen.append(float(r.max()))
        return r

    monkeypatch.setattr(sampling, "trajectory_ratio", recording)
    op, y = measure(digits, task, seed=1)
    for method in ("dps", "cmi+dps"):
        restore(prior, op, y, method, steps=10, seed=1, progress=False)
    assert len(seen) == 20
    assert max(seen) < sampling.DivergenceGuard.factor / 3, max(seen)


def test_the_ratio_is_one_for_samples_of_the_schedule():
    """x_{t-1} drawn exactly as the forward process does, for data of RMS 1, has ratio ~1."""
    sched = Schedule.linear().respace(10)
    g = torch.Generator().manual_seed(0)
    x0 = torch.sign(torch.randn(4, 3, 64, 64, generator=g))  # RMS exactly 1
    for c in sched.reverse():
        x = c.abar_prev**0.5 * x0 + (1 - c.abar_prev) ** 0.5 * torch.randn(x0.shape, generator=g)
        r = sampling.trajectory_ratio(x, c, 1.0)
        assert ((r - 1).abs() < 0.05).all(), (c.i, r)
