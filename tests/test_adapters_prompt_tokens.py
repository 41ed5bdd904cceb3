"""Shared / unshared prompt tokens (TSC): pooling, initialisation, context for both guidance
branches, text-condition dropout, files, and training them alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxvedit.adapters import (AdapterLoadError, LoRAParam, PromptTokenConfig, PromptTokenParam,
                               PromptTokens, build_context, drop_text_condition, guidance_contexts,
                               init_adapter_training, load_adapter, make_adapter_train_step,
                               pool_tokens, save_adapter)


def _hidden(b=3, n=50, d=768, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(b, n, d), jnp.float32)


def test_pooling_avg2_and_stride():
    h = _hidden()
    avg = pool_tokens(h, "avg2")
    assert avg.shape == (3, 25, 768)
    np.testing.assert_allclose(avg[:, 3], (h[:, 6] + h[:, 7]) / 2, rtol=1e-6)  # eq. 13
    st = pool_tokens(h, "stride:2")
    assert st.shape == (3, 26, 768)  # token 0, then 1, 3, ..., 49 (the authors' hidden[:, 1::2])
    np.testing.assert_array_equal(st, np.concatenate([h[:, :1], h[:, 1::2]], axis=1))
    assert pool_tokens(h, "stride:1").shape == (3, 50, 768)
    assert pool_tokens(h, "stride:4").shape[1] == 1 + len(range(1, 50, 4))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_tokens(h, "max2")
    with pytest.raises(ValueError, match="even number of tokens"):
        pool_tokens(h[:, :49], "avg2")


def test_init_and_shapes():
    pt = PromptTokens(PromptTokenConfig(n_share=18), rngs=nnx.Rngs(0))
    assert isinstance(pt.shared, PromptTokenParam) and pt.shared.value.shape == (18, 768)
    assert abs(float(pt.shared.value.std()) - 0.02) < 0.002
    k = np.asarray(pt.proj_kernel.value)
    bound = np.sqrt(6.0 / (768 + 768))  # Xavier-uniform
    assert k.shape == (768, 768) and np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
    assert not np.any(np.asarray(pt.proj_bias.value))
    h = _hidden()
    prefix = pt(h)
    assert prefix.shape == (3, 18 + 25, 768)
    np.testing.assert_array_equal(prefix[1, :18], pt.shared.value)  # shared by every frame
    np.testing.assert_allclose(prefix[:, 18:], pool_tokens(h, "avg2") @ k, rtol=1e-5, atol=1e-5)
    text = jnp.ones((3, 77, 768))
    ctx = pt.context(h, text)
    assert ctx.shape == (3, 18 + 25 + 77, 768)  # [T_share; Z_unshare; Z_text]
    np.testing.assert_array_equal(ctx[:, -77:], text)
    pt2 = PromptTokens(PromptTokenConfig(n_share=4, pooling="stride:2"), rngs=nnx.Rngs(0))
    assert pt2(h).shape == (3, 4 + 26, 768)
    with pytest.raises(ValueError, match="vision_dim"):
        pt(jnp.ones((3, 50, 512)))


def test_guidance_contexts_share_prompt_tokens():
    pt = PromptTokens(PromptTokenConfig(n_share=2, vision_dim=8, context_dim=6), rngs=nnx.Rngs(1))
    h = _hidden(2, 10, 8)
    cond = jnp.full((2, 5, 6), 1.0)
    uncond = jnp.zeros((1, 5, 6))  # one empty-prompt embedding, broadcast
    ctx = pt.guidance_context(h, cond, uncond)
    assert ctx.shape == (4, 2 + 5 + 5, 6)
    np.testing.assert_array_equal(ctx[:2, :7], ctx[2:, :7])  # same prompt tokens in both branches
    assert not np.any(np.asarray(ctx[:2, 7:])) and np.all(np.asarray(ctx[2:, 7:]) == 1.0)
    np.testing.assert_array_equal(guidance_contexts(pt(h), cond, uncond), ctx)
    with pytest.raises(ValueError, match="text embeddings must have shape"):
        build_context(pt(h), jnp.zeros((3, 5, 6)))


def test_text_condition_dropout():
    b, key = 4000, jax.random.PRNGKey(0)
    text = jnp.ones((b, 3, 2))
    empty = jnp.zeros((3, 2))
    out = drop_text_condition(key, text, empty, p=0.3)
    dropped = np.asarray(out[:, 0, 0] == 0)
    assert abs(dropped.mean() - 0.3) < 0.03
    np.testing.assert_array_equal(out, drop_text_condition(key, text, empty, p=0.3))  # explicit key
    assert not np.array_equal(out, drop_text_condition(jax.random.PRNGKey(1), text, empty, p=0.3))
    grouped = np.asarray(drop_text_condition(key, text, empty, p=0.5, group_size=4)[:, 0, 0])
    assert np.all(grouped.reshape(-1, 4) == grouped.reshape(-1, 4)[:, :1])  # one decision per clip
    assert np.all(np.asarray(drop_text_condition(key, text, empty, p=0.0)) == 1)
    jitted = jax.jit(lambda k: drop_text_condition(k, text, empty, 0.3))
    np.testing.assert_array_equal(jitted(key), out)
    with pytest.raises(ValueError, match="whole number of groups"):
        drop_text_condition(key, text[:6], empty, group_size=4)


def test_files_roundtrip_and_shape_mismatch(tmp_path):
    pt = PromptTokens(PromptTokenConfig(n_share=4, pooling="stride:2"), rngs=nnx.Rngs(2))
    folder = save_adapter(tmp_path / "tokens", pt)
    back = load_adapter(folder)
    assert back.config == pt.config
    for name in ("shared", "proj_kernel", "proj_bias"):
        np.testing.assert_array_equal(getattr(back, name).value, getattr(pt, name).value)
    other = PromptTokens(PromptTokenConfig(n_share=8), rngs=nnx.Rngs(0))
    with pytest.raises(AdapterLoadError, match=r"shared: file has \(4, 768\), model expects \(8, 768\)"):
        load_adapter(folder, into=other)


def test_training_prompt_tokens_only():
    """Prompt tokens train alone (wrt=PromptTokenParam) through a small frozen consumer."""

    class Toy(nnx.Module):
        def __init__(self):
            self.tokens = PromptTokens(PromptTokenConfig(n_share=3, vision_dim=8, context_dim=4),
                                       rngs=nnx.Rngs(0))
            self.frozen = nnx.Linear(4, 1, rngs=nnx.Rngs(1))

        def __call__(self, h, text):
            return self.frozen(self.tokens.context(h, text)).mean()

    model = Toy()
    frozen_before = np.array(model.frozen.kernel.value)

    def loss_fn(m, batch, key):
        return (m(batch["h"], batch["text"]) - 1.0) ** 2, {}

    state = init_adapter_training(model, optax.adam(1e-2), wrt=PromptTokenParam)
    step = make_adapter_train_step(loss_fn, state)
    batch = {"h": _hidden(2, 10, 8), "text": jnp.zeros((2, 5, 4))}
    losses = [float(state.step(step, batch, jax.random.PRNGKey(0))[0]) for _ in range(5)]
    state.write_back(model)
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(model.frozen.kernel.value, frozen_before)
    assert len(jax.tree.leaves(state.opt_state)) == 2 * 3 + 1  # mu, nu per token param + count
    with pytest.raises(ValueError, match="nothing to train"):
        init_adapter_training(model, optax.adam(1e-2), wrt=LoRAParam)
