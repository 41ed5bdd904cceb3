"""Weight loading from the formats users have, and the clear errors for bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from reference import randomize_

from jaxvedit.models.config import UnsupportedConfigError
from jaxvedit.models.loading import load_unet, load_vae
from jaxvedit.models.unet import UNetConfig
from jaxvedit.models.weights import WeightLoadError

TINY_UNET = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                 attention_head_dim=2)
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    randomize_(UNet2DConditionModel(**TINY_UNET)).save_pretrained(root / "unet")
    randomize_(AutoencoderKL(**TINY_VAE)).save_pretrained(root / "vae")
    return root


def _copy_component(src, dst):
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_folder_and_bare_component_folder_load(model_dir):
    unet = load_unet(model_dir)
    bare = load_unet(model_dir / "unet")  # a component folder passed directly
    vae = load_vae(model_dir)
    assert unet.config.block_out_channels == (16, 32)
    assert bare.config == unet.config
    assert vae.config.block_out_channels == (8, 16)


def test_sharded_weights_load(model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    ref = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    ref.save_pretrained(tmp_path / "unet", max_shard_size="20KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    a, b = load_unet(model_dir), load_unet(tmp_path)
    np.testing.assert_array_equal(np.asarray(a.conv_in.kernel.value), np.asarray(b.conv_in.kernel.value))


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="model path not found: /no/such/model"):
        load_unet("/no/such/model")


def test_missing_component(model_dir, tmp_path):
    _copy_component(model_dir / "unet", tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match=r"has no vae/ component .*\['unet'\]"):
        load_vae(tmp_path)


def test_missing_config_json(model_dir, tmp_path):
    comp = _copy_component(model_dir / "unet", tmp_path / "unet")
    (comp / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_unet(tmp_path)


def test_missing_weight_file(model_dir, tmp_path):
    comp = _copy_component(model_dir / "unet", tmp_path / "unet")
    (comp / "diffusion_pytorch_model.safetensors").unlink()
    (comp / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"no weights in .*diffusion_pytorch_model.bin"):
        load_unet(tmp_path)


def _edit_weights(model_dir, tmp_path, edit):
    comp = _copy_component(model_dir / "unet", tmp_path / "unet")
    path = comp / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_wrong_shape_weight_is_named(model_dir, tmp_path):
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"

    def edit(state):
        state[key] = np.zeros((16, 12), np.float32)

    _edit_weights(model_dir, tmp_path, edit)
    with pytest.raises(WeightLoadError, match=rf"wrong shape: {key}: file has \(16, 12\), UNet expects \(16, 16\)"):
        load_unet(tmp_path)


def test_missing_weight_is_named(model_dir, tmp_path):
    _edit_weights(model_dir, tmp_path, lambda s: s.pop("mid_block.resnets.1.conv2.bias"))
    with pytest.raises(WeightLoadError, match=r"1 missing weight\(s\): mid_block.resnets.1.conv2.bias"):
        load_unet(tmp_path)


def test_unexpected_weight_is_named(model_dir, tmp_path):
    _edit_weights(model_dir, tmp_path, lambda s: s.update({"extra.head.weight": np.ones(3, np.float32)}))
    with pytest.raises(WeightLoadError, match=r"unexpected weight\(s\) in the file: extra.head.weight"):
        load_unet(tmp_path)


def test_corrupt_weight_file(model_dir, tmp_path):
    comp = _copy_component(model_dir / "unet", tmp_path / "unet")
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(WeightLoadError, match="cannot read .*diffusion_pytorch_model.safetensors"):
        load_unet(tmp_path)


def _write_config(model_dir, tmp_path, **changes):
    comp = _copy_component(model_dir / "unet", tmp_path / "unet")
    cfg = json.loads((comp / "config.json").read_text())
    cfg.update(changes)
    (comp / "config.json").write_text(json.dumps(cfg))


def test_unsupported_block_type(model_dir, tmp_path):
    _write_config(model_dir, tmp_path,
                  down_block_types=["SimpleCrossAttnDownBlock2D", "DownBlock2D"])
    with pytest.raises(ValueError, match="unsupported down block type 'SimpleCrossAttnDownBlock2D'"):
        load_unet(tmp_path)


def test_unsupported_config_value_and_unknown_key():
    with pytest.raises(UnsupportedConfigError, match="'resnet_time_scale_shift'='scale_shift'"):
        UNetConfig.from_dict({**TINY_UNET, "resnet_time_scale_shift": "scale_shift"})
    with pytest.raises(UnsupportedConfigError, match="unknown key 'no_such_option'"):
        UNetConfig.from_dict({**TINY_UNET, "no_such_option": 3})
    with pytest.raises(ValueError, match="unsupported mid block type 'UNetMidBlock2DSimpleCrossAttn'"):
        UNetConfig.from_dict({**TINY_UNET, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"})


def test_hub_repo_id_offline_and_uncached_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="'nobody/no-such-model'.*Hugging Face repo id"):
        load_unet("nobody/no-such-model")


def test_hub_repo_id_resolves_through_the_hub_cache(model_dir, tmp_path, monkeypatch):
    """A repo id is resolved through huggingface_hub's cache layout (offline here)."""
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    _copy_component(model_dir / "unet", snap / "unet")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    unet = load_unet("someone/tiny-sd")
    ref = load_unet(model_dir)
    np.testing.assert_array_equal(np.asarray(unet.conv_out.kernel.value), np.asarray(ref.conv_out.kernel.value))
