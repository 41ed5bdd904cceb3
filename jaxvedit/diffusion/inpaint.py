"""Inpainting inputs and sampling, as diffusers' ``StableDiffusionInpaintPipeline`` (0.42).

Preparation (channels-last, one function per pipeline stage):

- :func:`preprocess_mask` = ``VaeImageProcessor(do_normalize=False, do_binarize=True,
  do_convert_grayscale=True).preprocess``: grayscale (PIL's ``"L"`` for RGB uint8), ``/ 255`` for
  uint8, then ``binarize`` (``< 0.5 -> 0``, ``>= 0.5 -> 1``). Convention: **1 = regenerate**.
- :func:`masked_image` = ``init_image * (mask_condition < 0.5)``: the regenerated region becomes
  0 (mid grey) in the [-1, 1] image.
- :func:`resize_mask_nearest` = ``torch.nn.functional.interpolate(mask, size=(H/8, W/8))``
  (mode ``nearest``: source index ``floor(dst * in / out)`` in float32, as ATen).
- :func:`encode_latents` = ``_encode_vae_image``: ``scaling_factor * vae.encode(x).latent_dist
  .sample(generator)`` (``noise`` given or drawn from ``key``), or the mean (``sample=False``).
- :func:`prepare_mask_latents` chains the three for ``(mask, masked_image_latents)``.

:func:`inpaint_sample` is the denoising loop (one ``jax.jit`` around a ``lax.scan``): the model
input is ``concat([latents, mask, masked_image_latents])`` for a 9-channel UNet; for a 4-channel
UNet (or any UNet with ``blend=True``) the known region is put back after every step as the
pipeline's 4-channel branch does: ``latents = (1 - mask) * add_noise(image_latents, noise,
t_next) + mask * latents`` (``image_latents`` themselves after the last step).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.diffusion.ddim import ddim_step
from jaxvedit.diffusion.inversion import _prep_context, _split_predictor
from jaxvedit.diffusion.schedules import NoiseSchedule

__all__ = [
    "binarize_mask", "preprocess_mask", "masked_image", "resize_mask_nearest", "encode_latents",
    "prepare_mask_latents", "inpaint_sample",
]


# ----------------------------------------------------------------------------------------------
# preparation


def binarize_mask(mask) -> np.ndarray:
    """``VaeImageProcessor.binarize``: ``< 0.5 -> 0``, ``>= 0.5 -> 1`` (float32)."""
    m = np.asarray(mask, np.float32)
    return (m >= 0.5).astype(np.float32)


def _to_gray01(mask) -> np.ndarray:
    a = np.asarray(mask)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if a.ndim == 4 and a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"masks (B, H, W, C) must have 1, 3 or 4 channels, got shape {a.shape}")
    if a.ndim == 4 and a.shape[-1] in (3, 4):  # RGB(A) frames -> grayscale
        if a.dtype == np.uint8:
            from PIL import Image

            flat = a.reshape((-1,) + a.shape[-3:])
            gray = np.stack([np.asarray(Image.fromarray(f[..., :3]).convert("L")) for f in flat])
            a = gray.reshape(a.shape[:-1])
        else:  # ITU-R 601-2 luma, as PIL's "L"
            a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    elif a.ndim == 4:
        a = a[..., 0]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"mask must be bool, uint8 or float in [0, 1], got dtype {a.dtype}")
    return a.astype(np.float32)


def preprocess_mask(mask) -> np.ndarray:
    """Masks ``(B, H, W)`` / ``(B, H, W, 1)`` / RGB ``(B, H, W, 3)`` (bool, uint8 0-255 or float
    0-1; channels only in 4-D input) -> binarized float32 ``(B, H, W, 1)`` as diffusers' mask
    processor (no resize: resize frames and masks to the working size first)."""
    return binarize_mask(_to_gray01(mask))[..., None]


def masked_image(images, mask) -> np.ndarray:
    """``images * (mask < 0.5)``: images in [-1, 1] ``(B, H, W, 3)``, mask ``(B, H, W, 1)`` with
    1 = regenerate."""
    images, mask = np.asarray(images, np.float32), np.asarray(mask, np.float32)
    if images.shape[:-1] != mask.shape[:-1]:
        raise ValueError(f"mask {mask.shape} and images {images.shape} differ in size")
    return images * (mask < 0.5)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)  # ATen: (float)input_size / output_size
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_mask_nearest(mask, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(mask, size=size)`` (nearest) on channels-last ``(B, H, W, C)``."""
    m = np.asarray(mask)
    if m.ndim != 4:
        raise ValueError(f"mask must be (B, H, W, C), got shape {m.shape}")
    h, w = (int(s) for s in size)
    return m[:, _nearest_index(m.shape[1], h)][:, :, _nearest_index(m.shape[2], w)]


