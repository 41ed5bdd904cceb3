"""Registry completeness and replay of the stored counterexamples (theory/counterexamples)."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.registry import all_claims, get_claim
from theory.search import CE_DIR, ce_path, replay_counterexample

EXPECTED = ["C.1", "C.2", "C.3", "C.4", "C.5", "C.6", "C.7", "C.8", "C.9", "C.10", "C.11",
            "C.12", "C.13", "C.14"]

# verdicts for the paper's statements, per claim part (what the searches establish)
REFUTED_PARTS = [
    ("C.1", "lipschitz"), ("C.2", "bound"), ("C.3", "gradient"), ("C.3", "lipschitz"),
    ("C.4", "step"), ("C.4", "convexity"), ("C.6", "one_step"), ("C.7", "nonexpansive"),
    ("C.7", "fixed_point"), ("C.7", "relative"), ("C.8", "step"), ("C.9", "unrolled"), ("C.10", "bound"),
    ("C.12", "termA"), ("C.13", "termB"), ("C.14", "eq121"), ("C.14", "eq125"),
]


def test_every_claim_registered():
    ids = [c.id for c in all_claims()]
    assert ids == EXPECTED
    for c in all_claims():
        assert c.parts, c.id
        for p in c.parts:
            for st in (p.original, p.corrected):
                if st is None:
                    continue
                assert st.text and st.hypotheses and st.quantity and st.bound
                assert st.grid and st.dim(st.grid[0]) > 0


def test_every_refuted_part_has_a_correction_and_a_counterexample():
    for cid, part in REFUTED_PARTS:
        c = get_claim(cid)
        p = next(p for p in c.parts if p.name == part)
        assert p.corrected is not None or cid == "C.7", (cid, part)
        assert ce_path(cid, part).exists(), f"missing stored counterexample for {cid} {part}"


def test_unknown_claim_raises():
    with pytest.raises(KeyError, match="unknown claim"):
        get_claim("C.99")


@pytest.mark.parametrize("cid,part", REFUTED_PARTS)
def test_replay_counterexample(cid, part):
    """The stored counterexample still violates the paper's bound with the current library."""
    c = get_claim(cid)
    p = next(p for p in c.parts if p.name == part)
    data = json.loads(ce_path(cid, part).read_text())
    assert data["claim"] == cid and data["part"] == part
    r = replay_counterexample(c, p)
    assert r["violated"], r
    assert r["margin"] > 0
    # same violation as when it was found (library code unchanged in effect)
    if math.isfinite(r["stored_ratio"]) and math.isfinite(r["ratio"]):
        assert r["ratio"] == pytest.approx(r["stored_ratio"], rel=1e-5)
    # the counterexample is admissible for the paper's hypotheses
    inputs = data["inputs"]
    if "M" in (data["static"] or {}) and "F" in inputs:
        norms = np.linalg.norm(np.asarray(inputs["F"]), axis=-1)
        assert np.all(norms <= data["static"]["M"] * (1 + 1e-12))


def test_replay_c4_limit_counterexample():
    """GD started at a stationary global maximum never moves: 'converges to a local minimum'
    fails."""
    from theory.claims.loss import _gd_step, hess_const, loss
    data = json.loads((CE_DIR / "C_4__limit.json").read_text())
    with jax.enable_x64(True):
        for case in data["cases"]:
            F = jnp.asarray(case["F0"])
            T = F.shape[0]
            eta = case["eta"]
            assert eta < 2 / hess_const(T)       # within the (corrected) step-size range
            for _ in range(case["steps"]):
                F = _gd_step(F, eta)
            assert float(loss(F)) == pytest.approx(4 * (T - 2) / (T - 1), abs=1e-12)
            assert float(jnp.linalg.norm(jax.grad(loss)(F))) < 1e-12
            # a tiny perturbation escapes: the point is not a minimum
            G = jnp.asarray(case["F0"]) + 1e-3 * jax.random.normal(jax.random.PRNGKey(0), F.shape)
            for _ in range(200):
                G = _gd_step(G, eta)
            assert float(loss(G)) < float(loss(F)) - 1e-3
