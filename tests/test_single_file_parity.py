"""A tiny SD checkpoint converted to the original single-file (LDM) layout loads to the same
outputs as its diffusers form (and as the PyTorch reference)."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import jax.numpy as jnp
from ldm_layout import clip_to_ldm_text, diffusers_to_ldm_unet, diffusers_to_ldm_vae
from reference import nchw, nhwc, randomize_, rel_err

from jaxvedit.models.loading import load_components, load_text_encoder, load_unet, load_vae
from jaxvedit.models.single_file import infer_unet_config

UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4)
VAE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    unet = randomize_(UNet2DConditionModel(**UNET).eval(), 1)
    vae = randomize_(AutoencoderKL(**VAE).eval(), 2)
    text = randomize_(CLIPTextModel(CLIPTextConfig(**TEXT)).eval(), 3)
    unet.save_pretrained(root / "diffusers" / "unet")
    vae.save_pretrained(root / "diffusers" / "vae")
    text.save_pretrained(root / "diffusers" / "text_encoder")
    as_np = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}
    text_sd = {k if k.startswith("text_model.") else f"text_model.{k}": v
               for k, v in as_np(text).items() if not k.endswith("position_ids")}
    ldm = {**diffusers_to_ldm_unet(as_np(unet), unet.config), **diffusers_to_ldm_vae(as_np(vae)),
           **clip_to_ldm_text(text_sd)}
    ldm["model_ema.decay"] = np.array(0.9999, np.float32)  # a known leftover, reported as ignored
    save_file(ldm, root / "tiny-sd.safetensors")
    return root, unet, vae, text


def test_single_file_unet_and_vae_match_diffusers_form(checkpoint):
    root, ref_unet, ref_vae, _ = checkpoint
    single = root / "tiny-sd.safetensors"
    # shapes cannot tell heads / norm groups: override those keys of the inferred config
    from safetensors.numpy import load_file
    cfg = infer_unet_config(load_file(single), override={"attention_head_dim": 4, "norm_num_groups": 8})
    unet_sf = load_unet(single, config=cfg)
    unet_df = load_unet(root / "diffusers")
    rng = np.random.RandomState(0)
    x = rng.randn(2, 4, 16, 16).astype(np.float32)
    ctx = rng.randn(2, 6, 32).astype(np.float32)
    t = np.array([3, 700])
    a = unet_sf(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    b = unet_df(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with torch.no_grad():
        ref = ref_unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    assert rel_err(nchw(a), ref) <= 1e-4

    vae_cfg = dict(ref_vae.config)
    vae_sf = load_vae(single, config=vae_cfg)
    img = rng.randn(1, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref_mean = ref_vae.encode(torch.from_numpy(img)).latent_dist.mean.numpy()
    assert rel_err(nchw(vae_sf.encode(jnp.asarray(nhwc(img))).mean), ref_mean) <= 1e-4


def test_single_file_text_encoder_and_load_components(checkpoint):
    root, ref_unet, _, ref_text = checkpoint
    single = root / "tiny-sd.safetensors"
    ids = np.array([[0, 5, 9, 17, 99, 1, 1, 1]], np.int64)
    with torch.no_grad():
        ref = ref_text(torch.from_numpy(ids)).last_hidden_state.numpy()
    te = load_text_encoder(single, config=TEXT)
    assert rel_err(te(jnp.asarray(ids)).last_hidden_state, ref) <= 1e-4
    te_folder = load_text_encoder(root / "diffusers")
    assert rel_err(te_folder(jnp.asarray(ids)).last_hidden_state, ref) <= 1e-4
    comps = load_components(single, ("unet", "text_encoder"),
                            unet_config={**dict(ref_unet.config)})
    assert set(comps) == {"unet", "text_encoder"}


def test_single_file_missing_and_unknown_component(checkpoint, tmp_path):
    root, *_ = checkpoint
    with pytest.raises(FileNotFoundError, match="model path not found"):
        load_unet(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="unknown component"):
        load_components(root / "tiny-sd.safetensors", ("unet", "controlnet"))
