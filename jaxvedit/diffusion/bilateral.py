"""Bilateral filters of the bilateral DDIM inversion (paper 004, SCD blocks, eq. 9-11).

Two forms (SPEC §4):

``latent`` -- :func:`bilateral_filter_latent`: the paper's filter on the noisy latent x_t,
spatial, per channel ("channel-dependent": range weights compare values *within* one channel),
Gaussian spatial weight over a ``(2r+1) x (2r+1)`` window (``window="disk"`` keeps only offsets
with ``dy^2 + dx^2 <= r^2``, OpenCV's window), edge (replicate) padding::

    O_p = sum_q Gs(p - q) Gr(I_p - I_q) I_q / sum_q Gs(p - q) Gr(I_p - I_q)        (eq. 9)
    Gs(d) = exp(-|d|^2 / (2 sigma_spatial^2))                                     (eq. 10)
    Gr(v) = exp(-v^2 / (2 sigma_range^2))                                         (eq. 11)

``features`` -- :func:`bilateral_filter_frames`: the authors' code (``BFHooker`` in
``codepassionor/Tokenflow_adapter``): a 1-D bilateral filter along axis 0 (= frames), applied
independently to every other element (every token and channel of an attention output), the range
weight comparing the *scalar* values of that element in the two frames; reflect padding.

Both are jit-compiled; the window loop is unrolled at trace time (radius is static). Outputs are
computed as ``I_p + sum_q w_q (I_q - I_p) / sum_q w_q`` -- algebraically eq. 9, but a constant
input is returned bit-exactly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bilateral_filter_latent", "bilateral_filter_frames", "gaussian_blur_latent"]

_RANGE_MODES = ("absolute", "relative")
_WINDOWS = ("square", "disk")


# --------------------------------------------------------------------------- checks


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_sigma(name: str, value, allow_inf: bool = False) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value, dtype=np.float64)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    v = float(v)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        what = "> 0" + ("" if allow_inf else " and finite")
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _check_finite(x, name: str = "x") -> None:
    if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")


def _as_float(x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_window_args(radius, sigma_spatial, sigma_range, range_mode, window) -> None:
    """The arguments of the spatial (latent) window filters: this one and the symmetric filter."""
    if isinstance(radius, bool) or int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    _check_sigma("sigma_spatial", sigma_spatial)
    _check_sigma("sigma_range", sigma_range, allow_inf=True)
    if range_mode not in _RANGE_MODES:
        raise ValueError(f"range_mode must be one of {_RANGE_MODES}, got {range_mode!r}")
    if window not in _WINDOWS:
        raise ValueError(f"window must be one of {_WINDOWS}, got {window!r}")


def _as_batched(x, what: str):
    """x as float (B, H, W, C) and whether it was (H, W, C); ``what`` starts the rank error."""
    x = _as_float(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{what} rank 3 (H,W,C) or 4 (B,H,W,C), got rank {x.ndim}")
    return (x[None], True) if x.ndim == 3 else (x, False)


# --------------------------------------------------------------------------- latent form


def _spatial_offsets(radius: int, window: str):
    offs = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if window == "disk" and dy * dy + dx * dx > radius * radius:
                continue
            offs.append((dy, dx))
    return offs


def _spatial_weight(dist2: int, ss):
    """eq. 10: exp(-|d|^2 / (2 sigma_spatial^2)); exactly 1 at the centre for any sigma."""
    if dist2 == 0:
        return 1.0
    return jnp.exp(-0.5 * (jnp.asarray(dist2, ss.dtype) / ss) / ss)


def _range_weight(d, sr):
    """eq. 11: exp(-d^2 / (2 sigma_range^2)); exactly 1 where d == 0 for any sigma in (0, inf]
    (no 0 * inf), all ones for sigma_range = inf (plain Gaussian blur)."""
    z = jnp.where(d == 0, jnp.zeros_like(d), d / sr)
    return jnp.exp(-0.5 * z * z)


def _bilateral_weight(dist2: int, d, ss, sr):
    """Gs(p - q) Gr(I_q - I_p) (eq. 10-11) of the neighbour at squared distance ``dist2`` whose
    value differs by ``d``; every filter of this package and of symmetric_bilateral uses it."""
    return _spatial_weight(dist2, ss) * _range_weight(d, sr)


def _range_sigma(x, sigma_range, relative: bool):
    """sigma_range as an array of x's dtype; ``relative``: times the per-image, per-channel std
    of x (B, H, W, C) -> (B, 1, 1, C), a constant channel counting as std 1."""
    sr = jnp.asarray(sigma_range, x.dtype)
    if relative:
        std = jnp.std(x, axis=(1, 2), keepdims=True)  # (B,1,1,C): per frame, per channel
        sr = sr * jnp.where(std > 0, std, jnp.ones_like(std))
    return sr


def _normalised_sum(xf, neighbours, ss, sr):
    """eq. 9 over ``neighbours`` = (|p - q|^2, I_q) pairs, as I_p + sum_q w_q (I_q - I_p) /
    sum_q w_q (a constant input comes back bit-exactly)."""
    num = jnp.zeros_like(xf)
    den = jnp.zeros_like(xf)
    for dist2, nb in neighbours:
        d = nb - xf
        w = _bilateral_weight(dist2, d, ss, sr)
        num = num + w * d
        den = den + w
    return xf + num / den


@functools.partial(jax.jit, static_argnames=("radius", "relative", "window"))
def _bilateral_latent(x, sigma_spatial, sigma_range, *, radius: int, relative: bool, window: str):
    """x (B, H, W, C) -> filtered, same shape/dtype."""
    dtype = x.dtype
    xf = x.astype(jnp.promote_types(dtype, jnp.float32))
    B, H, W, C = xf.shape
    r = radius
    xp = jnp.pad(xf, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    sr = _range_sigma(xf, sigma_range, relative)
    ss = jnp.asarray(sigma_spatial, xf.dtype)
    nbs = ((dy * dy + dx * dx, jax.lax.dynamic_slice(xp, (0, r + dy, r + dx, 0), (B, H, W, C)))
           for dy, dx in _spatial_offsets(r, window))
    return _normalised_sum(xf, nbs, ss, sr).astype(dtype)


def bilateral_filter_latent(
    x,
    *,
    radius: int = 2,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
    range_mode: str = "absolute",
    window: str = "square",
):
    """Spatial, per-channel bilateral filter of latents (paper 004 eq. 9-11).

    Args:
        x: ``(B, H, W, C)`` or ``(H, W, C)``, channels-last. Each image and each channel is
            filtered on its own.
        radius: window half-width r >= 1 (window ``(2r+1)^2``, or the disk ``dy^2+dx^2 <= r^2``).
        sigma_spatial: spatial Gaussian sigma in pixels (> 0).
        sigma_range: range Gaussian sigma (> 0; ``inf`` gives the normalised Gaussian blur).
            In latent units (``range_mode="absolute"``) or as a multiple of each image's
            per-channel standard deviation (``"relative"``; a constant channel uses std 1).
        window: ``"square"`` (default) or ``"disk"`` (OpenCV's ``cv2.bilateralFilter`` window).

    Edge (replicate) padding. Input checks raise ``ValueError``; the finite-values check needs a
    concrete array (under an outer ``jit`` it is skipped).
    """
    x4, squeeze = _as_batched(x, "bilateral_filter_latent expects")
    _check_window_args(radius, sigma_spatial, sigma_range, range_mode, window)
    _check_finite(x4)
    out = _bilateral_latent(
        x4,
        jnp.asarray(sigma_spatial, jnp.float32),
        jnp.asarray(sigma_range, jnp.float32),
        radius=int(radius),
        relative=range_mode == "relative",
        window=window,
    )
    return out[0] if squeeze else out


def gaussian_blur_latent(x, *, radius: int = 2, sigma_spatial: float = 1.0, window: str = "square"):
    """The ``sigma_range -> inf`` limit of :func:`bilateral_filter_latent`: a normalised
    Gaussian blur over the same window, edge-padded (separate code path, for tests)."""
    x = _as_float(x)
    squeeze = x.ndim == 3
    x4 = x[None] if squeeze else x
    r = int(radius)
    xp = jnp.pad(x4, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    B, H, W, C = x4.shape
    offs = _spatial_offsets(r, window)
    ws = np.array([math.exp(-(dy * dy + dx * dx) / (2.0 * sigma_spatial**2)) for dy, dx in offs])
    ws = ws / ws.sum()
    out = sum(
        float(w) * xp[:, r + dy : r + dy + H, r + dx : r + dx + W, :] for w, (dy, dx) in zip(ws, offs)
    )
    return out[0] if squeeze else out


# --------------------------------------------------------------------------- features form


@functools.partial(jax.jit, static_argnames=("radius",))
def _bilateral_frames(x, sigma_spatial, sigma_range, *, radius: int):
    dtype = x.dtype
    xf = x.astype(jnp.promote_types(dtype, jnp.float32))
    T = xf.shape[0]
    r = radius
    pad = [(r, r)] + [(0, 0)] * (xf.ndim - 1)
    xp = jnp.pad(xf, pad, mode="reflect") if T > 1 else jnp.pad(xf, pad, mode="edge")
    sr = jnp.asarray(sigma_range, xf.dtype)
    ss = jnp.asarray(sigma_spatial, xf.dtype)
    nbs = ((k * k, jax.lax.slice_in_dim(xp, r + k, r + k + T, axis=0)) for k in range(-r, r + 1))
    return _normalised_sum(xf, nbs, ss, sr).astype(dtype)


def bilateral_filter_frames(x, *, kernel_size: int = 5, sigma_spatial: float = 1.0, sigma_range: float = 1.0):
    """1-D bilateral filter along axis 0 (frames), the authors' feature-space filter.

    For every index ``i`` of the trailing axes (every token and channel of an attention output
    ``(T, N, C)``), the sequence ``x[:, i]`` over frames is filtered with weights
    ``exp(-k^2 / (2 sigma_spatial^2)) * exp(-(x[t+k, i] - x[t, i])^2 / (2 sigma_range^2))``,
    ``|k| <= kernel_size // 2``, normalised to sum 1 (``bilateral_filter_1d_vectorized`` of
    their ``ddim_inversion.py`` with the frame axis last). Reflect padding (``x[-k] = x[k]``);
    where ``T <= kernel_size // 2`` the reflection repeats (NumPy ``reflect`` semantics; torch's
    ``F.pad`` would raise), and a single frame is returned unchanged.

    ``kernel_size`` must be odd and >= 3; sigmas > 0 (``sigma_range`` may be ``inf``).
    """
    x = _as_float(x)
    if x.ndim < 1:
        raise ValueError("bilateral_filter_frames expects rank >= 1 with frames on axis 0, got a scalar")
    k = kernel_size
    if isinstance(k, bool) or int(k) != k or k < 3 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3 (radius >= 1), got {kernel_size!r}")
    _check_sigma("sigma_spatial", sigma_spatial)
    _check_sigma("sigma_range", sigma_range, allow_inf=True)
    _check_finite(x)
    return _bilateral_frames(
        x,
        jnp.asarray(sigma_spatial, jnp.float32),
        jnp.asarray(sigma_range, jnp.float32),
        radius=int(kernel_size) // 2,
    )
