"""The Gaussian-mixture benchmark: sliced Wasserstein, the fast prior, the problem, a tiny CLI run."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import json
import math

import pytest
import torch

from cmidps.bench import gmm
from cmidps.cli import build_parser
from cmidps.prior import GaussianMixturePrior

D = torch.float64


def test_sw2_of_a_set_to_itself_is_zero():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0), dtype=D)
    assert gmm.sliced_wasserstein(x, x, 200) == 0.0
    assert gmm.sliced_wasserstein(x, x[torch.randperm(300)], 200) == pytest.approx(0.0, abs=1e-12)


def test_sw2_in_one_dimension_is_the_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 1, generator=g, dtype=D)
    # the same samples shifted: W2 is exactly the shift
    assert gmm.sliced_wasserstein(x, x + 1.5, 10) == pytest.approx(1.5, rel=1e-12)
    # independent draws of N(0, 1) and N(1.5, 1): close to 1.5
    z = torch.randn(2000, 1, generator=g, dtype=D) + 1.5
    assert gmm.sliced_wasserstein(x, z, 10) == pytest.approx(1.5, abs=0.1)


def test_sw2_of_a_shift_in_d_dimensions():
    """SW2^2 = E[<theta, c>^2] = |c|^2 / d for a shift c and uniform directions."""
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(2), dtype=D)
    c = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=D)
    assert gmm.sliced_wasserstein(x, x + c, 20000) == pytest.approx(5.0 / 2.0, rel=0.02)


def test_sw2_with_unequal_sizes_is_exact():
    """Two copies of a set against one copy: the same empirical measure, distance 0; and a shift."""
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(3), dtype=D)
    assert gmm.sliced_wasserstein(torch.cat([x, x]), x, 50) == pytest.approx(0.0, abs=1e-12)
    a = torch.tensor([[0.0], [1.0]], dtype=D)
    b = torch.tensor([[0.0], [0.0], [3.0]], dtype=D)
    # quantiles: a = 0 on (0, 1/2], 1 on (1/2, 1]; b = 0 on (0, 2/3], 3 on (2/3, 1]
    expected = (1 / 6) * 1.0 + (1 / 3) * 4.0
    assert gmm.sliced_wasserstein(a, b, 3) == pytest.approx(math.sqrt(expected), rel=1e-12)


def test_fast_prior_score_matches_the_general_one():
    fast = GaussianMixturePrior.mcgdiff(6, torch.Generator().manual_seed(0))  # identity covariances
    base = GaussianMixturePrior(fast.weights, fast.means, fast.cov.clone())  # the general path
    x = 10 * torch.randn(9, 6, generator=torch.Generator().manual_seed(1), dtype=D)
    for t in (0, 300, 999):
        torch.testing.assert_close(fast.eps(x, t)[0], base.eps(x, t)[0], rtol=1e-10, atol=1e-10)


def test_problem_follows_the_recipe():
    p = gmm.draw_problem(8, 3, seed=5)
    s = torch.linalg.svdvals(p.A)
    assert p.A.shape == (3, 8) and (s <= 1).all() and (s > 0).all()
    assert 0 < p.sigma_y <= float(s.max())
    q = gmm.draw_problem(8, 3, seed=5)
    assert torch.equal(p.A, q.A) and torch.equal(p.y, q.y)  # deterministic in the seed
    assert p.posterior.weights.sum() == pytest.approx(1.0)


def _parse(argv):
    return build_parser().parse_args(argv)


def test_tiny_run_writes_valid_json(tmp_path, capsys):
    out = tmp_path / "gmm.json"
    args = _parse(["bench", "gmm", "--dim", "8", "--meas", "2", "--seeds", "0", "1", "--steps", "8",
                   "--samples", "200", "--ref-samples", "200", "--directions", "100", "--json", str(out),
                   "--no-progress"])
    args.func(args)
    data = json.loads(out.read_text())
    assert set(data) == {"config", "results", "floor"}
    assert data["config"]["dim"] == 8 and data["config"]["meas"] == 2 and data["config"]["steps"] == 8
    assert data["config"]["methods"] == list(gmm.METHODS)
    assert len(data["results"]) == 2 * len(gmm.METHODS)
    for r in data["results"]:
        assert set(r) >= {"method", "seed", "sw2", "seconds"}
        assert math.isfinite(r["sw2"]) and r["sw2"] > 0 and math.isfinite(r["seconds"])
    assert [f["seed"] for f in data["floor"]] == [0, 1]
    # the floor is SW2 between two exact posterior sets of --ref-samples over --directions directions
    theta = gmm.random_directions(8, 100, 0)
    for f in data["floor"]:
        ref, other = gmm.references(gmm.draw_problem(8, 2, f["seed"]), 200)
        assert f["sw2"] == pytest.approx(gmm.sliced_wasserstein(other, ref, theta), rel=1e-12)
    sw2 = {(r["method"], r["seed"]): r["sw2"] for r in data["results"]}
    assert all(sw2[("cmi+dps", s)] != sw2[("dps", s)] for s in (0, 1))  # CMI acts on the same noise
    table = capsys.readouterr().out
    assert "floor" in table and "cmi+dps vs dps" in table


def test_tuning_picks_from_the_grids(tmp_path):
    args = _parse(["bench", "gmm", "--dim", "4", "--meas", "1", "--seeds", "0", "--steps", "5",
                   "--methods", "dps,cmi+dps", "--samples", "50", "--ref-samples", "50", "--directions", "20",
                   "--tune-seeds", "100", "--grid-dps", "0.3,1", "--eta-grid", "0.01,0.1", "--no-progress"])
    data = args.func(args)
    t = data["config"]["tuning"]
    assert t["chosen_step"]["dps"] in (0.3, 1.0) and t["chosen_eta"]["dps"] in (0.01, 0.1)
    assert data["config"]["step"]["dps"] == t["chosen_step"]["dps"]
    assert data["config"]["eta"]["dps"] == t["chosen_eta"]["dps"]


def test_overlapping_tuning_seeds_are_rejected():
    args = _parse(["bench", "gmm", "--seeds", "0", "1", "--tune-seeds", "1", "--no-progress"])
    with pytest.raises(ValueError, match="disjoint"):
        args.func(args)
