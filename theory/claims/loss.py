"""Claims C.1-C.5: differentiability, gradient bound, Lipschitz gradient, gradient descent and
convexity of the temporal consistency loss -- checked on the library's own loss
(:func:`jaxvedit.losses.temporal_consistency_loss`)."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.losses import frame_similarities, temporal_consistency_loss
from theory import symbolic
from theory.registry import Claim, Part, Statement, register
from theory.search import CE_DIR

FRAME_SHAPE = (2, 2)      # per-frame tensor shape in the searches (flattened n = 4)
N = int(np.prod(FRAME_SHAPE))
KAPPA = 1.0 + 2.0 / math.sqrt(3.0)   # sup of the joint Hessian norm of cos at unit norms


def loss(F):
    return temporal_consistency_loss(F.reshape((F.shape[0],) + FRAME_SHAPE))


def sims(F):
    return frame_similarities(F.reshape((F.shape[0],) + FRAME_SHAPE))


# ----------------------------------------------------------------- constants of the corrections
def c_bounds(T: int) -> np.ndarray:
    """|c_k| bounds for c = D^T D s (k = 1..T-1): 2 at both ends, 4 inside."""
    b = np.full(T - 1, 4.0)
    b[0] = b[-1] = 2.0
    if T == 3:
        b[:] = 2.0
    return b


def cmax(T: int) -> float:
    """max over frames t of the bounds of the two c's that involve F_t."""
    b = np.concatenate([[0.0], c_bounds(T), [0.0]])
    return float(max(b[t] + b[t + 1] for t in range(T)))


def lam_D(T: int) -> float:
    """||D||_2^2 for the (T-2)x(T-1) difference matrix of eq. 43."""
    return 2.0 + 2.0 * math.cos(math.pi / (T - 1))


def grad_const(T: int) -> float:
    """g_T: ||grad_{F_t} L|| <= g_T / ||F_t||  (corrected Lemma C.3, gradient part)."""
    return 2.0 / (T - 1) * cmax(T)


def hess_const(T: int) -> float:
    """K_T: ||Hess L|| <= K_T / m^2 on S_m = {all ||F_t|| >= m}  (corrected Thm C.1)."""
    return 2.0 / (T - 1) * (4.0 * lam_D(T) + KAPPA * cmax(T))


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
GRID_m = [{"T": 3, "m": 1.0}, {"T": 6, "m": 0.1}, {"T": 4, "m": 1.0}]


def _hess_norm(F):
    T = F.shape[0]
    H = jax.hessian(loss)(F).reshape(T * N, T * N)
    return jnp.max(jnp.abs(jnp.linalg.eigvalsh(0.5 * (H + H.T))))


# ================================================================= C.1
c1_orig = Statement(
    text="grad L_temporal is Lipschitz on {||F_t||_F <= M}, with the constant the appendix "
         "derives for it (Lemma C.3): ||Hess L|| <= 16/M",
    hypotheses="||F_t||_F <= M for all t (upper bound only), F_t != 0",
    quantity="spectral norm of the Hessian of L_temporal (dense eigvalsh; Lanczos on HVPs "
             "cross-checks)",
    check="search as usual; the quantity is the exact spectral norm (eigvalsh of the autodiff "
          "Hessian, differentiable, so Adam ascends it); Lanczos on HVPs at larger sizes",
    bound="16/M", grid=GRID_M, dim=_dimF,
    to_inputs=lambda raw, s: {"F": _frames(raw, s["T"], lambda z: _upper(z, s["M"]))},
    q=lambda i, s: _hess_norm(i["F"]), b=lambda i, s: 16.0 / s["M"], params=_params)

