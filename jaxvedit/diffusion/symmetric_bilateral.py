"""A bilateral inversion filter for which Lemma C.7 of paper 004 holds as stated.

The paper's filter (:func:`~jaxvedit.diffusion.bilateral.bilateral_filter_latent`) recomputes its
weights from the latent it filters, so it is a nonlinear map and it is *expansive* (docs/theory.md,
Lemma C.7: Lipschitz constants up to ~2.6 found, certified <= Lambda(r, sigma_s)). This filter
computes the weights once, from a fixed *guide* (the source latent x_0 of the inversion), and
normalises them to a symmetric doubly stochastic matrix, so it is linear in the latent it filters:

    K_pq = Gs(p - q) Gr(g_p - g_q)           for q in the window of p *inside the image*  (eq. 10-11)
    P    = diag(d) K diag(d)                  symmetric Sinkhorn scaling, d <- sqrt(d / (K d))
    P    <- P / max_p (P 1)_p + diag(1 - P 1 / max_p (P 1)_p)    exact row sums 1
    O    = P x                                                                           (cf. eq. 9)

per image and per channel (the range weight compares guide values within one channel, as the
paper's filter does). K is symmetric (the window is symmetric and there is no padding: neighbours
outside the image get weight 0), so P is symmetric, nonnegative, with rows (hence columns) summing
to 1: ||P||_1 = ||P||_inf = 1, so ||P x - P y||_2 <= ||x - y||_2 (non-expansive, equality for
x - y constant), P preserves constants and the mean. The last normalisation makes this exact
whatever the number of Sinkhorn iterations (they only decide how much mass sits on the
diagonal); more iterations bring P closer to the scaling of K itself.

``range_mode="relative"`` takes sigma_range as a multiple of the *guide's* per-image, per-channel
standard deviation (the filter stays linear in x).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.diffusion.bilateral import (
    _as_batched,
    _bilateral_weight,
    _check_finite,
    _check_window_args,
    _range_sigma,
    _spatial_offsets,
)

__all__ = ["symmetric_bilateral_weights", "apply_symmetric_bilateral", "symmetric_bilateral_filter"]


def _shift(a, dy, dx):
    """a[:, y + dy, x + dx, :] with zeros outside the image. a: (B, H, W, C[, ...])."""
    B, H, W = a.shape[:3]
    pad = [(0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))] + [(0, 0)] * (a.ndim - 3)
    ap = jnp.pad(a, pad)
    return jax.lax.slice_in_dim(jax.lax.slice_in_dim(ap, abs(dy) + dy, abs(dy) + dy + H, axis=1),
                                abs(dx) + dx, abs(dx) + dx + W, axis=2)


def _inside(H, W, dy, dx, dtype):
    """(1, H, W, 1) mask of the pixels p whose neighbour p + (dy, dx) is inside the image."""
    ys = np.arange(H)[:, None] + dy
    xs = np.arange(W)[None, :] + dx
    m = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    return jnp.asarray(m[None, :, :, None], dtype)


@functools.partial(jax.jit, static_argnames=("radius", "relative", "window", "iterations"))
def _weights(guide, sigma_spatial, sigma_range, *, radius: int, relative: bool, window: str,
             iterations: int):
    """guide (B, H, W, C) -> P as (B, H, W, C, K) weights over the window offsets (K of them, in
    :func:`_spatial_offsets` order; P[p, o] multiplies x[p + o])."""
    g = guide.astype(jnp.promote_types(guide.dtype, jnp.float32))
    B, H, W, C = g.shape
    offs = _spatial_offsets(radius, window)
    sr = _range_sigma(g, sigma_range, relative)
    ss = jnp.asarray(sigma_spatial, g.dtype)
    K = []
    for dy, dx in offs:
        d = _shift(g, dy, dx) - g
        K.append(_bilateral_weight(dy * dy + dx * dx, d, ss, sr)
                 * _inside(H, W, dy, dx, g.dtype))                       # eq. 10-11, no padding
    K = jnp.stack(K, axis=-1)                                            # (B, H, W, C, K)

    def matvec(d):                                                       # (K d)_p
        return sum(K[..., k] * _shift(d, dy, dx) for k, (dy, dx) in enumerate(offs))

    def body(_, d):                                                      # symmetric Sinkhorn
        return jnp.sqrt(d / matvec(d))

    d0 = 1.0 / jnp.sqrt(jnp.sum(K, axis=-1))
    d = jax.lax.fori_loop(0, iterations, body, d0)
    P = jnp.stack([K[..., k] * (d * _shift(d, dy, dx)) for k, (dy, dx) in enumerate(offs)], -1)
    rows = jnp.sum(P, axis=-1)
    rho = jnp.max(rows, axis=(1, 2), keepdims=True)                      # per image and channel
    P = P / rho[..., None]
    centre = offs.index((0, 0))
    P = P.at[..., centre].add(1.0 - jnp.sum(P, axis=-1))                 # rows sum to 1 exactly
    return P


@functools.partial(jax.jit, static_argnames=("radius", "window"))
def _apply(x, P, *, radius: int, window: str):
    xf = x.astype(jnp.promote_types(x.dtype, P.dtype))
    offs = _spatial_offsets(radius, window)
    out = sum(P[..., k] * _shift(xf, dy, dx) for k, (dy, dx) in enumerate(offs))
    return out.astype(x.dtype)


def _check_common(radius, sigma_spatial, sigma_range, range_mode, window, iterations=None):
    _check_window_args(radius, sigma_spatial, sigma_range, range_mode, window)
    if iterations is not None and (isinstance(iterations, bool) or int(iterations) != iterations
                                   or iterations < 0):
        raise ValueError(f"sinkhorn_iters must be an integer >= 0, got {iterations!r}")


def _as4(x, name):
    return _as_batched(x, f"{name} must be")


def symmetric_bilateral_weights(guide, *, radius: int = 2, sigma_spatial: float = 1.0,
                                sigma_range: float = 0.1, range_mode: str = "absolute",
                                window: str = "square", sinkhorn_iters: int = 30):
    """The symmetric doubly stochastic filter matrix of ``guide`` ((B, H, W, C) or (H, W, C)),
    as ``(B, H, W, C, K)`` weights over the K window offsets (see the module docstring).

    ``sinkhorn_iters`` >= 0 symmetric Sinkhorn iterations (the result is exactly doubly
    stochastic for any number; 0 gives the row-normalised-by-the-maximum kernel plus diagonal).
    """
    _check_common(radius, sigma_spatial, sigma_range, range_mode, window, sinkhorn_iters)
    g4, _ = _as4(guide, "guide")
    _check_finite(g4, "guide")
    return _weights(g4, jnp.asarray(sigma_spatial, jnp.float32),
                    jnp.asarray(sigma_range, jnp.float32), radius=int(radius),
                    relative=range_mode == "relative", window=window,
                    iterations=int(sinkhorn_iters))


def apply_symmetric_bilateral(x, weights, *, radius: int = 2, window: str = "square"):
    """``P x`` for weights from :func:`symmetric_bilateral_weights` (same radius and window)."""
    x4, squeeze = _as4(x, "x")
    P = jnp.asarray(weights)
    K = len(_spatial_offsets(int(radius), window))
    if P.ndim != 5 or P.shape[:4] != x4.shape or P.shape[-1] != K:
        raise ValueError(f"weights of shape {P.shape} do not fit x of shape {x4.shape} with "
                         f"radius {radius} ({window} window: {K} offsets)")
    out = _apply(x4, P, radius=int(radius), window=window)
    return out[0] if squeeze else out


def symmetric_bilateral_filter(x, guide, *, radius: int = 2, sigma_spatial: float = 1.0,
                               sigma_range: float = 0.1, range_mode: str = "absolute",
                               window: str = "square", sinkhorn_iters: int = 30):
    """Filter ``x`` with the symmetric doubly stochastic bilateral matrix of ``guide`` (same
    shape as ``x``): linear in ``x``, ``||P x - P y|| <= ||x - y||``."""
    x4, squeeze = _as4(x, "x")
    g4, _ = _as4(guide, "guide")
    if g4.shape != x4.shape:
        raise ValueError(f"guide shape {g4.shape} differs from x shape {x4.shape}")
    _check_finite(x4)
    P = symmetric_bilateral_weights(g4, radius=radius, sigma_spatial=sigma_spatial,
                                    sigma_range=sigma_range, range_mode=range_mode, window=window,
                                    sinkhorn_iters=sinkhorn_iters)
    out = _apply(x4, P, radius=int(radius), window=window)
    return out[0] if squeeze else out


def dense_matrix(weights, *, radius: int = 2, window: str = "square") -> np.ndarray:
    """The filter of one image and channel, ``weights (H, W, K)``, as a dense (HW, HW) matrix
    (tests, small sizes)."""
    P = np.asarray(weights, np.float64)
    H, W, _ = P.shape
    M = np.zeros((H * W, H * W))
    for k, (dy, dx) in enumerate(_spatial_offsets(int(radius), window)):
        for y in range(H):
            for x in range(W):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W:
                    M[y * W + x, yy * W + xx] += P[y, x, k]
                elif P[y, x, k] != 0:
                    raise ValueError("weight on a neighbour outside the image")
    return M

