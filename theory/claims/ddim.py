"""Claims C.6-C.9: stability of bilateral-filtered DDIM inversion, checked on the library's
:func:`jaxvedit.diffusion.bilateral.bilateral_filter_latent` and
:func:`jaxvedit.diffusion.ddim.ddim_step_from_alphas` with the SD1.5 ``scaled_linear`` schedule.

Noise predictors: ``eps(x) = L_eps * ell * s * sin(x / ell + phi) (+ e0)`` elementwise, with
``s in [-1, 1]``, phases ``phi`` and (multi-step statements) constant offsets ``e0`` searched
adversarially -- at most L_eps-Lipschitz (``ell`` = the range scale of the latent, so that the
family is scale-equivariant). Witnesses align eps' = +-L_eps at the filtered point.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from theory import constants as K
from theory import hypotheses as H
from theory import symbolic
from theory.registry import Claim, Part, Statement, register

SHAPE = (6, 6, 2)      # latent (H, W, C) in the searches
D = int(np.prod(SHAPE))

bilateral_lipschitz_bound = K.bilateral_lipschitz_bound        # round two (docs/theory.md#c7)
bilateral_lipschitz_bound_v1 = K.bilateral_lipschitz_bound_v1  # round one, for comparison


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


def bil_relative(x, s):
    from jaxvedit.diffusion.bilateral import bilateral_filter_latent
    return bilateral_filter_latent(x, radius=s["radius"], sigma_spatial=s["ss"],
                                   sigma_range=s["sr"], range_mode="relative")


def ddim_step(x, eps, a_from, a_to):
    from jaxvedit.diffusion.ddim import ddim_step_from_alphas
    return ddim_step_from_alphas(x, eps, jnp.float64(a_from), jnp.float64(a_to))


def lib_coefs(a_from, a_to):
    """The library step is affine: step(x, eps) = k x + c eps (sympy-checked)."""
    return (math.sqrt(a_to / a_from),
            math.sqrt(1 - a_to) - math.sqrt(a_to * (1 - a_from) / a_from))


def eq53_coefs(alpha, abar):
    """eq. 53 without noise: (x - (1 - alpha)/sqrt(1 - abar) eps) / sqrt(alpha)."""
    return 1 / math.sqrt(alpha), -(1 - alpha) / math.sqrt(1 - abar) / math.sqrt(alpha)


# ----------------------------------------------------------------- inputs
def eps_fn(s_, phi, L, ell, e0=None):
    """At most L-Lipschitz for |s_| <= 1 (and any phi, e0)."""
    if e0 is None:
        return lambda x: L * ell * s_ * jnp.sin(x / ell + phi)
    return lambda x: L * ell * s_ * jnp.sin(x / ell + phi) + e0


def _lip_inputs(raw, st):
    """x, y = x + d (latents at the range scale sigma_r), plus the eps parameters."""
    ell = st["sr"]
    x = ell * 3.0 * raw[:D].reshape(SHAPE)
    d = ell * jnp.exp(raw[D] - 1.0) * raw[D + 1: 2 * D + 1].reshape(SHAPE)
    return {"x": x, "y": x + d, "s": jnp.tanh(raw[2 * D + 1: 3 * D + 1]).reshape(SHAPE),
            "phi": raw[3 * D + 1: 4 * D + 1].reshape(SHAPE)}


def _lip_dim(st):
    return 4 * D + 1


def n_steps(st):
    return len(st["pairs"]) if "pairs" in st else len(st["steps"])


def _multi_inputs(raw, st):
    """as _lip_inputs, with per-step eps parameters (s, phi, e0) of shape (N,) + SHAPE."""
    ell, n = st["sr"], n_steps(st)
    x = ell * 3.0 * raw[:D].reshape(SHAPE)
    d = ell * jnp.exp(raw[D] - 1.0) * raw[D + 1: 2 * D + 1].reshape(SHAPE)
    rest = raw[2 * D + 1:].reshape((3, n) + SHAPE)
    return {"x": x, "y": x + d, "s": jnp.tanh(rest[0]), "phi": rest[1], "e0": ell * rest[2]}


def _multi_dim(st):
    return 2 * D + 1 + 3 * n_steps(st) * D


def _dist(i):
    return jnp.linalg.norm(i["x"] - i["y"])


# ----------------------------------------------------------------- hypotheses
def _hyp_filter(i, s):
    return {"sigma_r > 0": s["sr"] > 0, "sigma_s > 0": s["ss"] > 0,
            "radius integer >= 1": int(s["radius"]) == s["radius"] and s["radius"] >= 1}


def _hyp_eps(i, s):
    sv = np.asarray(i["s"])
    return {"eps L_eps-Lipschitz (|s| <= 1, L_eps >= 0)":
            bool(np.all(np.abs(sv) <= 1.0)) and s.get("L", 0.0) >= 0}


def _hyp_alphas(i, s):
    vals = [v for k in ("a_from", "a_to", "alpha", "abar", "alpha_prev") if k in s for v in [s[k]]]
    vals += [a for p in s.get("pairs", []) for a in p]
    vals += [a for p in s.get("steps", []) for a in p]
    return {"alphas in (0, 1)": all(0 < v < 1 for v in vals)}


HYP_FILTER = H.combine(_hyp_filter, H.finite("x", "y"))
HYP_STEP = H.combine(HYP_FILTER, _hyp_eps, _hyp_alphas, H.finite("phi"))


# ----------------------------------------------------------------- witnesses
def filter_witness_x(radius, sigma_spatial, sigma_range, shape=SHAPE):
    """The closed-form extremal input of the Jacobian's diagonal (docs/theory.md#c7): the pixel
    (r, r) at 0, each window offset o at sign(o) sigma_r sqrt(2 a*) (signs opposite for o and -o,
    so mu = 0), every other pixel 0, channel 0 only. There J_ii = max_S (1 - S) + 2 S log(W (1 -
    S) / S) = the certified diagonal bound."""
    _, a_star = K.diagonal_witness_value(K.window_mass(radius, sigma_spatial))
    dval = sigma_range * math.sqrt(2 * a_star)
    x = np.zeros(shape)
    c = radius
    for (dy, dx) in K.offsets(radius):
        if (dy, dx) == (0, 0):
            continue
        sign = 1.0 if (dy, dx) > (0, 0) else -1.0
        x[c + dy, c + dx, 0] = sign * dval
    return x


def pair_along_top(f, x, h):
    """(x, x + h v), v the top right-singular vector of the Jacobian of f at x (exact, dense):
    the ratio ||f(x + h v) - f(x)|| / h is ||J(x)||_2 up to O(h)."""
    J = jax.jit(jax.jacobian(lambda z: f(z.reshape(x.shape)).reshape(-1)))(
        jnp.asarray(x).reshape(-1))
    _, _, Vt = np.linalg.svd(np.asarray(J))
    return np.asarray(x), np.asarray(x) + h * Vt[0].reshape(x.shape)


def _filter_witness(s):
    x = filter_witness_x(s["radius"], s["ss"], s["sr"])
    x, y = pair_along_top(lambda z: bil(z, s), x, 1e-6 * s["sr"])
    return {"x": x, "y": y, "s": np.zeros(SHAPE), "phi": np.zeros(SHAPE)}


def _aligned_eps(xf, ell, sign):
    """eps parameters with eps'(xf) = sign * L and eps(xf) = 0: phi = -xf/ell, s = sign."""
    return np.full(SHAPE, float(sign)), -np.asarray(xf) / ell


