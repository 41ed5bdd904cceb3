"""Numeric machinery for the claims (run it under ``jax.enable_x64(True)``).

* gradient norms by autodiff,
* Hessian spectral norms by power iteration and Lanczos on Hessian-vector products, with an
  exact ``eigvalsh`` of the dense Hessian as a cross-check on small sizes,
* Lipschitz ratios ``||f(x)-f(y)|| / ||x-y||`` of maps by adversarial ascent (Adam on the log
  ratio over the pair ``(x, y = x + d)``), with restarts.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def tree_norm(x):
    return jnp.sqrt(sum(jnp.sum(jnp.square(l)) for l in jax.tree_util.tree_leaves(x)))


def grad_norm(f: Callable, x):
    """||grad f(x)||_2 by reverse-mode autodiff."""
    return tree_norm(jax.grad(f)(x))


def hvp(f: Callable, x, v):
    """Hessian-vector product by forward-over-reverse autodiff."""
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def hessian_power_norm(f: Callable, x, *, iters: int = 100, key=None):
    """Spectral norm |lambda|_max of the Hessian of f at x by power iteration on HVPs."""
    key = jax.random.PRNGKey(0) if key is None else key
    v = jax.random.normal(key, x.shape, x.dtype)
    v = v / jnp.linalg.norm(v)
    hv = jax.jit(lambda v: hvp(f, x, v))

    def body(_, v):
        w = hv(v)
        return w / jnp.maximum(jnp.linalg.norm(w), 1e-300)

    v = jax.lax.fori_loop(0, iters, body, v)
    return jnp.abs(jnp.vdot(v, hv(v)))


def hessian_lanczos_extremes(f: Callable, x, *, k: int = 30, key=None):
    """(lambda_min, lambda_max) of the Hessian of f at x by k-step Lanczos on HVPs
    (full reorthogonalisation; exact once k >= dim)."""
    key = jax.random.PRNGKey(1) if key is None else key
    n = x.size
    k = int(min(k, n))
    shape = x.shape
    op = jax.jit(lambda v: hvp(f, x, v.reshape(shape)).reshape(-1))
    V = np.zeros((k, n))
    alpha, beta = np.zeros(k), np.zeros(k)
    v = np.array(jax.random.normal(key, (n,), x.dtype))
    v /= np.linalg.norm(v)
    for j in range(k):
        V[j] = v
        w = np.array(op(jnp.asarray(v)))
        alpha[j] = w @ v
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)  # full reorthogonalisation (twice)
        w = w - V[: j + 1].T @ (V[: j + 1] @ w)
        b = np.linalg.norm(w)
        if j + 1 < k:
            if b < 1e-12:
                k = j + 1
                break
            beta[j] = b
            v = w / b
    Tm = np.diag(alpha[:k]) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    ev = np.linalg.eigvalsh(Tm)
    return float(ev[0]), float(ev[-1])


def hessian_exact_norm(f: Callable, x):
    """Exact spectral norm of the dense Hessian (small sizes only)."""
    H = jax.hessian(f)(x).reshape(x.size, x.size)
    ev = jnp.linalg.eigvalsh(0.5 * (H + H.T))
    return jnp.max(jnp.abs(ev))


def lipschitz_ascent(f: Callable, x0, d0, *, steps: int = 200, lr: float = 0.05,
                     project: Callable | None = None):
    """Maximise ``||f(x) - f(x+d)|| / ||d||`` over (x, d) from (x0, d0) by Adam on the log ratio.

    ``project`` (optional) maps (x, d) back into the admissible set after each step.
    Returns (best_ratio, x, d).
    """
    def neg_log_ratio(p):
        x, d = p
        num = tree_norm(jax.tree_util.tree_map(lambda a, b: a - b, f(x + d), f(x)))
        return -(jnp.log(num + 1e-300) - jnp.log(jnp.linalg.norm(d)))

    opt = optax.adam(lr)
    p = (x0, d0)
    state = opt.init(p)

    @jax.jit
    def step(p, state):
        val, g = jax.value_and_grad(neg_log_ratio)(p)
        upd, state = opt.update(g, state, p)
        return optax.apply_updates(p, upd), state, -val

    best = (-np.inf, x0, d0)
    for _ in range(steps):
        p_new, state, lr_val = step(p, state)
        if np.isfinite(float(lr_val)) and float(lr_val) > best[0]:
            best = (float(lr_val), p[0], p[1])
        p = p_new if project is None else project(*p_new)
    # evaluate the final point too
    final = -float(neg_log_ratio(p))
    if np.isfinite(final) and final > best[0]:
        best = (final, p[0], p[1])
    return float(np.exp(best[0])), best[1], best[2]


def adam_maximize(obj: Callable, p0, *, steps: int = 200, lr: float = 0.05,
                  project: Callable | None = None):
    """Maximise a scalar objective over a pytree by Adam; returns (best_value, best_params)."""
    opt = optax.adam(lr)
    state = opt.init(p0)

    @jax.jit
    def step(p, state):
        val, g = jax.value_and_grad(lambda q: -obj(q))(p)
        upd, state = opt.update(g, state, p)
        return optax.apply_updates(p, upd), state, -val

    p, best = p0, (-np.inf, p0)
    for _ in range(steps):
        if project is not None:
            p = project(p)
        p_new, state, val = step(p, state)
        if np.isfinite(float(val)) and float(val) > best[0]:
            best = (float(val), p)
        p = p_new
    if project is not None:
        p = project(p)
    val = float(obj(p))
    if np.isfinite(val) and val > best[0]:
        best = (val, p)
    return best
