"""Loading errors a user meets on the command line: each one line, saying what to pass instead."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import json
import random

import pytest
import torch

from cmidps.models.loading import ASSETS_DIR, CheckpointError, load_prior, save_network
from cmidps.models.unet import create_model
from conftest import randomize_zero_init

TINY = dict(image_size=16, num_channels=16, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            num_head_channels=8, in_channels=1, learn_sigma=False)


def test_random_bytes_are_not_a_readable_checkpoint(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x00" + random.Random(0).randbytes(4096))  # seeded; not zip, pickle or safetensors
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_prior(str(bad))


def test_the_bundled_weights_file_suggests_its_folder():
    weights = ASSETS_DIR / "mnist32" / "model.safetensors"
    with pytest.raises(CheckpointError, match=r"pass the folder instead .*mnist32"):
        load_prior(str(weights))


def test_a_safetensors_file_loads_with_a_json_model_config(tmp_path):
    torch.manual_seed(0)
    net = randomize_zero_init(create_model(**TINY)).eval()  # a non-zero output, so the comparison can fail
    folder = save_network(tmp_path / "m", net, TINY, channels=1, image_size=16, learn_sigma=False)
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="--model-config"):
        load_prior(str(alone))
    cfg = tmp_path / "arch.json"
    cfg.write_text(json.dumps(TINY))
    prior = load_prior(str(alone), model_config=str(cfg))
    assert prior.shape == (1, 16, 16)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 500])
    with torch.no_grad():
        loaded, original = prior.net(x, t), net(x, t)
        other = randomize_zero_init(create_model(**TINY), seed=1)(x, t)  # other weights: another output
    assert original.abs().mean() > 0.05 and not torch.allclose(other, original, atol=1e-3)
    torch.testing.assert_close(loaded, original)
    # the folder's own config.json (with its create_model entry) works as --model-config too
    assert load_prior(str(alone), model_config=str(folder / "config.json")).shape == (1, 16, 16)


def test_a_missing_model_config_file_is_named(tmp_path):
    net = create_model(**TINY)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ValueError, match="--model-config 'nope.json' is neither"):
        load_prior(str(path), model_config="nope.json")
