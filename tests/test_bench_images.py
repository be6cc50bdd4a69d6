"""``cmidps bench images`` on a tiny random 16x16 network: outputs, resume, sharding, batching, errors."""
import cmidps  # noqa: F401
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cmidps.bench.images as bench
from cmidps.bench.images import BenchError, add_images_parser, load_image_set, run_images
from cmidps.data.images import ImageError
from cmidps.models.loading import save_network
from cmidps.models.unet import create_model

TINY = dict(image_size=16, num_channels=8, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            num_head_channels=8, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)
TASKS, METHODS, SEEDS, N_IMAGES = ["inpaint_random", "sr4"], ["dps", "cmi+dps"], [0, 1], 3
N_JOBS = len(TASKS) * len(METHODS) * len(SEEDS) * N_IMAGES


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    net = create_model(**TINY)
    with torch.no_grad():  # ADM zero-initialises its output layers; a non-zero eps makes CMI act
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    save_network(folder, net, TINY, channels=1, image_size=16, learn_sigma=False)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for k in range(N_IMAGES):
        arr = np.zeros((16, 16), np.uint8)
        arr[3:13, 4 + 2 * k:7 + 2 * k] = 255
        arr = np.clip(arr + rng.integers(0, 40, (16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(arr, "L").save(folder / f"img{k}.png")
    return folder


def _args(model, data, out, *extra):
    parser = argparse.ArgumentParser()
    add_images_parser(parser.add_subparsers())
    return parser.parse_args(["images", "--data", str(data), "--model", str(model), "--tasks", ",".join(TASKS),
                              "--methods", ",".join(METHODS), "--steps", "2", "--seeds", *map(str, SEEDS),
                              "--out", str(out), "--batch", "3", "--eta", "0.2", "--dtype", "float64", "--quiet", *extra])


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_job(out):
    return {(r["task"], r["method"], r["seed"], r["image"]): r for r in _lines(out / "results.jsonl")}


def _assert_same(a, b, tol=1e-6):
    assert set(a) == set(b)
    for k in a:
        for m in ("psnr", "ssim"):
            assert abs(a[k][m] - b[k][m]) <= tol, (k, m, a[k][m], b[k][m])


def _same_images(out_a, out_b):
    for p in (out_a / "images").rglob("*.png"):
        q = out_b / p.relative_to(out_a)
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q))), p


@pytest.fixture(scope="module")
def reference(tiny_model, data_dir, tmp_path_factory):
    """One uninterrupted single-process run (batch 3)."""
    out = tmp_path_factory.mktemp("ref")
    assert run_images(_args(tiny_model, data_dir, out)) == 0
    return out


def test_full_run_writes_everything(reference):
    lines = _lines(reference / "results.jsonl")
    assert len(lines) == N_JOBS
    keys = [(r["task"], r["method"], r["seed"], r["image"]) for r in lines]
    assert len(set(keys)) == N_JOBS and keys == sorted(keys)
    for r in lines:
        assert {"image", "task", "method", "seed", "steps", "psnr", "ssim", "seconds"} <= set(r)
        assert r["steps"] == 2 and np.isfinite(r["psnr"])
        assert (reference / "images" / r["task"] / r["method"] / str(r["seed"]) / f"{r['image']}.png").is_file()
    md = (reference / "table.md").read_text()
    assert "| inpaint_random | cmi+dps |" in md and "CMI+X − X" in md and "**" in md
    by = _by_job(reference)
    assert any(by[(t, "cmi+dps", s, i)]["psnr"] != by[(t, "dps", s, i)]["psnr"] for t, _, s, i in by)
    assert "## Skipped metrics" in md  # lpips/fid/kid: no weights here, each listed with its reason
    csv = (reference / "table.csv").read_text().splitlines()
    assert csv[0].startswith("row,task,method,psnr_mean,psnr_ci95,psnr_n")
    assert len(csv) == 1 + len(TASKS) * len(METHODS) + len(TASKS)  # methods + CMI differences
    assert sum(1 for row in csv if row.startswith("method,sr4,")) == 2
    grid = Image.open(reference / "grid.png")
    assert grid.size[0] > 4 * 16 and grid.size[1] > 2 * 16
    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["settings"]["steps"] == 2 and set(cfg["images"]) == {"img0", "img1", "img2"}


def _interrupted_after(n: int, tiny_model, data_dir, out) -> list:
    """A run interrupted (Ctrl-C) after its n-th finished job; returns the n job records."""
    seen = []

    def stop(rec):
        seen.append(rec)
        if len(seen) == n:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_images(_args(tiny_model, data_dir, out), on_job=stop)
    return seen


