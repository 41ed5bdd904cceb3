"""Lemmas C.7 and C.8 (and C.6, C.9) as the paper states them, for a filter for which they hold:
the symmetric doubly stochastic fixed-guide bilateral filter
(:mod:`jaxvedit.diffusion.symmetric_bilateral`), P = Sinkhorn(K(guide)), linear in the filtered
latent with ||P||_2 = 1. The guide is part of the searched inputs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from theory import hypotheses as H
from theory.claims import ddim as Dd
from theory.claims.ddim import D, SHAPE, eps_fn
from theory.registry import Claim, Part, Statement, register

SINKHORN_ITERS = 30


def sym_filter(x, guide, s):
    from jaxvedit.diffusion.symmetric_bilateral import symmetric_bilateral_filter
    return symmetric_bilateral_filter(x, guide, radius=s["radius"], sigma_spatial=s["ss"],
                                      sigma_range=s["sr"], sinkhorn_iters=SINKHORN_ITERS)


def sym_weights(guide, s):
    from jaxvedit.diffusion.symmetric_bilateral import symmetric_bilateral_weights
    return symmetric_bilateral_weights(guide, radius=s["radius"], sigma_spatial=s["ss"],
                                       sigma_range=s["sr"], sinkhorn_iters=SINKHORN_ITERS)


def sym_apply(x, P, s):
    """The library's P x for weights P of one guide (computed once for both paths)."""
    from jaxvedit.diffusion.symmetric_bilateral import apply_symmetric_bilateral
    return apply_symmetric_bilateral(x, P, radius=s["radius"])


def _guide_of(raw, st):
    """The guide is sampled (random, hypothesis) but not ascended: the bound holds for every
    guide (P is doubly stochastic for any), and differentiating through Sinkhorn only costs
    compile time."""
    return jax.lax.stop_gradient(st["sr"] * 3.0 * raw[:D].reshape(SHAPE))


def _inputs(raw, st):
    """guide g, latents x, y = x + d (at the range scale), eps parameters."""
    return {"g": _guide_of(raw, st), **Dd._lip_inputs(raw[D:], st)}


def _dim(st):
    return D + Dd._lip_dim(st)


def _multi(raw, st):
    return {"g": _guide_of(raw, st), **Dd._multi_inputs(raw[D:], st)}


def _multi_dim(st):
    return D + Dd._multi_dim(st)


HYP = H.combine(Dd._hyp_filter, H.finite("g", "x", "y"))
HYP_STEP = H.combine(HYP, Dd._hyp_eps, Dd._hyp_alphas, H.finite("phi"))


def _guide():
    """A fixed, structured guide for the witnesses (the filter witness pattern plus a ramp)."""
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    g = np.zeros(SHAPE)
    g[..., 0] = 0.05 * ii - 0.03 * jj
    g[..., 1] = 0.1 * ((ii + jj) % 2)
    return g


def _const_pair(s, x):
    """(x, x + h 1): P 1 = 1 (doubly stochastic), so the filter keeps this difference exactly."""
    return np.asarray(x), np.asarray(x) + 1e-3 * s["sr"] * np.ones(SHAPE)


def _nonexp_witness(s):
    g = s["sr"] * _guide() / 0.1
    x, y = _const_pair(s, g)
    return {"g": g, "x": x, "y": y, "s": np.zeros(SHAPE), "phi": np.zeros(SHAPE)}


FILTERS = Dd.FILTERS

c7s = Statement(
    text="the symmetric doubly stochastic fixed-guide bilateral filter P_g is non-expansive: "
         "||P_g x - P_g y||_2 <= ||x - y||_2 (eq. 57 as stated)",
    hypotheses="any guide g, any x, y; Gaussian kernels sigma_s, sigma_r > 0; square window, "
               "no padding (outside neighbours get weight 0); 30 Sinkhorn iterations",
    quantity="||P_g x - P_g y||_2", bound="||x - y||_2", grid=FILTERS, dim=_dim, to_inputs=_inputs,
    q=lambda i, s: (lambda P: jnp.linalg.norm(sym_apply(i["x"], P, s) - sym_apply(i["y"], P, s)))(
        sym_weights(i["g"], s)),
    b=lambda i, s: Dd._dist(i), params=Dd._filter_params, proof="#symmetric", check=HYP,
    witness=_nonexp_witness, witness_note="x - y constant: P 1 = 1, equality")


