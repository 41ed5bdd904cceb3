"""DDIM / DDPM update rules as pure JAX functions (jit- and scan-friendly).

All functions take the cumulative alpha products explicitly or look them up in a
:class:`~jaxvedit.diffusion.schedules.NoiseSchedule` with (possibly traced) integer timesteps.
They reproduce diffusers' ``DDIMScheduler.step`` / ``DDIMInverseScheduler.step`` /
``add_noise`` operation for operation (float32), which the parity tests check over whole
50-step trajectories.

Notation: ``a`` is a cumulative product ``alphas_cumprod`` ("alpha bar"); a step goes from the
noise level ``a_from`` of the current sample to ``a_to``. Sampling goes ``a_from < a_to``
(towards clean), inversion ``a_from > a_to``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvedit.diffusion.schedules import NoiseSchedule

__all__ = [
    "ddim_step_from_alphas",
    "ddim_step",
    "ddim_sample_step",
    "ddim_inversion_step",
    "predict_x0_eps",
    "add_noise",
    "ddim_variance",
]


def _bcast(a, x):
    """Alpha(s) as ``x.dtype``, shaped to broadcast against ``x``: a scalar, or ``(B,)`` ->
    ``(B, 1, ..., 1)``."""
    a = jnp.asarray(a, dtype=jnp.result_type(x))
    if a.ndim == 1 and x.ndim > 1:
        a = a.reshape((-1,) + (1,) * (x.ndim - 1))
    return a


def ddim_step_from_alphas(x, eps, alpha_prod_from, alpha_prod_to):
    """Deterministic DDIM update (DDIM paper eq. 12 with sigma=0; our deterministic version of
    paper 004 eq. 8/12, see ``docs/diffusion.md``)::

        sqrt(a_to) * (x - sqrt(1 - a_from) * eps) / sqrt(a_from) + sqrt(1 - a_to) * eps

    Sampling uses it with ``a_from = abar_t, a_to = abar_prev``; inversion with the pair
    reversed. Alphas are scalars or per-sample ``(B,)``.
    """
    a_from = _bcast(alpha_prod_from, x)
    a_to = _bcast(alpha_prod_to, x)
    x0 = (x - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps


def predict_x0_eps(sample, model_output, alpha_prod_t, prediction_type: str = "epsilon"):
    """``(pred_original_sample, pred_epsilon)`` from a model output, as diffusers' DDIM."""
    a = _bcast(alpha_prod_t, sample)
    b = 1 - a
    if prediction_type == "epsilon":
        return (sample - b**0.5 * model_output) / a**0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - a**0.5 * model_output) / b**0.5
    if prediction_type == "v_prediction":
        return a**0.5 * sample - b**0.5 * model_output, a**0.5 * model_output + b**0.5 * sample
    raise ValueError(
        f"prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}"
    )


def ddim_variance(alpha_prod_t, alpha_prod_t_prev):
    """DDIM eq. 16 variance ``(1 - a_prev)/(1 - a_t) * (1 - a_t / a_prev)`` (diffusers'
    ``_get_variance``); ``std = eta * sqrt(variance)``."""
    return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def ddim_step(
    sample,
    model_output,
    alpha_prod_t,
    alpha_prod_t_prev,
    *,
    eta=0.0,
    noise=None,
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    stochastic: bool | None = None,
):
    """One general DDIM step from noise level ``alpha_prod_t`` to ``alpha_prod_t_prev``
    (``DDIMScheduler.step`` given the two alphas; also the inverse step with eta 0).

    ``noise`` (same shape as ``sample``) is the variance noise, needed when ``eta > 0``.
    ``stochastic`` (static) chooses whether the eta/variance terms are built at all; by default
    it is ``noise is not None``. With ``stochastic=False`` the update never divides by
    ``1 - alpha_prod_t`` (safe when ``alpha_prod_t == 1``, e.g. the first inverse step with
    ``set_alpha_to_one``).
    """
    if stochastic is None:
        stochastic = noise is not None
    x0, eps = predict_x0_eps(sample, model_output, alpha_prod_t, prediction_type)
    if clip_sample:
        x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
    a_prev = _bcast(alpha_prod_t_prev, sample)
    if not stochastic:
        # diffusers' arithmetic: sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps  (DDIM eq. 12, sigma=0)
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    if noise is None:
        raise ValueError(
            "a stochastic DDIM step (eta > 0) needs `noise` (or use ddim_sample_step with a key)"
        )
    a_t = _bcast(alpha_prod_t, sample)
    std = jnp.asarray(eta, a_t.dtype) * ddim_variance(a_t, a_prev) ** 0.5
    direction = (1 - a_prev - std**2) ** 0.5 * eps
    return a_prev**0.5 * x0 + direction + std * noise


