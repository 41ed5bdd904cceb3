"""GroupNorm (+ an optional fused SiLU) with a hand-written backward: a speed lever of issue 15.

``layers.GroupNorm`` normalises in float32 and lets JAX differentiate it; under autodiff XLA
then keeps float32 intermediates of activation size (``x - mean``, the normalised ``x``) for the
backward pass and the SiLU that follows the norm in every ResNet block is a separate op with its
own saved input. :func:`group_norm` is the same function as a ``jax.custom_vjp``:

- forward: the per-(sample, group) statistics in float32 (``two-pass`` or ``one-pass`` as
  ``layers.norm_statistics``), folded with gamma into one per-(sample, channel) scale
  ``a = rstd * gamma``, then ``y = silu?((x - mean) * a + beta)`` written in the compute dtype:
  one elementwise pass over ``x`` after the statistics (``x - mean`` first, so no cancellation
  when ``|mean| >> std``);
- residuals: ``x`` (its own dtype), ``mean`` and ``rstd`` (float32, one value per sample and
  group), gamma and beta; nothing float32 of activation size;
- backward: recomputes ``xhat = (x - mean) * rstd`` and ``z = xhat * gamma + beta``, takes the
  gradient through the SiLU (``silu'(z) = s (1 + z (1 - s))``, ``s = sigmoid(z)``) and applies
  the standard GroupNorm backward, from two per-(sample, channel) sums of one read of ``(x, dy)``:
  ``s1 = sum_hw dz``, ``s2 = sum_hw dz * xhat``; ``dbeta = sum_n s1``, ``dgamma = sum_n s2`` and,
  with ``m = H W C/G`` the group size,
  ``dx = rstd * (gamma dz - sum_g(gamma s1) / m - xhat sum_g(gamma s2) / m)``.

Selected by ``JAXVEDIT_GROUPNORM`` (or :func:`groupnorm_implementation`, read while tracing, as
``JAXVEDIT_NORM_STATS``): ``xla`` (the default: ``layers.GroupNorm``'s own code, bit-identical)
or ``custom-vjp`` (this module). ``layers.GroupNorm`` keeps its plain path whenever a DAPE norm
context is active (tuned norms replace the affine part). No PyTorch reference applies: the
function is ``torch.nn.GroupNorm`` (+ ``F.silu``); tests/test_groupnorm_kernels.py checks values
and gradients against a float64 NumPy transcription and against the plain path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxvedit.models.trace_choice import TraceChoice

GROUPNORM_IMPLEMENTATIONS = ("xla", "custom-vjp")
_GROUPNORM = TraceChoice("GroupNorm implementation", "JAXVEDIT_GROUPNORM", GROUPNORM_IMPLEMENTATIONS, "xla")


def groupnorm_implementation(mode: str | None):
    """GroupNorm's implementation in the forward passes *traced* inside this context: ``"xla"``
    (``layers.GroupNorm``'s plain code) or ``"custom-vjp"`` (:func:`group_norm`). ``None``: the
    process default, ``JAXVEDIT_GROUPNORM`` or ``"xla"``."""
    return _GROUPNORM.use(mode)


def current_implementation() -> str:
    """The implementation in force (context, then ``JAXVEDIT_GROUPNORM``, then ``"xla"``)."""
    return _GROUPNORM.get()


def grouped(x, groups: int):
    """``(N, ..., C)`` -> ``(N, M, G, C/G)`` (``M`` the spatial size); also ``layers.GroupNorm``'s."""
    c = x.shape[-1]
    return x.reshape(x.shape[0], -1, groups, c // groups)


def mean_var(xf, axis, one_pass: bool):
    """Mean and (biased) variance of ``xf`` over ``axis``, kept dims: two-pass
    ``mean((x - mean)**2)`` or one-pass ``mean(x**2) - mean**2`` clamped at 0 (the two forms of
    ``layers.norm_statistics``; also ``layers``' GroupNorm and LayerNorm statistics)."""
    mean = xf.mean(axis=axis, keepdims=True)
    if one_pass:
        return mean, jnp.maximum(jnp.square(xf).mean(axis=axis, keepdims=True) - jnp.square(mean), 0.0)
    return mean, jnp.square(xf - mean).mean(axis=axis, keepdims=True)


def _stats(xg, eps: float, one_pass: bool):
    """Float32 per-(sample, group) mean and rstd, shape ``(N, 1, G, 1)``."""
    mean, var = mean_var(xg.astype(jnp.float32), (1, 3), one_pass)
    return mean, jax.lax.rsqrt(var + eps)


def _forward(x, gamma, beta, groups, eps, silu, one_pass, out_dtype):
    xg = grouped(x, groups)
    mean, rstd = _stats(xg, eps, one_pass)
    a = rstd * gamma.astype(jnp.float32).reshape(1, 1, groups, -1)  # (N, 1, G, C/G)
    z = (xg.astype(jnp.float32) - mean) * a + beta.astype(jnp.float32).reshape(1, 1, groups, -1)
    if silu:
        z = jax.nn.silu(z)
    return z.astype(out_dtype).reshape(x.shape), (mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def group_norm(x, gamma, beta, groups: int, eps: float, silu: bool = False,
               one_pass: bool = False, out_dtype=None):
    """``silu?(GroupNorm(x) * gamma + beta)`` over the last (channel) axis of ``x (N, ..., C)``,
    statistics in float32, output in ``out_dtype`` (None: ``x``'s dtype). Exact gradients for
    ``x``, ``gamma``, ``beta`` by the hand-written backward of the module docstring."""
    return _forward(x, gamma, beta, groups, eps, silu, one_pass, out_dtype or x.dtype)[0]


def _fwd(x, gamma, beta, groups, eps, silu, one_pass, out_dtype):
    y, (mean, rstd) = _forward(x, gamma, beta, groups, eps, silu, one_pass, out_dtype or x.dtype)
    return y, (x, mean, rstd, gamma, beta)


def _bwd(groups, eps, silu, one_pass, out_dtype, res, dy):
    x, mean, rstd, gamma, beta = res
    xg = grouped(x, groups)
    xhat = (xg.astype(jnp.float32) - mean) * rstd
    g = gamma.astype(jnp.float32).reshape(1, 1, groups, -1)
    dz = grouped(dy, groups).astype(jnp.float32)
    if silu:
        z = xhat * g + beta.astype(jnp.float32).reshape(1, 1, groups, -1)
        s = jax.nn.sigmoid(z)
        dz = dz * (s * (1.0 + z * (1.0 - s)))
    s1 = dz.sum(axis=1, keepdims=True)  # (N, 1, G, C/G)
    s2 = (dz * xhat).sum(axis=1, keepdims=True)
    m = xg.shape[1] * xg.shape[3]
    c1 = (g * s1).sum(axis=3, keepdims=True) / m  # mean over the group of d(xhat)
    c2 = (g * s2).sum(axis=3, keepdims=True) / m  # mean over the group of d(xhat) * xhat
    dx = rstd * (g * dz - c1 - xhat * c2)
    dgamma = s2.sum(axis=(0, 1)).reshape(gamma.shape).astype(gamma.dtype)
    dbeta = s1.sum(axis=(0, 1)).reshape(beta.shape).astype(beta.dtype)
    return dx.astype(x.dtype).reshape(x.shape), dgamma, dbeta


group_norm.defvjp(_fwd, _bwd)
