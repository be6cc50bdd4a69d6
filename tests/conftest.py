"""Shared fixtures: a tiny random ADM model folder (1x16x16) and a 16x16 digit-like PNG."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import numpy as np
import pytest
import torch
from PIL import Image

TINY_16 = dict(image_size=16, num_channels=8, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
               num_head_channels=8, use_scale_shift_norm=True, resblock_updown=True, in_channels=1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A cmidps model folder with random weights (seed 0) of the 1x16x16 architecture ``TINY_16``."""
    from cmidps.models.loading import save_network
    from cmidps.models.unet import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    save_network(folder, create_model(**TINY_16), TINY_16, channels=1, image_size=16, learn_sigma=False)
    return folder


@pytest.fixture(scope="session")
def digit_png(tmp_path_factory):
    """A 16x16 greyscale PNG with a vertical stroke."""
    path = tmp_path_factory.mktemp("img") / "digit.png"
    arr = np.zeros((16, 16), np.uint8)
    arr[3:13, 7:9] = 255
    Image.fromarray(arr, "L").save(path)
    return path