def encode_latents(vae, images, *, sample: bool = True, key=None, noise=None) -> jax.Array:
    """``scaling_factor * vae.encode(images)`` posterior: a sample ``mean + std * noise`` (``noise``
    given, else ``jax.random.normal(key, ...)``) as diffusers' ``_encode_vae_image``, or the
    mean (``sample=False``). ``images`` in [-1, 1] ``(B, H, W, 3)``."""
    post = vae.encode(jnp.asarray(images, jnp.float32))
    z = post.mean
    if sample:
        if noise is None:
            if key is None:
                raise ValueError("encode_latents(sample=True) needs `noise` or a PRNG `key`")
            noise = jax.random.normal(key, post.mean.shape, post.mean.dtype)
        z = post.mean + post.std * jnp.asarray(noise, post.mean.dtype)
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor


def prepare_mask_latents(vae, images, mask, *, sample: bool = True, key=None, noise=None):
    """``(mask_latent (B, h, w, 1), masked_image_latents (B, h, w, C))`` from images in [-1, 1]
    ``(B, H, W, 3)`` and a preprocessed mask ``(B, H, W, 1)`` (1 = regenerate), as the pipeline's
    ``masked_image = init_image * (mask < 0.5)`` + ``prepare_mask_latents``."""
    images = np.asarray(images, np.float32)
    f = vae.downscale_factor
    h, w = images.shape[1] // f, images.shape[2] // f
    mask_lat = resize_mask_nearest(mask, (h, w))
    lat = encode_latents(vae, masked_image(images, mask), sample=sample, key=key, noise=noise)
    return jnp.asarray(mask_lat, jnp.float32), lat


# ----------------------------------------------------------------------------------------------
# sampling


@dataclasses.dataclass(frozen=True)
class _InpaintSpec:
    cfg: bool
    stochastic: bool
    concat: bool
    blend: bool
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float


@functools.partial(jax.jit, static_argnames=("predictor", "spec"))
def _inpaint_loop(params, x, ctx, uctx, mask, masked, known, noise, ts, a_cur, a_next, a_blend,
                  guidance, eta, key, *, predictor, spec):
    model = predictor.bind(params)
    B = x.shape[0]
    n = ts.shape[0]
    keys = jax.random.split(key, n) if spec.stochastic else jnp.zeros((n,), jnp.uint32)
    if spec.cfg:
        cond = (jnp.concatenate([mask, mask], 0), jnp.concatenate([masked, masked], 0))
        ctx2 = jnp.concatenate([uctx, ctx], axis=0)
    else:
        cond, ctx2 = (mask, masked), ctx

    def body(xc, inp):
        t, ac, an, ab, k = inp
        xin = jnp.concatenate([xc, xc], axis=0) if spec.cfg else xc
        if spec.concat:  # [latents, mask, masked_image_latents]
            xin = jnp.concatenate([xin, cond[0].astype(xin.dtype), cond[1].astype(xin.dtype)], -1)
        out = jnp.asarray(model(xin, t, ctx2)).astype(xc.dtype)
        if spec.cfg:
            e_u, e_c = out[:B], out[B:]
            out = e_u + guidance.astype(xc.dtype) * (e_c - e_u)
        vnoise = jax.random.normal(k, xc.shape, xc.dtype) if spec.stochastic else None
        xn = ddim_step(xc, out, ac, an, eta=eta, noise=vnoise, prediction_type=spec.prediction_type,
                       clip_sample=spec.clip_sample, clip_sample_range=spec.clip_sample_range,
                       stochastic=spec.stochastic)
        if spec.blend:
            # the pipeline's 4-channel branch: known region noised to the next timestep
            proper = ab**0.5 * known + (1 - ab) ** 0.5 * noise
            xn = (1 - mask) * proper + mask * xn
        return xn, None

    xT, _ = jax.lax.scan(body, x, (ts, a_cur, a_next, a_blend, keys))
    return xT