def _step_witness(s):
    """The filter witness with eps' = sign(c) L_eps at the filtered point: the step's Jacobian
    there is (k + |c| L_eps) J_B."""
    x = filter_witness_x(s["radius"], s["ss"], s["sr"])
    k, c = lib_coefs(s["a_from"], s["a_to"])
    sv, ph = _aligned_eps(bil(jnp.asarray(x), s), s["sr"], 1.0 if c >= 0 else -1.0)
    inp = {"s": sv, "phi": ph}
    f = lambda z: _lib_step_filtered(z, inp, s)
    x, y = pair_along_top(f, x, 1e-6 * s["sr"])
    return {"x": x, "y": y, **inp}


def _eq53_witness(s):
    x = filter_witness_x(s["radius"], s["ss"], s["sr"])
    sv, ph = _aligned_eps(bil(jnp.asarray(x), s), s["sr"], -1.0)     # eps coefficient < 0
    inp = {"s": sv, "phi": ph}
    x, y = pair_along_top(lambda z: _eq53_det(z, inp, s), x, 1e-6 * s["sr"])
    return {"x": x, "y": y, **inp}


# ================================================================= C.7
FILTERS = [{"radius": 2, "ss": 1.0, "sr": 0.1}, {"radius": 1, "ss": 2.0, "sr": 0.5},
           {"radius": 1, "ss": 1.0, "sr": 0.25}]


def _filter_params(i, s):
    return {"radius": s["radius"], "sigma_spatial": s["ss"], "||x-y||/sigma_r": _dist(i) / s["sr"]}


