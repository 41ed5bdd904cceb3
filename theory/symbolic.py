"""Symbolic checks (sympy), each compared with the JAX code at random points.

* the gradient (eq. 24) and Hessian of the cosine similarity vs JAX autodiff of the library's
  ``frame_similarities``; the constant kappa = sup ||joint Hessian of cos|| at unit norms;
* the difference operator D of Lemma C.5: L = ||D s||^2/(T-1) equals eq. 22, D^T D is PSD,
  spectrum of D D^T (for T = 3..12);
* the one-step DDIM error constant of Lemma C.8 derived from the step formula (eq. 53 and the
  library's deterministic DDIM step), and the unrolled recursion of Lemma C.9 (eq. 74 vs 80).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from jaxvedit.losses import frame_similarities


def _cos_jax(f, g):
    return frame_similarities(jnp.stack([f, g]))[0]


def _sym_cos(n):
    f = sp.Matrix(sp.symbols(f"f0:{n}", real=True))
    g = sp.Matrix(sp.symbols(f"g0:{n}", real=True))
    nf = sp.sqrt((f.T * f)[0])
    ng = sp.sqrt((g.T * g)[0])
    cos = (f.T * g)[0] / (nf * ng)
    return f, g, nf, ng, cos


def check_cosine_gradient(n: int = 3, points: int = 5) -> dict:
    f, g, nf, ng, cos = _sym_cos(n)
    grad = sp.Matrix([sp.diff(cos, v) for v in f])
    eq24 = g / (nf * ng) - (f.T * g)[0] / (nf ** 3 * ng) * f
    sym_equal = all(sp.simplify(e) == 0 for e in (grad - eq24))
    fn = sp.lambdify(list(f) + list(g), list(grad), "numpy")
    rng = np.random.default_rng(0)
    worst = 0.0
    with jax.enable_x64(True):
        for _ in range(points):
            a, b = rng.normal(size=n), rng.normal(size=n)
            ref = np.asarray(fn(*a, *b), float)
            got = np.asarray(jax.grad(_cos_jax)(jnp.asarray(a), jnp.asarray(b)))
            worst = max(worst, float(np.max(np.abs(ref - got))))
            # |grad| = sin(theta)/|F| exactly
            c = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            worst = max(worst, abs(np.linalg.norm(got) - math.sqrt(1 - c * c) / np.linalg.norm(a)))
    return {"name": "eq. 24 gradient of cos (sympy vs eq. 24 vs JAX)", "symbolic_equal": sym_equal,
            "max_abs_diff": worst, "passed": bool(sym_equal and worst < 1e-10)}


def check_cosine_hessian(n: int = 3, points: int = 3) -> dict:
    f, g, nf, ng, cos = _sym_cos(n)
    v = list(f) + list(g)
    H = sp.hessian(cos, v)
    fn = sp.lambdify(v, H, "numpy")
    rng = np.random.default_rng(1)
    worst = 0.0
    with jax.enable_x64(True):
        hj = jax.hessian(lambda x: _cos_jax(x[:n], x[n:]))
        for _ in range(points):
            x = rng.normal(size=2 * n)
            worst = max(worst, float(np.max(np.abs(np.asarray(fn(*x), float)
                                                    - np.asarray(hj(jnp.asarray(x)))))))
    # kappa: sup over the angle of the joint Hessian norm at unit norms (n = 3 covers the
    # plane of F, G plus one orthogonal direction, which is where the extremes live)
    kap = 0.0
    for th in np.linspace(0, math.pi, 721):
        x = np.array([1.0, 0, 0, math.cos(th), math.sin(th), 0])
        kap = max(kap, float(np.max(np.abs(np.linalg.eigvalsh(np.asarray(fn(*x), float))))))
    bound = 1 + 2 / math.sqrt(3)
    return {"name": "Hessian of cos (sympy vs JAX); kappa = sup ||Hess cos|| at unit norms",
            "max_abs_diff": worst, "kappa_scan": kap, "kappa_bound": bound,
            "passed": bool(worst < 1e-9 and kap <= bound + 1e-12)}


def difference_matrix(T: int) -> sp.Matrix:
    """D of eq. 43: (T-2) x (T-1), rows (-1, 1)."""
    D = sp.zeros(T - 2, T - 1)
    for i in range(T - 2):
        D[i, i], D[i, i + 1] = -1, 1
    return D


def difference_matrix_numeric(T: int) -> np.ndarray:
    return np.asarray(difference_matrix(T).tolist(), dtype=np.float64)


def check_difference_operator(Ts=range(3, 13)) -> dict:
    ok = True
    rows = []
    for T in Ts:
        D = difference_matrix(T)
        s = sp.Matrix(sp.symbols(f"s1:{T}", real=True))
        quad = ((D * s).T * (D * s))[0] / (T - 1)
        eq22 = sum((s[t] - s[t - 1]) ** 2 for t in range(1, T - 1)) / (T - 1)
        same = sp.expand(quad - eq22) == 0
        DtD = D.T * D
        psd = bool(DtD.is_positive_semidefinite)
        lam = sorted(float(x) for x in np.linalg.eigvalsh(np.asarray((D * D.T).tolist(), float)))
        ref = sorted(2 - 2 * math.cos(k * math.pi / (T - 1)) for k in range(1, T - 1))
        spec_ok = np.allclose(lam, ref, atol=1e-12)
        ok &= same and psd and spec_ok
        rows.append({"T": T, "quadratic_form_equals_eq22": bool(same), "DtD_psd": psd,
                     "lambda_max_DDt": max(lam)})
    return {"name": "difference operator D (eq. 43): ||Ds||^2/(T-1) = eq. 22, D^T D PSD, "
                    "spec(D D^T) = 2 - 2cos(k pi/(T-1))", "rows": rows, "passed": bool(ok)}


def ddim_constants():
    """Symbolic one-step constants. Returns sympy expressions (for docs and tests)."""
    x, e, af, at, al, alb, Le = sp.symbols("x e a_from a_to alpha alphabar L_eps", positive=True)
    eps = sp.Function("eps")
    # library step: ddim_step_from_alphas
    step = sp.sqrt(at) * (x - sp.sqrt(1 - af) * eps(x)) / sp.sqrt(af) + sp.sqrt(1 - at) * eps(x)
    dstep = sp.diff(step, x).subs(sp.Derivative(eps(x), x), e)
    coef_x = sp.simplify(dstep.subs(e, 0))
    coef_e = sp.simplify(sp.diff(dstep, e))
    # paper's eq. 53 (noise-free part)
    paper = (x - (1 - al) / sp.sqrt(1 - alb) * eps(x)) / sp.sqrt(al)
    dpaper = sp.diff(paper, x).subs(sp.Derivative(eps(x), x), e)
    p_x = sp.simplify(dpaper.subs(e, 0))
    p_e = sp.simplify(sp.diff(dpaper, e))
    C_paper = 1 / sp.sqrt(al) + (1 - al) / sp.sqrt(al * (1 - alb)) * Le   # eq. 71
    return dict(step=step, coef_x=coef_x, coef_e=coef_e, paper_x=p_x, paper_e=p_e,
                C_paper=C_paper, symbols=(x, e, af, at, al, alb, Le))


def check_ddim_constant(points: int = 5) -> dict:
    d = ddim_constants()
    x, e, af, at, al, alb, Le = d["symbols"]
    # Lemma C.8's constant is |d/dx| maximised over |eps'| <= L_eps, by the triangle inequality
    c_paper_derived = sp.Abs(d["paper_x"]) + sp.Abs(d["paper_e"]) * Le
    paper_ok = sp.simplify(c_paper_derived.subs({al: sp.Rational(9, 10), alb: sp.Rational(1, 2)})
                           - d["C_paper"].subs({al: sp.Rational(9, 10), alb: sp.Rational(1, 2)})) == 0
    coef_x_ok = sp.simplify(d["coef_x"] - sp.sqrt(at / af)) == 0
    coef_e_ok = sp.simplify(d["coef_e"] - (sp.sqrt(1 - at) - sp.sqrt(at * (1 - af) / af))) == 0
    # numeric agreement of the symbolic derivative with JAX on the library step (linear eps)
    worst = None
    try:
        from jaxvedit.diffusion.ddim import ddim_step_from_alphas
        rng = np.random.default_rng(0)
        worst = 0.0
        with jax.enable_x64(True):
            for _ in range(points):
                a1, a2 = sorted(rng.uniform(0.05, 0.99, size=2))
                lam = rng.uniform(-2, 2)
                f = lambda z: ddim_step_from_alphas(z, lam * z, jnp.float64(a1), jnp.float64(a2))
                got = float(jax.grad(lambda z: f(z).sum())(jnp.ones(())))
                ref = float((d["coef_x"] + d["coef_e"] * lam).subs({af: a1, at: a2}))
                worst = max(worst, abs(got - ref))
    except ImportError:
        pass
    passed = bool(paper_ok and coef_x_ok and coef_e_ok and (worst is None or worst < 1e-10))
    return {"name": "one-step DDIM constant (Lemma C.8): eq. 71 from eq. 53; library step "
                    "d x_to/d x = sqrt(a_to/a_from) + (sqrt(1-a_to) - sqrt(a_to(1-a_from)/a_from)) eps'",
            "eq71_from_eq53": bool(paper_ok), "library_coefficients": bool(coef_x_ok and coef_e_ok),
            "jax_vs_sympy_max_abs_diff": worst, "passed": passed}


def check_unrolled(T: int = 4) -> dict:
    """Unroll E_{t-1} <= C E_t + sigma_{t-1} (eq. 77) symbolically and compare with eq. 74 and
    eq. 80 (which differ: the recursion weights sigma_{t-1} by C^{t-1} as eq. 74 does; eq. 80's
    C^{T-t} is an index slip; for C > 1 it understates the bound)."""
    C, delta = sp.symbols("C delta", positive=True)
    sig = sp.symbols(f"sigma0:{T}", positive=True)   # sigma_{t-1} = sqrt(1-alpha_{t-1}) sqrt(d)
    E = delta
    for t in range(T, 0, -1):
        E = C * E + sig[t - 1]
    eq80 = C ** T * delta + sum(C ** (T - t) * sig[t - 1] for t in range(1, T + 1))
    eq74 = C ** T * delta + sum(C ** (t - 1) * sig[t - 1] for t in range(1, T + 1))
    ok80 = sp.expand(E - eq80) == 0
    ok74 = sp.expand(E - eq74) == 0
    return {"name": f"Lemma C.9 unrolled recursion (T={T}): equals eq. 74 (C^(t-1) sigma_(t-1)); "
                    "eq. 80's C^(T-t) weighting is an index slip", "eq74_matches": bool(ok74),
            "eq80_matches": bool(ok80), "passed": bool(ok74 and not ok80)}
