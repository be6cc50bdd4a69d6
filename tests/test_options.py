"""Every option validated up front (issue 16, sections 2 and 4): a bad value of any option of any command
is one ``error:`` line and exit code 2, with no traceback, before any work, and nothing written; every
``--help`` renders; the per-method step sizes reach the sampler."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import argparse
import hashlib
import json
import shutil

import pytest

from cmidps.cli import build_parser, main
from cmidps.commands import options as opt
from conftest import assert_one_error_line


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model, digit_png):
    """Inputs a command may read: the tiny model, a digit, and broken copies of the model."""
    root = tmp_path_factory.mktemp("inputs")
    shutil.copytree(tiny_model, root / "tiny")
    shutil.copy(digit_png, root / "digit.png")
    (root / "data").mkdir()
    shutil.copy(digit_png, root / "data" / "img0.png")
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, root / "nan_model")
    state = load_file(str(root / "nan_model" / "model.safetensors"))
    state[next(iter(state))][...] = float("nan")
    save_file(state, str(root / "nan_model" / "model.safetensors"))
    for name, edit in (("unknown_key", lambda c: c["create_model"].update(bogus=1)),
                       ("zero_steps", lambda c: c.update(schedule={"num_train_steps": 0}))):
        shutil.copytree(tiny_model, root / name)
        cfg = json.loads((root / name / "config.json").read_text())
        edit(cfg)
        (root / name / "config.json").write_text(json.dumps(cfg))
    (root / "kwargs.json").write_text(json.dumps({"image_size": 16, "bogus": 3}))
    for name in ("diffusers_no_weights", "diffusers_bad_weights"):  # a diffusers folder, broken
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 16,
                                                             "in_channels": 1, "out_channels": 1}))
        (root / name / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "linear"}))
    (root / "diffusers_bad_weights" / "diffusion_pytorch_model.bin").write_bytes(b"not weights")
    (root / "bad_json").mkdir()
    (root / "bad_json" / "config.json").write_text('{"_class_name": "UNet2DModel", broken')
    return root


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def restore(*extra, model="{tiny}"):
    return ["restore", "--image", "{digit}", "--task", "sr4", "--model", model, "--steps", "2", "--quiet",
            "--out", "{out}/r.png", *extra]


def demo(*extra):
    return ["demo", "--out", "{out}/demo", "--steps", "2", "--images", "1", "--quiet", *extra]


def train(*extra):
    return ["train", "--data", "heldout", "--out", "{out}/train", "--steps", "2", "--no-progress", *extra]


def gmm(*extra):
    return ["bench", "gmm", "--dim", "4", "--meas", "2", "--seeds", "0", "--steps", "2", "--samples", "8",
            "--ref-samples", "8", "--directions", "4", "--methods", "dps", "--json", "{out}/g.json", "--no-progress",
            *extra]


def speed(*extra):
    return ["bench", "speed", "--model", "{tiny}", "--repeats", "1", "--timed-steps", "1", "--image-batches", "",
            "--methods", "dps", "--estimators", "lowrank", "--probes", "1", "--json", "{out}/s.json", "--quiet", *extra]


def images(*extra):
    return ["bench", "images", "--data", "{data}", "--model", "{tiny}", "--tasks", "sr4", "--methods", "dps",
            "--steps", "2", "--metrics", "psnr", "--out", "{out}/bench", "--quiet", *extra]


# id: (argv, the option or message the error line must name). Parse-time and run-time checks alike.
CASES = {
    # demo
    "demo_images_0": (demo("--images", "0"), r"--images"),
    "demo_images_50_of_20": (demo("--images", "50"), r"--images 50: 20 held-out digits"),
    "demo_steps_0": (demo("--steps", "0"), r"--steps"),
    "demo_steps_5000": (demo("--steps", "5000"), r"--steps 5000: the model's schedule has 1000"),
    "demo_eta_nan": (demo("--eta", "nan"), r"--eta"),
    "demo_probes_1e9": (demo("--probes", "1e9"), r"--probes"),
    "demo_probes_huge": (demo("--probes", "1000000000"), r"--probes: .*<= 1000"),
    "demo_cg_iters_0": (demo("--cg-iters", "0"), r"--cg-iters"),
    "demo_step_negative": (demo("--step", "dps=-1"), r"--step: dps.zeta"),
    "demo_step_other_method": (demo("--step", "mcg=1"), r"--step mcg=.*not a method of this run"),
    # train
    "train_steps_0": (train("--steps", "0"), r"--steps"),
    "train_steps_negative": (train("--steps", "-5"), r"--steps"),
    "train_batch_0": (train("--batch", "0"), r"--batch"),
    "train_log_every_0": (train("--log-every", "0"), r"--log-every"),
    "train_ckpt_every_0": (train("--ckpt-every", "0"), r"--ckpt-every"),
    "train_eval_every_0": (train("--eval-every", "0"), r"--eval-every"),
    "train_eval_n_0": (train("--eval-n", "0"), r"--eval-n"),
    "train_lr_1e30": (train("--lr", "1e30"), r"--lr"),
    "train_lr_0": (train("--lr", "0"), r"--lr"),
    "train_lr_nan": (train("--lr", "nan"), r"--lr"),
    "train_grad_clip_nan": (train("--grad-clip", "nan"), r"--grad-clip"),
    "train_grad_clip_negative": (train("--grad-clip", "-1"), r"--grad-clip"),
    "train_ema_2": (train("--ema", "2"), r"--ema"),
    "train_ema_nan": (train("--ema", "nan"), r"--ema"),
    "train_ema_1": (train("--ema", "1"), r"--ema"),
    "train_warmup_negative": (train("--warmup", "-10"), r"--warmup"),
    "train_time_limit_negative": (train("--time-limit", "-1"), r"--time-limit"),
    "train_dropout_1": (train("--dropout", "1"), r"--dropout"),
    "train_weight_decay_negative": (train("--weight-decay", "-1"), r"--weight-decay"),
    "train_channel_mult_empty_item": (train("--channel-mult", "1,,2"), r"--channel-mult"),
    "train_num_head_channels_0": (train("--num-head-channels", "0"), r"--num-head-channels"),
    # bench gmm
    "gmm_dim_0": (gmm("--dim", "0"), r"--dim"),
    "gmm_meas_0": (gmm("--meas", "0"), r"--meas"),
    "gmm_meas_above_dim": (gmm("--meas", "9"), r"--meas 9 > --dim 4"),
    "gmm_samples_0": (gmm("--samples", "0"), r"--samples"),
    "gmm_directions_0": (gmm("--directions", "0"), r"--directions"),
    "gmm_steps_0": (gmm("--steps", "0"), r"--steps"),
    "gmm_steps_5000": (gmm("--steps", "5000"), r"--steps"),
    "gmm_probes_1e9": (gmm("--probes", "1e9"), r"--probes"),
    "gmm_cg_iters_0": (gmm("--cg-iters", "0"), r"--cg-iters"),
    "gmm_interval_dsg_0": (gmm("--interval-dsg", "0"), r"--interval-dsg"),
    "gmm_seeds_duplicate": (gmm("--seeds", "0", "0"), r"--seeds: lists 0 more than once"),
    "gmm_tune_seeds_duplicate": (gmm("--tune-seeds", "5", "5"), r"--tune-seeds"),
    "gmm_tune_seeds_overlap": (gmm("--tune-seeds", "0"), r"--tune-seeds must be disjoint"),
    "gmm_methods_empty": (gmm("--methods", ""), r"--methods"),
    "gmm_methods_empty_item": (gmm("--methods", "dps,,mcg"), r"--methods: has an empty item"),
    "gmm_methods_unknown": (gmm("--methods", "dps,foo"), r"--methods: unknown method 'foo'; valid .*cmi\+dps"),
    "gmm_methods_case_duplicate": (gmm("--methods", "DPS,dps"), r"--methods: lists dps more than once"),
    "gmm_eta_nan": (gmm("--eta", "nan"), r"--eta"),
    "gmm_eta_negative": (gmm("--eta", "-1"), r"--eta"),
    "gmm_eta_dps_inf": (gmm("--eta-dps", "inf"), r"--eta-dps"),
    "gmm_zeta_dps_nan": (gmm("--zeta-dps", "nan"), r"--zeta-dps"),
    "gmm_grid_nan": (gmm("--grid-dps", "1,nan"), r"--grid-dps"),
    "gmm_grid_negative": (gmm("--grid-mcg", "-1"), r"--grid-mcg"),
    "gmm_eta_grid_empty": (gmm("--eta-grid", ""), r"--eta-grid"),
    # bench speed
    "speed_repeats_0": (speed("--repeats", "0"), r"--repeats"),
    "speed_batch_0": (speed("--batch", "0"), r"--batch"),
    "speed_steps_0": (speed("--steps", "0"), r"--steps"),
    "speed_timed_steps_0": (speed("--timed-steps", "0"), r"--timed-steps"),
    "speed_methods_cmi": (speed("--methods", "dps,cmi+dps"), r"--methods: takes base methods only"),
    "speed_methods_unknown": (speed("--methods", "foo"), r"--methods: unknown method 'foo'"),
    "speed_probes_huge": (speed("--probes", "1,1000000000"), r"--probes"),
    "speed_estimators_unknown": (speed("--estimators", "foo"), r"--estimators"),
    "speed_image_sizes_0": (speed("--image-sizes", "0"), r"--image-sizes"),
    "speed_task_unknown": (speed("--task", "denoise"), r"--task: invalid choice"),
    "speed_steps_list_0": (speed("--steps-list", "0"), r"--steps-list"),
    # bench images
    "images_steps_0": (images("--steps", "0"), r"--steps"),
    "images_batch_0": (images("--batch", "0"), r"--batch"),
    "images_limit_0": (images("--limit", "0"), r"--limit"),
    "images_seeds_duplicate": (images("--seeds", "1", "1"), r"--seeds"),
    "images_methods_empty": (images("--methods", ""), r"--methods"),
    "images_methods_unknown": (images("--methods", "foo"), r"--methods: unknown method 'foo'"),
    "images_methods_case_duplicate": (images("--methods", "Dps,dps"), r"--methods: lists dps more than once"),
    "images_methods_cmi_driver": (images("--methods", "cmi+daps"), r"--methods: 'cmi\+daps' is not offered"),
    "images_tasks_duplicate": (images("--tasks", "sr4,SR4"), r"--tasks: lists sr4 more than once"),
    "images_metrics_unknown": (images("--metrics", "psnr,bogus"), r"--metrics: unknown metric 'bogus'"),
    "images_sigma_y_negative": (images("--sigma-y", "-1"), r"--sigma-y"),
    "images_zeta_nan": (images("--zeta", "nan"), r"--zeta"),
    "images_eta_inf": (images("--eta", "inf"), r"--eta"),
    "images_probes_1e9": (images("--probes", "1e9"), r"--probes"),
    "images_step_unknown_method": (images("--step", "foo=1"), r"--step: unknown method 'foo'"),
    "images_step_unknown_param": (images("--step", "dps.eta=1"), r"--step: dps has no parameter 'eta'"),
    "images_step_not_a_number": (images("--step", "dps=fast"), r"--step: dps.zeta"),
    "images_step_no_value": (images("--step", "dps"), r"--step: must be METHOD=VALUE"),
    "images_step_interval_0": (images("--methods", "dsg", "--step", "dsg.interval=0"), r"--step: dsg.interval"),
    "images_step_method_not_run": (images("--step", "mcg=10"), r"--step mcg=.*not a method of this run"),
    "images_weight_without_pigdm": (images("--weight", "2"), r"--weight applies to none of the methods"),
    # the CMI and measurement options shared with restore (restore's own: tests/test_bad_input.py)
    "restore_eta_negative": (restore("--cmi", "lowrank", "--eta", "-1"), r"--eta"),
    "restore_probes_1e9": (restore("--probes", "1e9"), r"--probes"),
    "restore_cg_iters_0": (restore("--cg-iters", "0"), r"--cg-iters"),
    "restore_zeta_inf": (restore("--zeta", "inf"), r"--zeta"),
    "restore_weight_nan": (restore("--weight", "nan"), r"--weight"),
    "restore_gamma_negative": (restore("--gamma", "-0.1"), r"--gamma"),
    "restore_step_nan": (restore("--step", "dps=nan"), r"--step"),
    "restore_step_of_another_method": (restore("--step", "mcg=1"), r"--step mcg=.*not a method of this run"),
    "restore_zeta_for_pigdm": (restore("--method", "pigdm", "--zeta", "2"), r"--zeta applies to none"),
    # models (cmidps/models/loading.py): one line, at load, before any sampling
    "model_nan_weights": (restore(model="{inputs}/nan_model"), r"hold NaN or infinite values"),
    "model_unknown_config_key": (restore(model="{inputs}/unknown_key"), r"unknown create_model key\(s\) 'bogus'"),
    "model_zero_train_steps": (restore(model="{inputs}/zero_steps"), r"num_train_steps must be an integer >= 1"),
    "model_config_file_unknown_key": (restore("--model-config", "{inputs}/kwargs.json",
                                              model="{inputs}/tiny/model.safetensors"), r"'bogus'"),
    "model_missing_checkpoint": (restore(model="{out}/none.pt"), r"checkpoint not found"),
    "model_diffusers_no_weights": (restore(model="{inputs}/diffusers_no_weights"), r"has no weights"),
    "model_diffusers_bad_weights": (restore(model="{inputs}/diffusers_bad_weights"), r"could not be loaded"),
    "model_config_not_json": (restore(model="{inputs}/bad_json"), r"config.json' is not valid JSON"),
}


@pytest.fixture
def no_sampling(monkeypatch):
    """These errors come before any sampling: fail the test if it starts."""
    build_parser()  # every command module imported
    import cmidps.restore as restore_mod
    import cmidps.sampling as sampling

    def refuse(*a, **k):
        raise AssertionError("sampling started before the bad value was reported")

    monkeypatch.setattr(sampling, "sample", refuse)
    monkeypatch.setattr(restore_mod, "sample", refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_value_is_one_error_line_exit_2_and_writes_nothing(case, files, tmp_path, capsys, no_sampling):
    argv, message = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    subs = {"tiny": str(files / "tiny"), "digit": str(files / "digit.png"), "data": str(files / "data"),
            "inputs": str(files), "out": str(out)}
    argv = [a.format(**subs) for a in argv]
    before = _digest(files)
    code = main(argv)
    err = capsys.readouterr().err
    assert_one_error_line(code, err, message)
    assert sorted(p.name for p in out.rglob("*")) == []
    assert _digest(files) == before


# --- the typed values themselves ---------------------------------------------------------------------
@pytest.mark.parametrize("parse, good, bad", [
    (opt.positive_int, {"1": 1, " 7 ": 7}, ["0", "-1", "1.5", "1e3", "", "x"]),
    (opt.nonneg_int, {"0": 0}, ["-1", "nan"]),
    (opt.probes_int, {"1000": 1000}, ["1001", "0"]),
    (opt.nonneg_float, {"0": 0.0, "1e-3": 1e-3}, ["-1e-9", "nan", "inf", "-inf", "x"]),
    (opt.positive_float, {"1e-9": 1e-9}, ["0", "nan"]),
    (opt.unit_interval, {"0": 0.0, "1": 1.0}, ["1.01", "-0.01"]),
    (opt.fraction, {"0": 0.0, "0.999": 0.999}, ["1", "nan"]),
    (opt.float_list(0), {"0.1, 1": [0.1, 1.0]}, ["", "1,", "1,,2", "1,nan", "-1"]),
    (opt.int_list_text(1, empty_ok=True, unique=True), {"": "", "1, 2": "1,2"}, ["1,1", "0", "1,,2"]),
    (opt.name_list(("a", "b"), "thing"), {"A,b": ["a", "b"], "all": ["a", "b"]}, ["", "a,a", "a,c", "a,"]),
    (opt.method_list(), {"DPS, cmi+MCG": ["dps", "cmi+mcg"]}, ["", "dps,DPS", "foo", "cmi+reddiff"]),
    (opt.method_list(("dps", "mcg"), cmi=False), {"Mcg": ["mcg"]}, ["cmi+dps", "pigdm"]),
])
def test_typed_values(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_a_duplicate_in_the_default_method_list_is_impossible():
    """Defaults go through the same type as the command line (argparse converts string defaults)."""
    args = build_parser().parse_args(["bench", "gmm"])
    assert isinstance(args.methods, list) and len(args.methods) == len(set(args.methods))
    args = build_parser().parse_args(["bench", "speed"])
    assert "cmi+" not in args.methods


# --- per-method step sizes ----------------------------------------------------------------------------
def test_step_overrides_per_method():
    """--zeta applies to the methods that have a zeta, --step METHOD=VALUE to one method, over --zeta."""
    args = build_parser().parse_args(["bench", "images", "--data", "d", "--out", "o", "--zeta", "0.5",
                                      "--step", "MCG=10", "--step", "dsg.interval=3", "--step", "cmi+pigdm=2"])
    assert opt.method_params(args, "dps") == {"zeta": 0.5}
    assert opt.method_params(args, "cmi+mcg") == {"zeta": 10.0}
    assert opt.method_params(args, "pigdm") == {"weight": 2.0}  # not --zeta: PiGDM has no zeta
    assert opt.method_params(args, "dsg") == {"interval": 3} and isinstance(opt.method_params(args, "dsg")["interval"], int)
    assert opt.method_params(args, "ddnm") == {}
    opt.check_step_overrides(args, ["dps", "mcg", "dsg", "pigdm"])
    with pytest.raises(ValueError, match="--step mcg"):
        opt.check_step_overrides(args, ["dps", "dsg", "pigdm"])


def test_bench_images_gives_each_method_its_own_step_size(tiny_model, files, tmp_path, monkeypatch):
    """The values reach restore(): dps gets --zeta, mcg its --step (not the shared --zeta), and the
    settings record them."""
    import cmidps.bench.images as bench

    seen = {}
    real = bench.restore

    def spy(prior, op, y, method, *a, params=None, **kw):
        seen[method] = dict(params or {})
        return real(prior, op, y, method, *a, params=params, **kw)

    monkeypatch.setattr(bench, "restore", spy)
    out = tmp_path / "b"
    assert main(["bench", "images", "--data", str(files / "data"), "--model", str(tiny_model), "--tasks", "sr4",
                 "--methods", "dps,mcg", "--steps", "2", "--metrics", "psnr", "--quiet", "--out", str(out),
                 "--zeta", "0.5", "--step", "mcg=10"]) == 0
    assert seen == {"dps": {"zeta": 0.5}, "mcg": {"zeta": 10.0}}
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["step"] == [["mcg", "zeta", 10.0]]


# --- help ---------------------------------------------------------------------------------------------
def _parsers(parser, prefix=("cmidps",)):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, prefix + (name,))


def test_every_help_renders(capsys):
    """Every command and subcommand's --help renders (a literal % in a help text would raise) and
    exits 0; the top-level description is for users."""
    found = list(_parsers(build_parser()))
    names = {" ".join(p) for p, _ in found}
    assert {"cmidps restore", "cmidps demo", "cmidps train", "cmidps bench gmm", "cmidps bench images",
            "cmidps bench speed"} <= names
    for path, parser in found:
        text = parser.format_help()
        assert text.startswith("usage: "), path
        assert main([*path[1:], "--help"]) == 0
        assert capsys.readouterr().out.startswith("usage: " + " ".join(path)), path
    top = build_parser().format_help()
    assert "examples:" in top and "import" not in top.lower()