c7_orig = Statement(
    text="the bilateral filter is non-expansive: ||B(x) - B(y)||_2 <= ||x - y||_2 (eq. 57/62)",
    hypotheses="Gaussian spatial and range kernels, sigma_s, sigma_r > 0 (library filter, "
               "absolute range mode, edge padding)",
    quantity="||B(x) - B(y)||_2", bound="||x - y||_2", grid=FILTERS, dim=_lip_dim,
    to_inputs=_lip_inputs, q=lambda i, s: jnp.linalg.norm(bil(i["x"], s) - bil(i["y"], s)),
    b=lambda i, s: _dist(i), params=_filter_params, check=HYP_FILTER)

c7_corr = Statement(
    text="||B(x) - B(y)||_2 <= Lambda(r, sigma_s) ||x - y||_2, Lambda = (sup of the Jacobian's "
         "diagonal) + sqrt((max row sum) (max column sum) of its off-diagonal part) "
         "(docs/theory.md#c7), independent of sigma_r, the data and the image size "
         "(Lambda(1, 1) = 4.29, Lambda(2, 1) = 5.28, Lambda(1, 2) = 5.86; round one 5.66, 7.36, "
         "7.73)",
    hypotheses="absolute range mode, any sigma_r > 0, edge padding, square window",
    quantity="||B(x) - B(y)||_2", bound="Lambda(r, sigma_s) ||x - y||_2", grid=FILTERS,
    dim=_lip_dim, to_inputs=_lip_inputs, q=c7_orig.q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"]) * _dist(i),
    params=_filter_params, proof="#c7", check=HYP_FILTER, witness=_filter_witness,
    witness_note="centre pixel 0, its window at +-sigma_r sqrt(2 a*) with balanced signs; "
                 "y along the top singular vector of the Jacobian there")

c7_fixed = Statement(
    text="(eq. 56-57 literally, x_bar the ideal unfiltered latent) ||B(x_t) - x_bar_t|| <= "
         "||x_t - x_bar_t||",
    hypotheses="as above; x_bar any latent", quantity="||B(x) - x_bar||", bound="||x - x_bar||",
    grid=FILTERS[:1], dim=_lip_dim, to_inputs=_lip_inputs,
    q=lambda i, s: jnp.linalg.norm(bil(i["x"], s) - i["y"]), b=lambda i, s: _dist(i),
    params=None, check=HYP_FILTER)


def _checkerboard(s):
    """x = x_bar = D * ((i + j) mod 2) in both channels, D maximising the displacement."""
    best = None
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    pat = np.repeat(((ii + jj) % 2)[..., None], SHAPE[2], axis=2).astype(float)
    for a in np.linspace(0.05, 6.0, 120):
        x = s["sr"] * math.sqrt(2 * a) * pat
        v = float(jnp.linalg.norm(bil(jnp.asarray(x), s) - x))
        if best is None or v > best[0]:
            best = (v, x)
    return best[1]


c7_fixed_corr = Statement(
    text="||B(x) - x_bar||_2 <= Lambda ||x - x_bar||_2 + ||B(x_bar) - x_bar||_2 <= "
         "Lambda ||x - x_bar||_2 + M1(W) sigma_r sqrt(n): the filter moves any latent by at most "
         "M1 sigma_r per entry (M1 = sup E_p|d|/sigma_r by the log-sum bound; M1(2, 1) = 0.94), "
         "n = number of entries",
    hypotheses="absolute range mode, any sigma_r > 0, any x, x_bar", quantity="||B(x) - x_bar||",
    bound="Lambda ||x - x_bar|| + M1 sigma_r sqrt(n)", grid=FILTERS, dim=_lip_dim,
    to_inputs=_lip_inputs, q=c7_fixed.q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"]) * _dist(i)
    + K.filter_displacement(s["radius"], s["ss"]) * s["sr"] * math.sqrt(D),
    params=None, proof="#c7-fixed", check=HYP_FILTER,
    witness=lambda s: (lambda x: {"x": x, "y": x, "s": np.zeros(SHAPE),
                                  "phi": np.zeros(SHAPE)})(_checkerboard(s)),
    witness_note="x = x_bar = a checkerboard at the best amplitude (every pixel moves towards "
                 "its 4 neighbours); one pixel with all neighbours at +sigma_r sqrt(2 a*) "
                 "attains M1 sigma_r exactly")

RELATIVE = [{"radius": 2, "ss": 1.0, "sr": 0.5}, {"radius": 2, "ss": 1.0, "sr": 0.25},
            {"radius": 2, "ss": 1.0, "sr": 1.0}, {"radius": 2, "ss": 1.0, "sr": 2.0}]