c1_corr = Statement(
    text="on S_m = {||F_t||_F >= m for all t}, L_temporal is smooth (real-analytic) and "
         "||Hess L|| <= K_T/m^2, K_T = 2/(T-1) * (4 (2 + 2cos(pi/(T-1))) + (1+2/sqrt3) c_T), "
         "c_T = 4, 6, 8 for T = 3, 4, >=5; so grad L is K_T/m^2-Lipschitz on convex subsets of "
         "S_m (no upper bound M needed)",
    hypotheses="||F_t||_F >= m > 0 for all t",
    check="search as usual; the quantity is the exact spectral norm (eigvalsh of the autodiff "
          "Hessian, differentiable, so Adam ascends it); Lanczos on HVPs at larger sizes",
    quantity="spectral norm of the Hessian of L_temporal", bound="K_T / m^2",
    grid=GRID_m, dim=_dimF,
    to_inputs=lambda raw, s: {"F": _frames(raw, s["T"], lambda z: _lower(z, s["m"]))},
    q=lambda i, s: _hess_norm(i["F"]),
    b=lambda i, s: hess_const(s["T"]) / s["m"] ** 2, params=_params, proof="#c1")


# ================================================================= C.2
def _grad_cos(F, G):
    return jax.grad(lambda f: frame_similarities(jnp.stack([f, G]).reshape((2,) + FRAME_SHAPE))[0])(F)


def _pair(raw, normF, normG):
    PF, PG = raw[:N], raw[N: 2 * N]
    F = normF(raw[2 * N]) * PF / jnp.linalg.norm(PF)
    G = normG(raw[2 * N + 1]) * PG / jnp.linalg.norm(PG)
    return {"F": F, "G": G}


def _pair_params(i, s):
    nF = jnp.linalg.norm(i["F"])
    cos = jnp.vdot(i["F"], i["G"]) / (nF * jnp.linalg.norm(i["G"]))
    key = "||F||/M" if "M" in s else "||F||/m"
    return {key: nF / s.get("M", s.get("m")), "cos": cos}


c2_orig = Statement(
    text="||grad_F Sim(F, G)||_F <= 2/M (eq. 23)",
    hypotheses="||F||_F <= M, ||G||_F <= M (eq. 23's hypotheses), F, G != 0",
    quantity="||grad_F cos(F, G)||_F by autodiff of the library's frame_similarities",
    bound="2/M", grid=[{"M": 1.0}], dim=lambda s: 2 * N + 2,
    to_inputs=lambda raw, s: _pair(raw, lambda z: _upper(z, s["M"]), lambda z: _upper(z, s["M"])),
    q=lambda i, s: jnp.linalg.norm(_grad_cos(i["F"], i["G"])), b=lambda i, s: 2.0 / s["M"],
    params=_pair_params)

c2_corr = Statement(
    text="||grad_F Sim(F, G)||_F = sin(angle(F, G)) / ||F||_F <= 1/m when ||F||_F >= m",
    hypotheses="||F||_F >= m > 0, G != 0 (no upper bound needed)",
    quantity="||grad_F cos(F, G)||_F", bound="1/m",
    grid=[{"m": 1.0}, {"m": 0.01}], dim=lambda s: 2 * N + 2,
    to_inputs=lambda raw, s: _pair(raw, lambda z: _lower(z, s["m"]), lambda z: jnp.exp(z)),
    q=lambda i, s: jnp.linalg.norm(_grad_cos(i["F"], i["G"])), b=lambda i, s: 1.0 / s["m"],
    params=_pair_params, proof="#c2")


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
    b=lambda i, s: 16.0 * (s["T"] - 2) / (s["M"] * (s["T"] - 1)), params=_params)

c3_grad_corr = Statement(
    text="||grad_{F_t} L||_F <= g_T/||F_t||_F <= g_T/m with g_T = 2 c_T/(T-1) "
         "(c_T = 4, 6, 8 for T = 3, 4, >= 5)",
    hypotheses="||F_t||_F >= m > 0 for all t", quantity="max_t ||grad_{F_t} L||_F * ||F_t|| / m",
    bound="g_T / m", grid=GRID_m, dim=_dimF, to_inputs=c1_corr.to_inputs,
    q=lambda i, s: _max_frame_grad(i["F"]),
    b=lambda i, s: grad_const(s["T"]) / s["m"], params=_params, proof="#c3")


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
    params=_params)

