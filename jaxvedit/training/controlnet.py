"""ControlNets in training: a frozen ControlNet inside adapter training (the authors' setup), and
training a ControlNet itself (diffusers' ``examples/controlnet/train_controlnet.py``).

Adapter training (``python -m jaxvedit.train --controlnet PATH``): the ControlNet sits in the
trained model object as ``model.controlnet``; its weights are :class:`ControlNetParam`, not
``AdapterParam``, so they are part of the frozen state (arguments of the compiled step, never
updated, no optimizer state), as the authors freeze theirs (``main_ddp.py``:
``controlnet.requires_grad_(False)``). It sees the same noisy latents, timesteps and context
(prompt tokens + text) as the UNet and the clip's depth maps; its residuals go into the LoRA UNet.

ControlNet training (:func:`train_controlnet`): ``loss = || eps - unet(x_t, t, text;
controlnet(x_t, t, text, cond)) ||^2`` over a dataset of ``(latents, text embeddings,
conditioning image)``, the optimizer over :class:`ControlNetParam` only (selected by the
filter), the UNet frozen; defaults as ``train_controlnet.py``: AdamW lr 5e-6, betas (0.9, 0.999),
weight decay 1e-2, eps 1e-8, constant schedule, gradient clipping 1.0, uniform timesteps,
``proportion_empty_prompts`` 0. Initialise with
:func:`~jaxvedit.models.controlnet.controlnet_from_unet`; save with
:func:`~jaxvedit.models.controlnet_io.save_controlnet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxvedit.adapters.prompt_tokens import drop_text_condition
from jaxvedit.adapters.train import AdapterTrainState, init_adapter_training, make_adapter_train_step
from jaxvedit.diffusion.ddim import add_noise
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.models.controlnet import ControlNetModel, ControlNetParam, check_controlnet_fits_unet

__all__ = [
    "ControlNetParam", "ControlNetTrainModel", "controlnet_optimizer", "controlnet_loss_fn",
    "init_controlnet_training", "make_controlnet_train_step", "array_batches", "train_controlnet",
    "control_images", "residual_kwargs", "check_training_depth",
]


# ----------------------------------------------------------------------------------------------
# a frozen ControlNet inside adapter training


def control_images(cond) -> jax.Array:
    """Conditioning images for the ControlNet: uint8 -> ``[0, 1]`` float32 (as the pipelines'
    ``control_image_processor`` and ``train_controlnet.py``'s ``ToTensor``); float kept."""
    cond = jnp.asarray(cond)
    if cond.dtype == jnp.uint8:
        return cond.astype(jnp.float32) / 255.0
    return cond.astype(jnp.float32)


def residual_kwargs(controlnet, x_t, timesteps, context, cond, conditioning_scale=1.0) -> dict:
    """``{down_block_additional_residuals, mid_block_additional_residual}`` for a UNet call."""
    if controlnet is None:
        return {}
    if cond is None:
        raise ValueError("missing conditioning image: the ControlNet needs a depth map per frame "
                         "(batch['depth'])")
    down, mid = controlnet(x_t, timesteps, context, control_images(cond),
                           conditioning_scale=conditioning_scale)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def check_training_depth(dataset, controlnet_path: str) -> None:
    """Every training video needs depth maps when a ControlNet is used: name the ones without."""
    missing = [str(v.record.path) for v in dataset.videos if v.depth is None]
    if missing:
        problems = getattr(dataset, "depth_problems", {})
        why = "; ".join(f"{m}: {problems[m]}" for m in missing[:3] if m in problems)
        raise ValueError(f"--controlnet {controlnet_path} needs a depth map per frame, but "
                         f"{len(missing)} training video(s) have none (e.g. {missing[:3]})"
                         + (f" [{why}]" if why else "") + ": put them in <data>/depth/{video stem} "
                         "or use --depth auto")


# ----------------------------------------------------------------------------------------------
# training a ControlNet


class ControlNetTrainModel(nnx.Module):
    """The frozen UNet and the ControlNet being trained (``ControlNetParam``: the trained subset)."""

    def __init__(self, unet, controlnet: ControlNetModel):
        check_controlnet_fits_unet(controlnet, unet)
        self.unet = unet
        self.controlnet = controlnet


def controlnet_optimizer(learning_rate: float = 5e-6, *, warmup_steps: int = 0,
                         weight_decay: float = 1e-2, b1: float = 0.9, b2: float = 0.999,
                         eps: float = 1e-8, clip_norm: float | None = 1.0,
                         accumulate: int = 1) -> optax.GradientTransformation:
    """``train_controlnet.py``'s defaults: AdamW(5e-6, (0.9, 0.999), wd 1e-2, eps 1e-8),
    constant learning rate (``--lr_scheduler constant``; ``warmup_steps`` > 0 gives
    ``constant_with_warmup``), ``max_grad_norm`` 1.0, gradient accumulation ``accumulate``."""
    lr = (optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                                optax.constant_schedule(learning_rate)], [warmup_steps])
          if warmup_steps > 0 else learning_rate)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    tx = optax.chain(*parts)
    return optax.MultiSteps(tx, every_k_schedule=accumulate) if accumulate > 1 else tx