def _rel_inputs(raw, st):
    """latents at scale 1 (the relative filter is scale-equivariant: B(lam x) = lam B(x))."""
    return _lip_inputs(raw, {**st, "sr": 1.0})


def _relative_witness(s):
    """The diagonal witness pattern (scale-free in relative mode), with the pixels outside the
    window at +-E (alternating) so that s_r std(x) = D / sqrt(2 a*) when that is reachable
    (E = 0 otherwise)."""
    x = filter_witness_x(s["radius"], s["ss"], 1.0)
    _, a_star = K.diagonal_witness_value(K.window_mass(s["radius"], s["ss"]))
    dval = math.sqrt(2 * a_star)
    target = dval / math.sqrt(2 * a_star) / s["sr"]        # = 1 / s_r: the wanted std
    free = np.zeros(SHAPE[:2], bool)
    free[:, 2 * s["radius"] + 1:] = True
    free[2 * s["radius"] + 1:, :] = True
    signs = np.where((np.add.outer(np.arange(SHAPE[0]), np.arange(SHAPE[1])) % 2) == 0, 1.0, -1.0)

    def with_E(E):
        z = x.copy()
        z[..., 0] = np.where(free, E * signs, z[..., 0])
        return z

    if np.std(with_E(0.0)[..., 0]) < target:
        lo, hi = 0.0, 10.0 * target + 10.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.std(with_E(mid)[..., 0]) < target else (lo, mid)
        x = with_E(hi)
    x[..., 1] = x[..., 0]
    x, y = pair_along_top(lambda z: bil_relative(z, s), x, 1e-6)
    return {"x": x, "y": y, "s": np.zeros(SHAPE), "phi": np.zeros(SHAPE)}


def _rel_params(i, s):
    return {"s_r": s["sr"]}


c7_relative = Statement(
    text="non-expansiveness for the library's relative range mode (sigma_r = s_r x the "
         "channel's std): ||B(x) - B(y)||_2 <= ||x - y||_2",
    hypotheses="range_mode='relative', radius 2, sigma_s 1, s_r = sigma_range",
    quantity="||B(x) - B(y)||_2", bound="||x - y||_2",
    grid=RELATIVE, dim=_lip_dim, to_inputs=_rel_inputs,
    q=lambda i, s: jnp.linalg.norm(bil_relative(i["x"], s) - bil_relative(i["y"], s)),
    b=lambda i, s: _dist(i), params=_rel_params, check=HYP_FILTER)

c7_relative_corr = Statement(
    text="relative range mode: ||B(x) - B(y)||_2 <= (Lambda(r, sigma_s) + s_r U(W)) ||x - y||_2 "
         "(J_rel = J_x + u x~^T / ||x~||^2 per channel with u_i = sigma Cov_p(t, t^2), |Cov| <= U "
         "by the log-sum bound; U(2, 1) = 3.53)",
    hypotheses="range_mode='relative', any s_r > 0, any images (a constant channel is left as "
               "it is)", quantity="||B(x) - B(y)||_2",
    bound="(Lambda + s_r U) ||x - y||_2", grid=RELATIVE, dim=_lip_dim, to_inputs=_rel_inputs,
    q=c7_relative.q,
    b=lambda i, s: K.relative_mode_bound(s["radius"], s["ss"], s["sr"]) * _dist(i),
    params=_rel_params, proof="#c7-relative", check=HYP_FILTER, witness=_relative_witness,
    witness_note="the diagonal witness pattern, the pixels outside its window at +-E tuning "
                 "std(x) to the optimal range scale; y along the top singular vector")


# ================================================================= C.8
def _paper_C(alpha, abar, L):
    return 1 / math.sqrt(alpha) + (1 - alpha) / math.sqrt(alpha * (1 - abar)) * L   # eq. 71


def _lib_C(a_from, a_to, L):
    k, c = lib_coefs(a_from, a_to)
    return k + abs(c) * L


def _ddim_static(t_from, t_to, L, **f):
    acp = alphas_cumprod()
    return {"t_from": t_from, "t_to": t_to, "a_from": float(acp[t_from]), "a_to": float(acp[t_to]),
            "L": L, **(f or FILTERS[0])}


def _lib_step_filtered(x, i, s):
    xf = bil(x, s)
    eps = eps_fn(i["s"], i["phi"], s["L"], s["sr"])
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
    params=_c8_params, check=HYP_STEP)

