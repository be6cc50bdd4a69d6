"""``cmidps bench images --params`` (step sizes per method and task, CMI's eta per cmi+X) and
``--keep-going`` (a sample that blows up is recorded, the rest of the batch kept), on a tiny network."""
import cmidps  # noqa: F401
import argparse
import json

import numpy as np
import pytest
from PIL import Image

import cmidps.bench.images as bench
from cmidps.bench.images import add_images_parser, run_images


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for k in range(3):
        arr = np.clip(rng.integers(0, 255, (16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(arr, "L").save(folder / f"img{k}.png")
    return folder


def _args(model, data, out, methods, *extra):
    parser = argparse.ArgumentParser()
    add_images_parser(parser.add_subparsers())
    return parser.parse_args(["images", "--data", str(data), "--model", str(model), "--tasks", "sr4,inpaint_random",
                              "--methods", methods, "--steps", "2", "--seeds", "0", "--out", str(out), "--batch", "3",
                              "--metrics", "psnr,ssim", "--quiet", *extra])


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_params_table_sets_step_sizes_per_method_and_task(tiny_model, data_dir, tmp_path):
    table = {"params": {"dps": {"sr4": {"zeta": 0.7}, "*": {"zeta": 0.2}}, "cmi+dps": {"*": {"eta": 0.05}}}}
    (tmp_path / "p.json").write_text(json.dumps(table))
    args = _args(tiny_model, data_dir, tmp_path / "out", "dps,cmi+dps", "--params", str(tmp_path / "p.json"))
    bench._check_options(args)
    cmi = bench.cmi_config(args)
    assert bench._job_params(args, "dps", "sr4", cmi)[0] == {"zeta": 0.7}
    assert bench._job_params(args, "dps", "inpaint_random", cmi)[0] == {"zeta": 0.2}
    params, c = bench._job_params(args, "cmi+dps", "sr4", cmi)
    assert params == {"zeta": 0.7} and c.eta == 0.05 and cmi.eta != 0.05
    assert run_images(args) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["settings"]["param_table"] == table["params"]  # a rerun with another table is refused


@pytest.mark.parametrize("entry, message", [
    ({"tmpd": {"*": {"cov": "bogus"}}}, r"tmpd\.cov must be one of cg, rowsum, not 'bogus'"),
    ({"tmpd": {"*": {"weight": "abc"}}}, r"tmpd\.weight must be a finite number"),
    ({"dps": {"sr4": {"zeta": -1}}}, r"dps\.zeta must be a finite number >= 0"),
    ({"dps": {"sr4": {"zeta": None}}}, r"dps\.zeta"),
    ({"dsg": {"*": {"interval": 0.5}}}, r"dsg\.interval"),
    ({"dps": {"*": {"gamma": 1}}}, r"dps has no parameter 'gamma'"),
    ({"dps": {"sr5": {"zeta": 1}}}, r"unknown task 'sr5'"),
    ({"cmi+dps": {"*": {"eta": float("nan")}}}, r"--params .*cmi\+dps"),
])
def test_params_file_values_are_checked_before_any_work(tiny_model, data_dir, tmp_path, monkeypatch, entry, message):
    """A bad value in a --params table is one error naming the file, method and value, before the
    model is loaded (as a bad --step value is)."""
    (tmp_path / "p.json").write_text(json.dumps(entry))
    monkeypatch.setattr("cmidps.models.loading.load_prior", lambda *a, **k: pytest.fail("loaded the model"))
    args = _args(tiny_model, data_dir, tmp_path / "out", ",".join(entry), "--params", str(tmp_path / "p.json"))
    with pytest.raises(ValueError, match=message):
        bench._check_options(args)
    assert not (tmp_path / "out").exists()


def test_a_named_parameter_is_taken_from_the_table_and_from_step():
    from cmidps.commands.options import param_value, step_override

    assert param_value("tmpd", "cov", "cg") == "cg" and param_value("dps", "zeta", 2) == 2.0
    assert step_override("tmpd.cov=cg") == ("tmpd", "cov", "cg")
    with pytest.raises(argparse.ArgumentTypeError, match="tmpd.cov must be one of cg, rowsum"):
        step_override("tmpd.cov=full")


def test_params_file_errors_name_the_option(tiny_model, data_dir, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"nosuch": {"*": {"zeta": 1}}}))
    args = _args(tiny_model, data_dir, tmp_path / "out", "dps", "--params", str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="nosuch"):
        bench._check_options(args)
    args = _args(tiny_model, data_dir, tmp_path / "out", "dps", "--params", str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="--params"):
        bench._check_options(args)


def test_keep_going_records_a_diverged_sample_and_keeps_the_rest(tiny_model, data_dir, tmp_path, monkeypatch):
    real = bench.restore

    def flaky(prior, op, y, method, *a, items=None, **kw):  # image img1 always blows up
        if "img1" in items:
            raise bench.SamplingDiverged("the sample blew up (test)")
        return real(prior, op, y, method, *a, items=items, **kw)

    monkeypatch.setattr(bench, "restore", flaky)
    with pytest.raises(bench.SamplingDiverged, match="dps on sr4, seed 0"):
        run_images(_args(tiny_model, data_dir, tmp_path / "stop", "dps", "--stop-on-divergence"))
    out = tmp_path / "go"
    assert run_images(_args(tiny_model, data_dir, out, "dps")) == 0  # going on is the default
    recs = _records(out)
    assert len(recs) == 6
    bad = [r for r in recs if r.get("diverged")]
    assert {r["image"] for r in bad} == {"img1"} and all(r["psnr"] is None for r in bad)
    good = [r for r in recs if not r.get("diverged")]
    assert len(good) == 4 and all(np.isfinite(r["psnr"]) for r in good)
    assert not (out / "images" / "sr4" / "dps" / "0" / "img1.png").exists()
    md = (out / "table.md").read_text()  # the failures are shown in the report, not averaged
    assert "## Failures" in md and "| sr4 | dps | img1 | 0 |" in md and "2 of 6 jobs failed" in md
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0].endswith(",failed") and any(row.startswith("method,sr4,dps,") and row.endswith(",1") for row in csv)