c3_lip_corr = Statement(
    text="for F, G in S_m: ||grad L(F) - grad L(G)||_F <= (pi/2) (K_T/m^2) ||F - G||_F",
    hypotheses="||F_t||, ||G_t|| >= m > 0", quantity="||grad L(F) - grad L(G)||_F",
    bound="(pi/2) K_T/m^2 ||F - G||_F", grid=GRID_m, dim=lambda s: 2 * _dimF(s),
    to_inputs=lambda raw, s: _two(raw, s["T"], lambda z: _lower(z, s["m"])),
    q=lambda i, s: _secant(i),
    b=lambda i, s: math.pi / 2 * hess_const(s["T"]) / s["m"] ** 2 * jnp.linalg.norm(i["F"] - i["G"]),
    params=_params, proof="#c3")


# ================================================================= C.4
def _gd_step(F, eta):
    return F - eta * jax.grad(loss)(F)


def _c4_orig_inputs(raw, s):
    F = _frames(raw, s["T"], lambda z: _upper(z, s["M"]))
    return {"F": F, "eta": jnp.asarray(0.99 * 2.0 / (16.0 / s["M"]))}


c4_step_orig = Statement(
    text="gradient descent with eta < 2/L decreases L_temporal (eq. 51-52), L = 16/M the "
         "constant of Lemma C.3: L(F - eta grad L(F)) <= L(F)",
    hypotheses="||F_t|| <= M; eta = 0.99 * 2/(16/M); parameters = the features themselves",
    quantity="L_temporal after one step", bound="L_temporal before the step",
    grid=GRID_M, dim=_dimF, to_inputs=_c4_orig_inputs,
    q=lambda i, s: loss(_gd_step(i["F"], i["eta"])), b=lambda i, s: loss(i["F"]),
    params=_params)


def _c4_corr_inputs(raw, s):
    T = s["T"]
    F = _frames(raw[:-1], T, lambda z: _lower(z, s["m"]))
    m0 = jnp.min(jnp.linalg.norm(F, axis=1))
    Lm = hess_const(T) / m0 ** 2
    theta = 0.999 * jax.nn.sigmoid(raw[-1] + 2.0)
    return {"F": F, "eta": theta * 2.0 / Lm, "Lm": Lm}


def _eff_curv(i, s):
    F, eta = i["F"], i["eta"]
    g = jax.grad(loss)(F)
    g2 = jnp.sum(g * g)
    return 2.0 * (loss(F - eta * g) - loss(F) + eta * g2) / (eta ** 2 * jnp.maximum(g2, 1e-300))


c4_step_corr = Statement(
    text="with m0 = min_t ||F_t^(0)||, L_m = K_T/m0^2 and 0 < eta < 2/L_m, every step satisfies "
         "L(F_{k+1}) <= L(F_k) - eta (1 - eta L_m/2) ||grad L(F_k)||^2 (norms never decrease "
         "along GD, so all iterates stay in S_m0)",
    hypotheses="||F_t|| >= m0 > 0; eta in (0, 2/L_m); parameters = the features",
    quantity="effective curvature along the step 2(L(F-eta g) - L(F) + eta|g|^2)/(eta^2|g|^2)",
    bound="L_m = K_T / m0^2", grid=GRID_m, dim=lambda s: _dimF(s) + 1,
    to_inputs=_c4_corr_inputs, q=_eff_curv, b=lambda i, s: i["Lm"],
    params=lambda i, s: {"T": s["T"], "eta*L_m/2": i["eta"] * i["Lm"] / 2}, proof="#c4")

K_STEPS = 8


def _c4_sum(i, s):
    F, eta, Lm = i["F"], i["eta"], i["Lm"]
    tot = 0.0
    for _ in range(K_STEPS):
        g = jax.grad(loss)(F)
        tot = tot + jnp.sum(g * g)
        F = F - eta * g
    return eta * (1 - eta * Lm / 2) * tot, loss(i["F"]) - loss(F)