c8_corr = Statement(
    text="||step(B x) - step(B y)|| <= Lambda (sqrt(a_to/a_from) + |sqrt(1-a_to) - "
         "sqrt(a_to (1-a_from)/a_from)| L_eps) ||x - y|| for the library's DDIM step, "
         "sampling and inversion directions",
    hypotheses="eps L_eps-Lipschitz; any a_from, a_to in (0, 1)",
    quantity="||step(B x) - step(B y)||", bound="C~ ||x - y||", grid=GRID_C8_CORR, dim=_lip_dim,
    to_inputs=_lip_inputs, q=c8_orig.q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"])
    * _lib_C(s["a_from"], s["a_to"], s["L"]) * _dist(i), params=_c8_params, proof="#c8",
    check=HYP_STEP, witness=_step_witness,
    witness_note="the filter witness with eps' = sign(c) L_eps at the filtered point")


# ================================================================= C.6 (eq. 53, expectation)
def _eq53_static(t, L, scale=1000.0):
    acp, be = alphas_cumprod(), betas()
    return {"t": t, "alpha": 1 - float(be[t]), "abar": float(acp[t]),
            "alpha_prev": 1 - float(be[t - 1]), "L": L, "radius": 2, "ss": 1.0,
            "sr": 0.1 * scale}


def _eq53_det(x, i, s):
    """Noise-free part of eq. 53 applied to the filtered latent."""
    xf = bil(x, s)
    eps = eps_fn(i["s"], i["phi"], s["L"], s["sr"])
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
    params=lambda i, s: {"t": s["t"], "L_eps": s["L"]}, check=HYP_STEP)

c6_corr = Statement(
    text="the same with C~ = Lambda(r, sigma_s) * C: E||x'_{t-1} - x_bar_{t-1}|| <= "
         "Lambda C E||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) E||z||",
    hypotheses="as above (both paths filtered)", quantity="||Delta|| (deterministic part)",
    bound="Lambda C ||x - x_bar|| + 0 (the noise term only helps; checked without it)",
    grid=GRID_C6, dim=_lip_dim, to_inputs=_lip_inputs, q=_c6_q,
    b=lambda i, s: bilateral_lipschitz_bound(s["radius"], s["ss"])
    * _paper_C(s["alpha"], s["abar"], s["L"]) * _dist(i),
    params=lambda i, s: {"t": s["t"], "L_eps": s["L"]}, proof="#c6", check=HYP_STEP,
    witness=_eq53_witness, witness_note="the filter witness with eps' = -L_eps at the filtered "
                                        "point (eq. 53's eps coefficient is negative)")

WINDOW_RADII = (1, 2, 3, 4, 5)          # measured on the library filter
WINDOW_RADII_CLOSED = (6, 8, 12, 16)     # closed form only (compiling r >= 6 takes minutes)


def window_witness_row(r: int, measure: bool = True) -> dict:
    """sigma_s = r (so W grows like r^2): the diagonal witness value (closed form) and the
    Jacobian diagonal of the library filter at the witness, measured by autodiff."""
    ss, sr = float(r), 1.0
    W = K.window_mass(r, ss)
    val, _ = K.diagonal_witness_value(W)
    if not measure:
        return {"radius": r, "sigma_spatial": ss, "W": W, "diag_closed_form": val,
                "diag_measured": None, "log_W": math.log(W)}
    n = 2 * r + 1
    x = filter_witness_x(r, ss, sr, shape=(n, n, 1))
    st = {"radius": r, "ss": ss, "sr": sr}
    f = lambda v: bil(v.reshape(n, n, 1), st).reshape(-1)
    c = r * n + r
    e = jnp.zeros(n * n).at[c].set(1.0)
    _, jv = jax.jvp(f, (jnp.asarray(x).reshape(-1),), (e,))
    return {"radius": r, "sigma_spatial": ss, "W": W, "diag_closed_form": val,
            "diag_measured": float(jv[c]), "log_W": math.log(W)}


def c6_any_C_custom(cfg) -> dict:
    """C = C(alpha, alpha_bar, L_eps) alone is impossible: with L_eps = 0 the step is
    x -> B(x)/sqrt(alpha), whose Lipschitz constant is >= J_ii / sqrt(alpha) at the window
    witness, and J_ii = max_S (1-S) + 2 S log(W(1-S)/S) >= 1/2 + log W -> infinity with the
    window (the hypotheses admit any sigma_s and any neighbourhood)."""
    from theory.search import save_constructed_counterexample
    with jax.enable_x64(True):
        rows = [window_witness_row(r) for r in WINDOW_RADII]
        rows += [window_witness_row(r, measure=False) for r in WINDOW_RADII_CLOSED]
    data = {"claim": "C.6", "part": "any_C",
            "statement": "C depends on (alpha_t, alpha_bar_t, L_eps) only",
            "rows": rows,
            "why": "with L_eps = 0 the step's Lipschitz constant is at least the filter's "
                   "Jacobian diagonal at the window witness over sqrt(alpha_t), and that "
                   "diagonal is >= 1/2 + log W, unbounded as the window grows"}
    return {"verdict": "refuted", "counterexample": save_constructed_counterexample(data),
            "window_rows": rows,
            "original": {"text": "C = C(alpha_t, alpha_bar_t, L_eps) (Thm C.6)",
                         "worst_ratio": math.inf, "budget": {"constructed": len(rows)},
                         "evidence": "filter Jacobian diagonal at the window witness: " + ", ".join(
                             f"r={r['radius']}: {r['diag_measured'] or r['diag_closed_form']:.2f}"
                             for r in rows) + " (>= 1/2 + log W, unbounded; r >= 6 closed form)"}}


