"""Inpainting fine-tuning: random masks, the inpainting diffusion loss, a compiled step.

How SD-inpainting was made (``stable-diffusion-inpainting`` model card): the text-to-image
weights restored, 5 extra zero-initialised input channels (4 masked-image latents + 1 mask;
:func:`jaxvedit.models.inpaint.inpainting_unet_from_text_unet`), trained with "synthetic masks
and in 25% mask everything", and 10% dropping of the text conditioning. The synthetic masks here
are diffusers' ``random_mask`` (``examples/research_projects/dreambooth_inpaint/
train_dreambooth_inpaint.py``: one rectangle or ellipse of random size and centre), with the
model card's 25% full masks on top; the loss is that script's (``randint(0, T)`` timesteps per
image, ``add_noise``, ``unet(concat([noisy, mask, masked_latents]))``, MSE against the noise or
the velocity).

Usage on any (frames, masks, text) data::

    unet9 = inpainting_unet_from_text_unet(unet)
    state, step = make_inpaint_finetune_step(unet9, schedule=schedule)
    for images, context in data:              # images (B, H, W, 3) uint8, context (B, L, D)
        batch = make_inpaint_batch(vae, images, context, rng, key=k1, uncond_context=empty)
        loss, aux = state.step(step, batch, k2)
    state.write_back(unet9)
"""

from __future__ import annotations

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxvedit.adapters.train import adapter_optimizer, init_adapter_training, make_adapter_train_step
from jaxvedit.diffusion.inpaint import (encode_latents, masked_image, preprocess_mask,
                                        resize_mask_nearest)
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.models.inpaint import check_inpainting_unet, inpainting_input

__all__ = ["random_mask", "random_masks", "make_inpaint_batch", "inpaint_loss",
           "make_inpaint_finetune_step"]

#: the model card's share of fully masked training images
FULL_MASK_PROB = 0.25
#: the model card's share of training images with the text conditioning dropped
UNCOND_PROB = 0.1


