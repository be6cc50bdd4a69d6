"""scripts/tune_solvers.py's grid search (the step sizes of docs/solvers.md's image table): a winning edge
is extended, a low edge that still wins is scored against the end of the parameter's domain, a grid where
everything blew up says so, and two processes tuning into one JSON lose nothing. Synthetic scores: no
network runs here."""
import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
TUNE = runpy.run_path(str(ROOT / "scripts" / "tune_solvers.py"), run_name="tune_solvers")


def _search(f, grid=(1.0, 10.0, 100.0), boundary=None, extend=3, extend_low=2, **kw):
    tuner = object.__new__(TUNE["Tuner"])
    tuner.a = SimpleNamespace(extend=extend, extend_low=extend_low)
    calls = []

    def scored(v):
        calls.append(v)
        return f(v)

    best, scores, edge = tuner.search(list(grid), scored, boundary=boundary, **kw)
    return best, scores, edge, calls


def test_an_interior_best_is_kept_and_nothing_else_runs():
    best, scores, edge, calls = _search(lambda v: -abs(math.log10(v) - 1))
    assert (best, edge) == (10.0, None)
    assert sorted(calls) == [1.0, 10.0, 100.0]


def test_a_winning_high_edge_is_extended_until_it_is_inside():
    best, scores, edge, calls = _search(lambda v: -abs(math.log10(v) - 3))  # peak at 1000
    assert (best, edge) == (1000.0, None)
    assert max(scores) == 10000.0  # one more point above the best


def test_extension_stops_at_its_limit_and_says_edge():
    best, scores, edge, _ = _search(lambda v: v, extend=1)  # increasing: the upper edge always wins
    assert (best, edge) == (1000.0, "high")


def test_a_low_edge_is_compared_with_the_domain_end_which_wins_only_by_more_than_the_tie():
    decreasing = lambda v: -v  # noqa: E731  (the smaller the better, down to 0)
    best, scores, edge, calls = _search(decreasing, boundary=0.0)
    assert calls[-1] == 0.0 and min(scores) == 0.0
    assert best == 0.01 and edge is None  # 0 scores 0.01 more: a tie, so it brackets 0.01 from below

    best, _, edge, _ = _search(lambda v: -100 * v, boundary=0.0)  # 0 better by 1 dB
    assert (best, edge) == (0.0, "boundary")

    best, _, edge, _ = _search(lambda v: -abs(v - 0.02), boundary=0.0)  # optimum between 0 and 0.01
    assert (best, edge) == (0.01, None)


def test_without_a_boundary_a_low_edge_stays_an_edge():
    best, _, edge, _ = _search(lambda v: -v)
    assert (best, edge) == (0.01, "low")


def test_per_method_lower_extension():
    best, scores, edge, _ = _search(lambda v: -v, extend_low=4)
    assert best == 1e-4 and edge == "low" and len(scores) == 7


def test_a_grid_where_everything_blew_up_says_so_and_is_not_extended():
    best, scores, edge, calls = _search(lambda v: -math.inf, boundary=0.0)
    assert edge == "all diverged"
    assert sorted(calls) == [1.0, 10.0, 100.0]


def test_two_tuning_processes_share_one_json(tmp_path):
    path = tmp_path / "tuning.json"
    a, b = (object.__new__(TUNE["Tuner"]) for _ in range(2))
    for t, m in ((a, "tmpd"), (b, "cmi+dsg")):
        t.path = path
        t.out = {"config": {"steps": 20}, "scores": {m: {"sr4": {"1": 20.0}}}, "params": {m: {"sr4": {"w": 1}}},
                 "chosen": {m: {"sr4": {"value": 1, "edge": "low"}}}}
        t.mine = {("scores", m), ("params", m), ("chosen", m)}
    a.save()
    b.out["chosen"]["tmpd"] = {"sr4": {"value": 1, "edge": "low"}}  # b's stale copy of a's entry
    b.save()  # b never read a's results: a's must survive
    a.out["scores"]["tmpd"]["sr4"]["3"] = 21.0
    a.out["chosen"]["tmpd"]["sr4"] = {"value": 3, "edge": None}  # a re-tunes
    a.save()
    b.save()  # b's stale copy must not undo it
    out = json.loads(path.read_text())
    assert out["scores"] == {"tmpd": {"sr4": {"1": 20.0, "3": 21.0}}, "cmi+dsg": {"sr4": {"1": 20.0}}}
    assert set(out["params"]) == {"tmpd", "cmi+dsg"}
    assert out["chosen"]["tmpd"]["sr4"] == {"value": 3, "edge": None}


def test_cmi_scores_for_another_x_step_size_are_dropped_not_merged_back(tmp_path, monkeypatch):
    """cmi+X's cached eta scores hold for X's step size at the time: asked with another one, the tuner
    starts afresh for that task, and saving does not bring the old scores back from the file."""
    path = tmp_path / "tuning.json"
    t = object.__new__(TUNE["Tuner"])
    t.path, t.mine = path, set()
    t.a = SimpleNamespace(seed=0, steps=2, cmi_grad="fd")
    t.out = {"config": {}, "scores": {}, "params": {}, "chosen": {}}
    runs = []
    g = TUNE["Tuner"].score.__globals__  # the script's module globals: no network, a counter for PSNR
    monkeypatch.setitem(g, "measure", lambda x, task, seed: (None, None))
    monkeypatch.setitem(g, "restore", lambda *a, params, cmi, **k: runs.append((params["zeta"], cmi.eta)))
    monkeypatch.setitem(g, "psnr", lambda r, x: __import__("torch").tensor([float(len(runs))]))
    t.x = t.prior = None
    for eta in (1e-4, 1e-3):
        t.score("cmi+dps", "sr4", {"zeta": 4.0}, eta=eta)
    assert len(runs) == 2
    t.score("cmi+dps", "sr4", {"zeta": 4.0}, eta=1e-4)  # cached
    assert len(runs) == 2
    t.score("cmi+dps", "sr4", {"zeta": 8.0}, eta=1e-3)  # X changed: runs again
    assert len(runs) == 3
    t.score("cmi+dps", "sr4", {"zeta": 8.0}, eta=1e-4)  # and the old 1e-4 score is not reused
    assert len(runs) == 4
    cache = json.loads(path.read_text())["scores"]["cmi+dps@eta"]["sr4"]
    assert set(cache) == {"_base", "0.0001", "0.001"} and json.loads(cache["_base"]) == {"zeta": 8.0}