c4_limit_corr = Statement(
    text="the gradients are square-summable: eta(1 - eta L_m/2) sum_{k<K} ||grad L(F_k)||^2 <= "
         "L(F_0) - L(F_K) <= L(F_0), so grad L(F_k) -> 0 (iterates approach stationary points, "
         "which may be saddles or maxima -- not necessarily minima)",
    hypotheses="as the corrected step statement; K = 8 steps unrolled",
    quantity="eta(1 - eta L_m/2) sum_k ||grad L(F_k)||^2", bound="L(F_0) - L(F_K)",
    grid=[{"T": 4, "m": 1.0}], dim=lambda s: _dimF(s) + 1,
    to_inputs=_c4_corr_inputs, q=lambda i, s: _c4_sum(i, s)[0], b=lambda i, s: _c4_sum(i, s)[1],
    params=lambda i, s: {"T": s["T"], "eta*L_m/2": i["eta"] * i["Lm"] / 2}, proof="#c4")


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
        for T in (3, 5):
            F0 = jnp.asarray(_stationary_max(T))
            Lm = hess_const(T) / 1.0
            eta = 0.5 * 2.0 / Lm
            F = F0
            for _ in range(50):
                F = _gd_step(F, eta)
            s = np.asarray(sims(F))
            Lmax = 4.0 * (T - 2) / (T - 1)
            gn = float(jnp.linalg.norm(jax.grad(loss)(F)))
            recs.append({"T": T, "F0": np.asarray(F0).tolist(), "eta": eta, "steps": 50,
                         "loss_final": float(loss(F)), "global_max": Lmax, "grad_norm": gn,
                         "similarities": s.tolist()})
    data = {"claim": "C.4", "part": "limit",
            "statement": "GD with eta < 2/L converges to a local minimum",
            "cases": recs,
            "why": "the start is a stationary point (every frame parallel to the next, "
                   "similarities alternate +-1) where L attains its global maximum "
                   "4(T-2)/(T-1); GD never moves"}
    p = CE_DIR / "C_4__limit.json"
    if not p.exists():
        p.write_text(json.dumps(data, indent=1) + "\n")
    out["counterexample"] = "theory/counterexamples/C_4__limit.json"
    out["original"] = {"text": "GD with eta < 2/L converges to a local minimum (Thm C.4)",
                       "worst_ratio": math.inf, "budget": {"constructed": 2},
                       "evidence": "; ".join(
                           f"T={r['T']}: after 50 steps L={r['loss_final']:.3f} = global max "
                           f"{r['global_max']:.3f}, ||grad||={r['grad_norm']:.1e}" for r in recs)}
    return out


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
    check="search of the Jensen inequality on the library loss of features realising s exactly; "
          "sympy: D^T D PSD, quadratic form = eq. 22 (T = 3..12)")


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
    b=lambda i, s: (loss(i["F"]) + loss(i["G"])) / 2 + 1e-300, params=_params)


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


c5_F_corr = Statement(
    text="in F, L_temporal is not convex but L_m-smooth along steps orthogonal to the frames "
         "(the steps GD takes): L(G) <= L(F) + <grad L(F), G-F> + (K_T/(2 m^2)) ||G-F||^2",
    hypotheses="F in S_m, G_t - F_t orthogonal to F_t for each t",
    quantity="L(G) - L(F) - <grad L(F), G - F>", bound="K_T/(2m^2) ||G - F||^2",
    grid=[{"T": 3, "m": 1.0}, {"T": 5, "m": 1.0}], dim=lambda s: _dimF(s) + s["T"] * N,
    to_inputs=_c5_corr_inputs, q=_descent_gap,
    b=lambda i, s: hess_const(s["T"]) / (2 * s["m"] ** 2) * jnp.sum((i["G"] - i["F"]) ** 2),
    params=_params, proof="#c5")


def c1_hvp_custom(cfg) -> dict:
    """Hessian norm at a larger per-frame size by Lanczos on HVPs (no dense Hessian), against the
    corrected bound K_T/m^2; exact eigvalsh cross-check on a small case. (Power iteration is
    cross-checked in tests/test_theory_numerics.py.)"""
    from theory import numerics
    rows = []
    with jax.enable_x64(True):
        for T, shape, m in ((6, (4, 4, 4), 0.5),):
            key = jax.random.PRNGKey(T)
            F = jax.random.normal(key, (T,) + shape)
            n = jnp.sqrt(jnp.sum(F.reshape(T, -1) ** 2, axis=1))
            F = F * (m / n).reshape((T,) + (1,) * len(shape))       # all norms = m
            f = lambda x: temporal_consistency_loss(x)
            lo, hi = numerics.hessian_lanczos_extremes(f, F, k=24)
            lanczos = max(abs(lo), abs(hi))
            rows.append({"T": T, "frame_shape": list(shape), "m": m, "lanczos": lanczos,
                         "bound": hess_const(T) / m ** 2,
                         "ratio": lanczos / (hess_const(T) / m ** 2)})
        Fs = jax.random.normal(jax.random.PRNGKey(0), (4, N))
        exact = float(numerics.hessian_exact_norm(loss, Fs))
        lo, hi = numerics.hessian_lanczos_extremes(loss, Fs, k=4 * N)
    return {"hvp_check": rows, "lanczos_vs_eigvalsh": [max(abs(lo), abs(hi)), exact],
            "hvp_ok": all(r["ratio"] <= 1 for r in rows)
            and abs(max(abs(lo), abs(hi)) - exact) < 1e-8 * exact}


