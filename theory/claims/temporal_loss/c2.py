"""Claim C.2 (Lemma): the gradient bound of the cosine similarity (eq. 23) and its correction."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvedit.losses import frame_similarities
from theory import hypotheses as H
from theory.claims.temporal_loss.common import FRAME_SHAPE, _lower, N, _upper
from theory.registry import Statement


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


def _vec_norm_check(key, bound, upper):
    def check(i, s):
        n = float(np.linalg.norm(np.asarray(i[key])))
        ok = n <= s[bound] * (1 + H.RTOL) if upper else n >= s[bound] * (1 - H.RTOL)
        return {f"||{key}|| {'<=' if upper else '>='} {bound}": ok, f"{key} != 0": n > 0}
    return check


c2_orig = Statement(
    text="||grad_F Sim(F, G)||_F <= 2/M (eq. 23)",
    hypotheses="||F||_F <= M, ||G||_F <= M (eq. 23's hypotheses), F, G != 0",
    quantity="||grad_F cos(F, G)||_F by autodiff of the library's frame_similarities",
    bound="2/M", grid=[{"M": 1.0}], dim=lambda s: 2 * N + 2,
    to_inputs=lambda raw, s: _pair(raw, lambda z: _upper(z, s["M"]), lambda z: _upper(z, s["M"])),
    q=lambda i, s: jnp.linalg.norm(_grad_cos(i["F"], i["G"])), b=lambda i, s: 2.0 / s["M"],
    params=_pair_params,
    check=H.combine(_vec_norm_check("F", "M", True), _vec_norm_check("G", "M", True),
                    H.finite("F", "G")))

c2_corr = Statement(
    text="||grad_F Sim(F, G)||_F = sin(angle(F, G)) / ||F||_F <= 1/m when ||F||_F >= m",
    hypotheses="||F||_F >= m > 0, G != 0 (no upper bound needed)",
    quantity="||grad_F cos(F, G)||_F", bound="1/m",
    grid=[{"m": 1.0}, {"m": 0.01}], dim=lambda s: 2 * N + 2,
    to_inputs=lambda raw, s: _pair(raw, lambda z: _lower(z, s["m"]), lambda z: jnp.exp(z)),
    q=lambda i, s: jnp.linalg.norm(_grad_cos(i["F"], i["G"])), b=lambda i, s: 1.0 / s["m"],
    params=_pair_params, proof="#c2",
    check=H.combine(_vec_norm_check("F", "m", False),
                    H.inputs("G != 0", lambda i, s: np.linalg.norm(np.asarray(i["G"])) > 0),
                    H.finite("F", "G")),
    witness=lambda s: {"F": s["m"] * np.eye(N)[0], "G": np.eye(N)[1]},
    witness_note="||F|| = m, G orthogonal to F: sin = 1, equality")
