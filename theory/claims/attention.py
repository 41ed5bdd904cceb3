"""Claims C.10-C.14: the cross-attention alignment bound of the semantic consistency module.

Cross-attention as in eq. 85: ``Attn(X, Z) = softmax(X W_Q W_K^T Z^T / sqrt(d)) Z W_V`` (row-wise
softmax, one head -- the SD1.5 heads are independent blocks of the same form).

Reading of the ideal output: the theorem defines X* through the fixed point X* = Attn(X*, Z*),
while the proof of Lemma C.12 uses Q* = X_t W_Q (eq. 103), i.e. X*_t = Attn(X_t, Z*). Under the
fixed-point reading every bound is broken trivially by Delta Z = 0 and X_t != X* (right-hand side
0, left-hand side not); we check the more favourable eq. 103 reading, which the corrected
statements also use.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from theory import hypotheses as H
from theory.registry import Claim, Part, Statement, register

GRID = [{"M": 8, "d": 2, "Ns": 2, "Nu": 2, "Nt": 1}, {"M": 6, "d": 3, "Ns": 3, "Nu": 3, "Nt": 2}]


def _L(s):
    return s["Ns"] + s["Nu"] + s["Nt"]


def _dim(s):
    M, d, L = s["M"], s["d"], _L(s)
    return M * d + 2 * L * d + 3 * d * d + 5


def _inputs(raw, s):
    M, d, L = s["M"], s["d"], _L(s)
    i = 0

    def take(k, shape):
        nonlocal i
        out = raw[i: i + k].reshape(shape)
        i += k
        return out

    X = take(M * d, (M, d))
    Zs = take(L * d, (L, d))
    dZ = take(L * d, (L, d))
    WQ, WK, WV = (take(d * d, (d, d)) for _ in range(3))
    sx, sq, sk, sv, sz = (jnp.exp(take(1, ())) for _ in range(5))
    return {"X": sx * X, "Zs": Zs, "dZ": sz * dZ, "WQ": sq * WQ, "WK": sk * WK, "WV": sv * WV}


def softmax_rows(A):
    return jax.nn.softmax(A, axis=-1)


def scores(X, Z, WQ, WK):
    return X @ WQ @ WK.T @ Z.T / math.sqrt(X.shape[-1])


def attn(X, Z, WQ, WK, WV):
    return softmax_rows(scores(X, Z, WQ, WK)) @ Z @ WV     # eq. 85


def spec(A):
    return jnp.linalg.norm(A, 2)


def fro(A):
    return jnp.linalg.norm(A)


def _terms(i):
    X, Zs, dZ, WQ, WK, WV = (i[k] for k in ("X", "Zs", "dZ", "WQ", "WK", "WV"))
    Z = Zs + dZ
    SA = softmax_rows(scores(X, Z, WQ, WK))
    SB = softmax_rows(scores(X, Zs, WQ, WK))
    Vs = Zs @ WV
    return {"Xt": SA @ Z @ WV, "Xs": SB @ Vs, "A": (SA - SB) @ Vs, "B": SA @ dZ @ WV,
            "SA": SA, "Vs": Vs}


def spread(V):
    """max_{l, l'} ||V_l - V_l'||: the spread of the value rows (shift-invariant)."""
    diff = V[:, None, :] - V[None, :, :]
    return jnp.sqrt(jnp.max(jnp.sum(diff * diff, axis=-1)))


def gamma_corrected(i, s):
    d, M = s["d"], s["M"]
    return (spec(i["X"] @ i["WQ"] @ i["WK"].T) * spread(i["Zs"] @ i["WV"])
            / (2 * math.sqrt(2) * math.sqrt(d)) + math.sqrt(M) * spec(i["WV"]))


def gamma_corrected_v1(i, s):
    """round one: ||X W_Q W_K^T|| ||Z* W_V|| / (2 sqrt d) + sqrt(M) ||W_V||."""
    d, M = s["d"], s["M"]
    return (spec(i["X"] @ i["WQ"] @ i["WK"].T) * spec(i["Zs"] @ i["WV"]) / (2 * math.sqrt(d))
            + math.sqrt(M) * spec(i["WV"]))


def _hyp_attention(i, s):
    sv = {k: np.linalg.svd(np.asarray(i[k]), compute_uv=False) for k in ("WQ", "WK", "WV")}
    out = {f"{k} invertible": bool(v[-1] > 0 and np.isfinite(v[0])) for k, v in sv.items()}
    out["N_s, N_u >= d"] = s["Ns"] >= s["d"] and s["Nu"] >= s["d"]
    out["shapes"] = (np.shape(i["X"]) == (s["M"], s["d"])
                     and np.shape(i["Zs"]) == (_L(s), s["d"]) == np.shape(i["dZ"]))
    return out


HYP_CHECK = H.combine(_hyp_attention, H.finite("X", "Zs", "dZ", "WQ", "WK", "WV"))


def _e(d, k):
    return np.eye(d)[k]


def termA_witness(s, eps=1e-6, small=1e-3):
    """All queries beta e1 (W_Q = W_K = I), tokens 0 and 1 at -+zeta e2 (a tie: p = (1/2, 1/2)),
    the others at -gamma e1 (attention ~ 0), W_V = diag(eps, 1, ...) so the far tokens' values
    are ~0; dZ = +-delta e1 on tokens 0, 1: Term A ~ its bound to first order in delta."""
    M, d, L = s["M"], s["d"], _L(s)
    beta, zeta, gam = 1.0, 1.0, 50.0 * math.sqrt(d)
    X = np.tile(beta * _e(d, 0), (M, 1))
    Zs = np.tile(-gam * _e(d, 0), (L, 1))
    Zs[0], Zs[1] = zeta * _e(d, 1), -zeta * _e(d, 1)
    dZ = np.zeros((L, d))
    delta = small * math.sqrt(d) / beta
    dZ[0], dZ[1] = delta * _e(d, 0), -delta * _e(d, 0)
    WV = np.eye(d)
    WV[0, 0] = eps
    return {"X": X, "Zs": Zs, "dZ": dZ, "WQ": np.eye(d), "WK": np.eye(d), "WV": WV}


def termB_witness(s, eps=1e-6):
    """Saturated attention on token 0 (score gap 50) for every query, dZ = e2 on token 0 only
    (orthogonal to the queries: the scores do not move, Term A = 0), W_V = diag(eps, 1, ...):
    ||S dZ W_V|| = sqrt(M) p_0 ||dZ|| with p_0 ~ 1, and the Term A part of gamma ~ eps."""
    M, d, L = s["M"], s["d"], _L(s)
    gam = 25.0 * math.sqrt(d)
    X = np.tile(_e(d, 0), (M, 1))
    Zs = np.tile(-gam * _e(d, 0), (L, 1))
    Zs[0] = gam * _e(d, 0)
    dZ = np.zeros((L, d))
    dZ[0] = _e(d, 1)
    WV = np.eye(d)
    WV[0, 0] = eps
    return {"X": X, "Zs": Zs, "dZ": dZ, "WQ": np.eye(d), "WK": np.eye(d), "WV": WV}


def softmax_witness(s, small=1e-4):
    """Rows tied on two tokens (the others at -50), moved by +-small: Var_p = 1/4 (x1 - x2)^2."""
    M, L = s["M"], _L(s)
    A = np.full((M, L), -50.0)
    A[:, :2] = 0.0
    Dm = np.zeros((M, L))
    Dm[:, 0], Dm[:, 1] = small, -small
    return {"A": A, "B": A + Dm}


def _params(i, s):
    return {"d": s["d"], "M": s["M"], "||X||_2": spec(i["X"]), "||W_K||_2": spec(i["WK"])}


HYP = ("X_t in R^{M x d}, Z*, Delta Z in R^{L x d}, L = N_s + N_u + N_text with N_s, N_u >= d; "
       "W_Q, W_K, W_V invertible (Gaussian, independent log-scales), delta = sigma_min(W_V); "
       "L_softmax = sqrt(d) (the largest value the hypothesis admits); X*_t = Attn(X_t, Z*)")

CORR_TEXT = ("||Attn(X_t, Z* + dZ) - Attn(X_t, Z*)||_F <= gamma ||dZ||_F with gamma = "
             "spread(Z* W_V) ||X_t W_Q W_K^T||_2 / (2 sqrt(2d)) + sqrt(M) ||W_V||_2 (Term A by "
             "the spread of the value rows, C.12'; ||softmax||_2 <= sqrt(M), C.13'); no "
             "invertibility, delta or token-count hypothesis is needed")

# ================================================================= C.11
c11 = Statement(
    text="X~_t - X* = Term A + Term B (eq. 86), Term A = (S(QK^T) - S(Q*K*^T)) V*, "
         "Term B = S(QK^T) dZ W_V",
    hypotheses="any X_t, Z*, dZ, W's (an identity)",
    quantity="||X~ - X* - (A + B)||_F", bound="1e-9 (||X~|| + ||X*|| + ||A|| + ||B||)",
    grid=GRID, dim=_dim, to_inputs=_inputs,
    q=lambda i, s: (lambda t: fro(t["Xt"] - t["Xs"] - t["A"] - t["B"]))(_terms(i)),
    b=lambda i, s: (lambda t: 1e-9 * (fro(t["Xt"]) + fro(t["Xs"]) + fro(t["A"]) + fro(t["B"]))
                    + 1e-300)(_terms(i)),
    params=_params, check=H.finite("X", "Zs", "dZ", "WQ", "WK", "WV"))

# ================================================================= C.12
def _sm_inputs(raw, s):
    M, L = s["M"], _L(s)
    A = raw[: M * L].reshape(M, L) * jnp.exp(raw[-2])
    D = raw[M * L: 2 * M * L].reshape(M, L) * jnp.exp(raw[-1] - 2.0)
    return {"A": A, "B": A + D}


c12_sm = Statement(
    text="||softmax(A) - softmax(B)||_F <= L_softmax ||A - B||_F with L_softmax <= sqrt(d) (eq. 97)",
    hypotheses="A, B in R^{M x L}, row-wise softmax", quantity="||S(A) - S(B)||_F",
    bound="sqrt(d) ||A - B||_F", grid=GRID, dim=lambda s: 2 * s["M"] * _L(s) + 2,
    to_inputs=_sm_inputs,
    q=lambda i, s: fro(softmax_rows(i["A"]) - softmax_rows(i["B"])),
    b=lambda i, s: math.sqrt(s["d"]) * fro(i["A"] - i["B"]),
    params=lambda i, s: {"d": s["d"]}, check=H.finite("A", "B"))

c12_sm_sharp = Statement(
    text="row-wise softmax is 1/2-Lipschitz: ||S(A) - S(B)||_F <= (1/2) ||A - B||_F "
         "(Jacobian diag(p) - p p^T has norm <= 1/2)",
    hypotheses="A, B in R^{M x L}", quantity="||S(A) - S(B)||_F", bound="||A - B||_F / 2",
    grid=GRID, dim=c12_sm.dim, to_inputs=_sm_inputs, q=c12_sm.q,
    b=lambda i, s: 0.5 * fro(i["A"] - i["B"]), params=lambda i, s: {"d": s["d"]}, proof="#c12",
    check=H.finite("A", "B"), witness=softmax_witness,
    witness_note="every row tied on two tokens and moved by +-1e-4: p = (1/2, 1/2)")

c12_A = Statement(
    text="||Term A||_F <= L_softmax ||W_Q||_2 ||W_K||_2 ||V*||_2 ||dZ||_F (eq. 98)",
    hypotheses=HYP + " (no norm bound on X_t: none is among the hypotheses; the proof's "
                     "||X_t||_F <= sqrt(d) 'normalisation' is an extra assumption)",
    quantity="||Term A||_F", bound="sqrt(d) ||W_Q|| ||W_K|| ||V*|| ||dZ||_F",
    grid=GRID, dim=_dim, to_inputs=_inputs, q=lambda i, s: fro(_terms(i)["A"]),
    b=lambda i, s: math.sqrt(s["d"]) * spec(i["WQ"]) * spec(i["WK"]) * spec(i["Zs"] @ i["WV"])
    * fro(i["dZ"]), params=_params, check=HYP_CHECK)

c12_A_corr = Statement(
    text="||Term A||_F <= spread(V*) ||X_t W_Q W_K^T||_2 ||dZ||_F / (2 sqrt 2 sqrt d), "
         "spread(V*) = max_{l,l'} ||V*_l - V*_l'|| (shift-invariant; <= sqrt 2 ||V*||_2, so "
         "never weaker than round one's ||V*||_2 / (2 sqrt d))",
    hypotheses="any X_t, Z*, dZ, W's (Q* = X_t W_Q)", quantity="||Term A||_F",
    bound="spread(V*) ||X_t W_Q W_K^T||_2 ||dZ||_F / (2 sqrt(2d))",
    grid=GRID, dim=_dim, to_inputs=_inputs, q=c12_A.q,
    b=lambda i, s: spec(i["X"] @ i["WQ"] @ i["WK"].T) * spread(i["Zs"] @ i["WV"]) * fro(i["dZ"])
    / (2 * math.sqrt(2) * math.sqrt(s["d"])), params=_params, proof="#c12", check=HYP_CHECK,
    witness=termA_witness,
    witness_note="identical queries, two tied tokens carrying the value spread, the others "
                 "unattended with values ~0 (W_V = diag(1e-6, 1)), dZ = +-delta on the tied "
                 "pair along the queries")

# ================================================================= C.13
c13 = Statement(
    text="||Term B||_F <= ||W_V||_2 ||dZ||_F (eq. 112, from ||softmax(.)||_F <= 1)",
    hypotheses=HYP, quantity="||S(QK^T) dZ W_V||_F", bound="||W_V||_2 ||dZ||_F",
    grid=GRID, dim=_dim, to_inputs=_inputs, q=lambda i, s: fro(_terms(i)["B"]),
    b=lambda i, s: spec(i["WV"]) * fro(i["dZ"]), params=_params, check=HYP_CHECK)

c13_corr = Statement(
    text="||Term B||_F <= ||S||_2 ||W_V||_2 ||dZ||_F <= sqrt(M) ||W_V||_2 ||dZ||_F "
         "(rows of S are probability vectors: ||S||_2^2 <= ||S||_1 ||S||_inf <= M)",
    hypotheses="any X_t, Z*, dZ, W's", quantity="||Term B||_F",
    bound="sqrt(M) ||W_V||_2 ||dZ||_F", grid=GRID, dim=_dim, to_inputs=_inputs, q=c13.q,
    b=lambda i, s: math.sqrt(s["M"]) * spec(i["WV"]) * fro(i["dZ"]), params=_params,
    proof="#c13", check=HYP_CHECK, witness=termB_witness,
    witness_note="every query saturated on token 0, dZ on token 0 only")

# ================================================================= C.14 / C.10
def _err(i, s):
    t = _terms(i)
    return fro(t["Xt"] - t["Xs"])


def _sigmin(W):
    return jnp.linalg.svd(W, compute_uv=False)[-1]


c14_121 = Statement(
    text="||X~_t - X*||_F <= (L_softmax C ||W_Q|| ||W_K|| ||W_V|| + ||W_V||) ||dZ||_F, "
         "C >= ||Z*||_2 (eq. 121-124)",
    hypotheses=HYP + "; C = ||Z*||_2", quantity="||X~_t - X*_t||_F",
    bound="(sqrt(d) ||Z*|| ||W_Q|| ||W_K|| ||W_V|| + ||W_V||) ||dZ||_F",
    grid=GRID, dim=_dim, to_inputs=_inputs, q=_err,
    b=lambda i, s: (math.sqrt(s["d"]) * spec(i["Zs"]) * spec(i["WQ"]) * spec(i["WK"])
                    * spec(i["WV"]) + spec(i["WV"])) * fro(i["dZ"]), params=_params,
    check=HYP_CHECK)

c14_125 = Statement(
    text="||X~_t - X*||_F <= gamma ||dZ||_F, gamma = L_softmax ||W_K||_2 ||W_V||_2 / delta "
         "(eq. 125-126, 'absorbing' ||W_Q|| and C)",
    hypotheses=HYP, quantity="||X~_t - X*_t||_F",
    bound="sqrt(d) ||W_K|| ||W_V|| / sigma_min(W_V) ||dZ||_F",
    grid=GRID, dim=_dim, to_inputs=_inputs, q=_err,
    b=lambda i, s: math.sqrt(s["d"]) * spec(i["WK"]) * spec(i["WV"]) / _sigmin(i["WV"])
    * fro(i["dZ"]), params=_params, check=HYP_CHECK)

c_corr = Statement(
    text=CORR_TEXT, hypotheses="any X_t, Z*, dZ, W_Q, W_K, W_V; X*_t = Attn(X_t, Z*)",
    quantity="||Attn(X_t, Z* + dZ) - Attn(X_t, Z*)||_F", bound="gamma ||dZ||_F",
    grid=GRID, dim=_dim, to_inputs=_inputs, q=_err,
    b=lambda i, s: gamma_corrected(i, s) * fro(i["dZ"]), params=_params, proof="#c10",
    check=HYP_CHECK, witness=termB_witness,
    witness_note="Term B saturated (every query on token 0, dZ on token 0 orthogonal to the "
                 "queries) with the value spread ~0: the error attains sqrt(M) ||W_V|| ||dZ||")

c10 = Statement(
    text="||X~_t - X*||_F <= gamma ||Z_final - Z*||_F, gamma = L_softmax ||W_K||_2 ||W_V||_2 / "
         "delta (eq. 84)",
    hypotheses=HYP, quantity="||X~_t - X*_t||_F",
    bound="sqrt(d) ||W_K|| ||W_V|| / delta ||dZ||_F", grid=GRID, dim=_dim, to_inputs=_inputs,
    q=_err, b=c14_125.b, params=_params, check=HYP_CHECK)

register(Claim(
    "C.10", "Theorem", "Attention alignment in the semantic consistency module",
    "Under invertible W's with sigma_min(W_V) >= delta, N_s, N_u >= d and L_softmax <= sqrt(d): "
    "||X~_t - X*||_F <= gamma ||Z_final - Z*||_F, gamma = L_softmax ||W_K|| ||W_V|| / delta.",
    [Part("bound", c10, c_corr,
          note="gamma does not control Term B: with ||W_K|| small gamma -> 0 while "
               "S dZ W_V stays; and for M > L queries ||S||_2 can reach sqrt(M). "
               "Dividing by delta has no derivation. Under the fixed-point reading of X*, "
               "dZ = 0 with X_t != X* already breaks it.")]))

register(Claim(
    "C.11", "Lemma", "Decomposition of cross-attention",
    "X~_t - X* = Term A + Term B (eq. 86).",
    [Part("identity", c11, None,
          custom=lambda cfg: {"tightness": None,
                              "tightness_note": "identity: equality, residual at round-off"},
          note="an add-and-subtract identity: holds for any Q, Q*; checked to round-off. "
               "Tightness is not meaningful (equality); the ratio reported is the residual "
               "in units of 1e-9 of the terms' size.")]))

register(Claim(
    "C.12", "Lemma", "Bounding Term A",
    "Softmax is L_softmax-Lipschitz (eq. 97) and ||Term A||_F <= L_softmax ||W_Q|| ||W_K|| "
    "||V*||_2 ||dZ||_F (eq. 98).",
    [Part("softmax", c12_sm, c12_sm_sharp,
          note="eq. 97 with L_softmax = sqrt(d) holds but is loose by 2 sqrt(d) (0.018 "
               "tightness at d = 768); the sharp constant 1/2 is reported as the refinement."),
     Part("termA", c12_A, c12_A_corr,
          note="eq. 98 drops the factor ||X_t||_F / sqrt(d): false for large queries "
               "(no norm bound on X_t is assumed).")]))

register(Claim(
    "C.13", "Lemma", "Bound on Term B",
    "||Term B||_F <= ||W_V||_2 ||dZ||_F using ||softmax(.)||_F <= 1 (eq. 112-113).",
    [Part("termB", c13, c13_corr,
          note="||softmax(QK^T)||_F is between sqrt(M/L) and sqrt(M), not <= 1: each of the "
               "M rows has Euclidean norm in [1/sqrt(L), 1].")]))

register(Claim(
    "C.14", "Lemma", "Combined error bound on cross-attention",
    "||X~_t - X*||_F <= (L_softmax C ||W_Q|| ||W_K|| ||W_V|| + ||W_V||) ||dZ||_F (eq. 117/121), "
    "'simplified' to gamma = L_softmax ||W_K|| ||W_V|| / delta (eq. 118/125).",
    [Part("eq121", c14_121, c_corr, note="inherits C.13's missing sqrt(M) (and C.12's ||X_t||)."),
     Part("eq125", c14_125, c_corr,
          note="the 'simplification' is not implied by eq. 121 (dividing by delta <= "
               "||W_V|| does not absorb ||W_Q|| C, nor the Term B part).")]))