def _alpha_lookup(schedule: NoiseSchedule, t):
    acp = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    t = jnp.asarray(t, jnp.int32)
    final = jnp.asarray(schedule.final_alpha_cumprod, jnp.float32)
    return jnp.where(t >= 0, acp[jnp.clip(t, 0, acp.shape[0] - 1)], final)


def _eta_is_zero(eta) -> bool:
    try:
        return float(eta) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False  # traced eta: build the stochastic branch


def ddim_sample_step(
    schedule: NoiseSchedule,
    sample,
    model_output,
    timestep,
    num_inference_steps: int,
    *,
    eta=0.0,
    key=None,
    noise=None,
):
    """``DDIMScheduler.step(model_output, timestep, sample, eta)``: from ``t`` to
    ``t - T // num_inference_steps`` (``final_alpha_cumprod`` below 0).

    With ``eta > 0`` the variance noise is ``noise`` if given, else
    ``jax.random.normal(key, sample.shape, sample.dtype)``.
    """
    T = schedule.num_train_timesteps
    t = jnp.asarray(timestep, jnp.int32)
    prev = t - T // int(num_inference_steps)
    a_t = _alpha_lookup(schedule, t)
    a_prev = _alpha_lookup(schedule, prev)
    stochastic = not _eta_is_zero(eta)
    if stochastic and noise is None:
        if key is None:
            raise ValueError("ddim_sample_step with eta > 0 needs a PRNG `key` or `noise`")
        noise = jax.random.normal(key, sample.shape, jnp.result_type(sample))
    return ddim_step(
        sample,
        model_output,
        a_t,
        a_prev,
        eta=eta,
        noise=noise if stochastic else None,
        prediction_type=schedule.prediction_type,
        clip_sample=schedule.clip_sample,
        clip_sample_range=schedule.clip_sample_range,
        stochastic=stochastic,
    )


def ddim_inversion_step(
    schedule: NoiseSchedule, sample, model_output, timestep, num_inference_steps: int
):
    """``DDIMInverseScheduler.step(model_output, timestep, sample)``: the sample sits at
    ``from = min(t - T // n, T - 1)`` (``final_alpha_cumprod``, i.e. diffusers'
    ``initial_alpha_cumprod``, below 0) and moves to ``t``; the model output was computed at
    ``t``, as in diffusers' inversion pipelines."""
    T = schedule.num_train_timesteps
    t = jnp.asarray(timestep, jnp.int32)
    frm = jnp.minimum(t - T // int(num_inference_steps), T - 1)
    return ddim_step(
        sample,
        model_output,
        _alpha_lookup(schedule, frm),
        _alpha_lookup(schedule, t),
        prediction_type=schedule.prediction_type,
        clip_sample=schedule.clip_sample,
        clip_sample_range=schedule.clip_sample_range,
        stochastic=False,
    )


def add_noise(schedule, original_samples, noise, timesteps):
    """DDPM forward process ``q(x_t | x_0)``: ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``
    (diffusers' ``add_noise``). ``schedule`` is a :class:`NoiseSchedule` or an
    ``alphas_cumprod`` array; ``timesteps`` a scalar or ``(B,)`` integer array."""
    acp = schedule.alphas_cumprod if isinstance(schedule, NoiseSchedule) else schedule
    x = jnp.asarray(original_samples)
    acp = jnp.asarray(acp, dtype=jnp.result_type(x))
    a = acp[jnp.asarray(timesteps, jnp.int32)].reshape(-1)
    a = a.reshape((-1,) + (1,) * (x.ndim - 1))
    return a**0.5 * x + (1 - a) ** 0.5 * noise
