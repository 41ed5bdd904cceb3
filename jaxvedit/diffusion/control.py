"""A ControlNet-conditioned noise predictor for the compiled DDIM loops, with diffusers'
conditioning scale, guess mode and control guidance start/end.

:class:`ControlNetPredictor` wraps any predictor that accepts
``down_block_additional_residuals`` / ``mid_block_additional_residual`` (the UNet, a
``LoRAUNet``, the editor's ``EditPredictor``): each call first runs the ControlNet on the same
``(sample, timesteps, context)`` and the conditioning images, then the wrapped predictor with the
residuals added. It is an ``nnx.Module``: ``ddim_invert`` / ``ddim_sample`` split it, so the
ControlNet weights, the conditioning images, the scale and the keep table are arguments of the
compiled loop (new values, e.g. the next chunk's depth maps, reuse the compiled program).

The rules are those of diffusers' ``StableDiffusionControlNetPipeline.__call__`` (0.42):

- batch: the conditioning images hold one image per frame, ``(B, H, W, C)`` in ``[0, 1]``. A
  sample batch of ``2 B`` is classifier-free guidance (``[uncond; cond]``, the loops' order): the
  ControlNet then runs on both halves with the conditioning images twice, as the pipeline does;
- guess mode with guidance: the ControlNet runs on the conditional half only and the
  unconditional half gets zero residuals; the ControlNet's own guess-mode scaling
  (``logspace(-1, 0)``) applies;
- control guidance start/end: sampling step ``i`` of ``n`` keeps the ControlNet iff
  ``start <= i / n`` and ``(i + 1) / n <= end`` (diffusers' ``controlnet_keep``); the effective
  scale is ``conditioning_scale * keep``. The loops pass timesteps, not step indices, so the keep
  value is looked up per timestep in a table built from the sampling timesteps
  (:func:`control_keep_table`). DDIM inversion evaluates the UNet at the same timesteps in the
  reverse order, so an inversion step sees the keep value of the sampling step at its noise level.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["ControlNetPredictor", "control_keep", "control_keep_table", "prepare_control_image"]


def control_keep(num_inference_steps: int, start: float = 0.0, end: float = 1.0) -> np.ndarray:
    """diffusers' ``controlnet_keep``: ``1 - (i/n < start or (i+1)/n > end)`` for step ``i``."""
    check_guidance_window(start, end)
    n = int(num_inference_steps)
    return np.asarray([1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)], np.float32)


