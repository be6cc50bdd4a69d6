"""run.sh's choice of torch build and scripts/gpu_check.sh, as far as a machine without a GPU can check
them: syntax, the choice with a stand-in nvidia-smi, the override, and gpu_check's refusal without CUDA."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["run.sh", "scripts/gpu_check.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def _choose(tmp_path, smi: str | None, force: str | None = None) -> str:
    """run.sh's choose_torch with a stand-in nvidia-smi on PATH (or none)."""
    text = (ROOT / "run.sh").read_text()
    func = re.search(r"^choose_torch\(\) \{.*?^\}", text, flags=re.S | re.M).group(0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    if force:
        env["CMIDPS_TORCH"] = force
    return subprocess.run(["bash", "-c", f"{func}\nchoose_torch"], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_run_sh_picks_cuda_only_when_nvidia_smi_lists_a_gpu(tmp_path):
    assert _choose(tmp_path, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"').startswith("cuda (nvidia-smi lists a GPU")
    assert _choose(tmp_path, "echo 'NVIDIA-SMI has failed'; exit 9").startswith("cpu (no NVIDIA GPU")
    assert _choose(tmp_path, None).startswith("cpu")
    assert _choose(tmp_path, 'echo "GPU 0: x"', force="cpu") == "cpu (CMIDPS_TORCH=cpu)"
    assert _choose(tmp_path, None, force="cuda") == "cuda (CMIDPS_TORCH=cuda)"
    assert _choose(tmp_path, None, force="tpu") == "bad"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda(tmp_path):
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                         text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert res.returncode == 2 and "torch sees no CUDA device" in res.stderr
