"""Claim C.4 (Theorem): gradient descent on L_temporal -- the chain C.3 => C.4 (one step with
C.3's constant 16/M, registered as C.3 part 'descent'), the descent step with a valid constant,
square-summable gradients, and the refuted convergence to a local minimum."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from theory import hypotheses as H
from theory.claims.temporal_loss.common import (
    _dimF, frame_norms_np, _frames, gradient_witness_frames, GRID_M, GRID_m, hess_const,
    hessian_witness_frames, HYP_LOWER, HYP_UPPER, loss, _lower, N, _params, sims, _top_eig_perp,
    _upper)
from theory.registry import Statement
from theory.search import save_constructed_counterexample


# ================================================================= C.3 => C.4 (descent)
def _gd_step(F, eta):
    return F - eta * jax.grad(loss)(F)


def _c4_orig_inputs(raw, s):
    F = _frames(raw, s["T"], lambda z: _upper(z, s["M"]))
    return {"F": F, "eta": jnp.asarray(0.99 * 2.0 / (16.0 / s["M"]))}


c3_descent_orig = Statement(
    text="gradient descent with eta < 2/L decreases L_temporal (Thm C.4, eq. 51-52) with "
         "L = 16/M, the constant Lemma C.3 supplies: L(F - eta grad L(F)) <= L(F) -- the chain "
         "C.3 => C.4",
    hypotheses="||F_t|| <= M; eta = 0.99 * 2/(16/M); parameters = the features themselves",
    quantity="L_temporal after one step", bound="L_temporal before the step",
    grid=GRID_M, dim=_dimF, to_inputs=_c4_orig_inputs,
    q=lambda i, s: loss(_gd_step(i["F"], i["eta"])), b=lambda i, s: loss(i["F"]),
    params=_params,
    check=H.combine(HYP_UPPER, H.inputs("eta < 2/(16/M)",
                                        lambda i, s: float(np.asarray(i["eta"])) < 2 * s["M"] / 16)))


def _c4_corr_inputs(raw, s):
    T = s["T"]
    F = _frames(raw[:-1], T, lambda z: _lower(z, s["m"]))
    m0 = jnp.min(jnp.linalg.norm(F, axis=1))
    Lm = hess_const(T) / m0 ** 2
    theta = 0.999 * jax.nn.sigmoid(raw[-1] + 2.0)
    return {"F": F, "eta": theta * 2.0 / Lm, "Lm": Lm}


def _hyp_step(i, s):
    F = np.asarray(i["F"])
    m0 = float(frame_norms_np(F).min())
    Lm = hess_const(s["T"]) / m0 ** 2
    eta = float(np.asarray(i["eta"]))
    return {"L_m = K_T / m0^2 (a Lipschitz constant of grad L on S_m0, Thm C.1')":
            abs(float(np.asarray(i["Lm"])) - Lm) <= 1e-9 * Lm,
            "0 < eta < 2 / L_m": 0 < eta < 2 / Lm}


HYP_STEP = H.combine(HYP_LOWER, _hyp_step)


_GL16 = np.polynomial.legendre.leggauss(16)
_GL8 = np.polynomial.legendre.leggauss(8)


def _gl01(rule):
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = rule
    return (x + 1) / 2, w / 2


def _hvp(F, v):
    return jax.jvp(jax.grad(loss), (F,), (v,))[1]


def _eff_curv_direct(i, s):
    """The difference quotient 2(L(F - eta g) - L(F) + eta|g|^2)/(eta^2 |g|^2): cancels
    catastrophically once eta^2 |g|^2 is below round-off relative to L (see _eff_curv)."""
    F, eta = i["F"], i["eta"]
    g = jax.grad(loss)(F)
    g2 = jnp.sum(g * g)
    return 2.0 * (loss(F - eta * g) - loss(F) + eta * g2) / (eta ** 2 * jnp.maximum(g2, 1e-300))


def _eff_curv(i, s):
    """The same curvature by its integral form, free of cancellation:
    2(L(F - eta g) - L(F) + eta|g|^2)/(eta^2|g|^2) = 2 int_0^1 (1 - u) g^T Hess L(F - u eta g) g
    du / |g|^2 (Taylor with integral remainder), 16-point Gauss-Legendre on HVPs."""
    F, eta = i["F"], i["eta"]
    g = jax.grad(loss)(F)
    gh = g / jnp.sqrt(jnp.maximum(jnp.sum(g * g), 1e-300))
    nodes, wts = (jnp.asarray(a) for a in _gl01(_GL16))
    curv = jax.vmap(lambda u: jnp.vdot(gh, _hvp(F - u * eta * g, gh)))(nodes)
    return 2.0 * jnp.sum(wts * (1 - nodes) * curv)


def _step_witness(s, eps=1e-3, theta=1e-3):
    """Near the Hessian witness, displaced along the top eigenvector: the gradient is then
    (to first order) that eigenvector, so the curvature along the step is ~ ||Hess L||."""
    F = hessian_witness_frames(s["T"], s["m"])
    F = F + eps * s["m"] * _top_eig_perp(F)
    Lm = hess_const(s["T"]) / float(frame_norms_np(F).min()) ** 2
    return {"F": F, "eta": theta * 2.0 / Lm, "Lm": Lm}


c4_step_corr = Statement(
    text="with m0 = min_t ||F_t^(0)||, L_m = K_T/m0^2 and 0 < eta < 2/L_m, every step satisfies "
         "L(F_{k+1}) <= L(F_k) - eta (1 - eta L_m/2) ||grad L(F_k)||^2 (norms never decrease "
         "along GD, so all iterates stay in S_m0)",
    hypotheses="||F_t|| >= m0 > 0; eta in (0, 2/L_m); parameters = the features",
    quantity="effective curvature along the step 2(L(F-eta g) - L(F) + eta|g|^2)/(eta^2|g|^2), "
             "evaluated by its integral form 2 int_0^1 (1-u) g^T Hess L(F - u eta g) g du / |g|^2 "
             "(Gauss-Legendre; the difference quotient cancels for tiny steps)",
    bound="L_m = K_T / m0^2", grid=GRID_m, dim=lambda s: _dimF(s) + 1,
    to_inputs=_c4_corr_inputs, q=_eff_curv, b=lambda i, s: i["Lm"],
    params=lambda i, s: {"T": s["T"], "eta*L_m/2": i["eta"] * i["Lm"] / 2}, proof="#c4",
    check=HYP_STEP, witness=_step_witness,
    witness_note="the Hessian witness displaced by 1e-3 m along its top eigenvector, "
                 "eta = 1e-3 (2/L_m): curvature along the gradient ~ ||Hess L||")

c4_step_paper = Statement(
    text="(Thm C.4's descent half, with a valid constant) if grad L is L-Lipschitz on the region "
         "the iterates visit and eta < 2/L, then L(F - eta grad L(F)) <= L(F); here "
         "L = L_m = K_T/m0^2, valid on S_m0, which GD never leaves",
    hypotheses="||F_t|| >= m0 > 0; L = K_T/m0^2 (Thm C.1'); eta in (0, 2/L)",
    quantity="L_temporal after one step", bound="L_temporal before the step",
    grid=GRID_m, dim=lambda s: _dimF(s) + 1, to_inputs=_c4_corr_inputs,
    q=lambda i, s: loss(_gd_step(i["F"], i["eta"])), b=lambda i, s: loss(i["F"]),
    params=lambda i, s: {"T": s["T"], "eta*L_m/2": i["eta"] * i["Lm"] / 2}, check=HYP_STEP)

K_STEPS = 8


def _c4_sum(i, s):
    """(eta(1 - eta L_m/2) sum_k |g_k|^2, L(F_0) - L(F_K)); the decrease is summed step by step
    in its integral form L(F_k) - L(F_k+1) = eta int_0^1 <grad L(F_k - u eta g_k), g_k> du
    (8-point Gauss-Legendre), free of the cancellation of a difference of two losses."""
    F, eta, Lm = i["F"], i["eta"], i["Lm"]
    grad = jax.grad(loss)
    nodes, wts = (jnp.asarray(a) for a in _gl01(_GL8))

    def body(_, c):
        F, tot, dec = c
        g = grad(F)
        slope = jax.vmap(lambda u: jnp.vdot(grad(F - u * eta * g), g))(nodes)
        return F - eta * g, tot + jnp.sum(g * g), dec + eta * jnp.sum(wts * slope)

    zero = jnp.zeros((), F.dtype)
    _, tot, dec = jax.lax.fori_loop(0, K_STEPS, body, (F, zero, zero))
    return eta * (1 - eta * Lm / 2) * tot, dec


def _limit_witness(s, theta=1e-4):
    F = gradient_witness_frames(s["T"], s["m"])
    Lm = hess_const(s["T"]) / s["m"] ** 2
    return {"F": F, "eta": theta * 2.0 / Lm, "Lm": Lm}


c4_limit_corr = Statement(
    text="the gradients are square-summable: eta(1 - eta L_m/2) sum_{k<K} ||grad L(F_k)||^2 <= "
         "L(F_0) - L(F_K) <= L(F_0), so grad L(F_k) -> 0 (iterates approach stationary points, "
         "which may be saddles or maxima -- not necessarily minima)",
    hypotheses="as the corrected step statement; K = 8 steps unrolled",
    quantity="eta(1 - eta L_m/2) sum_k ||grad L(F_k)||^2", bound="L(F_0) - L(F_K)",
    grid=[{"T": 4, "m": 1.0}], dim=lambda s: _dimF(s) + 1,
    to_inputs=_c4_corr_inputs, q=lambda i, s: _c4_sum(i, s)[0], b=lambda i, s: _c4_sum(i, s)[1],
    params=lambda i, s: {"T": s["T"], "eta*L_m/2": i["eta"] * i["Lm"] / 2}, proof="#c4",
    check=HYP_STEP, witness=_limit_witness,
    witness_note="the gradient witness with eta = 1e-4 (2/L_m): the sum telescopes to first "
                 "order")


def _stationary_max(T):
    """F_t = (-1)^{floor(t/2)}-patterned multiples of e1: s alternates +1, -1 -> L = max."""
    F = np.zeros((T, N))
    sign = 1.0
    for t in range(T):
        F[t, 0] = sign
        if t % 2 == 1:
            sign = -sign   # s_t = +1 for even t (0-based), -1 for odd t
    return F


def c4_limit_custom(cfg) -> dict:
    """Refutes 'converges to a local minimum': GD started at a stationary global maximum."""
    out = {"verdict": "refuted"}
    recs = []
    with jax.enable_x64(True):
        step = jax.jit(_gd_step)
        for T in (3, 5):
            F0 = jnp.asarray(_stationary_max(T))
            Lm = hess_const(T) / 1.0
            eta = 0.5 * 2.0 / Lm
            F = F0
            for _ in range(50):
                F = step(F, eta)
            s = np.asarray(sims(F))
            Lmax = 4.0 * (T - 2) / (T - 1)
            gn = float(jnp.linalg.norm(jax.grad(loss)(F)))
            recs.append({"T": T, "F0": np.asarray(F0).tolist(), "eta": eta, "steps": 50,
                         "loss_final": float(loss(F)), "global_max": Lmax, "grad_norm": gn,
                         "similarities": s.tolist(),
                         "hypotheses": {"||F_t|| >= m0 = 1": bool(np.all(
                             frame_norms_np(np.asarray(F0)) >= 1 - 1e-12)),
                             "0 < eta < 2/L_m": 0 < eta < 2 / Lm}})
    data = {"claim": "C.4", "part": "limit",
            "statement": "GD with eta < 2/L converges to a local minimum",
            "cases": recs,
            "why": "the start is a stationary point (every frame parallel to the next, "
                   "similarities alternate +-1) where L attains its global maximum "
                   "4(T-2)/(T-1); GD never moves"}
    out["counterexample"] = save_constructed_counterexample(data)
    out["original"] = {"text": "GD with eta < 2/L converges to a local minimum (Thm C.4)",
                       "worst_ratio": math.inf, "budget": {"constructed": 2},
                       "evidence": "; ".join(
                           f"T={r['T']}: after 50 steps L={r['loss_final']:.3f} = global max "
                           f"{r['global_max']:.3f}, ||grad||={r['grad_norm']:.1e}" for r in recs)}
    return out
