"""``JAXVEDIT_ATTENTION_HEAD_PAD`` (a speed lever of bench/levers.py): zero-padded heads give the
same attention as the unpadded call (scores, softmax and outputs), chunked or not."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jaxvedit.models import layers


def _qkv(b=2, lq=48, lk=40, heads=3, d=40, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((b, n, heads * d)), jnp.float32) for n in (lq, lk, lk)]


def _reference(q, k, v, heads):  # the definition, in NumPy
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq, inner = q.shape
    d = inner // heads
    qh, kh, vh = (a.reshape(b, -1, heads, d).transpose(0, 2, 1, 3) for a in (q, k, v))
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, lq, inner)


@pytest.mark.parametrize("budget", [None, 500])  # unchunked, and queries in chunks
def test_padded_heads_give_the_same_attention(monkeypatch, budget):
    q, k, v = _qkv()
    want = _reference(q, k, v, 3)
    monkeypatch.delenv("JAXVEDIT_ATTENTION_HEAD_PAD", raising=False)
    with layers.attention_chunking(budget):
        plain = np.asarray(layers.attention(q, k, v, 3, "xla"))
        monkeypatch.setenv("JAXVEDIT_ATTENTION_HEAD_PAD", "64")
        assert layers._head_pad(40) == 24
        padded = np.asarray(jax.jit(lambda a, b_, c: layers.attention(a, b_, c, 3, "xla"))(q, k, v))
        grad = jax.grad(lambda a: layers.attention(a, k, v, 3, "xla").sum())(q)
    monkeypatch.delenv("JAXVEDIT_ATTENTION_HEAD_PAD")
    with layers.attention_chunking(budget):
        grad0 = jax.grad(lambda a: layers.attention(a, k, v, 3, "xla").sum())(q)
    assert np.abs(plain - want).max() < 1e-5
    assert np.abs(padded - want).max() < 1e-5
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad0), atol=1e-5)


def test_head_pad_rules_and_errors(monkeypatch):
    monkeypatch.setenv("JAXVEDIT_ATTENTION_HEAD_PAD", "64")
    assert layers._head_pad(64) == 0 and layers._head_pad(80) == 48
    assert layers._head_pad(160) == 0  # 192 is past the fused kernels' 128: left as it is
    monkeypatch.setenv("JAXVEDIT_ATTENTION_HEAD_PAD", "0")
    assert layers._head_pad(40) == 0
    monkeypatch.setenv("JAXVEDIT_ATTENTION_HEAD_PAD", "sixty")
    with pytest.raises(ValueError, match="whole number"):
        layers._head_pad(40)
    monkeypatch.setenv("JAXVEDIT_ATTENTION_HEAD_PAD", "-8")
    with pytest.raises(ValueError, match="must be >= 0"):
        layers._head_pad(40)