# ================================================================= C.9 (unrolled)
def _c9_static(start, N, L=1.0):
    acp = alphas_cumprod()
    ts = [start - 20 * k for k in range(N + 1)]
    return {"pairs": [(float(acp[a]), float(acp[b])) for a, b in zip(ts[:-1], ts[1:])],
            "t": ts, "L": L, "radius": 1, "ss": 1.0, "sr": 0.1}


GRID_C9 = [_c9_static(521, 2), _c9_static(521, 1), _c9_static(521, 3), _c9_static(521, 4)]


def _unrolled(x, i, s, filt=None):
    """N filtered DDIM steps (lax.scan over the steps: one compiled body)."""
    filt = filt or (lambda z: bil(z, s))
    a = jnp.asarray(np.asarray(s["pairs"], np.float64))

    def body(x, inp):
        (af, at), sv, ph, e0 = inp
        xf = filt(x)
        eps = eps_fn(sv, ph, s["L"], s["sr"], e0)
        return ddim_step(xf, eps(xf), af, at), None

    x, _ = jax.lax.scan(body, x, ((a[:, 0], a[:, 1]), i["s"], i["phi"], i["e0"]))
    return x


def _c9_q(i, s):
    return jnp.linalg.norm(_unrolled(i["x"], i, s) - _unrolled(i["y"], i, s))


def _c9_params(i, s):
    return {"L_eps": s["L"], "N": len(s["pairs"])}


def _unrolled_witness(s):
    """Every step sees the filter witness: eps_k has eps' = sign(c_k) L_eps at B(x_w) and the
    constant offset e0_k that maps B(x_w) back to x_w, so the N-step Jacobian is
    prod_k (k_k + |c_k| L_eps) J_B(x_w)^N."""
    x = filter_witness_x(s["radius"], s["ss"], s["sr"])
    xf = np.asarray(bil(jnp.asarray(x), s))
    S, P, E = [], [], []
    for af, at in s["pairs"]:
        k, c = lib_coefs(af, at)
        sv, ph = _aligned_eps(xf, s["sr"], 1.0 if c >= 0 else -1.0)
        S.append(sv)
        P.append(ph)
        E.append((x - k * xf) / c)
    inp = {"s": np.stack(S), "phi": np.stack(P), "e0": np.stack(E)}
    x, y = pair_along_top(lambda z: _unrolled(z, inp, s), x, 1e-6 * s["sr"])
    return {"x": x, "y": y, **inp}


c9_orig = Statement(
    text="E||x'_0 - x_bar_0|| <= C^T delta + sqrt(d) sum_t C^{t-1} sqrt(1 - alpha_{t-1}) (eq. 74); "
         "for the library's deterministic DDIM (no noise injected) the noise sum is absent: "
         "||Phi(x) - Phi(x_bar)|| <= C^N ||x - x_bar||, C = max_t C_t of eq. 71",
    hypotheses="N = 1..4 filtered 50-step DDIM sampling steps from t = 521 (radius-1 filter), "
               "eps L_eps-Lipschitz",
    quantity="||Phi(x) - Phi(y)||", bound="(max_t C_t)^N ||x - y||", grid=GRID_C9,
    dim=_multi_dim, to_inputs=_multi_inputs, q=_c9_q,
    b=lambda i, s: max(_paper_C(af / at, af, s["L"]) for af, at in s["pairs"]) ** len(s["pairs"])
    * _dist(i), params=_c9_params, check=H.combine(HYP_STEP, H.finite("e0")))

