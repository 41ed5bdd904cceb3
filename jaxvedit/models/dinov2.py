"""Flax NNX port of transformers' ``Dinov2Backbone`` (``models/dinov2/modeling_dinov2.py``), the
encoder of Depth Anything.

ViT with a 14x14 patch embedding, a CLS token, learned position embeddings (bicubically
interpolated, as PyTorch, when the patch grid differs from the pre-training one), pre-norm
blocks with LayerScale, and a final LayerNorm applied to the hidden states the backbone returns
(``out_indices``). Attribute names follow the checkpoints' key layout
(``embeddings.patch_embeddings.projection``, ``encoder.layer.{i}.attention.attention.query``,
``attention.output.dense``, ``layer_scale1.lambda1``, ``mlp.fc1``, ...): what
``save_pretrained`` writes and the hub files hold.

Input ``pixel_values (B, H, W, 3)`` channels-last (normalised), ``H`` and ``W`` multiples of the
patch size; output: the selected hidden states ``(B, 1 + N, D)`` (CLS first).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.models.config import build_config
from jaxvedit.models.layers import LayerNorm, Precision, attention, linear
from jaxvedit.models.resize import interpolate


@dataclass(frozen=True)
class Dinov2Config:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    image_size: int = 518
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    use_mask_token: bool = True
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    out_indices: tuple | None = None
    out_features: tuple | None = None
    stage_names: tuple | None = None

    # transformers writes many generic keys; these are accepted and ignored
    IGNORED = ("_name_or_path", "architectures", "model_type", "torch_dtype", "dtype",
               "transformers_version", "initializer_range", "hidden_dropout_prob",
               "attention_probs_dropout_prob", "drop_path_rate", "id2label", "label2id",
               "chunk_size_feed_forward", "is_encoder_decoder", "output_attentions",
               "output_hidden_states", "problem_type", "return_dict", "intermediate_size",
               "layerscale_value_init", "num_register_tokens")

    @classmethod
    def from_dict(cls, raw: dict) -> "Dinov2Config":
        raw = {k: v for k, v in raw.items() if k not in cls.IGNORED}
        if raw.get("use_swiglu_ffn"):
            raise ValueError("Dinov2 config use_swiglu_ffn=True (the giant model's SwiGLU MLP) is "
                             "not supported by the jaxvedit port")
        raw.pop("use_swiglu_ffn", None)
        if raw.get("hidden_act", "gelu") not in ("gelu",):
            raise ValueError(f"Dinov2 config hidden_act={raw['hidden_act']!r} is not supported "
                             "(supported: 'gelu')")
        if isinstance(raw.get("patch_size"), (list, tuple)):
            ps = tuple(raw["patch_size"])
            if ps[0] != ps[1]:
                raise ValueError(f"Dinov2 config patch_size={ps}: only square patches are supported")
            raw["patch_size"] = ps[0]
        return build_config(cls, raw, allowed={}, what="Dinov2")

    @property
    def selected_layers(self) -> tuple[int, ...]:
        """Indices into ``(embeddings, layer 1, ..., layer N)`` of the returned hidden states."""
        if self.out_indices is not None:
            return tuple(int(i) % (self.num_hidden_layers + 1) for i in self.out_indices)
        if self.out_features is not None:
            names = self.stage_names or ("stem",) + tuple(
                f"stage{i}" for i in range(1, self.num_hidden_layers + 1))
            return tuple(names.index(f) for f in self.out_features)
        return (self.num_hidden_layers,)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


class PatchEmbeddings(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        k = cfg.patch_size
        self.patch_size = k
        self.projection = nnx.Conv(cfg.num_channels, cfg.hidden_size, kernel_size=(k, k),
                                   strides=(k, k), padding="VALID", dtype=p.dtype,
                                   param_dtype=p.param_dtype, rngs=rngs)

    def __call__(self, x):
        y = self.projection(x)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class Embeddings(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        d = cfg.hidden_size
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.cfg = cfg
        self.cls_token = nnx.Param(jnp.zeros((1, 1, d), p.param_dtype))
        self.mask_token = nnx.Param(jnp.zeros((1, d), p.param_dtype)) if cfg.use_mask_token else None
        self.patch_embeddings = PatchEmbeddings(cfg, p, rngs)
        self.position_embeddings = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, n + 1, d),
                                                                      p.param_dtype))
        self.dtype = p.dtype

    def interpolate_pos_encoding(self, n_patches: int, height: int, width: int):
        pos = self.position_embeddings.value
        n_pos = pos.shape[1] - 1
        if n_patches == n_pos and height == width:
            return pos
        d = pos.shape[-1]
        side = int(n_pos ** 0.5)
        grid = pos[:, 1:].reshape(1, side, side, d).astype(jnp.float32)  # float32, as transformers
        k = self.cfg.patch_size
        grid = interpolate(grid, (height // k, width // k), mode="bicubic", align_corners=False)
        grid = grid.astype(pos.dtype).reshape(1, -1, d)
        return jnp.concatenate([pos[:, :1], grid], axis=1)

    def __call__(self, pixel_values):
        b, h, w, _ = pixel_values.shape
        x = self.patch_embeddings(pixel_values.astype(self.dtype))
        cls = jnp.broadcast_to(self.cls_token.value.astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.interpolate_pos_encoding(x.shape[1] - 1, h, w).astype(x.dtype)


class SelfAttention(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.implementation = p.attention_implementation
        self.query = linear(d, d, p, rngs, use_bias=cfg.qkv_bias)
        self.key = linear(d, d, p, rngs, use_bias=cfg.qkv_bias)
        self.value = linear(d, d, p, rngs, use_bias=cfg.qkv_bias)


class SelfOutput(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, p, rngs)


class Attention(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, p, rngs)
        self.output = SelfOutput(cfg, p, rngs)

    def __call__(self, x):
        a = self.attention
        h = attention(a.query(x), a.key(x), a.value(x), a.heads, a.implementation)
        return self.output.dense(h)


class LayerScale(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision):
        self.lambda1 = nnx.Param(cfg.layerscale_value * jnp.ones((cfg.hidden_size,), p.param_dtype))

    def __call__(self, x):
        return x * self.lambda1.value.astype(x.dtype)


class MLP(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        hidden = int(cfg.hidden_size * cfg.mlp_ratio)
        self.fc1 = linear(cfg.hidden_size, hidden, p, rngs)
        self.fc2 = linear(hidden, cfg.hidden_size, p, rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Layer(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, p)
        self.attention = Attention(cfg, p, rngs)
        self.layer_scale1 = LayerScale(cfg, p)
        self.norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, p)
        self.mlp = MLP(cfg, p, rngs)
        self.layer_scale2 = LayerScale(cfg, p)

    def __call__(self, x):
        x = self.layer_scale1(self.attention(self.norm1(x))) + x
        return self.layer_scale2(self.mlp(self.norm2(x))) + x


class Encoder(nnx.Module):
    def __init__(self, cfg: Dinov2Config, p: Precision, rngs: nnx.Rngs):
        self.layer = nnx.List([Layer(cfg, p, rngs) for _ in range(cfg.num_hidden_layers)])


class Dinov2Backbone(nnx.Module):
    def __init__(self, config: Dinov2Config | dict, *, rngs: nnx.Rngs | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_implementation: str | None = None):
        cfg = config if isinstance(config, Dinov2Config) else Dinov2Config.from_dict(dict(config))
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        p = Precision(dtype, param_dtype, attention_implementation)
        self.config = cfg
        self.embeddings = Embeddings(cfg, p, rngs)
        self.encoder = Encoder(cfg, p, rngs)
        self.layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, p)

    def __call__(self, pixel_values: jax.Array) -> list[jax.Array]:
        """The selected hidden states ``(B, 1 + N, D)``, final-LayerNormed if configured
        (``reshape_hidden_states`` is for other heads: Depth Anything turns it off)."""
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
            raise ValueError(f"Dinov2 expects (B, H, W, {cfg.num_channels}) channels-last pixels, "
                             f"got shape {pixel_values.shape}")
        h, w = pixel_values.shape[1:3]
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"image size {(h, w)} is not a multiple of the patch size "
                             f"{cfg.patch_size}")
        x = self.embeddings(pixel_values)
        states = [x]
        for layer in self.encoder.layer:
            x = layer(x)
            states.append(x)
        out = []
        for i in cfg.selected_layers:
            s = states[i]
            if cfg.apply_layernorm:
                s = self.layernorm(s)
            out.append(s)
        return out
