"""Single-file ControlNets (the original ``cldm.py`` layout, ``control_model.*`` or bare) load
equal to their diffusers-folder form; the LDM layout written here is checked against diffusers'
own ``convert_controlnet_checkpoint``."""

import numpy as np
import pytest
import torch

from diffusers import ControlNetModel as TorchControlNet
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from ldm_layout import diffusers_to_ldm_controlnet
from reference import randomize_
from safetensors.numpy import save_file

from jaxvedit.models.controlnet_io import (infer_controlnet_config, ldm_controlnet_key_map,
                                           load_controlnet)
from jaxvedit.models.weights import WeightLoadError, module_to_torch_state_dict

CA, D = "CrossAttnDownBlock2D", "DownBlock2D"
TINY = dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8,
            down_block_types=(CA, CA, D), cross_attention_dim=24, attention_head_dim=8,
            transformer_layers_per_block=2, conditioning_embedding_out_channels=(8, 16, 16, 32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_single")
    ref = randomize_(TorchControlNet(**TINY).eval(), seed=7)
    ref.save_pretrained(root / "folder")
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    folder = module_to_torch_state_dict(load_controlnet(root / "folder"))
    return root, ref, sd, folder


def test_ldm_layout_is_diffusers_inverse(tiny):
    _, ref, sd, _ = tiny
    ldm = diffusers_to_ldm_controlnet(sd, TINY)
    back = convert_controlnet_checkpoint({k: torch.from_numpy(v) for k, v in ldm.items()}, dict(ref.config))
    assert set(back) == set(sd)
    for k, v in back.items():
        np.testing.assert_array_equal(v.numpy(), sd[k], err_msg=k)
    # our key map covers exactly the same keys
    pairs = ldm_controlnet_key_map(TINY)
    assert {d for d, _, _ in pairs} == set(sd)
    assert {"control_model." + l for _, l, _ in pairs} == set(ldm)


@pytest.mark.parametrize("layout", ["control_model", "bare", "full_checkpoint"])
def test_single_file_loads_equal_to_folder(tiny, layout):
    root, _, sd, folder = tiny
    ldm = diffusers_to_ldm_controlnet(sd, TINY, prefix="" if layout == "bare" else "control_model.")
    if layout == "full_checkpoint":  # ControlNet v1.0 files also carry the SD1.5 model
        ldm["model.diffusion_model.time_embed.0.weight"] = np.zeros((4, 4), np.float32)
        ldm["first_stage_model.encoder.conv_in.weight"] = np.zeros((4, 3, 3, 3), np.float32)
    path = root / f"{layout}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in ldm.items()}, str(path))
    cfg = infer_controlnet_config(ldm)
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                "transformer_layers_per_block", "conditioning_embedding_out_channels",
                "conditioning_channels", "in_channels"):
        want = TINY.get(key, {"conditioning_channels": 3, "in_channels": 4}.get(key))
        assert list(np.atleast_1d(cfg[key])) == list(np.atleast_1d(want)), key
    single = module_to_torch_state_dict(load_controlnet(path, config={**TINY}))
    assert set(single) == set(folder)
    for k in folder:
        np.testing.assert_array_equal(single[k], folder[k], err_msg=k)


def test_single_file_errors_are_named(tiny):
    root, _, sd, folder = tiny
    ldm = diffusers_to_ldm_controlnet(sd, TINY)
    missing = {k: v for k, v in ldm.items() if k != "control_model.zero_convs.3.0.weight"}
    save_file({k: np.ascontiguousarray(v) for k, v in missing.items()}, str(root / "m.safetensors"))
    with pytest.raises(WeightLoadError, match=r"zero_convs\.3\.0\.weight"):
        load_controlnet(root / "m.safetensors", config=TINY)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(root / "d.safetensors"))
    with pytest.raises(WeightLoadError, match="diffusers layout"):
        load_controlnet(root / "d.safetensors")
    save_file({"model.diffusion_model.x": np.zeros(2, np.float32)}, str(root / "u.safetensors"))
    with pytest.raises(WeightLoadError, match="no ControlNet tensors"):
        load_controlnet(root / "u.safetensors")


def test_sd15_key_set():
    """The full SD1.5 ControlNet: every diffusers key and the LDM key diffusers maps it from
    (shapes from a meta-device model: no weights are made)."""
    with torch.device("meta"):
        ref = TorchControlNet(cross_attention_dim=768)
    sd = ref.state_dict()
    ldm = diffusers_to_ldm_controlnet(sd, dict(ref.config))
    assert len(ldm) == len(sd) == 340
    pairs = ldm_controlnet_key_map(dict(ref.config))
    assert {d for d, _, _ in pairs} == set(sd)
    assert {"control_model." + l for _, l, _ in pairs} == set(ldm)
    cfg = infer_controlnet_config({k: _Shape(tuple(v.shape)) for k, v in ldm.items()})
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    assert cfg["cross_attention_dim"] == 768 and cfg["layers_per_block"] == 2


class _Shape:
    """A stand-in tensor for config inference (only ``shape`` / ``ndim`` are read)."""

    def __init__(self, shape):
        self.shape, self.ndim = shape, len(shape)
