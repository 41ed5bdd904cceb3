"""Shared and frame-specific prompt tokens (TSC, SPEC §2; paper 004 §3.3, paper 001 §3).

``Z_final = [T_share; Z_unshare; Z_text]`` along the sequence axis is the context of every
cross-attention:

* ``T_share`` (N_share x D): trainable tokens shared by all frames, init normal std 0.02.
* ``Z_unshare``: each frame's CLIP vision ``last_hidden_state`` H (B, N, d) pooled along the
  sequence (``avg2``: mean of adjacent pairs, paper 004 eq. 13, 50 -> 25 tokens; ``stride:s``:
  token 0 then tokens 1, 1+s, 1+2s, ..., paper 001 eq. 6 and the authors' ``sub`` option,
  50 -> 26 tokens for s=2), then a trainable ``Linear(d, D)`` (Xavier-uniform weight, zero bias,
  as the authors' code).
* ``Z_text``: the CLIP text embedding of the prompt (conditional branch) or of the empty prompt
  (unconditional branch and text-condition dropout).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.adapters.params import PromptTokenParam


def parse_pooling(pooling: str) -> tuple[str, int]:
    if pooling == "avg2":
        return "avg", 2
    if pooling.startswith("stride:"):
        try:
            s = int(pooling.split(":", 1)[1])
        except ValueError:
            s = 0
        if s >= 1:
            return "stride", s
    raise ValueError(f"unknown pooling {pooling!r}; expected 'avg2' or 'stride:<s>' with s >= 1")


def pool_tokens(hidden: jax.Array, pooling: str = "avg2") -> jax.Array:
    """Pool CLIP vision hidden states ``(B, N, d)`` along the sequence axis."""
    kind, s = parse_pooling(pooling)
    if hidden.ndim != 3:
        raise ValueError(f"vision hidden states must have shape (B, N, d), got {hidden.shape}")
    b, n, d = hidden.shape
    if kind == "avg":
        if n % 2:
            raise ValueError(f"avg2 pooling needs an even number of tokens, got N={n}")
        # paper 004 eq. 13: z_i = (h_{2i-1} + h_{2i}) / 2
        return hidden.reshape(b, n // 2, 2, d).mean(axis=2)
    # paper 001 eq. 6: keep the class token, then every s-th patch token
    return jnp.concatenate([hidden[:, :1], hidden[:, 1::s]], axis=1)


def pooled_length(n: int, pooling: str) -> int:
    kind, s = parse_pooling(pooling)
    return n // 2 if kind == "avg" else 1 + len(range(1, n, s))


@dataclass(frozen=True)
class PromptTokenConfig:
    n_share: int = 18  # paper 004; the authors' code trains 4 and evaluates 8
    vision_dim: int = 768  # width d of the CLIP vision hidden states
    context_dim: int = 768  # cross-attention width D of the UNet
    pooling: str = "avg2"  # or "stride:s"
    text_dropout: float = 0.3  # probability of replacing the text part by the empty prompt

    def __post_init__(self):
        parse_pooling(self.pooling)
        if self.n_share < 0:
            raise ValueError(f"n_share must be >= 0, got {self.n_share}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"text_dropout must be in [0, 1], got {self.text_dropout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptTokenConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown prompt-token config key(s) {unknown}")
        return cls(**d)


class PromptTokens(nnx.Module):
    """``T_share`` and the projection of the unshared tokens (all ``PromptTokenParam``)."""

    def __init__(self, config: PromptTokenConfig | None = None, *, rngs: nnx.Rngs | None = None,
                 param_dtype=jnp.float32):
        cfg = config or PromptTokenConfig()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.shared = PromptTokenParam(
            0.02 * jax.random.normal(rngs.params(), (cfg.n_share, cfg.context_dim), param_dtype))
        self.proj_kernel = PromptTokenParam(
            nnx.initializers.xavier_uniform()(rngs.params(), (cfg.vision_dim, cfg.context_dim),
                                              param_dtype))
        self.proj_bias = PromptTokenParam(jnp.zeros((cfg.context_dim,), param_dtype))

    def unshared(self, vision_hidden: jax.Array) -> jax.Array:
        """``Z_unshare``: pooled and projected frame tokens ``(B, n_pooled, D)``."""
        if vision_hidden.shape[-1] != self.config.vision_dim:
            raise ValueError(f"vision hidden states have width {vision_hidden.shape[-1]}, the "
                             f"prompt tokens expect vision_dim={self.config.vision_dim}")
        h = pool_tokens(vision_hidden, self.config.pooling)
        dt = h.dtype
        return h @ self.proj_kernel.value.astype(dt) + self.proj_bias.value.astype(dt)

    def __call__(self, vision_hidden: jax.Array) -> jax.Array:
        """``[T_share; Z_unshare]`` per frame: ``(B, n_share + n_pooled, D)``."""
        z = self.unshared(vision_hidden)
        shared = jnp.broadcast_to(self.shared.value.astype(z.dtype)[None],
                                  (z.shape[0],) + self.shared.value.shape)
        return jnp.concatenate([shared, z], axis=1)

    def context(self, vision_hidden: jax.Array, text_embeddings: jax.Array) -> jax.Array:
        """``Z_final = [T_share; Z_unshare; Z_text]`` ``(B, n_share + n_pooled + L, D)``."""
        return build_context(self(vision_hidden), text_embeddings)

    def guidance_context(self, vision_hidden: jax.Array, cond_text: jax.Array,
                         uncond_text: jax.Array) -> jax.Array:
        """Context for classifier-free guidance: ``[uncond; cond]`` along the batch (diffusers'
        order), both branches with the same prompt tokens."""
        prefix = self(vision_hidden)
        return guidance_contexts(prefix, cond_text, uncond_text)


def _text_batch(text: jax.Array, b: int) -> jax.Array:
    text = jnp.asarray(text)
    if text.ndim == 2:
        text = text[None]
    if text.ndim != 3 or text.shape[0] not in (1, b):
        raise ValueError(f"text embeddings must have shape (B, L, D) or (1, L, D) with B={b}, "
                         f"got {text.shape}")
    return jnp.broadcast_to(text, (b,) + text.shape[1:])


def build_context(prefix: jax.Array, text_embeddings: jax.Array) -> jax.Array:
    """Concatenate prompt tokens ``(B, P, D)`` and text embeddings ``(B|1, L, D)``."""
    text = _text_batch(text_embeddings, prefix.shape[0])
    if text.shape[-1] != prefix.shape[-1]:
        raise ValueError(f"text width {text.shape[-1]} != prompt-token width {prefix.shape[-1]}")
    return jnp.concatenate([prefix, text.astype(prefix.dtype)], axis=1)


def guidance_contexts(prefix: jax.Array, cond_text: jax.Array, uncond_text: jax.Array) -> jax.Array:
    """``(2B, P + L, D)``: unconditional branch first, then conditional; same prefix in both."""
    return jnp.concatenate([build_context(prefix, uncond_text), build_context(prefix, cond_text)],
                           axis=0)


def drop_text_condition(key: jax.Array, text_embeddings: jax.Array, empty_embedding: jax.Array,
                        p: float = 0.3, *, group_size: int = 1) -> jax.Array:
    """Text-condition dropout: each sample's text part becomes the empty-prompt embedding with
    probability ``p`` (explicit PRNG ``key``; traceable). ``group_size``: consecutive samples
    that share one decision (the T frames of a clip: ``group_size=T``)."""
    text = jnp.asarray(text_embeddings)
    if text.ndim != 3:
        raise ValueError(f"text embeddings must have shape (B, L, D), got {text.shape}")
    empty = _text_batch(empty_embedding, text.shape[0]).astype(text.dtype)
    if empty.shape != text.shape:
        raise ValueError(f"empty-prompt embedding {empty.shape} does not match the text {text.shape}")
    b = text.shape[0]
    if group_size < 1 or b % group_size:
        raise ValueError(f"batch {b} is not a whole number of groups of {group_size}")
    drop = jnp.repeat(jax.random.bernoulli(key, p, (b // group_size,)), group_size)
    return jnp.where(drop[:, None, None], empty, text)