c9_corr = Statement(
    text="||Phi(x) - Phi(x_bar)|| <= prod_t C~_t ||x - x_bar||, C~_t = Lambda (sqrt(a_to/a_from) "
         "+ |c_t| L_eps); with noise, E||x_0 - x_bar_0|| <= prod C~_t delta + sum_t "
         "(prod_{s<t} C~_s) sigma_t E||z|| (eq. 74's indexing, not eq. 80's)",
    hypotheses="as above", quantity="||Phi(x) - Phi(y)||", bound="prod_t C~_t ||x - y||",
    grid=GRID_C9, dim=_multi_dim, to_inputs=_multi_inputs, q=_c9_q,
    b=lambda i, s: math.prod(bilateral_lipschitz_bound(s["radius"], s["ss"]) * _lib_C(af, at, s["L"])
                             for af, at in s["pairs"]) * _dist(i),
    params=_c9_params, proof="#c9", check=H.combine(HYP_STEP, H.finite("e0")),
    witness=_unrolled_witness,
    witness_note="each step at the filter witness (eps offsets map the step back to it): "
                 "ratio ||J_B(x_w)^N|| / Lambda^N")


# ---- C.9 under the lemma's own noise (eq. 53 steps, E||z|| = sqrt(d))
def _c9n_static(ts, L=0.5, scale=1000.0):
    acp, be = alphas_cumprod(), betas()
    steps = [(1 - float(be[t]), float(acp[t]), 1 - float(be[t - 1])) for t in ts]
    return {"t": list(ts), "steps": steps, "L": L, "radius": 2, "ss": 1.0, "sr": 0.1 * scale}


GRID_C9N = [_c9n_static((500, 499)), _c9n_static((10, 9), L=0.0)]


def _eq53_path(x, i, s):
    a = jnp.asarray(np.asarray(s["steps"], np.float64))

    def body(x, inp):
        (al, ab), sv, ph, e0 = inp
        xf = bil(x, s)
        eps = eps_fn(sv, ph, s["L"], s["sr"], e0)
        return (xf - (1 - al) / jnp.sqrt(1 - ab) * eps(xf)) / jnp.sqrt(al), None

    x, _ = jax.lax.scan(body, x, ((a[:, 0], a[:, 1]), i["s"], i["phi"], i["e0"]))
    return x


def _c9n_Ct(s):
    lam = bilateral_lipschitz_bound(s["radius"], s["ss"])
    return [lam * _paper_C(al, ab, s["L"]) for al, ab, _ in s["steps"]]


def _c9n_noise_bound(s):
    """sum over steps of (prod of the certified constants of the later steps) sigma_k sqrt(d):
    >= E||Phi_z(x) - Phi_0(x)|| (the noise's effect on the path, Lemma C.8' by induction)."""
    Ct = _c9n_Ct(s)
    sig = [math.sqrt(1 - ap) for _, _, ap in s["steps"]]
    return sum(sig[k] * math.prod(Ct[k + 1:]) for k in range(len(sig))) * math.sqrt(D)


def _c9n_q(i, s):
    # E||Phi_z(x) - Phi_0(x_bar)|| >= ||Phi_0(x) - Phi_0(x_bar)|| - E||Phi_z(x) - Phi_0(x)||
    return (jnp.linalg.norm(_eq53_path(i["x"], i, s) - _eq53_path(i["y"], i, s))
            - _c9n_noise_bound(s))


def _c9n_bound(i, s):
    C = max(_paper_C(al, ab, s["L"]) for al, ab, _ in s["steps"])
    n = len(s["steps"])
    sig = [math.sqrt(1 - ap) for _, _, ap in s["steps"]][::-1]   # eq. 74: t = 1 is the last step
    return C ** n * _dist(i) + math.sqrt(D) * sum(C ** t * sig[t] for t in range(n))


c9n_orig = Statement(
    text="(eq. 74 under the lemma's own noise) E||x'_0 - x_bar_0|| <= C^T delta + sqrt(d) "
         "sum_t C^{t-1} sqrt(1 - alpha_{t-1}) for the eq. 53 recursion with z ~ N(0, I) "
         "injected at every step (E||z|| = sqrt(d) granted), C = max_t C_t",
    hypotheses="eq. 53 steps t = 500, 499 (and 10, 9 with L_eps = 0), both paths filtered, x_bar "
               "noise-free (eq. 63), eps L_eps-Lipschitz, sigma_r = 100, latents at scale 300",
    quantity="a rigorous lower bound of E||x'_0 - x_bar_0||: ||Phi_0(x) - Phi_0(x_bar)|| - "
             "sum_k (prod_{later} C~) sqrt(1 - alpha_{k-1}) sqrt(d)",
    bound="C^N delta + sqrt(d) sum_t C^{t-1} sqrt(1 - alpha_{t-1})", grid=GRID_C9N,
    dim=_multi_dim, to_inputs=_multi_inputs, q=_c9n_q, b=_c9n_bound,
    params=lambda i, s: {"L_eps": s["L"], "t": s["t"][0]},
    check=H.combine(HYP_STEP, H.finite("e0")))