def _step(x, i, s, P):
    xf = sym_apply(x, P, s)
    eps = eps_fn(i["s"], i["phi"], s["L"], s["sr"])
    return Dd.ddim_step(xf, eps(xf), s["a_from"], s["a_to"])


def _step_witness(s):
    g = s["sr"] * _guide() / 0.1
    x, y = _const_pair(s, g)
    _, c = Dd.lib_coefs(s["a_from"], s["a_to"])
    xf = np.asarray(sym_filter(jnp.asarray(x), jnp.asarray(g), s))
    sv, ph = Dd._aligned_eps(xf, s["sr"], 1.0 if c >= 0 else -1.0)
    return {"g": g, "x": x, "y": y, "s": sv, "phi": ph}


c8s = Statement(
    text="one DDIM step with the symmetric filter: ||step(P x) - step(P y)|| <= C ||x - y|| with "
         "the paper's C = 1/sqrt(alpha_t) + (1 - alpha_t) L_eps / sqrt(alpha_t (1 - alpha_bar_t)) "
         "(eq. 71), alpha_t = a_from/a_to, alpha_bar_t = a_from (sampling direction)",
    hypotheses="eps L_eps-Lipschitz; SD1.5 50-step DDIM sampling pairs (a_from < a_to)",
    quantity="||step(P x) - step(P y)||", bound="C ||x - y||", grid=Dd.GRID_C8, dim=_dim,
    to_inputs=_inputs,
    q=lambda i, s: (lambda P: jnp.linalg.norm(_step(i["x"], i, s, P) - _step(i["y"], i, s, P)))(
        sym_weights(i["g"], s)),
    b=lambda i, s: Dd._paper_C(s["a_from"] / s["a_to"], s["a_from"], s["L"]) * Dd._dist(i),
    params=Dd._c8_params, proof="#symmetric", check=HYP_STEP, witness=_step_witness,
    witness_note="x - y constant, eps' = sign(c) L_eps at P x: ratio (k + |c| L_eps) / C")


def _eq53(x, i, s, P):
    xf = sym_apply(x, P, s)
    eps = eps_fn(i["s"], i["phi"], s["L"], s["sr"])
    return (xf - (1 - s["alpha"]) / math.sqrt(1 - s["abar"]) * eps(xf)) / math.sqrt(s["alpha"])


def _eq53_witness(s):
    g = s["sr"] * _guide() / 0.1
    x, y = _const_pair(s, g)
    xf = np.asarray(sym_filter(jnp.asarray(x), jnp.asarray(g), s))
    sv, ph = Dd._aligned_eps(xf, s["sr"], -1.0)
    return {"g": g, "x": x, "y": y, "s": sv, "phi": ph}


c6s = Statement(
    text="Thm C.6 with the symmetric filter: E||x'_{t-1} - x_bar_{t-1}|| <= C E||x_t - x_bar_t|| "
         "+ sqrt(1 - alpha_{t-1}) E||z|| with the paper's C (eq. 71), both paths filtered",
    hypotheses="eq. 53 step (alpha_t = 1 - beta_t), eps L_eps-Lipschitz",
    quantity="||deterministic part of the error||", bound="C ||x_t - x_bar_t|| (noise term "
                                                          "only helps)",
    grid=Dd.GRID_C6, dim=_dim, to_inputs=_inputs,
    q=lambda i, s: (lambda P: jnp.linalg.norm(_eq53(i["x"], i, s, P) - _eq53(i["y"], i, s, P)))(
        sym_weights(i["g"], s)),
    b=lambda i, s: Dd._paper_C(s["alpha"], s["abar"], s["L"]) * Dd._dist(i),
    params=lambda i, s: {"t": s["t"], "L_eps": s["L"]}, proof="#symmetric", check=HYP_STEP,
    witness=_eq53_witness, witness_note="x - y constant, eps' = -L_eps: equality")