def check_guidance_window(start: float, end: float) -> None:
    """diffusers' checks of ``control_guidance_start`` / ``control_guidance_end``."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"control guidance start={start} and end={end} must satisfy "
                         "0 <= start < end <= 1")


def control_keep_table(schedule, num_inference_steps: int, start: float = 0.0,
                       end: float = 1.0) -> np.ndarray:
    """``(num_train_timesteps,)`` keep value per timestep: the keep of the sampling step at that
    timestep (a timestep that is not a sampling one takes the nearest sampling step's)."""
    ts = np.asarray(schedule.timesteps(num_inference_steps), np.int64)
    keep = control_keep(num_inference_steps, start, end)
    t_all = np.arange(int(schedule.num_train_timesteps))
    nearest = np.abs(t_all[:, None] - ts[None, :]).argmin(axis=1)
    return keep[nearest].astype(np.float32)


def prepare_control_image(images, size: tuple[int, int] | None = None) -> np.ndarray:
    """Conditioning images as the pipeline's ``control_image_processor`` makes them: ``(B, H, W,
    C)`` float32 in ``[0, 1]`` (uint8 is divided by 255; float input must already be in
    ``[0, 1]``); one-channel maps are repeated to three channels. ``size``: check ``(H, W)``."""
    if images is None:
        raise ValueError("missing conditioning image: the ControlNet needs one image per frame")
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"conditioning images must be (T, H, W[, C]), got shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
            raise ValueError(f"float conditioning images must lie in [0, 1], got range "
                             f"[{x.min():.3g}, {x.max():.3g}]")
    if size is not None and tuple(x.shape[1:3]) != tuple(size):
        raise ValueError(f"conditioning images are {x.shape[1]}x{x.shape[2]}, the frames "
                         f"{size[0]}x{size[1]}: they must have the frames' size")
    return x


class ControlNetPredictor(nnx.Module):
    """``eps = p(sample, timesteps, context, hooks=None)`` with ControlNet residuals.

    ``predictor``: called as ``predictor(sample, t, context, [hooks=...],
    down_block_additional_residuals=..., mid_block_additional_residual=...)``.
    ``cond``: ``(B, H, W, C)`` conditioning images (see :func:`prepare_control_image`); set the
    next chunk's with :meth:`set_condition` (same shape: the compiled loops are reused).
    ``keep_table``: :func:`control_keep_table` (``None``: always on).
    """

    def __init__(self, predictor, controlnet, cond=None, *, conditioning_scale: float = 1.0,
                 guess_mode: bool = False, keep_table=None, num_train_timesteps: int = 1000):
        self.predictor = predictor
        self.controlnet = controlnet
        self.cond = nnx.Variable(jnp.zeros((0,), jnp.float32) if cond is None
                                 else jnp.asarray(prepare_control_image(cond)))
        self.conditioning_scale = nnx.Variable(jnp.asarray(conditioning_scale, jnp.float32))
        table = np.ones(num_train_timesteps, np.float32) if keep_table is None else keep_table
        self.keep = nnx.Variable(jnp.asarray(table, jnp.float32))
        self.guess_mode = bool(guess_mode or controlnet.config.global_pool_conditions)

    def set_condition(self, cond) -> None:
        self.cond.value = jnp.asarray(prepare_control_image(cond))

    def residuals(self, sample, timesteps, encoder_hidden_states):
        """``(down, mid)`` residuals for one predictor call (see the module docstring)."""
        cond = self.cond.value
        if cond.ndim != 4:
            raise ValueError("missing conditioning image: ControlNetPredictor has none (give cond= "
                             "or call set_condition)")
        b, bc = sample.shape[0], cond.shape[0]
        if b == bc:
            cfg = False
        elif b == 2 * bc:
            cfg = True  # [uncond; cond] halves (classifier-free guidance)
        else:
            raise ValueError(f"{bc} conditioning images for a batch of {b} samples (expected one "
                             "per frame, the batch being the frames or [uncond; cond] frames)")
        t = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        keep = self.keep.value[jnp.clip(t.astype(jnp.int32), 0, self.keep.value.shape[0] - 1)]
        scale = self.conditioning_scale.value * keep  # (B,): diffusers' cond_scale of the step
        if cfg and self.guess_mode:
            down, mid = self.controlnet(sample[bc:], t[bc:], encoder_hidden_states[bc:], cond,
                                        conditioning_scale=scale[bc:], guess_mode=True)
            down = tuple(jnp.concatenate([jnp.zeros_like(d), d]) for d in down)
            mid = jnp.concatenate([jnp.zeros_like(mid), mid])
        else:
            c = jnp.concatenate([cond, cond]) if cfg else cond
            down, mid = self.controlnet(sample, t, encoder_hidden_states, c,
                                        conditioning_scale=scale, guess_mode=self.guess_mode)
        return down, mid

    def __call__(self, sample, timesteps, encoder_hidden_states, hooks=None):
        down, mid = self.residuals(sample, timesteps, encoder_hidden_states)
        kwargs = {} if hooks is None else {"hooks": hooks}
        return self.predictor(sample, timesteps, encoder_hidden_states,
                              down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, **kwargs)


def controlnet_residuals(controlnet, sample, timesteps, context, cond, *, conditioning_scale=1.0):
    """Plain ControlNet residuals (training: one call, no guidance): ``(down, mid)``."""
    out = controlnet(sample, timesteps, context, cond, conditioning_scale=conditioning_scale)
    return out.down_block_res_samples, out.mid_block_res_sample

