"""``jaxvedit.models.layers.attention`` chunks its queries where no fused kernel runs (as
diffusers' attention slicing): the same output and gradients as the unchunked call, a bounded
score buffer, and a whole UNet unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.models import layers
from jaxvedit.models.layers import attention, attention_chunking
from jaxvedit.models.tiny import TINY_UNET_CONFIG
from jaxvedit.models.unet import UNet2DConditionModel


def _numpy_attention(q, k, v, heads, kv_length=None):
    b, lq, c = q.shape
    d = c // heads
    q, k, v = (a.astype(np.float64).reshape(b, a.shape[1], heads, d) for a in (q, k, v))
    if kv_length is not None:
        k, v = k[:, :kv_length], v[:, :kv_length]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, lq, c)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 301, 32)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 170, 32)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 170, 32)), jnp.float32)
    ref = _numpy_attention(np.asarray(q), np.asarray(k), np.asarray(v), 4)
    budgets = (None, 1, 2 * 4 * 170 * 50)  # off; one query per chunk; 50 (301 padded to 350)

    @jax.jit
    def variants(q, k, v):  # every budget traced into one program
        out = []
        for budget in budgets:
            with attention_chunking(budget):
                out += [attention(q, k, v, 4), attention(q, k, v, 4, kv_length=77)]
        return out

    outs = [np.asarray(o) for o in variants(q, k, v)]
    np.testing.assert_allclose(outs[0], ref, atol=1e-5)
    masked = _numpy_attention(*map(np.asarray, (q, k, v)), 4, 77)
    for i, budget in enumerate(budgets):
        np.testing.assert_allclose(outs[2 * i], outs[0], atol=1e-6, err_msg=f"budget {budget}")
        np.testing.assert_allclose(outs[2 * i + 1], masked, atol=1e-5, err_msg=f"budget {budget}")

    # gradients through the chunked (rematerialised) path
    def loss(q, k, v, budget):
        with attention_chunking(budget):
            return jnp.sum(jnp.sin(attention(q, k, v, 4)))

    grads = jax.jit(lambda q, k, v: [jax.grad(loss, argnums=(0, 1, 2))(q, k, v, b) for b in (None, 500)])
    g_whole, g_chunk = grads(q, k, v)
    for a, b in zip(g_chunk, g_whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_chunking_bounds_the_score_buffer():
    """64x64 latents (4096 tokens), 8 heads, a CFG batch of 2: the unchunked XLA program needs
    a 2 GiB work buffer, the default budget a quarter of that, a small one ~50 MiB."""
    s = jax.ShapeDtypeStruct((2, 4096, 320), jnp.float32)
    temp = {}
    for budget in (None, layers._ATTENTION_CHUNK.get(), 2 ** 22):
        with attention_chunking(budget):
            compiled = jax.jit(lambda q, k, v: attention(q, k, v, 8)).lower(s, s, s).compile()
        temp[budget] = compiled.memory_analysis().temp_size_in_bytes
    print({k: f"{v / 2 ** 20:.0f} MiB" for k, v in temp.items()})
    assert temp[None] >= 2 * 8 * 4096 * 4096 * 4  # the whole score matrix
    assert temp[layers._ATTENTION_CHUNK.get()] < temp[None] / 3
    assert temp[2 ** 22] < 64 * 2 ** 20


def test_unet_output_unchanged_by_chunking():
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel(TINY_UNET_CONFIG,
                                                                              rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)
    x = jnp.asarray(rng.standard_normal((2, 8, 16, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 7, 32)), jnp.float32)
    outs = []
    for budget in (None, 2 * 4 * 128 * 16):  # every attention of the 8x16 level in chunks of 16
        with attention_chunking(budget):
            f = jax.jit(lambda s, x, c: nnx.merge(graphdef, s)(x, jnp.asarray(500), c))
            outs.append(np.asarray(f(state, x, ctx)))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5 * outs[0].std())