def _as_random(rng) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def random_mask(height: int, width: int, rng: random.Random | int, *, ratio: float = 1.0,
                full_image: bool = False) -> np.ndarray:
    """diffusers' ``random_mask((width, height), ratio, mask_full_image)``: a rectangle or an
    ellipse (drawn with PIL, as there) of random size up to ``ratio`` times the image and random
    centre. ``rng``: a ``random.Random`` (the script uses the ``random`` module) or a seed.
    Returns float32 ``(H, W)``, 1 = regenerate."""
    from PIL import Image, ImageDraw

    r = _as_random(rng)
    im_shape = (int(width), int(height))  # PIL size
    mask = Image.new("L", im_shape, 0)
    draw = ImageDraw.Draw(mask)
    size = (r.randint(0, int(im_shape[0] * ratio)), r.randint(0, int(im_shape[1] * ratio)))
    if full_image:
        size = (int(im_shape[0] * ratio), int(im_shape[1] * ratio))
    limits = (im_shape[0] - size[0] // 2, im_shape[1] - size[1] // 2)
    center = (r.randint(size[0] // 2, limits[0]), r.randint(size[1] // 2, limits[1]))
    draw_type = r.randint(0, 1)
    box = (center[0] - size[0] // 2, center[1] - size[1] // 2,
           center[0] + size[0] // 2, center[1] + size[1] // 2)
    if draw_type == 0 or full_image:
        draw.rectangle(box, fill=255)
    else:
        draw.ellipse(box, fill=255)
    return np.asarray(mask, np.float32) / 255.0


def random_masks(n: int, height: int, width: int, rng: random.Random | int, *,
                 full_prob: float = FULL_MASK_PROB, ratio: float = 1.0) -> np.ndarray:
    """``n`` training masks ``(n, H, W)`` (1 = regenerate): with probability ``full_prob`` the
    whole image (SD-inpainting: "in 25% mask everything"), else :func:`random_mask`."""
    r = _as_random(rng)
    out = np.empty((n, int(height), int(width)), np.float32)
    for i in range(n):
        if full_prob > 0 and r.random() < full_prob:
            out[i] = 1.0
        else:
            out[i] = random_mask(height, width, r, ratio=ratio)
    return out


def make_inpaint_batch(vae, images, context, rng: random.Random | int, *, key, masks=None,
                       uncond_context=None, full_prob: float = FULL_MASK_PROB,
                       sample: bool = True) -> dict:
    """A training batch for :func:`inpaint_loss` from images (``(B, H, W, 3)`` uint8, or float
    in [-1, 1]) and their text embeddings ``(B, L, D)``: random masks (or ``masks`` ``(B, H, W)``,
    1 = regenerate), the image latents and the masked-image latents (VAE posterior samples
    from ``key`` as in the diffusers script, or means with ``sample=False``)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1.0
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    b, h, w = images.shape[:3]
    if masks is None:
        masks = random_masks(b, h, w, rng, full_prob=full_prob)
    mask = preprocess_mask(masks)
    if mask.shape[:3] != (b, h, w):
        raise ValueError(f"masks {np.shape(masks)} do not fit the images {images.shape}")
    mask_lat = resize_mask_nearest(mask, (h // vae.downscale_factor, w // vae.downscale_factor))
    graphdef, state = nnx.split(vae)
    lat, masked = _encode_pair(graphdef, state, jnp.asarray(images),
                               jnp.asarray(masked_image(images, mask)), key, sample=sample)
    batch = {"latents": lat, "mask": jnp.asarray(mask_lat, jnp.float32), "masked_latents": masked,
             "context": jnp.asarray(context, jnp.float32)}
    if uncond_context is not None:
        batch["uncond_context"] = jnp.broadcast_to(jnp.asarray(uncond_context, jnp.float32),
                                                   batch["context"].shape)
    return batch


@functools.partial(jax.jit, static_argnames=("graphdef", "sample"))
def _encode_pair(graphdef, state, images, masked, key, *, sample):
    vae = nnx.merge(graphdef, state)
    k1, k2 = jax.random.split(key)
    return (encode_latents(vae, images, sample=sample, key=k1),
            encode_latents(vae, masked, sample=sample, key=k2))


def inpaint_loss(eps_fn, batch: dict, key, schedule: NoiseSchedule, *,
                 shared_timestep: bool = False, uncond_prob: float = 0.0):
    """``(loss, aux)``: MSE between ``eps_fn(concat([x_t, mask, masked_latents]), t, context)`` and
    the noise (``prediction_type`` epsilon) or the velocity (v_prediction).

    ``batch``: ``latents (B, h, w, C)``, ``mask (B, h, w, 1)`` (1 = regenerate),
    ``masked_latents (B, h, w, C)``, ``context (B, L, D)`` and, for ``uncond_prob > 0``,
    ``uncond_context`` (the empty-prompt embedding; replaces the context of each sample with
    that probability). ``t ~ randint(0, T)`` per sample, or one ``t`` for the whole batch
    (``shared_timestep``: the frames of one clip, SPEC §3). Each element gets its own noise.
    """
    x0 = batch["latents"]
    b = x0.shape[0]
    kt, kn, ku = jax.random.split(key, 3)
    n_train = schedule.num_train_timesteps
    t = jax.random.randint(kt, (1,) if shared_timestep else (b,), 0, n_train)
    t = jnp.broadcast_to(t, (b,))
    noise = jax.random.normal(kn, x0.shape, x0.dtype)
    acp = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[t].reshape((b, 1, 1, 1))
    x_t = acp**0.5 * x0 + (1 - acp) ** 0.5 * noise  # add_noise
    ctx = batch["context"]
    if uncond_prob > 0:
        if "uncond_context" not in batch:
            raise ValueError("uncond_prob > 0 needs batch['uncond_context'] (the empty-prompt embedding)")
        drop = jax.random.bernoulli(ku, uncond_prob, (b, 1, 1))
        ctx = jnp.where(drop, batch["uncond_context"], ctx)
    pred = eps_fn(inpainting_input(x_t, batch["mask"], batch["masked_latents"]), t, ctx)
    if schedule.prediction_type == "epsilon":
        target = noise
    elif schedule.prediction_type == "v_prediction":
        target = acp**0.5 * noise - (1 - acp) ** 0.5 * x0  # get_velocity
    else:
        raise ValueError(f"inpainting training supports prediction_type epsilon or v_prediction, "
                         f"not {schedule.prediction_type!r}")
    loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))
    return loss, {"loss": loss}


def make_inpaint_finetune_step(unet, tx: optax.GradientTransformation | None = None, *,
                               schedule: NoiseSchedule | None = None,
                               uncond_prob: float = UNCOND_PROB, wrt=nnx.Param):
    """``(state, step)`` to fine-tune every weight (``wrt``, default all ``nnx.Param``) of an
    inpainting UNet with :func:`inpaint_loss`; ``state.step(step, batch, key) -> (loss, aux)``,
    ``state.write_back(unet)`` at the end. ``tx`` default: AdamW lr 1e-4, weight decay 1e-2,
    no warm-up, clipping 1.0 (the SD1 model cards train at 1e-4 after a 10k-step warm-up:
    pass ``adapter_optimizer(1e-4, warmup_steps=10_000)`` for that). The trained weights are
    copies (the donated step would otherwise consume arrays ``unet`` shares with the
    text-to-image UNet it was made from); ``state.write_back(unet)`` puts them in ``unet``."""
    check_inpainting_unet(unet, "inpainting fine-tuning")
    schedule = schedule if schedule is not None else NoiseSchedule.sd15()
    tx = tx if tx is not None else adapter_optimizer(1e-4, warmup_steps=0)
    state = init_adapter_training(unet, tx, wrt=wrt)
    # the step donates the trained arrays: train on copies, so that arrays shared with another
    # model (inpainting_unet_from_text_unet shares all but conv_in) stay valid
    state.params = jax.tree.map(jnp.array, state.params)

    def loss_fn(model, batch, key):
        return inpaint_loss(model, batch, key, schedule, uncond_prob=uncond_prob)

    return state, make_adapter_train_step(loss_fn, state)