# ================================================================= registry
register(Claim(
    "C.1", "Theorem", "Optimizability of the temporal consistency loss",
    "If ||F_t||_F <= M for all t, L_temporal (eq. 22) is differentiable in {F_t} and its "
    "gradient is Lipschitz continuous.",
    [Part("lipschitz", c1_orig, c1_corr, custom=c1_hvp_custom,
          note="L is not even defined/differentiable at F_t = 0, which ||F_t|| <= M admits; "
               "its Hessian grows like 1/min_t ||F_t||^2, so no Lipschitz constant works on "
               "{||F_t|| <= M}. A lower bound m is what is needed; M is irrelevant (L is "
               "invariant to rescaling each frame).")],
    symbolic=[symbolic.check_cosine_hessian]))

register(Claim(
    "C.2", "Lemma", "Gradient of the cosine similarity",
    "||F_t||_F <= M implies ||grad_{F_t} Sim(F_t, F_{t+1})||_F <= 2/M (eq. 23).",
    [Part("bound", c2_orig, c2_corr,
          note="eq. 26 inverts the inequality: ||F|| <= M gives 1/||F|| >= 1/M, not <=.")],
    symbolic=[symbolic.check_cosine_gradient]))

register(Claim(
    "C.3", "Lemma", "Gradient bound and Lipschitz constant of L_temporal",
    "||grad_{F_t} L|| <= 16(T-2)/(M(T-1)) (eq. 32/37) and grad L is Lipschitz with L <= 16/M "
    "(eq. 39).",
    [Part("gradient", c3_grad_orig, c3_grad_corr,
          note="inherits C.2's inverted inequality; also the proof's sum runs over all T-2 "
               "terms although only two similarities depend on F_t."),
     Part("lipschitz", c3_lip_orig, c3_lip_corr,
          note="a bound on the gradient does not bound its Lipschitz constant; the true "
               "constant scales like 1/m^2, not 1/M.")]))

register(Claim(
    "C.4", "Theorem", "Convergence of gradient descent",
    "If grad L_temporal is L-Lipschitz and eta < 2/L, L_temporal decreases monotonically and "
    "GD converges to a local minimum.",
    [Part("step", c4_step_orig, c4_step_corr,
          note="with the paper's L = 16/M the step eta < M/8 is far too large for features "
               "of small norm."),
     Part("limit", None, c4_limit_corr, custom=c4_limit_custom,
          note="the proof appeals to convexity (Lemma C.5) but L is convex in s, not in F; "
               "stationary points include global maxima."),
     Part("convexity", c5_F_orig, c5_F_corr,
          note="the proof's step 'by Lemma C.5, L is convex' (eq. 47 and the last paragraph) "
               "needs convexity in the parameters; Lemma C.5 gives it in s only.")]))

register(Claim(
    "C.5", "Lemma", "Convexity of the temporal consistency loss",
    "L_temporal = 1/(T-1) ||D s||^2 with D the (T-2)x(T-1) difference matrix (eq. 43); "
    "D^T D is PSD, so L_temporal is convex in the similarities.",
    [Part("similarities", c5_s, None, custom=c5_custom,
          note="holds as stated; eq. 43 calls D 'second-order' but it is the first-order "
               "difference of s. The convexity is in s only: Thm C.4's use of it as convexity "
               "in the parameters is refuted under C.4 (part 'convexity').")],
    symbolic=[symbolic.check_difference_operator]))
