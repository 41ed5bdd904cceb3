"""The SD1.5 inpainting UNet (9 input channels) against diffusers on random weights: a diffusers
folder, a single-file LDM checkpoint, the full SD1.5-inpainting config (slow); and the
inpainting UNet made from a text-to-image one (zero-initialised extra channels, as SD-inpainting
was made) against the same construction in PyTorch."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import jax.numpy as jnp
from ldm_layout import diffusers_to_ldm_unet, diffusers_to_ldm_vae
from reference import SD15_UNET_CONFIG, nchw, nhwc, randomize_, rel_err

from jaxvedit.models.inpaint import (check_inpainting_unet, inpainting_input,
                                     inpainting_unet_from_text_unet, is_inpainting_unet)
from jaxvedit.models.loading import load_unet
from jaxvedit.models.single_file import infer_unet_config

TOL = 1e-4
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, in_channels=9, out_channels=4)
#: stable-diffusion-v1-5/stable-diffusion-inpainting unet/config.json: SD1.5 with 9 inputs
SD15_INPAINT_CONFIG = {**SD15_UNET_CONFIG, "in_channels": 9}


def _inputs(seed, cin, ctx_dim, hw=(16, 16), batch=2, ctx_len=7):
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, cin, *hw).astype(np.float32)
    ctx = rng.randn(batch, ctx_len, ctx_dim).astype(np.float32)
    t = np.array([1, 981][:batch], np.int64)
    return x, ctx, t


def _compare(ref_model, ours, seed, **kw):
    x, ctx, t = _inputs(seed, ref_model.config.in_channels, ref_model.config.cross_attention_dim, **kw)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    out = ours(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))
    return rel_err(nchw(out), ref)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = tmp_path_factory.mktemp("inpaint-unet")
    torch.manual_seed(0)
    ref = randomize_(UNet2DConditionModel(**TINY).eval(), 3)
    ref.save_pretrained(root / "unet")
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    as_np = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}
    # a single file as SD checkpoints are: UNet (inpainting: 9-channel input_blocks.0.0) + VAE
    save_file({**diffusers_to_ldm_unet(as_np(ref), ref.config), **diffusers_to_ldm_vae(as_np(vae))},
              root / "inpaint.safetensors")
    return root, ref


def test_tiny_inpainting_unet_folder_and_single_file_match_diffusers(tiny):
    root, ref = tiny
    ours = load_unet(root)
    assert ours.config.in_channels == 9 and is_inpainting_unet(ours)
    err = _compare(ref, ours, 0)
    print(f"inpainting UNet (tiny, diffusers folder) vs diffusers: {err:.2e}")
    assert err <= TOL
    single = root / "inpaint.safetensors"
    cfg = infer_unet_config(load_file(single), override={"attention_head_dim": 4, "norm_num_groups": 8})
    assert cfg["in_channels"] == 9  # inferred from input_blocks.0.0.weight
    ours_sf = load_unet(single, config=cfg)
    err_sf = _compare(ref, ours_sf, 1)
    print(f"inpainting UNet (tiny, single-file LDM checkpoint) vs diffusers: {err_sf:.2e}")
    assert err_sf <= TOL


def test_inpainting_unet_from_text_unet_is_sd_inpainting_construction(tmp_path):
    """SD-inpainting: text-to-image weights restored, 5 zero-initialised input channels."""
    from diffusers import UNet2DConditionModel

    cfg4 = {**TINY, "in_channels": 4}
    ref4 = randomize_(UNet2DConditionModel(**cfg4).eval(), 5)
    ref4.save_pretrained(tmp_path / "unet")
    # the construction in PyTorch: a 9-channel UNet, conv_in weight zero-padded
    ref9 = UNet2DConditionModel(**TINY).eval()
    sd = ref4.state_dict()
    w = sd["conv_in.weight"]
    sd["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], 5, *w.shape[2:])], dim=1)
    ref9.load_state_dict(sd)
    text = load_unet(tmp_path)
    ours = inpainting_unet_from_text_unet(text)
    assert is_inpainting_unet(ours) and not is_inpainting_unet(text)
    assert text.config.in_channels == 4 and text.conv_in.kernel.value.shape[2] == 4  # unchanged
    assert ours.down_blocks[0].resnets[0].conv1.kernel.value is text.down_blocks[0].resnets[0].conv1.kernel.value
    assert rel_err_ok(_compare(ref9, ours, 2))
    # until fine-tuned it is the text-to-image UNet on the latent channels, whatever the mask
    x, ctx, t = _inputs(3, 4, 32)
    rng = np.random.default_rng(0)
    inp = inpainting_input(jnp.asarray(nhwc(x)), jnp.asarray(rng.random((2, 16, 16, 1)), jnp.float32),
                           jnp.asarray(rng.standard_normal((2, 16, 16, 4)), jnp.float32))
    np.testing.assert_array_equal(np.asarray(ours(inp, jnp.asarray(t), jnp.asarray(ctx))),
                                  np.asarray(text(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx))))
    with pytest.raises(ValueError, match="needs an inpainting UNet.*in_channels=4"):
        check_inpainting_unet(text, "--method lora-edit")
    with pytest.raises(ValueError, match="needs a text-to-image UNet"):
        inpainting_unet_from_text_unet(ours)


def rel_err_ok(err: float) -> bool:
    print(f"inpainting UNet from a text-to-image UNet vs the PyTorch construction: {err:.2e}")
    return err <= TOL


@pytest.mark.slow
def test_full_sd15_inpainting_unet_matches_diffusers():
    """Full size, loaded from the in-memory state dict with the loaders' code (the folder and
    single-file paths themselves are the tiny test's; skipping 3.4 GB of disk I/O here)."""
    from diffusers import UNet2DConditionModel
    from flax import nnx

    from jaxvedit.models.unet import UNet2DConditionModel as FlaxUNet
    from jaxvedit.models.unet import UNetConfig
    from jaxvedit.models.weights import load_torch_state_dict

    torch.manual_seed(0)
    ref = randomize_(UNet2DConditionModel(**SD15_INPAINT_CONFIG).eval(), 0)
    ours = nnx.eval_shape(lambda: FlaxUNet(UNetConfig.from_dict(dict(ref.config)), rngs=nnx.Rngs(0)))
    load_torch_state_dict(ours, {k: v.detach().numpy() for k, v in ref.state_dict().items()},
                          what="UNet")
    assert is_inpainting_unet(ours)
    err = _compare(ref, ours, 0, ctx_len=77)
    print(f"inpainting UNet, full SD1.5-inpainting config, 16x16 latents: {err:.2e}")
    assert err <= TOL