def _eq53_path_witness(s):
    """As the unrolled witness, for the eq. 53 recursion: eps' = -L_eps at B(x_w) (the eps
    coefficient is negative) and the offset that maps each step back to x_w."""
    x = filter_witness_x(s["radius"], s["ss"], s["sr"])
    xf = np.asarray(bil(jnp.asarray(x), s))
    S, P, E = [], [], []
    for al, ab, _ in s["steps"]:
        kap = (1 - al) / math.sqrt(1 - ab)
        sv, ph = _aligned_eps(xf, s["sr"], -1.0)
        S.append(sv)
        P.append(ph)
        E.append((xf - math.sqrt(al) * x) / kap)
    inp = {"s": np.stack(S), "phi": np.stack(P), "e0": np.stack(E)}
    x, y = pair_along_top(lambda z: _eq53_path(z, inp, s), x, 1e-6 * s["sr"])
    return {"x": x, "y": y, **inp}


c9n_corr = Statement(
    text="E||x'_0 - x_bar_0|| <= prod_t C~_t delta + sum_t (prod_{later} C~) sqrt(1 - "
         "alpha_{t-1}) E||z||, C~_t = Lambda C_t (eq. 71): checked on the noise-free part",
    hypotheses="as above", quantity="||Phi_0(x) - Phi_0(x_bar)|| (the noise term only adds to "
                                    "the bound)",
    bound="prod_t C~_t ||x - x_bar||", grid=GRID_C9N, dim=_multi_dim, to_inputs=_multi_inputs,
    q=lambda i, s: jnp.linalg.norm(_eq53_path(i["x"], i, s) - _eq53_path(i["y"], i, s)),
    b=lambda i, s: math.prod(_c9n_Ct(s)) * _dist(i),
    params=lambda i, s: {"L_eps": s["L"], "t": s["t"][0]}, proof="#c9",
    check=H.combine(HYP_STEP, H.finite("e0")), witness=_eq53_path_witness,
    witness_note="each step at the filter witness (eps offsets map the step back to it)")


register(Claim(
    "C.6", "Theorem", "Stability of bilateral-filtering DDIM inversion",
    "E||x'_{t-1} - x_bar_{t-1}|| <= C E||x_t - x_bar_t|| + sqrt(1 - alpha_{t-1}) E||z|| with "
    "C = C(alpha_t, alpha_bar_t, L_eps) (eq. 55).",
    [Part("one_step", c6_orig, c6_corr,
          note="the filter's expansion Lambda(r, sigma_s) > 1 multiplies C. Under the literal "
               "reading (x_bar unfiltered) even x_t = x_bar_t breaks it whenever the filter "
               "moves x_bar."),
     Part("any_C", None, c6_corr, custom=c6_any_C_custom,
          note="no C depending on (alpha_t, alpha_bar_t, L_eps) alone can work: the window "
               "witness makes the filter's Jacobian diagonal >= 1/2 + log W, unbounded as the "
               "window grows (docs/theory.md#c6).")]))

register(Claim(
    "C.7", "Lemma", "Error contraction by bilateral filtering",
    "The bilateral filter is non-expansive: ||x'_t - x_bar_t|| <= ||x_t - x_bar_t|| (eq. 57).",
    [Part("nonexpansive", c7_orig, c7_corr,
          note="the weights w(x, y) depend on the data, so B is not a fixed averaging "
               "operator; eq. 59-60 also bound a sup by a 2-norm and then sum over all y, "
               "which loses a factor sqrt(#pixels)."),
     Part("fixed_point", c7_fixed, c7_fixed_corr,
          note="eq. 56 assumes B(x_bar) = x_bar; x = x_bar already violates it. Corrected: "
               "triangle inequality and the displacement bound |B(x)_i - x_i| <= M1 sigma_r."),
     Part("relative", c7_relative, c7_relative_corr,
          note="the library's relative range mode is expansive too; sigma_r depends on x, which "
               "adds a rank-one term to the Jacobian, bounded by s_r U(W).")]))

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
          note="the library's deterministic DDIM (z = 0). Inherits C.7/C.8; eq. 80 re-derives "
               "it with C^{T-t} (index slip, sympy)."),
     Part("noisy", c9n_orig, c9n_corr,
          note="the lemma's own setting: eq. 53 with z ~ N(0, I) at every step and E||z|| = "
               "sqrt(d) granted (it is < sqrt(d) by Jensen, which only helps the paper). The "
               "violation survives the noise: at scale the noise terms are negligible.")],
    symbolic=[symbolic.check_unrolled]))