def controlnet_loss_fn(schedule: NoiseSchedule, *, empty_text=None,
                       proportion_empty_prompts: float = 0.0, conditioning_scale: float = 1.0):
    """``loss_fn(model: ControlNetTrainModel, batch, key) -> (loss, aux)``.

    ``batch``: ``latents (B, h, w, C)`` (scaled VAE latents), ``text (B, L, D)`` (text-encoder
    hidden states), ``cond (B, H, W, 3)`` uint8 or ``[0, 1]`` float (``H = 8 h``). One uniform
    timestep per sample, Gaussian noise, MSE against the scheduler's target (``epsilon``: the
    noise; ``v_prediction``: the velocity), as ``train_controlnet.py``. Text dropout to
    ``empty_text`` with probability ``proportion_empty_prompts`` (its ``--proportion_empty_prompts``).
    """
    if proportion_empty_prompts and empty_text is None:
        raise ValueError("proportion_empty_prompts > 0 needs empty_text (the empty-prompt embedding)")
    n_train = schedule.num_train_timesteps
    acp = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    kind = schedule.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise ValueError(f"ControlNet training supports epsilon / v_prediction, not {kind!r}")

    def loss_fn(model: ControlNetTrainModel, batch, key):
        lat = jnp.asarray(batch["latents"], jnp.float32)
        if "cond" not in batch or batch["cond"] is None:
            raise ValueError("missing conditioning image: the ControlNet batch needs 'cond'")
        b = lat.shape[0]
        k_t, k_n, k_d = jax.random.split(key, 3)
        t = jax.random.randint(k_t, (b,), 0, n_train)
        noise = jax.random.normal(k_n, lat.shape, jnp.float32)
        x_t = add_noise(schedule, lat, noise, t)
        text = jnp.asarray(batch["text"])
        if proportion_empty_prompts:
            text = drop_text_condition(k_d, text, empty_text, proportion_empty_prompts)
        kwargs = residual_kwargs(model.controlnet, x_t, t, text, batch["cond"], conditioning_scale)
        pred = model.unet(x_t, t, text, **kwargs).astype(jnp.float32)
        if kind == "epsilon":
            target = noise
        else:  # diffusers' get_velocity
            a = acp[t].reshape(-1, 1, 1, 1)
            target = jnp.sqrt(a) * noise - jnp.sqrt(1 - a) * lat
        loss = jnp.mean(jnp.square(pred - target))
        return loss, {"diffusion": loss}

    return loss_fn


def init_controlnet_training(unet, controlnet: ControlNetModel,
                             tx: optax.GradientTransformation | None = None
                             ) -> tuple[ControlNetTrainModel, AdapterTrainState]:
    """``(model, state)``: the optimizer state covers the ControlNet's parameters only."""
    model = ControlNetTrainModel(unet, controlnet)
    state = init_adapter_training(model, tx if tx is not None else controlnet_optimizer(),
                                  wrt=ControlNetParam)
    return model, state


def make_controlnet_train_step(loss_fn: Callable, state: AdapterTrainState):
    """One jitted step ``(params, frozen, opt_state, batch, key) -> (params, opt_state, loss, aux)``
    (the ControlNet state is donated; the UNet's is a plain argument)."""
    return make_adapter_train_step(loss_fn, state)


def array_batches(latents, text, cond, batch_size: int, *, seed: int = 0) -> Iterator[dict]:
    """Endless random batches from arrays: ``latents (N, h, w, C)``, ``text (N, L, D)`` (or
    ``(L, D)`` shared), ``cond (N, H, W, 3)``. Batch ``i`` depends only on ``(seed, i)``."""
    latents, cond = np.asarray(latents), np.asarray(cond)
    text = np.asarray(text)
    n = len(latents)
    if len(cond) != n or (text.ndim == 3 and len(text) != n):
        raise ValueError(f"{n} latents, {len(cond)} conditioning images and "
                         f"{len(text) if text.ndim == 3 else 'shared'} text embeddings: counts differ")
    i = 0
    while True:
        rng = np.random.default_rng([seed, i])
        idx = rng.integers(0, n, batch_size)
        yield {"latents": latents[idx], "cond": cond[idx],
               "text": text[idx] if text.ndim == 3 else np.broadcast_to(text, (batch_size,) + text.shape)}
        i += 1


def train_controlnet(unet, controlnet: ControlNetModel, batches: Iterable[dict], *, steps: int,
                     schedule: NoiseSchedule | None = None,
                     tx: optax.GradientTransformation | None = None, seed: int = 0,
                     empty_text=None, proportion_empty_prompts: float = 0.0,
                     log_every: int = 10, log: Callable[[str], None] | None = None,
                     callback: Callable[[int, float], None] | None = None) -> dict:
    """Train ``controlnet`` (in place) against the frozen ``unet`` for ``steps`` optimizer steps.

    ``batches``: an iterable of dicts (see :func:`controlnet_loss_fn`; e.g. :func:`array_batches`).
    Returns ``{"losses": [...], "steps": n, "seconds": s}``; ``controlnet`` holds the trained
    weights afterwards (``save_controlnet`` writes it as a diffusers folder).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    schedule = schedule or NoiseSchedule.sd15()
    model, state = init_controlnet_training(unet, controlnet, tx)
    loss_fn = controlnet_loss_fn(schedule, empty_text=empty_text,
                                 proportion_empty_prompts=proportion_empty_prompts)
    step = make_controlnet_train_step(loss_fn, state)
    key = jax.random.key(seed)
    losses = []
    t0 = time.perf_counter()
    it = iter(batches)
    for i in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            raise ValueError(f"the batches ran out after {i} of {steps} steps") from None
        loss, _ = state.step(step, {k: jnp.asarray(v) for k, v in batch.items()},
                             jax.random.fold_in(key, i))
        losses.append(float(loss))
        if callback is not None:
            callback(i + 1, losses[-1])
        if log is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
            log(f"controlnet step {i + 1}/{steps}: loss {np.mean(losses[-log_every:]):.5f}")
    state.write_back(model)
    return {"losses": losses, "steps": steps, "seconds": time.perf_counter() - t0}