def test_resume_after_interrupt_and_torn_line(reference, tiny_model, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = _interrupted_after(5, tiny_model, data_dir, out)
    assert len(_lines(out / "results.jsonl")) == 5
    with open(out / "results.jsonl", "a") as f:  # a crash in the middle of a line
        f.write('{"image": "img2", "task": "sr4", "meth')

    restored = []
    real_restore = bench.restore

    def counting_restore(*a, **kw):
        restored.extend((kw["task"], a[3], kw["seed"], it) for it in kw["items"])
        return real_restore(*a, **kw)

    monkeypatch.setattr(bench, "restore", counting_restore)
    assert run_images(_args(tiny_model, data_dir, out)) == 0
    first = {(r["task"], r["method"], r["seed"], r["image"]) for r in seen}
    assert len(restored) == N_JOBS - 5 and len(set(restored)) == len(restored)  # nothing twice
    assert not first & set(restored)  # nothing done before is redone
    _assert_same(_by_job(out), _by_job(reference))  # nothing lost, same numbers
    assert len(_lines(out / "results.jsonl")) == N_JOBS
    restored.clear()
    assert run_images(_args(tiny_model, data_dir, out)) == 0  # all done: only the report
    assert restored == [] and (out / "table.md").is_file()


def test_report_only_writes_the_report_and_runs_no_job(tiny_model, data_dir, tmp_path, monkeypatch):
    """--report-only on an interrupted run: the report of the jobs done (marked incomplete), no restoration."""
    out = tmp_path / "run"
    seen = _interrupted_after(4, tiny_model, data_dir, out)
    (out / "table.md").unlink(missing_ok=True)
    restored = []
    real_restore = bench.restore
    monkeypatch.setattr(bench, "restore", lambda *a, **kw: restored.append(a) or real_restore(*a, **kw))
    assert run_images(_args(tiny_model, data_dir, out, "--report-only")) == 0
    assert restored == [] and len(_lines(out / "results.jsonl")) == 4
    md = (out / "table.md").read_text()
    assert f"Incomplete: {N_JOBS - 4} of {N_JOBS} jobs are not done yet" in md
    assert run_images(_args(tiny_model, data_dir, out)) == 0  # without it the missing jobs run
    assert len(restored) > 0 and len(_lines(out / "results.jsonl")) == N_JOBS


def test_batch_size_does_not_change_results(reference, tiny_model, data_dir, tmp_path):
    out = tmp_path / "b1"
    assert run_images(_args(tiny_model, data_dir, out, "--batch", "1")) == 0
    _assert_same(_by_job(out), _by_job(reference))
    _same_images(reference, out)
    assert {r["batch"] for r in _lines(out / "results.jsonl")} == {1}


def test_float32_batching_agrees_to_rounding(tiny_model, data_dir, tmp_path):
    small = ("--dtype", "float32", "--tasks", "sr4", "--methods", "cmi+dps", "--seeds", "0")
    assert run_images(_args(tiny_model, data_dir, tmp_path / "b3", *small)) == 0
    assert run_images(_args(tiny_model, data_dir, tmp_path / "b1", *small, "--batch", "1")) == 0
    a, b = _by_job(tmp_path / "b3"), _by_job(tmp_path / "b1")
    assert len(a) == N_IMAGES and set(a) == set(b)
    for k in a:  # float32 kernels may round differently for another batch size; the noise is the same
        assert a[k]["psnr"] == pytest.approx(b[k]["psnr"], rel=1e-4)


def test_manual_shards_merge_into_the_single_process_result(reference, tiny_model, data_dir, tmp_path):
    out = tmp_path / "shards"
    assert run_images(_args(tiny_model, data_dir, out, "--shard", "0/2")) == 0
    assert not (out / "table.md").exists()  # the other shard is not done yet
    assert run_images(_args(tiny_model, data_dir, out, "--shard", "1/2", "--batch", "2")) == 0
    assert (out / "table.md").is_file()  # the last shard writes the tables
    _assert_same(_by_job(out), _by_job(reference))
    # a rerun under another layout (one process) finds everything done and merges the shard files
    assert run_images(_args(tiny_model, data_dir, out)) == 0
    assert sorted(p.name for p in out.glob("results*.jsonl")) == ["results.jsonl"]
    assert len(_lines(out / "results.jsonl")) == N_JOBS


def test_torchrun_two_gloo_ranks_match_one_process(reference, tiny_model, data_dir, tmp_path):
    out = tmp_path / "ddp"
    argv = ["--data", str(data_dir), "--model", str(tiny_model), "--tasks", ",".join(TASKS), "--methods",
            ",".join(METHODS), "--steps", "2", "--seeds", *map(str, SEEDS), "--out", str(out), "--batch", "3",
            "--eta", "0.2", "--dtype", "float64", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "cmidps.bench.images", *argv], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _lines(out / "results.jsonl")
    assert {r["rank"] for r in lines} == {0, 1}  # both ranks worked
    assert sorted(p.name for p in out.glob("results*.jsonl")) == ["results.jsonl"]  # rank files merged
    _assert_same(_by_job(out), _by_job(reference))
    _same_images(reference, out)
    assert (out / "table.md").is_file() and (out / "grid.png").is_file()


def test_changed_settings_are_refused_unless_forced(reference, tiny_model, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    with pytest.raises(BenchError, match=r"different settings \(steps: 2 before, 3 now.*--force"):
        run_images(_args(tiny_model, data_dir, out, "--steps", "3"))
    assert len(_lines(out / "results.jsonl")) == N_JOBS  # untouched
    assert run_images(_args(tiny_model, data_dir, out, "--steps", "3", "--force", "--limit", "1", "--tasks", "sr4",
                            "--methods", "dps", "--seeds", "0")) == 0
    old = list(out.glob("superseded-*/results.jsonl"))
    assert len(old) == 1 and len(_lines(old[0])) == N_JOBS
    assert [r["steps"] for r in _lines(out / "results.jsonl")] == [3]


def test_wrong_size_image_is_named(tiny_model, data_dir, tmp_path, capsys):
    data = tmp_path / "mixed"
    shutil.copytree(data_dir, data)
    Image.new("L", (20, 16)).save(data / "odd.png")
    with pytest.raises(ImageError, match=r"odd\.png is 20x16, the model needs 16x16.*--resize"):
        run_images(_args(tiny_model, data, tmp_path / "out"))
    from cmidps.cli import main

    assert main(["bench", "images", "--data", str(data), "--model", str(tiny_model), "--out", str(tmp_path / "o"),
                 "--steps", "2", "--quiet"]) == 2
    assert "odd.png is 20x16" in capsys.readouterr().err
    assert load_image_set(data, (1, 16, 16), resize=True).get([3]).shape == (1, 1, 16, 16)


def test_heldout_digits_and_labels():
    s = load_image_set("heldout", (1, 32, 32), limit=4)
    assert len(s) == 4 and s.labels.tolist() == [0, 0, 1, 1] and s.ids[0] == "digit0_901"
    assert s.get([0, 3]).shape == (2, 1, 32, 32)
    with pytest.raises(BenchError, match="1x32x32"):
        load_image_set("heldout", (3, 64, 64))


def test_report_statistics():
    from cmidps.bench.report import cmi_differences, mean_ci, summarize

    mean, hw, n = mean_ci([1.0, 2.0, 3.0, 4.0])  # Student t with 3 dof: t_{0.975,3} = 3.1824
    assert (mean, n) == (2.5, 4) and hw == pytest.approx(3.1824 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-4)
    assert np.isnan(mean_ci([5.0])[1])
    recs = [{"task": "sr4", "method": m, "image": i, "seed": 0, "psnr": v}
            for m, vals in (("dps", [10.0, 12.0, 14.0]), ("cmi+dps", [11.0, 13.5, 14.5])) for i, v in enumerate(vals)]
    assert summarize(recs, ["psnr"])[("sr4", "dps")]["psnr"][0] == 12.0
    d = cmi_differences(recs, ["psnr"])[("sr4", "cmi+dps")]["psnr"]
    assert d[0] == pytest.approx(1.0) and d[2] == 3
    assert d[1] == pytest.approx(4.3027 * np.std([1.0, 1.5, 0.5], ddof=1) / np.sqrt(3), rel=1e-4)


def test_report_marks_only_testable_differences():
    """A paired difference is starred only when its t interval excludes 0 and n >= 5; below 5 pairs the
    table says "too few to test" instead, however large the difference."""
    from cmidps.bench.report import cmi_differences, markdown_tables, summarize

    def table(n, shift):
        recs = [{"task": "sr4", "method": m, "image": i, "seed": 0, "psnr": 10.0 + i % 3 + (shift + 0.01 * i if m[:4] == "cmi+" else 0)}
                for m in ("dps", "cmi+dps") for i in range(n)]
        md = markdown_tables(summarize(recs, ["psnr"]), cmi_differences(recs, ["psnr"]), ["psnr"])
        return [line for line in md.splitlines() if line.startswith("| sr4 | cmi+dps − dps |")][0]

    assert table(4, 1.0) == "| sr4 | cmi+dps − dps | +1.01 ± 0.02 (too few to test) | 4 |"
    assert table(6, 1.0) == "| sr4 | cmi+dps − dps | +1.02 ± 0.02 * | 6 |"
    assert table(6, -0.025) == "| sr4 | cmi+dps − dps | +0.00 ± 0.02 | 6 |"  # includes 0: no star


def _module_run(argv, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "cmidps.bench.images", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _small_argv(model, data, out, *extra):
    return ["--data", str(data), "--model", str(model), "--tasks", "sr4", "--methods", "dps,cmi+dps", "--steps", "2",
            "--seeds", "0", "--out", str(out), "--batch", "1", "--eta", "0.2", "--quiet", *extra]


def test_a_second_run_on_a_locked_folder_refuses_and_loses_nothing(tiny_model, data_dir, tmp_path):
    """Two real bench processes on one --out: the first is frozen (SIGSTOP) while it holds the folder;
    the second refuses with exit 2 and writes nothing; the first then finishes every job."""
    import signal
    import time

    out = tmp_path / "shared"
    first = _module_run(_small_argv(tiny_model, data_dir, out))
    deadline = time.time() + 200
    while not (out / "config.json").is_file():  # written after the lock is taken
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    try:
        before = sorted(p.name for p in out.iterdir())
        second = _module_run(_small_argv(tiny_model, data_dir, out))
        _, err = second.communicate(timeout=200)
        assert second.returncode == 2, err[-2000:]
        assert "another run is using" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == before  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=200)
    assert first.returncode == 0, err[-2000:]
    assert len(_lines(out / "results.jsonl")) == 2 * N_IMAGES  # every job of the first run is there


def test_folder_lock_kinds(tmp_path):
    from cmidps.bench.store import lock_folder

    with lock_folder(tmp_path, shared=True, tag="shard0of2"), lock_folder(tmp_path, shared=True, tag="shard1of2"):
        with pytest.raises(BenchError, match="another run is using"):  # a whole run beside shards
            with lock_folder(tmp_path):
                pass
        with pytest.raises(BenchError, match="another run is using"):  # the same shard twice
            with lock_folder(tmp_path, shared=True, tag="shard0of2"):
                pass
    with lock_folder(tmp_path):  # released
        with pytest.raises(BenchError, match="another run is using"):
            with lock_folder(tmp_path, shared=True):
                pass


@pytest.mark.parametrize("extra, message", [
    (("--steps", "2000"), r"--steps 2000: the model's schedule has 1000 steps"),
    # bad numbers (--sigma-y -1, --eta nan, ...) are refused by the parser itself: tests/test_options.py
    (("--tasks", "inpaint_box", "--preset", "paper"), r"--tasks inpaint_box: a 128x128 box .* does not fit"),
])
def test_bad_options_are_refused_before_anything_is_written(tiny_model, data_dir, tmp_path, extra, message):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=message):
        run_images(_args(tiny_model, data_dir, out, *extra))
    assert not out.exists()


def test_the_corrected_command_runs_after_a_refused_one(tiny_model, data_dir, tmp_path, capsys):
    from cmidps.cli import main

    out = tmp_path / "o"
    argv = ["bench", "images", *_small_argv(tiny_model, data_dir, out, "--limit", "1")]
    assert main([*argv, "--steps", "2000"]) == 2
    assert "--steps 2000" in capsys.readouterr().err and not out.exists()
    assert main(argv) == 0 and len(_lines(out / "results.jsonl")) == 2


def test_a_run_that_did_not_record_its_cmi_gradient_is_not_resumed_with_cmi_jobs(tmp_path):
    """Records written before bench images recorded cmi.grad (the default gradient changed from
    autodiff to fd in that time) match no gradient once the run has cmi+X jobs; without CMI jobs the
    gradient is not part of the settings, so such a run resumes."""
    import json

    from cmidps.bench.store import check_config
    from cmidps.errors import InputError

    cmi = {"eta": 0.001, "estimator": "lowrank", "probes": 1, "kinv": "isotropic", "cg_iters": 10,
           "eta_schedule": "constant"}
    (tmp_path / "config.json").write_text(json.dumps({"settings": {"steps": 5, "cmi": cmi}, "images": {}}))
    check_config(tmp_path, {"steps": 5, "cmi": dict(cmi)}, {}, {}, force=False)  # no cmi+X: resumes
    for grad in ("fd", "autodiff"):
        with pytest.raises(InputError, match="unrecorded"):
            check_config(tmp_path, {"steps": 5, "cmi": {**cmi, "grad": grad}}, {}, {}, force=False)
