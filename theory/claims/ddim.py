"""Claims C.6-C.9: stability of bilateral-filtered DDIM inversion, checked on the library's
:func:`jaxvedit.diffusion.bilateral.bilateral_filter_latent` and
:func:`jaxvedit.diffusion.ddim.ddim_step_from_alphas` with the SD1.5 ``scaled_linear`` schedule.

Noise predictors: ``eps(x) = L_eps * ell * s * sin(x / ell + phi)`` elementwise, with
``s in [-1, 1]`` and phases ``phi`` searched adversarially -- exactly L_eps-Lipschitz at most
(``ell`` = the range scale of the latent, so that the family is scale-equivariant).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from theory import symbolic
from theory.registry import Claim, Part, Statement, register

SHAPE = (6, 6, 2)      # latent (H, W, C) in the searches
D = int(np.prod(SHAPE))


@functools.lru_cache(maxsize=1)
def alphas_cumprod() -> np.ndarray:
    from jaxvedit.diffusion.schedules import sd15_schedule
    return np.asarray(sd15_schedule().alphas_cumprod, np.float64)


def betas() -> np.ndarray:
    from jaxvedit.diffusion.schedules import sd15_schedule
    return np.asarray(sd15_schedule().betas, np.float64)


def bil(x, s):
    from jaxvedit.diffusion.bilateral import bilateral_filter_latent
    return bilateral_filter_latent(x, radius=s["radius"], sigma_spatial=s["ss"],
                                   sigma_range=s["sr"], range_mode="absolute")


def ddim_step(x, eps, a_from, a_to):
    from jaxvedit.diffusion.ddim import ddim_step_from_alphas
    return ddim_step_from_alphas(x, eps, jnp.float64(a_from), jnp.float64(a_to))


# ----------------------------------------------------------------- the filter's Lipschitz bound
def _offsets(radius, window="square"):
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if window == "square" or dy * dy + dx * dx <= radius * radius]


def _A_const(W: float) -> float:
    """A = sup E_p[d^2]/sigma_r^2 = 2 max_{0<S<1} S log(W(1-S)/S) (concave; bisection on f')."""
    fp = lambda S: math.log(W) + math.log(1 - S) - S / (1 - S) - math.log(S) - 1
    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fp(mid) > 0 else (lo, mid)
    S = 0.5 * (lo + hi)
    return 2 * S * math.log(W * (1 - S) / S)


def _h_star(A: float, g: float = 0.0) -> float:
    """max_{a >= 0} e^{-a} (1 + 2a + sqrt(2 A a)) / (1 + g e^{-a}) on a fine grid plus a safe
    margin (the grid step times a bound on the derivative, and the sqrt's modulus at 0)."""
    a = np.linspace(0.0, 60.0, 600001)
    h = np.exp(-a) * (1 + 2 * a + np.sqrt(2 * A * a)) / (1 + g * np.exp(-a))
    return float(h.max() + 2 * (3 + 2 * A + math.sqrt(2 * A)) * 1e-4 + math.sqrt(2 * A * 1e-4))


@functools.lru_cache(maxsize=None)
def bilateral_lipschitz_bound(radius: int, sigma_spatial: float, window: str = "square") -> float:
    """Lambda(r, sigma_s): ||B(x) - B(y)||_2 <= Lambda ||x - y||_2 for the edge-padded, per-channel
    bilateral filter with absolute sigma_range (any sigma_range > 0, any image size >= 1).

    Lambda = sqrt(R * Col) with R = 1 + 2A (max row abs-sum of the Jacobian) and
    Col = (1 + A) + max_k sum_{pairs (i, o != 0) reading k} g(o) h*(g(o)) (max column abs-sum),
    see docs/theory.md#c7.
    """
    offs = _offsets(radius, window)
    g = {o: math.exp(-(o[0] ** 2 + o[1] ** 2) / (2 * sigma_spatial ** 2)) for o in offs}
    W = sum(v for o, v in g.items() if o != (0, 0))
    A = _A_const(W)
    hs = {o: _h_star(A, v) for o, v in g.items() if o != (0, 0)}
    # column weight: over all pixels k, the (pixel, offset != 0) pairs that read k under edge
    # padding, each weighted g(o) h*(g(o)); the worst k is a corner of a large image
    # (a pixel's pairs depend only on its distances to the borders, capped at r + 1, so image
    # sizes up to 4r + 3 in each axis cover every case)
    n_max = 4 * radius + 3
    G_col = 0.0
    for h in range(1, n_max + 1):
        for w in range(1, n_max + 1):
            G = np.zeros((h, w))
            for (dy, dx), v in g.items():
                if (dy, dx) == (0, 0):
                    continue
                ys = np.clip(np.arange(h) + dy, 0, h - 1)
                xs = np.clip(np.arange(w) + dx, 0, w - 1)
                np.add.at(G, (ys[:, None], xs[None, :]), v * hs[(dy, dx)])
            G_col = max(G_col, float(G.max()))
    R = 1 + 2 * A
    Col = (1 + A) + G_col
    return math.sqrt(R * Col)


# ----------------------------------------------------------------- inputs
def _eps_fn(raw_s, raw_phi, L, ell):
    s = jnp.tanh(raw_s).reshape(SHAPE)
    phi = raw_phi.reshape(SHAPE)
    return lambda x: L * ell * s * jnp.sin(x / ell + phi)


def _lip_inputs(raw, st):
    """x, y = x + d (latents at the range scale sigma_r), plus the eps parameters."""
    ell = st["sr"]
    x = ell * 3.0 * raw[:D].reshape(SHAPE)
    d = ell * jnp.exp(raw[D] - 1.0) * raw[D + 1: 2 * D + 1].reshape(SHAPE)
    return {"x": x, "y": x + d, "es": raw[2 * D + 1: 3 * D + 1], "ephi": raw[3 * D + 1: 4 * D + 1]}


def _lip_dim(st):
    return 4 * D + 1


def _dist(i):
    return jnp.linalg.norm(i["x"] - i["y"])


FILTERS = [{"radius": 2, "ss": 1.0, "sr": 0.1}, {"radius": 1, "ss": 2.0, "sr": 0.5}]


# ================================================================= C.7
c7_orig = Statement(
    text="the bilateral filter is non-expansive: ||B(x) - B(y)||_2 <= ||x - y||_2 (eq. 57/62)",
    hypotheses="Gaussian spatial and range kernels, sigma_s, sigma_r > 0 (library filter, "
               "absolute range mode, edge padding)",
    quantity="||B(x) - B(y)||_2", bound="||x - y||_2", grid=FILTERS, dim=_lip_dim,
    to_inputs=_lip_inputs, q=lambda i, s: jnp.linalg.norm(bil(i["x"], s) - bil(i["y"], s)),
    b=lambda i, s: _dist(i),
    params=lambda i, s: {"radius": s["radius"], "sigma_spatial": s["ss"],
                         "||x-y||/sigma_r": _dist(i) / s["sr"]})

c7_fixed = Statement(
    text="(eq. 56-57 literally, x_bar the ideal unfiltered latent) ||B(x_t) - x_bar_t|| <= "
         "||x_t - x_bar_t||",
    hypotheses="as above; x_bar any latent", quantity="||B(x) - x_bar||", bound="||x - x_bar||",
    grid=FILTERS[:1], dim=_lip_dim, to_inputs=_lip_inputs,
    q=lambda i, s: jnp.linalg.norm(bil(i["x"], s) - i["y"]), b=lambda i, s: _dist(i),
    params=None)

def bil_relative(x, s):
    from jaxvedit.diffusion.bilateral import bilateral_filter_latent
    return bilateral_filter_latent(x, radius=s["radius"], sigma_spatial=s["ss"],
                                   sigma_range=s["sr"], range_mode="relative")


c7_relative = Statement(
    text="non-expansiveness for the library's relative range mode (sigma_r = sigma_range x the "
         "channel's std): ||B(x) - B(y)||_2 <= ||x - y||_2",
    hypotheses="range_mode='relative', sigma_range 0.5, radius 2, sigma_s 1",
    quantity="||B(x) - B(y)||_2", bound="||x - y||_2",
    grid=[{"radius": 2, "ss": 1.0, "sr": 0.5}], dim=_lip_dim, to_inputs=_lip_inputs,
    q=lambda i, s: jnp.linalg.norm(bil_relative(i["x"], s) - bil_relative(i["y"], s)),
    b=lambda i, s: _dist(i), params=None)


c7_corr = Statement(
    text="||B(x) - B(y)||_2 <= Lambda(r, sigma_s) ||x - y||_2, Lambda = sqrt((1 + 2A)((1 + A) + "
         "max_k sum_pairs g h*(g))) (docs/theory.md#c7), independent of sigma_r, the data and "
         "the image size "
         "(Lambda(2, 1) = 7.36, Lambda(1, 2) = 7.73, Lambda(1, 1) = 5.66)",
    hypotheses="absolute range mode, any sigma_r > 0, edge padding, square window",
    quantity="||B(x) - B(y)||_2", bound="Lambda(r, sigma_s) ||x - y||_2", grid=FILTERS,
    dim=_lip_dim, to_inputs=_lip_inputs, q=c7_orig.q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"]) * _dist(i),
    params=c7_orig.params, proof="#c7")


# ================================================================= C.8
def _paper_C(alpha, abar, L):
    return 1 / math.sqrt(alpha) + (1 - alpha) / math.sqrt(alpha * (1 - abar)) * L   # eq. 71


def _lib_C(a_from, a_to, L):
    c = math.sqrt(1 - a_to) - math.sqrt(a_to * (1 - a_from) / a_from)
    return math.sqrt(a_to / a_from) + abs(c) * L


def _ddim_static(t_from, t_to, L, **f):
    acp = alphas_cumprod()
    return {"t_from": t_from, "t_to": t_to, "a_from": float(acp[t_from]), "a_to": float(acp[t_to]),
            "L": L, **(f or FILTERS[0])}


def _lib_step_filtered(x, i, s):
    xf = bil(x, s)
    eps = _eps_fn(i["es"], i["ephi"], s["L"], s["sr"])
    return ddim_step(xf, eps(xf), s["a_from"], s["a_to"])


GRID_C8 = [_ddim_static(501, 481, 1.0), _ddim_static(981, 961, 0.0), _ddim_static(21, 1, 0.5)]
GRID_C8_CORR = [_ddim_static(481, 501, 1.0)] + GRID_C8   # an inversion step first


def _c8_params(i, s):
    return {"a_to/a_from": s["a_to"] / s["a_from"], "L_eps": s["L"]}


c8_orig = Statement(
    text="one filtered DDIM step: ||x'_{t-1} - x_bar_{t-1}|| <= C ||x_t - x_bar_t|| with "
         "C = 1/sqrt(alpha_t) + (1 - alpha_t) L_eps / sqrt(alpha_t (1 - alpha_bar_t)) (eq. 64/71); "
         "the library's deterministic DDIM step (z = 0), both paths filtered, "
         "alpha_t = a_from/a_to, alpha_bar_t = a_from",
    hypotheses="eps L_eps-Lipschitz; SD1.5 schedule, 50-step DDIM sampling pairs; filter "
               "radius 2, sigma_s 1, sigma_r 0.1", quantity="||step(B x) - step(B y)||",
    bound="C ||x - y||", grid=GRID_C8, dim=_lip_dim, to_inputs=_lip_inputs,
    q=lambda i, s: jnp.linalg.norm(_lib_step_filtered(i["x"], i, s) - _lib_step_filtered(i["y"], i, s)),
    b=lambda i, s: _paper_C(s["a_from"] / s["a_to"], s["a_from"], s["L"]) * _dist(i),
    params=_c8_params)

c8_corr = Statement(
    text="||step(B x) - step(B y)|| <= Lambda (sqrt(a_to/a_from) + |sqrt(1-a_to) - "
         "sqrt(a_to (1-a_from)/a_from)| L_eps) ||x - y|| for the library's DDIM step, "
         "sampling and inversion directions",
    hypotheses="eps L_eps-Lipschitz; any a_from, a_to in (0, 1)",
    quantity="||step(B x) - step(B y)||", bound="C~ ||x - y||", grid=GRID_C8_CORR, dim=_lip_dim,
    to_inputs=_lip_inputs, q=c8_orig.q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"])
    * _lib_C(s["a_from"], s["a_to"], s["L"]) * _dist(i), params=_c8_params, proof="#c8")


# ================================================================= C.6 (eq. 53, expectation)
def _eq53_static(t, L, scale=1000.0):
    acp, be = alphas_cumprod(), betas()
    return {"t": t, "alpha": 1 - float(be[t]), "abar": float(acp[t]),
            "alpha_prev": 1 - float(be[t - 1]), "L": L, "radius": 2, "ss": 1.0,
            "sr": 0.1 * scale}


def _eq53_det(x, i, s):
    """Noise-free part of eq. 53 applied to the filtered latent."""
    xf = bil(x, s)
    eps = _eps_fn(i["es"], i["ephi"], s["L"], s["sr"])
    return (xf - (1 - s["alpha"]) / math.sqrt(1 - s["abar"]) * eps(xf)) / math.sqrt(s["alpha"])


GRID_C6 = [_eq53_static(10, 0.0), _eq53_static(500, 0.5)]


def _c6_q(i, s):
    # E||Delta + sigma z|| >= ||Delta|| (Jensen, E z = 0): a lower bound of the left-hand side
    return jnp.linalg.norm(_eq53_det(i["x"], i, s) - _eq53_det(i["y"], i, s))


c6_orig = Statement(
    text="E||x'_{t-1} - x_bar_{t-1}|| <= C E||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) E||z|| "
         "(eq. 55) with C = C(alpha_t, alpha_bar_t, L_eps) of Lemma C.8",
    hypotheses="eq. 53 step with z ~ N(0, I), SD1.5 schedule (alpha_t = 1 - beta_t); both paths "
               "filtered (the favourable reading); x_t - x_bar_t deterministic; any sigma_r > 0 "
               "(here 100, latents at scale 300)",
    quantity="||E-free part of the error|| (a lower bound of the left side by Jensen)",
    bound="C ||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) sqrt(d) (E||z|| <= sqrt(d))",
    grid=GRID_C6, dim=_lip_dim, to_inputs=_lip_inputs, q=_c6_q,
    b=lambda i, s: _paper_C(s["alpha"], s["abar"], s["L"]) * _dist(i)
    + math.sqrt(1 - s["alpha_prev"]) * math.sqrt(D),
    params=lambda i, s: {"t": s["t"], "L_eps": s["L"]})

c6_corr = Statement(
    text="the same with C~ = Lambda(r, sigma_s) * C: E||x'_{t-1} - x_bar_{t-1}|| <= "
         "Lambda C E||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) E||z||",
    hypotheses="as above (both paths filtered)", quantity="||Delta|| (deterministic part)",
    bound="Lambda C ||x - x_bar|| + 0 (the noise term only helps; checked without it)",
    grid=GRID_C6, dim=_lip_dim, to_inputs=_lip_inputs, q=_c6_q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"])
    * _paper_C(s["alpha"], s["abar"], s["L"]) * _dist(i),
    params=lambda i, s: {"t": s["t"], "L_eps": s["L"]}, proof="#c6")


# ================================================================= C.9 (unrolled)
PAIRS = [(521, 501), (501, 481)]


def _c9_static(L):
    acp = alphas_cumprod()
    return {"pairs": [(float(acp[a]), float(acp[b])) for a, b in PAIRS], "L": L,
            "radius": 1, "ss": 1.0, "sr": 0.1}


def _unrolled(x, i, s):
    for k, (af, at) in enumerate(s["pairs"]):
        xf = bil(x, s)
        eps = _eps_fn(jnp.roll(i["es"], k), jnp.roll(i["ephi"], k), s["L"], s["sr"])
        x = ddim_step(xf, eps(xf), af, at)
    return x


GRID_C9 = [_c9_static(1.0)]


def _c9_q(i, s):
    return jnp.linalg.norm(_unrolled(i["x"], i, s) - _unrolled(i["y"], i, s))


c9_orig = Statement(
    text="E||x'_0 - x_bar_0|| <= C^T delta + sqrt(d) sum_t C^{t-1} sqrt(1 - alpha_{t-1}) (eq. 74); "
         "for the library's deterministic DDIM (no noise injected) the noise sum is absent: "
         "||Phi(x) - Phi(x_bar)|| <= C^N ||x - x_bar||, C = max_t C_t of eq. 71",
    hypotheses="N = 2 filtered 50-step DDIM sampling steps t = 521 -> 481 (radius-1 filter), "
               "eps L_eps-Lipschitz",
    quantity="||Phi(x) - Phi(y)||", bound="(max_t C_t)^N ||x - y||", grid=GRID_C9,
    dim=_lip_dim, to_inputs=_lip_inputs, q=_c9_q,
    b=lambda i, s: max(_paper_C(af / at, af, s["L"]) for af, at in s["pairs"]) ** len(s["pairs"])
    * _dist(i), params=lambda i, s: {"L_eps": s["L"], "N": len(s["pairs"])})

c9_corr = Statement(
    text="||Phi(x) - Phi(x_bar)|| <= prod_t C~_t ||x - x_bar||, C~_t = Lambda (sqrt(a_to/a_from) "
         "+ |c_t| L_eps); with noise, E||x_0 - x_bar_0|| <= prod C~_t delta + sum_t "
         "(prod_{s<t} C~_s) sigma_t E||z|| (eq. 74's indexing, not eq. 80's)",
    hypotheses="as above", quantity="||Phi(x) - Phi(y)||", bound="prod_t C~_t ||x - y||",
    grid=GRID_C9, dim=_lip_dim, to_inputs=_lip_inputs, q=_c9_q,
    b=lambda i, s: math.prod(bilateral_lipschitz_bound(s["radius"], s["ss"]) * _lib_C(af, at, s["L"])
                             for af, at in s["pairs"]) * _dist(i),
    params=c9_orig.params, proof="#c9")

register(Claim(
    "C.6", "Theorem", "Stability of bilateral-filtering DDIM inversion",
    "E||x'_{t-1} - x_bar_{t-1}|| <= C E||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) E||z|| with "
    "C = C(alpha_t, alpha_bar_t, L_eps) (eq. 55).",
    [Part("one_step", c6_orig, c6_corr,
          note="C cannot depend on alpha, alpha_bar, L_eps only: the filter's expansion "
               "Lambda(r, sigma_s) > 1 multiplies it. Under the literal reading (x_bar unfiltered) "
               "even x_t = x_bar_t breaks it whenever the filter moves x_bar.")]))

register(Claim(
    "C.7", "Lemma", "Error contraction by bilateral filtering",
    "The bilateral filter is non-expansive: ||x'_t - x_bar_t|| <= ||x_t - x_bar_t|| (eq. 57).",
    [Part("nonexpansive", c7_orig, c7_corr,
          note="the weights w(x, y) depend on the data, so B is not a fixed averaging "
               "operator; eq. 59-60 also bound a sup by a 2-norm and then sum over all y, "
               "which loses a factor sqrt(#pixels)."),
     Part("fixed_point", c7_fixed, None,
          note="eq. 56 assumes B(x_bar) = x_bar; x = x_bar already violates it."),
     Part("relative", c7_relative, None,
          note="the library's relative range mode is expansive too; sigma_r then depends on x, "
               "so the certificate Lambda does not apply and no corrected constant is claimed "
               "(left open).")]))

register(Claim(
    "C.8", "Lemma", "Error propagation in a single DDIM step",
    "||x'_{t-1} - x_bar_{t-1}|| <= C ||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) ||z|| with C of "
    "eq. 71.",
    [Part("step", c8_orig, c8_corr,
          note="eq. 71 is the right constant for the unfiltered eq. 53 map (sympy), but "
               "'combining with Lemma C.7' uses the false non-expansiveness.")],
    symbolic=[symbolic.check_ddim_constant]))

register(Claim(
    "C.9", "Lemma", "Expected error control over the unrolled DDIM",
    "E||x'_0 - x_bar_0|| <= C^T delta + sqrt(d) sum_t C^{t-1} sqrt(1 - alpha_{t-1}) (eq. 74).",
    [Part("unrolled", c9_orig, c9_corr,
          note="inherits C.7/C.8; eq. 80 re-derives it with C^{T-t} (index slip, sympy); "
               "'E||z|| = sqrt(d)' is false (E||z|| < sqrt(d) by Jensen) but harmless as an "
               "upper bound.")],
    symbolic=[symbolic.check_unrolled]))
