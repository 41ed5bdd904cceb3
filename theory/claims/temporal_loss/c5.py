"""Claim C.5 (Lemma): convexity of L_temporal in the similarities (holds), and in the features
as Thm C.4's proof uses it (refuted; corrected: smoothness along steps orthogonal to the
frames)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.losses import temporal_consistency_loss
from theory import hypotheses as H
from theory import symbolic
from theory.claims.temporal_loss.c3 import c3_lip_orig, _secant_witness
from theory.claims.temporal_loss.common import (
    _dimF, frame_norms_np, _frames, hess_const, HYP_UPPER2, loss, _lower, N, _params, sims)
from theory.registry import Statement


# ================================================================= C.5
def _realize(s_vec):
    """Unit features F_1..F_T in R^T with cos(F_t, F_{t+1}) = s_t exactly."""
    T = s_vec.shape[0] + 1
    E = jnp.eye(T)
    F = [E[0]]
    for t in range(T - 1):
        F.append(s_vec[t] * F[-1] + jnp.sqrt(jnp.maximum(1 - s_vec[t] ** 2, 0.0)) * E[t + 1])
    return jnp.stack(F)


def loss_of_s(s_vec):
    return temporal_consistency_loss(_realize(s_vec))


def _c5_inputs(raw, s):
    k = s["T"] - 1
    return {"a": jnp.tanh(raw[:k]), "b": jnp.tanh(raw[k: 2 * k]), "lam": jax.nn.sigmoid(raw[-1])}


c5_s = Statement(
    text="L_temporal = 1/(T-1) ||D s||^2 with D^T D PSD, hence convex in the similarities: "
         "L(lam a + (1-lam) b) <= lam L(a) + (1-lam) L(b) for s-vectors a, b",
    hypotheses="s in [-1, 1]^(T-1) (realised by unit features with exactly these cosines)",
    quantity="L at the convex combination", bound="the convex combination of L",
    grid=[{"T": 3}, {"T": 6}], dim=lambda s: 2 * (s["T"] - 1) + 1, to_inputs=_c5_inputs,
    q=lambda i, s: loss_of_s(i["lam"] * i["a"] + (1 - i["lam"]) * i["b"]) + 1e-300,
    b=lambda i, s: i["lam"] * loss_of_s(i["a"]) + (1 - i["lam"]) * loss_of_s(i["b"]) + 1e-300,
    tol=1e-9, params=lambda i, s: {"T": s["T"]},
    method="search of the Jensen inequality on the library loss of features realising s exactly; "
           "sympy: D^T D PSD, quadratic form = eq. 22 (T = 3..12)",
    check=H.combine(H.in_interval("a", -1, 1), H.in_interval("b", -1, 1),
                    H.in_interval("lam", 0, 1)),
    witness=lambda s: {"a": np.full(s["T"] - 1, 0.3), "b": np.full(s["T"] - 1, 0.3),
                       "lam": np.asarray(0.5)},
    witness_note="a = b: Jensen is an equality")


def c5_custom(cfg) -> dict:
    with jax.enable_x64(True):
        worst = 0.0
        mins = []
        for T in range(3, 13):
            D = symbolic.difference_matrix_numeric(T)
            mins.append(float(np.linalg.eigvalsh(D.T @ D)[0]))
            rng = np.random.default_rng(T)
            for _ in range(5):
                F = jnp.asarray(rng.normal(size=(T, N)))
                sv = np.asarray(sims(F))
                worst = max(worst, abs(float(loss(F)) - float(sv @ D.T @ D @ sv) / (T - 1)))
    return {"quadratic_form_max_abs_diff": worst, "lambda_min_DtD": mins,
            "tightness": 1.0,
            "tightness_note": "lambda_min(D^T D) = 0 exactly (D 1 = 0): PSD cannot be "
                              "improved to strict convexity"}


c5_F_orig = Statement(
    text="(Lemma C.5 as used in the proof of Thm C.4) L_temporal is convex in the features: "
         "L((F+G)/2) <= (L(F) + L(G))/2",
    hypotheses="||F_t||, ||G_t|| <= M", quantity="L((F+G)/2)", bound="(L(F) + L(G))/2",
    grid=[{"T": 3, "M": 1.0}], dim=lambda s: 2 * _dimF(s),
    to_inputs=c3_lip_orig.to_inputs,
    q=lambda i, s: loss((i["F"] + i["G"]) / 2) + 1e-300,
    b=lambda i, s: (loss(i["F"]) + loss(i["G"])) / 2 + 1e-300, params=_params,
    check=HYP_UPPER2)


def _c5_corr_inputs(raw, s):
    T = s["T"]
    k = _dimF(s)
    F = _frames(raw[:k], T, lambda z: _lower(z, s["m"]))
    D = raw[k: k + T * N].reshape(T, N)
    D = D - jnp.sum(D * F, axis=1, keepdims=True) * F / jnp.sum(F * F, axis=1, keepdims=True)
    return {"F": F, "G": F + D}


def _descent_gap(i, s):
    F, G = i["F"], i["G"]
    return loss(G) - loss(F) - jnp.vdot(jax.grad(loss)(F), G - F)


def _orth_steps(i, s):
    F, G = np.asarray(i["F"]), np.asarray(i["G"])
    D = G - F
    dots = np.abs(np.sum(D * F, axis=1))
    return {"G_t - F_t orthogonal to F_t":
            bool(np.all(dots <= 1e-9 * frame_norms_np(F) * np.maximum(frame_norms_np(D), 1e-300)))}


c5_F_corr = Statement(
    text="in F, L_temporal is not convex but L_m-smooth along steps orthogonal to the frames "
         "(the steps GD takes): L(G) <= L(F) + <grad L(F), G-F> + (K_T/(2 m^2)) ||G-F||^2",
    hypotheses="F in S_m, G_t - F_t orthogonal to F_t for each t",
    quantity="L(G) - L(F) - <grad L(F), G - F>", bound="K_T/(2m^2) ||G - F||^2",
    grid=[{"T": 3, "m": 1.0}, {"T": 5, "m": 1.0}], dim=lambda s: _dimF(s) + s["T"] * N,
    to_inputs=_c5_corr_inputs, q=_descent_gap,
    b=lambda i, s: hess_const(s["T"]) / (2 * s["m"] ** 2) * jnp.sum((i["G"] - i["F"]) ** 2),
    params=_params, proof="#c5",
    check=H.combine(H.frames_lower("F"), H.finite("F", "G"), _orth_steps),
    witness=lambda s: _secant_witness(s, h=1e-3),
    witness_note="the Hessian witness and a step of 1e-3 m along its top eigenvector "
                 "(orthogonal to the frames): gap ~ ||Hess L|| h^2 / 2")
