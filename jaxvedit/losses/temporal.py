"""Temporal consistency losses (paper 004, appendix C eq. 21-22; SPEC §3).

All functions are dtype-generic: they compute in the promoted floating dtype of their input
(float64 inputs stay float64 under ``jax.enable_x64``; bfloat16/float16 inputs are computed in
float32).
"""
from __future__ import annotations

import jax.numpy as jnp

__all__ = ["frame_similarities", "temporal_consistency_loss", "cross_timestep_loss"]

_MODES = ("tensor", "token")


def _as_float(x):
    x = jnp.asarray(x)
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return x.astype(dtype)


def _safe_norm(x, eps, axis=-1):
    # sqrt(max(|x|^2, eps^2)): equal to |x| whenever |x| >= eps, finite gradient at 0.
    sq = jnp.sum(x * x, axis=axis)
    return jnp.sqrt(jnp.maximum(sq, jnp.asarray(eps, x.dtype) ** 2))


def _cosine(a, b, eps, axis=-1):
    return jnp.sum(a * b, axis=axis) / (_safe_norm(a, eps, axis) * _safe_norm(b, eps, axis))


def frame_similarities(features, *, mode: str = "tensor", eps: float = 1e-8):
    """Cosine similarities of adjacent frames, ``s_t = cos(F_t, F_{t+1})``, shape ``(T-1,)``.

    ``features`` has shape ``(T, ...)``: one tensor per frame, any trailing shape.
    ``mode="tensor"``: cosine over the whole per-frame tensor (appendix eq. 21).
    ``mode="token"``: cosine per token over the last (channel) axis, averaged over tokens.
    Norms below ``eps`` are clamped to ``eps`` (the similarity of a zero frame is 0).
    """
    if mode not in _MODES:
        raise ValueError(f"frame_similarities: unknown mode {mode!r}; expected one of {_MODES}")
    f = _as_float(features)
    if f.ndim < 2:
        raise ValueError(
            f"frame_similarities: features must have shape (T, ...) with at least one feature "
            f"axis, got shape {f.shape}")
    T = f.shape[0]
    if mode == "tensor":
        f = f.reshape(T, -1)
        return _cosine(f[:-1], f[1:], eps)  # eq. 21
    f = f.reshape(T, -1, f.shape[-1])  # (T, tokens, C)
    return jnp.mean(_cosine(f[:-1], f[1:], eps), axis=-1)


def temporal_consistency_loss(features, *, mode: str = "tensor", eps: float = 1e-8):
    """``L_temporal = 1/(T-1) * sum_{t=2}^{T-1} (s_t - s_{t-1})^2`` (paper 004 eq. 22).

    ``features``: ``(T, ...)`` with ``T >= 3`` (fewer frames raise ``ValueError``; the sum
    would be empty and a silent zero would hide a data bug).
    """
    f = jnp.asarray(features)
    if f.ndim < 2 or f.shape[0] < 3:
        raise ValueError(
            "temporal_consistency_loss needs at least 3 frames (T >= 3) of shape (T, ...); "
            f"got shape {f.shape}")
    T = f.shape[0]
    s = frame_similarities(f, mode=mode, eps=eps)
    d = s[1:] - s[:-1]  # s_t - s_{t-1}, t = 2..T-1
    return jnp.sum(d * d) / (T - 1)  # eq. 22


def cross_timestep_loss(feats_a, feats_b, *, mode: str = "tensor", eps: float = 1e-8):
    """The authors' code variant: ``(cos(F1,F2)@t_a - cos(F1,F2)@t_b)^2``.

    ``feats_a``, ``feats_b``: features of the same pair of adjacent frames, shape ``(2, ...)``,
    at two diffusion timesteps. The cosine is taken over the real feature axes (the authors'
    code takes it over a size-1 axis, which always gives +-1).
    """
    a, b = jnp.asarray(feats_a), jnp.asarray(feats_b)
    if a.ndim < 2 or a.shape[0] != 2:
        raise ValueError(f"cross_timestep_loss: feats_a must have shape (2, ...), got {a.shape}")
    if b.shape != a.shape:
        raise ValueError(
            f"cross_timestep_loss: feats_a and feats_b must have the same shape, got "
            f"{a.shape} and {b.shape}")
    sa = frame_similarities(a, mode=mode, eps=eps)[0]
    sb = frame_similarities(b, mode=mode, eps=eps)[0]
    return (sa - sb) ** 2