def _unrolled(x, i, s, P):
    return Dd._unrolled(x, i, s, filt=lambda z: sym_apply(z, P, s))


def _unrolled_witness(s):
    g = s["sr"] * _guide() / 0.1
    x, y = _const_pair(s, g)
    S, P = [], []
    z = jnp.asarray(x)
    for af, at in s["pairs"]:                   # align eps' along the actual path of x
        _, c = Dd.lib_coefs(af, at)
        xf = sym_filter(z, jnp.asarray(g), s)
        sv, ph = Dd._aligned_eps(xf, s["sr"], 1.0 if c >= 0 else -1.0)
        S.append(sv)
        P.append(ph)
        z = Dd.ddim_step(xf, eps_fn(jnp.asarray(sv), jnp.asarray(ph), s["L"], s["sr"])(xf), af, at)
    n = len(s["pairs"])
    return {"g": g, "x": x, "y": y, "s": np.stack(S), "phi": np.stack(P),
            "e0": np.zeros((n,) + SHAPE)}


c9s = Statement(
    text="Lemma C.9 (deterministic) with the symmetric filter: ||Phi(x) - Phi(x_bar)|| <= C^N "
         "||x - x_bar||, C = max_t C_t of eq. 71",
    hypotheses="N = 1..4 filtered 50-step DDIM sampling steps from t = 521, eps L_eps-Lipschitz",
    quantity="||Phi(x) - Phi(y)||", bound="(max_t C_t)^N ||x - y||", grid=Dd.GRID_C9,
    dim=_multi_dim, to_inputs=_multi,
    q=lambda i, s: (lambda P: jnp.linalg.norm(_unrolled(i["x"], i, s, P)
                                              - _unrolled(i["y"], i, s, P)))(sym_weights(i["g"], s)),
    b=lambda i, s: max(Dd._paper_C(af / at, af, s["L"]) for af, at in s["pairs"])
    ** len(s["pairs"]) * Dd._dist(i), params=Dd._c9_params, proof="#symmetric",
    check=H.combine(HYP_STEP, H.finite("e0")), witness=_unrolled_witness,
    witness_note="x - y constant, eps' aligned along the path: ratio prod_t (k_t + |c_t| L) / "
                 "C^N")

register(Claim(
    "C.7-sym", "Lemma", "C.7 for the symmetric fixed-guide filter (holds)",
    "Weights from a fixed guide, made symmetric and doubly stochastic (Sinkhorn): "
    "||P x - P x_bar|| <= ||x - x_bar||.",
    [Part("nonexpansive", c7s, None,
          note="P is symmetric, nonnegative, rows and columns sum to 1: ||P||_2 <= "
               "sqrt(||P||_1 ||P||_inf) = 1; equality on constants.")]))

register(Claim(
    "C.8-sym", "Lemma", "C.8, C.6 and C.9 with the paper's constant, symmetric filter (hold)",
    "With the non-expansive filter, one DDIM step propagates the error by at most the paper's C "
    "(eq. 71), and N steps by C^N.",
    [Part("step", c8s, None,
          note="library DDIM step: k = 1/sqrt(alpha_t) and |c| <= (1 - alpha_t)/sqrt(alpha_t "
               "(1 - alpha_bar_t)) in the sampling direction (docs/theory.md#symmetric)."),
     Part("one_step", c6s, None, note="eq. 53 itself: the constant is exactly eq. 71."),
     Part("unrolled", c9s, None, note="induction; prod_t C_t <= (max_t C_t)^N.")]))
