"""Claim C.3 (Lemma): the gradient bound (eq. 32/37) and Lipschitz constant (eq. 39) of
L_temporal, and their corrections. (Its part 'descent', the chain C.3 => C.4, is in
:mod:`theory.claims.temporal_loss.c4`.)"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from theory.claims.temporal_loss.c1 import c1_corr, c1_orig
from theory.claims.temporal_loss.common import (
    _dimF, _frames, grad_const, gradient_witness_frames, GRID_M, GRID_m, hess_const,
    hessian_witness_frames, HYP_LOWER, HYP_LOWER2, HYP_UPPER, HYP_UPPER2, loss, _lower, N, _params,
    _top_eig_perp, _upper)
from theory.registry import Statement


# ================================================================= C.3
def _max_frame_grad(F):
    g = jax.grad(loss)(F)
    return jnp.max(jnp.linalg.norm(g, axis=1))


c3_grad_orig = Statement(
    text="||grad_{F_t} L||_F <= 16(T-2)/(M(T-1)) (eq. 37; eq. 32 prints 8(T-2)/(M(T-1)), "
         "the larger constant is checked)",
    hypotheses="||F_t||_F <= M for all t", quantity="max_t ||grad_{F_t} L_temporal||_F",
    bound="16(T-2)/(M(T-1))", grid=GRID_M, dim=_dimF,
    to_inputs=c1_orig.to_inputs, q=lambda i, s: _max_frame_grad(i["F"]),
    b=lambda i, s: 16.0 * (s["T"] - 2) / (s["M"] * (s["T"] - 1)), params=_params,
    check=HYP_UPPER)

c3_grad_corr = Statement(
    text="||grad_{F_t} L||_F <= g_T/||F_t||_F <= g_T/m with g_T = (2/(T-1)) G_T, "
         "G_T = max_t sup_s sum_{k in {t-1,t}} |c_k(s)| sqrt(1 - s_k^2) (sharp: g_3 = 2, "
         "g_4 = 2.17, g_5 = 2.24, g_6 = 1.80; round one 4, 4, 4, 3.2)",
    hypotheses="||F_t||_F >= m > 0 for all t", quantity="max_t ||grad_{F_t} L||_F",
    bound="g_T / m", grid=GRID_m, dim=_dimF, to_inputs=c1_corr.to_inputs,
    q=lambda i, s: _max_frame_grad(i["F"]),
    b=lambda i, s: grad_const(s["T"]) / s["m"], params=_params, proof="#c3", check=HYP_LOWER,
    witness=lambda s: {"F": gradient_witness_frames(s["T"], s["m"])},
    witness_note="the maximiser of G_T realised by frames of norm m in a plane (neighbours of "
                 "the worst frame on the sides that align the two gradient terms)")


def _two(raw, T, norm):
    k = T * (N + 1)
    return {"F": _frames(raw[:k], T, norm), "G": _frames(raw[k:], T, norm)}


def _secant(i):
    g = jax.grad(loss)
    return jnp.linalg.norm(g(i["F"]) - g(i["G"]))


c3_lip_orig = Statement(
    text="||grad L(F) - grad L(G)|| <= L sum_t ||F_t - G_t|| with L <= 16/M (eq. 39)",
    hypotheses="||F_t||, ||G_t|| <= M", quantity="||grad L(F) - grad L(G)||_F",
    bound="(16/M) sum_t ||F_t - G_t||_F", grid=GRID_M, dim=lambda s: 2 * _dimF(s),
    to_inputs=lambda raw, s: _two(raw, s["T"], lambda z: _upper(z, s["M"])),
    q=lambda i, s: _secant(i),
    b=lambda i, s: 16.0 / s["M"] * jnp.sum(jnp.linalg.norm(i["F"] - i["G"], axis=1)),
    params=_params, check=HYP_UPPER2)


def _secant_witness(s, h=1e-4):
    F = hessian_witness_frames(s["T"], s["m"])
    return {"F": F, "G": F + h * s["m"] * _top_eig_perp(F)}


c3_lip_corr = Statement(
    text="for F, G in S_m: ||grad L(F) - grad L(G)||_F <= (pi/2) (K_T/m^2) ||F - G||_F",
    hypotheses="||F_t||, ||G_t|| >= m > 0", quantity="||grad L(F) - grad L(G)||_F",
    bound="(pi/2) K_T/m^2 ||F - G||_F", grid=GRID_m, dim=lambda s: 2 * _dimF(s),
    to_inputs=lambda raw, s: _two(raw, s["T"], lambda z: _lower(z, s["m"])),
    q=lambda i, s: _secant(i),
    b=lambda i, s: math.pi / 2 * hess_const(s["T"]) / s["m"] ** 2 * jnp.linalg.norm(i["F"] - i["G"]),
    params=_params, proof="#c3", check=HYP_LOWER2, witness=_secant_witness,
    witness_note="the Hessian witness F and G = F + 1e-4 m v, v its top eigenvector (orthogonal "
                 "to the frames): secant ratio ~ ||Hess L(F)||")
