"""Direct hypothesis property tests (``hypothesis.extra.numpy`` arrays, ``target()`` steering
towards the bound) of corrected statements, on the library's code. The same strategies break the
paper's versions (second half of each pair)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, target
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jaxvedit.losses import frame_similarities

SETTINGS = settings(max_examples=60, derandomize=True, database=None, deadline=None)
floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _grad_cos_norm(F, G):
    with jax.enable_x64(True):
        g = jax.grad(lambda f: frame_similarities(jnp.stack([f, jnp.asarray(G)]))[0])(jnp.asarray(F))
        return float(jnp.linalg.norm(g))


@SETTINGS
@given(arrays(np.float64, (2, 4), elements=floats), st.floats(0.01, 1.0))
def test_c2_corrected_gradient_bound(FG, m):
    F, G = FG
    if np.linalg.norm(F) < 1e-6 or np.linalg.norm(G) < 1e-6:
        return
    F = F / np.linalg.norm(F) * m * (1 + abs(F[0]))      # ||F|| >= m
    q = _grad_cos_norm(F, G)
    target(q * m)
    assert q <= 1 / m * (1 + 1e-9)


def test_c2_paper_bound_is_broken_by_hypothesis():
    """hypothesis.find, with the paper's hypotheses (||F|| <= M = 1), finds a violation of 2/M."""
    from hypothesis import find

    def admissible(FGr):
        F, G, r = FGr[0], FGr[1], FGr[2][0]
        if np.linalg.norm(F) < 1e-6 or np.linalg.norm(G) < 1e-6:
            return None
        return F / np.linalg.norm(F) * min(max(abs(r), 1e-4), 1.0), G

    def violates(FGr):
        a = admissible(FGr)
        return a is not None and _grad_cos_norm(*a) > 2.0

    ex = find(arrays(np.float64, (3, 4), elements=floats), violates,
              settings=settings(max_examples=500, derandomize=True, database=None))
    F, G = admissible(ex)
    assert np.linalg.norm(F) <= 1.0 and _grad_cos_norm(F, G) > 2.0


def _softmax(A):
    A = A - A.max(axis=-1, keepdims=True)
    e = np.exp(A)
    return e / e.sum(axis=-1, keepdims=True)


@SETTINGS
@given(arrays(np.float64, (2, 3, 4), elements=floats))
def test_c12_softmax_half_lipschitz(AB):
    A, B = AB
    d = np.linalg.norm(A - B)
    if d < 1e-9:
        return
    q = np.linalg.norm(_softmax(A) - _softmax(B))
    target(q / d)
    assert q <= 0.5 * d * (1 + 1e-9)


@SETTINGS
@given(arrays(np.float64, (5, 6), elements=floats), arrays(np.float64, (6, 2), elements=floats),
       st.floats(0.0, 20.0))
def test_c13_corrected_term_b(logits, dZ, temp):
    """||S dZ W_V|| <= sqrt(M) ||W_V|| ||dZ||; the paper's version (no sqrt(M)) is checked to
    fail on saturated attention in test_theory_registry (stored counterexample)."""
    S = _softmax(temp * logits)          # M = 5 queries, L = 6 tokens
    WV = np.eye(2)
    nz = np.linalg.norm(dZ)
    if nz < 1e-9:
        return
    q = np.linalg.norm(S @ dZ @ WV)
    target(q / (math.sqrt(5) * nz))
    assert q <= math.sqrt(5) * np.linalg.norm(WV, 2) * nz * (1 + 1e-9)
