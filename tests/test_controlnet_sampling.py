"""ControlNet-conditioned DDIM sampling and inversion against diffusers: the whole
``StableDiffusionControlNetPipeline`` loop (guess mode, control guidance start/end, conditioning
scale, classifier-free guidance) on tiny random models, a DDIM inversion with the ControlNet
against a diffusers ``DDIMInverseScheduler`` loop, and the keep schedule."""

from pathlib import Path

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from reference import nchw, nhwc, randomize_, rel_err

from diffusers import AutoencoderKL, ControlNetModel, DDIMInverseScheduler, DDIMScheduler
from diffusers import StableDiffusionControlNetPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from jaxvedit.diffusion import ddim_invert, ddim_sample
from jaxvedit.diffusion.control import (ControlNetPredictor, control_keep, control_keep_table,
                                        prepare_control_image)
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.models.controlnet_io import load_controlnet
from jaxvedit.models.loading import load_unet
from jaxvedit.models.tiny import (SD15_SCHEDULER_CONFIG, TINY_TEXT_CONFIG, TINY_UNET_CONFIG,
                                  TINY_VAE_CONFIG, write_tiny_tokenizer)

TOL = 1e-4


def _clean(cfg):
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "model_type")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_sampling")
    torch.manual_seed(0)
    tu = randomize_(UNet2DConditionModel(**_clean(TINY_UNET_CONFIG)).eval(), 0)
    tcn = randomize_(ControlNetModel.from_unet(tu, conditioning_embedding_out_channels=(8, 16, 16, 16)).eval(), 1)
    tu.save_pretrained(root / "unet")
    tcn.save_pretrained(root / "cn")
    rng = np.random.RandomState(0)
    data = dict(lat=rng.randn(2, 4, 8, 8).astype(np.float32), ctx=rng.randn(2, 7, 32).astype(np.float32),
                unc=rng.randn(2, 7, 32).astype(np.float32), img=rng.rand(2, 3, 64, 64).astype(np.float32))
    return root, tu, tcn, load_unet(root), load_controlnet(root / "cn"), data


def test_keep_schedule_is_diffusers():
    for n, s, e in ((10, 0.0, 1.0), (10, 0.2, 0.7), (7, 0.1, 0.5), (50, 0.33, 0.9)):
        ref = [1.0 - float(i / n < s or (i + 1) / n > e) for i in range(n)]  # pipeline_controlnet.py
        np.testing.assert_array_equal(control_keep(n, s, e), ref)
    sched = NoiseSchedule.sd15()
    table = control_keep_table(sched, 10, 0.2, 0.7)
    ts = sched.timesteps(10)
    np.testing.assert_array_equal(table[ts], control_keep(10, 0.2, 0.7))
    with pytest.raises(ValueError, match="0 <= start < end <= 1"):
        control_keep(10, 0.7, 0.2)


def test_pipeline_loop_matches_diffusers(models, tmp_path):
    """Guess mode + guidance (ControlNet on the conditional half only), a control window
    [0.2, 0.7] and scale 0.8: the final latents of diffusers' pipeline and of ``ddim_sample``."""
    root, tu, tcn, unet, cn, d = models
    write_tiny_tokenizer(Path(tmp_path / "tok"))
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL(**_clean(TINY_VAE_CONFIG)), unet=tu, controlnet=tcn,
        text_encoder=CLIPTextModel(CLIPTextConfig(**_clean(TINY_TEXT_CONFIG))),
        tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "tok"),
        scheduler=DDIMScheduler.from_config(_clean(SD15_SCHEDULER_CONFIG)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    steps, g, start, end, scale = 6, 5.0, 0.2, 0.7, 0.8
    with torch.no_grad():
        ref = pipe(prompt_embeds=torch.from_numpy(d["ctx"]), negative_prompt_embeds=torch.from_numpy(d["unc"]),
                   image=torch.from_numpy(d["img"]), height=64, width=64, num_inference_steps=steps,
                   guidance_scale=g, latents=torch.from_numpy(d["lat"]), output_type="latent",
                   guess_mode=True, control_guidance_start=start, control_guidance_end=end,
                   controlnet_conditioning_scale=scale).images.numpy()
    schedule = NoiseSchedule.sd15()
    pred = ControlNetPredictor(unet, cn, nhwc(d["img"]), conditioning_scale=scale, guess_mode=True,
                               keep_table=control_keep_table(schedule, steps, start, end))
    ours = ddim_sample(pred, jnp.asarray(nhwc(d["lat"])), jnp.asarray(d["ctx"]), schedule,
                       num_inference_steps=steps, guidance_scale=g, uncond_context=jnp.asarray(d["unc"]))
    err = rel_err(nchw(ours), ref)
    print(f"ControlNet pipeline loop (guess mode, window, CFG): max|diff|/std = {err:.3e}")
    assert err <= TOL


def test_guided_inversion_with_controlnet_matches_diffusers_loop(models):
    """DDIM inversion where every step's eps comes from the UNet with ControlNet residuals
    (the authors' pipeline), with classifier-free guidance outside guess mode (the ControlNet
    sees [uncond; cond] with the images twice, as the pipeline's default branch), against
    diffusers' DDIMInverseScheduler driving diffusers' modules."""
    import jax
    from flax import nnx

    _, tu, tcn, unet, cn, d = models
    steps, g, scale = 4, 2.0, 0.9
    inv = DDIMInverseScheduler.from_config(_clean(SD15_SCHEDULER_CONFIG))
    inv.set_timesteps(steps)
    x = torch.from_numpy(d["lat"])
    ctx2 = torch.from_numpy(np.concatenate([d["unc"], d["ctx"]]))
    img2 = torch.from_numpy(np.concatenate([d["img"]] * 2))
    with torch.no_grad():
        for t in inv.timesteps:
            x2 = torch.cat([x, x])
            down, mid = tcn(x2, t, ctx2, img2, conditioning_scale=scale, return_dict=False)
            e_u, e_c = tu(x2, t, ctx2, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample.chunk(2)
            x = inv.step(e_u + g * (e_c - e_u), t, x).prev_sample
    schedule = NoiseSchedule.sd15()
    pred = ControlNetPredictor(unet, cn, nhwc(d["img"]), conditioning_scale=scale,
                               keep_table=control_keep_table(schedule, steps))
    ours = ddim_invert(pred, jnp.asarray(nhwc(d["lat"])), jnp.asarray(d["ctx"]), schedule,
                       num_inference_steps=steps, guidance_scale=g, uncond_context=jnp.asarray(d["unc"]))
    err = rel_err(nchw(ours), x.numpy())
    print(f"guided DDIM inversion with ControlNet: max|diff|/std = {err:.3e}")
    assert err <= TOL
    gd, st = nnx.split(pred)
    with pytest.raises(ValueError, match="2 conditioning images for a batch of 3"):
        jax.eval_shape(lambda s: nnx.merge(gd, s)(jnp.zeros((3, 8, 8, 4)), 1, jnp.zeros((3, 7, 32))), st)


def test_prepare_control_image_errors():
    assert prepare_control_image(np.full((2, 8, 8), 255, np.uint8)).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="missing conditioning image"):
        prepare_control_image(None)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        prepare_control_image(np.full((1, 8, 8, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="conditioning images are 8x8, the frames 16x16"):
        prepare_control_image(np.zeros((1, 8, 8, 3), np.uint8), size=(16, 16))
