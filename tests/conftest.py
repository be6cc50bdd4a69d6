"""Shared fixtures: a tiny random ADM model folder (1x16x16) and a 16x16 digit-like PNG.

ADM zero-initialises the last convolution of every residual branch, the attention projections and the
output convolution (for training), so a freshly built UNet returns eps = 0 for every input and the CMI
gradient is exactly 0. Every test network here is passed through :func:`randomize_zero_init`, which
re-draws those layers (seeded, non-zero), so eps depends on x and t (``tests/test_fixtures.py``).

``CMIDPS_COUNT_EPS=FILE``: count the ADM UNet forward passes of the run and how many of them return a
constant output (every element equal), and write the two numbers to FILE at the end of the session.
"""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

TINY_16 = dict(image_size=16, num_channels=8, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
               num_head_channels=8, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)


def assert_one_error_line(code, err: str, message: str) -> str:
    """A refused command: exit code 2, one ``error: ...`` line on stderr (``note:`` lines aside), no
    traceback, and the line matches ``message`` (a regular expression). Returns the line."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    return lines[0]


def randomize_zero_init(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The package's :func:`cmidps.models.layers.redraw_zero_layers`, with the tests' draws in float64
    (cast to the weights' dtype). Returns ``net``."""
    from cmidps.models.layers import redraw_zero_layers

    return redraw_zero_layers(net, seed, draw_dtype=torch.float64)


def random_unet(seed: int = 0, **config) -> torch.nn.Module:
    """``create_model(**config)`` (default ``TINY_16``) with torch seeded and the zero layers re-drawn."""
    from cmidps.models.unet import create_model

    torch.manual_seed(seed)
    return randomize_zero_init(create_model(**(config or TINY_16)), seed)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A cmidps model folder with random weights (seed 0) of the 1x16x16 architecture ``TINY_16``,
    zero-initialised layers re-drawn (:func:`randomize_zero_init`): eps is not constant."""
    from cmidps.models.loading import save_network

    folder = tmp_path_factory.mktemp("tiny")
    save_network(folder, random_unet(0, **TINY_16), TINY_16, channels=1, image_size=16, learn_sigma=False)
    return folder


@pytest.fixture(scope="session")
def digit_png(tmp_path_factory):
    """A 16x16 greyscale PNG with a vertical stroke."""
    path = tmp_path_factory.mktemp("img") / "digit.png"
    arr = np.zeros((16, 16), np.uint8)
    arr[3:13, 7:9] = 255
    Image.fromarray(arr, "L").save(path)
    return path


# --- counting constant network outputs (CMIDPS_COUNT_EPS) ------------------------------------------
_COUNTS = {"forward": 0, "constant": 0, "by_test": {}}


def pytest_configure(config):
    if not os.environ.get("CMIDPS_COUNT_EPS"):
        return
    from cmidps.models.unet import UNetModel

    original = UNetModel.forward

    def counted(self, x, timesteps, *args, **kwargs):
        out = original(self, x, timesteps, *args, **kwargs)
        flat = out.detach().flatten()
        constant = bool((flat == flat[0]).all()) if flat.numel() else True
        _COUNTS["forward"] += 1
        _COUNTS["constant"] += constant
        if constant:
            name = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            _COUNTS["by_test"][name] = _COUNTS["by_test"].get(name, 0) + 1
        return out

    UNetModel.forward = counted


def pytest_unconfigure(config):
    path = os.environ.get("CMIDPS_COUNT_EPS")
    if path:
        with open(path, "w") as f:
            json.dump(_COUNTS, f, indent=1)


# --- the device the tests run on (issue 18: the same tests on CUDA when present) ----------------------
def _test_device() -> str:
    """``CMIDPS_TEST_DEVICE`` if set, else ``cuda`` when a CUDA device is present, else ``cpu``."""
    return os.environ.get("CMIDPS_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device() -> str:
    """The device to run on: cuda when present (or ``CMIDPS_TEST_DEVICE``), else cpu. Every test that
    takes it is marked ``cuda`` (``pytest -m cuda`` runs them; scripts/gpu_check.sh does on a GPU)."""
    return _test_device()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cuda)