def inpaint_sample(unet, noise, context, mask, masked_image_latents, schedule, *,
                   num_inference_steps: int = 50, guidance_scale: float = 7.5, uncond_context=None,
                   image_latents=None, blend: bool | None = None, eta: float = 0.0, key=None):
    """Inpainting DDIM sampling from pure noise (diffusers' pipeline with ``strength=1``).

    Args:
        unet: noise predictor (``nnx.Module`` or callable) taking the full model input: 9
            channels for an inpainting UNet (``concat=True`` is chosen from the channel count
            ``mask`` + ``masked_image_latents`` + ``noise`` equal to its ``in_channels``, when it has
            a ``config``), else the latents alone.
        noise: initial latents ``(B, h, w, C)`` (``init_noise_sigma`` is 1 for DDIM).
        mask / masked_image_latents: ``(B, h, w, 1)`` (1 = regenerate) / ``(B, h, w, C)``.
        image_latents: the known latents put back outside the mask when blending (the
            pipeline's ``image_latents``); needed when ``blend``.
        blend: default: ``True`` for a 4-channel UNet (the pipeline's behaviour), ``False`` for
            a 9-channel one (the pipeline does not blend there); ``True`` forces blending.
    Returns the final latents ``(B, h, w, C)``.
    """
    if not isinstance(schedule, NoiseSchedule):
        schedule = NoiseSchedule.from_config(schedule)
    x = jnp.asarray(noise, jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"noise must be (B, h, w, C), got shape {x.shape}")
    B = x.shape[0]
    mask = jnp.asarray(mask, jnp.float32)
    masked = jnp.asarray(masked_image_latents, jnp.float32)
    if mask.shape != x.shape[:-1] + (1,) or masked.shape != x.shape:
        raise ValueError(f"mask {mask.shape} / masked-image latents {masked.shape} do not fit the "
                         f"latents {x.shape}")
    in_ch = getattr(getattr(unet, "config", None), "in_channels", None)
    if in_ch is None:  # a wrapper (e.g. EditPredictor) around a UNet
        in_ch = getattr(getattr(getattr(unet, "unet", None), "config", None), "in_channels", None)
    concat = in_ch == 2 * x.shape[-1] + 1
    if blend is None:
        blend = not concat
    if blend and image_latents is None:
        raise ValueError("blending the known region needs image_latents")
    known = jnp.asarray(image_latents if image_latents is not None else x, jnp.float32)
    ctx = _prep_context(context, B, "context")
    g = float(guidance_scale)
    if not math.isfinite(g):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    cfg = g > 1.0  # the pipeline's do_classifier_free_guidance
    if cfg and uncond_context is None:
        raise ValueError("guidance_scale > 1 needs uncond_context (the unconditional embedding)")
    uctx = _prep_context(uncond_context, B, "uncond_context") if cfg else jnp.zeros((), ctx.dtype)
    e = float(eta)
    if not math.isfinite(e) or e < 0:
        raise ValueError(f"eta must be finite and >= 0, got {eta!r}")
    if e > 0 and key is None:
        raise ValueError("inpaint_sample with eta > 0 needs a PRNG `key`")
    key = jax.random.key(0) if key is None else key
    predictor, params = _split_predictor(unet)
    ts, a_cur, a_next = schedule.sampling_table(num_inference_steps)
    # blending after step i noises the known latents to timesteps[i + 1]; after the last: clean
    a_blend = np.append(schedule.alpha_at(ts[1:]), np.float32(1.0)).astype(np.float32)
    spec = _InpaintSpec(cfg=cfg, stochastic=e > 0, concat=bool(concat), blend=bool(blend),
                        prediction_type=schedule.prediction_type, clip_sample=schedule.clip_sample,
                        clip_sample_range=float(schedule.clip_sample_range))
    return _inpaint_loop(params, x, ctx, uctx, mask, masked, known, x, np.asarray(ts, np.int32),
                         np.asarray(a_cur, np.float32), np.asarray(a_next, np.float32), a_blend,
                         np.float32(g), np.float32(e), key, predictor=predictor, spec=spec)
