"""Shared by claims C.1-C.5 (the temporal consistency loss): the library loss on small frames,
the certified constants, the admissible-input samplers, grids and hypotheses, and the closed-form
witness frames."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.losses import frame_similarities, temporal_consistency_loss
from theory import constants as K
from theory import hypotheses as H

FRAME_SHAPE = (2, 2)      # per-frame tensor shape in the searches (flattened n = 4)
N = int(np.prod(FRAME_SHAPE))


def loss(F):
    return temporal_consistency_loss(F.reshape((F.shape[0],) + FRAME_SHAPE))


def sims(F):
    return frame_similarities(F.reshape((F.shape[0],) + FRAME_SHAPE))


# constants of the corrections (certified in theory.constants; round one kept for comparison)
grad_const = K.grad_const          # g_T:  ||grad_{F_t} L|| <= g_T / ||F_t||     (Lemma C.3')
hess_const = K.hess_const          # K_T:  ||Hess L|| <= K_T / m^2 on S_m        (Thm C.1')
grad_const_v1, hess_const_v1, lam_D = K.grad_const_v1, K.hess_const_v1, K.lam_D


# ----------------------------------------------------------------- admissible-input samplers
def _upper(z, M):       # norms in (0, M]  (paper's hypothesis: an upper bound only)
    return M * (1e-6 + (1 - 1e-6) * jax.nn.sigmoid(z))


def _lower(z, m):       # norms in [m, inf)  (repaired hypothesis: a lower bound)
    return m * (1.0 + jax.nn.softplus(z - 2.0))


def _frames(raw, T, norm):
    P = raw[: T * N].reshape(T, N)
    r = norm(raw[T * N: T * N + T])
    return r[:, None] * P / jnp.linalg.norm(P, axis=1, keepdims=True)


def _dimF(s):
    return s["T"] * (N + 1)


def _params(inp, s):
    F = inp["F"]
    n = jnp.linalg.norm(F, axis=1)
    out = {"T": s["T"], "min_norm": jnp.min(n)}
    if "M" in s:
        out["min_norm/M"] = jnp.min(n) / s["M"]
    return out


GRID_M = [{"T": 3, "M": 1.0}, {"T": 5, "M": 1.0}]
GRID_m = [{"T": 3, "m": 1.0}, {"T": 6, "m": 0.1}, {"T": 4, "m": 1.0}, {"T": 5, "m": 1.0}]

HYP_UPPER = H.combine(H.frames_upper("F"), H.finite("F"))
HYP_UPPER2 = H.combine(H.frames_upper("F", "G"), H.finite("F", "G"))
HYP_LOWER = H.combine(H.frames_lower("F"), H.finite("F"))
HYP_LOWER2 = H.combine(H.frames_lower("F", "G"), H.finite("F", "G"))


# ----------------------------------------------------------------- witnesses (closed form)
def _plane(angles, m):
    """Frames m (cos a, sin a, 0, 0) in the first two coordinates."""
    F = np.zeros((len(angles), N))
    F[:, 0], F[:, 1] = np.cos(angles), np.sin(angles)
    return m * F


def hessian_witness_frames(T: int, m: float) -> np.ndarray:
    """All similarities 0 (s = 0, so c = D^T D s = 0 and the Hessian is its first-order part)
    and cos(F_k, F_{k+2}) = rho_k with rho the extreme pattern of F1: u_1 = e1, u_2 = e2,
    u_{k+2} = rho_k u_k. There ||Hess L|| m^2 = (2/(T-1)) F1(0) exactly (docs/theory.md#c1)."""
    rho = K.f1_argmax_rho(T)
    ang = [0.0, math.pi / 2]
    for k in range(T - 2):
        ang.append(ang[k] + (0.0 if rho[k] > 0 else math.pi))
    return _plane(np.asarray(ang[:T]), m)


def _top_eig_perp(F):
    """Unit top eigenvector of Hess L at F, each frame's part made orthogonal to that frame."""
    T = F.shape[0]
    Hm = np.asarray(jax.hessian(loss)(jnp.asarray(F)).reshape(T * N, T * N))
    w, V = np.linalg.eigh(0.5 * (Hm + Hm.T))
    v = V[:, int(np.argmax(np.abs(w)))].reshape(T, N)
    v = v - np.sum(v * F, axis=1, keepdims=True) * F / np.sum(F * F, axis=1, keepdims=True)
    return v / np.linalg.norm(v)


def gradient_witness_frames(T: int, m: float) -> np.ndarray:
    """The maximiser of Lemma C.3' (theory.constants.grad_sup) realised in a plane: frame t along
    e1, its neighbours at the optimal angles on the sides that align the two gradient terms, the
    similarities next to them +-1 as the optimum needs, all others 1; all norms m."""
    w = K.grad_sup(T)["witness"]
    t, inv, phis = w["frame"], list(w["involved"]), list(w["phis"])
    s = np.ones(T - 1)
    for l, sg in zip(w["others"], w["signs"]):
        s[l] = sg
    for k, ph in zip(inv, phis):
        s[k] = math.cos(ph)
    D = K.difference_matrix(T)
    c = D.T @ D @ s
    ang = np.zeros(T)
    ph = dict(zip(inv, phis))
    if t - 1 in ph:
        ang[t - 1] = math.copysign(ph[t - 1], c[t - 1] if c[t - 1] != 0 else 1.0)
    if t in ph:
        ang[t + 1] = math.copysign(ph[t], c[t] if c[t] != 0 else 1.0)
    for k in range(t - 2, -1, -1):
        ang[k] = ang[k + 1] + (0.0 if s[k] > 0 else math.pi)
    for k in range(t + 2, T):
        ang[k] = ang[k - 1] + (0.0 if s[k - 1] > 0 else math.pi)
    return _plane(ang, m)


def frame_norms_np(F):
    return np.linalg.norm(np.asarray(F).reshape(np.shape(F)[0], -1), axis=1)
