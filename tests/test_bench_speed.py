"""The speed benchmark runs, writes its schema, and counts one network evaluation per step."""
import cmidps  # noqa: F401
import json

import torch

from cmidps.cli import main
from cmidps.cmi import CMIConfig
from cmidps.models.loading import save_network
from cmidps.models.unet import create_model
from conftest import randomize_zero_init

TINY = dict(image_size=16, num_channels=8, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            num_head_channels=8, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)


def cmi_evals(key: str) -> float:
    """Network evaluations per step of a bench speed entry under the default CMI gradient."""
    if not key.startswith("cmi+"):
        return 1.0
    r = int(key.split("r=")[1].rstrip("]")) if "r=" in key else 1
    return 1.0 + {"autodiff": 0, "fd": 1, "central": 2}[CMIConfig.grad] * r


def test_bench_speed_schema_and_network_evaluations(tmp_path):
    torch.manual_seed(0)
    save_network(tmp_path / "m", randomize_zero_init(create_model(**TINY)), TINY, channels=1, image_size=16, learn_sigma=False)
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(tmp_path / "m"), "--methods", "dps", "--probes", "1,2",
               "--timed-steps", "2", "--repeats", "1", "--image-batches", "1,2", "--json", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["network_fwd_bwd_ms"] > 0
    assert set(res["methods"]) == {"dps", "cmi+dps", "cmi+dps[lowrank,r=2]", "cmi+dps[hutchinson,r=1]",
                                   "cmi+dps[hutchinson,r=2]"}
    for key, entry in res["methods"].items():
        assert entry["ms_per_step"] > 0
        # one network evaluation per step without CMI; the CMI gradient by differences adds one per probe
        # (fd; two for central), autodiff none (it adds backward passes only)
        assert entry["network_evals_per_step"] == cmi_evals(key), key
    assert set(res["images_per_second"]["cmi+dps"]) == {"1", "2"}


def test_bench_speed_phases_auto_device_and_bf16(tmp_path):
    torch.manual_seed(0)
    save_network(tmp_path / "m", randomize_zero_init(create_model(**TINY)), TINY, channels=1, image_size=16, learn_sigma=False)
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(tmp_path / "m"), "--methods", "dps", "--estimators", "lowrank",
               "--probes", "1", "--timed-steps", "1", "--repeats", "1", "--image-batches", "", "--phases",
               "--device", "auto", "--amp", "bf16", "--cmi-grad", "central", "--json", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert res["config"]["amp"] == "bfloat16"
    assert set(res["phases"]) == {"dps_forward", "dps_backward", "cmi_forward", "cmi_objective_vjp",
                                  "cmi_fused_backward"}
    assert all(v["ms"] > 0 and v["cpu_ms"] >= 0 for v in res["phases"].values())
    assert res["methods"]["cmi+dps"]["cpu_ratio_to_baseline"] > 0
    assert res["images_per_second"] == {}
    assert res["methods"]["dps"]["network_evals_per_step"] == 1.0
    assert res["methods"]["cmi+dps"]["network_evals_per_step"] == 3.0  # central: x and x +- e b
