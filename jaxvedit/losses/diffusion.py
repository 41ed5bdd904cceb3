"""Diffusion (noise-prediction) loss: ``L_diff = MSE(eps, eps_theta(x_t, t, c))`` (SPEC §3)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["diffusion_loss"]


def diffusion_loss(pred, target, *, mask=None, per_sample: bool = False):
    """Mean squared error between the predicted and the true noise (or v / x0 target).

    Computed in float32 (or wider if the inputs are wider). ``mask``: optional weights
    broadcastable to ``pred`` (e.g. a spatial mask ``(B, H, W, 1)``): the loss is then
    ``sum(mask * err) / sum(mask * ones)``, the mean over the weighted elements.
    ``per_sample=True`` returns one value per batch entry ``(B,)`` instead of the mean.
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"diffusion_loss: prediction {pred.shape} and target {target.shape} "
                         "differ in shape")
    dtype = jnp.promote_types(jnp.promote_types(pred.dtype, target.dtype), jnp.float32)
    err = jnp.square(pred.astype(dtype) - target.astype(dtype))
    axes = tuple(range(1, err.ndim)) if per_sample else None
    if mask is None:
        return jnp.mean(err, axis=axes)
    w = jnp.broadcast_to(jnp.asarray(mask, dtype), err.shape)
    return jnp.sum(w * err, axis=axes) / jnp.maximum(jnp.sum(w, axis=axes), 1e-12)
