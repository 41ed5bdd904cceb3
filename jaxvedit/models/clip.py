"""CLIP text and vision encoders in Flax NNX (ports of transformers' ``CLIPTextModel`` /
``CLIPVisionModel``).

Both towers are pre-LN transformer encoders. Attribute names mirror transformers' modules
(``text_model.embeddings.token_embedding``, ``text_model.encoder.layers.0.self_attn.q_proj``,
``vision_model.pre_layrnorm`` -- transformers' spelling --, ...), so
:func:`jaxvedit.models.weights.load_torch_state_dict` reads a transformers ``model.safetensors``
directly. Both key layouts are accepted: the one transformers >= 5 writes for a bare
``CLIPTextModel`` (``embeddings.token_embedding.weight``) and the older / ``CLIPModel`` one with
the ``text_model.`` / ``vision_model.`` prefix (SD1.5's ``text_encoder``, OpenAI's CLIP repos).

Layout differences from PyTorch: images are channels-last ``(B, H, W, C)``; token ids are
``(B, L)`` integers. Parameters are float32; ``dtype`` sets the compute dtype (float32 or
bfloat16; softmax and LayerNorm statistics stay in float32).

Not ported: ``interpolate_pos_encoding`` (images must have the configured size), attention /
hidden dropout (inference only; CLIP configs use 0.0 anyway).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxvedit.models import weights as _weights
from jaxvedit.models.layers import _project as _layers_project
from jaxvedit.models.config import read_config

__all__ = [
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "CLIPOutput",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "load_clip_config",
    "load_tokenizer",
    "tokenize",
]


# ----------------------------------------------------------------------------------------------
# configs


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


# transformers' ACT2FN names -> jax functions (same formulas)
ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_python_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_accurate": lambda x: 0.5 * x * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def _activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Fields and defaults of transformers' ``CLIPTextConfig`` that the text tower uses."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPTextConfig":
        return cls(**_known_fields(cls, d))

    def __post_init__(self):
        _check_heads(self)
        _activation(self.hidden_act)
        if isinstance(self.eos_token_id, (list, tuple)):
            raise ValueError(f"a list eos_token_id ({self.eos_token_id}) is not supported by CLIP pooling")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Fields and defaults of transformers' ``CLIPVisionConfig`` that the vision tower uses."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPVisionConfig":
        fields = _known_fields(cls, d)
        for name in ("image_size", "patch_size"):
            v = fields.get(name)
            if isinstance(v, (list, tuple)):
                if len(set(v)) != 1:
                    raise ValueError(f"non-square {name} {v} is not supported (transformers' CLIP "
                                     "embeddings assume a square grid too)")
                fields[name] = int(v[0])
        return cls(**fields)

    def __post_init__(self):
        _check_heads(self)
        _activation(self.hidden_act)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + 1


def _known_fields(cls, d: Mapping[str, Any]) -> dict:
    """The entries of ``d`` that ``cls`` has; ``None`` means "default" except for token ids."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names and (v is not None or k.endswith("token_id"))}


def _check_heads(cfg) -> None:
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
                         f"{cfg.num_attention_heads}")


def load_clip_config(config: str | os.PathLike | Mapping[str, Any] | CLIPTextConfig | CLIPVisionConfig,
                     which: str):
    """A transformers CLIP config (dict, ``config.json`` path or its folder) -> our config.

    ``which`` is ``"text"`` or ``"vision"``. Accepts a full ``CLIPConfig`` (``text_config`` /
    ``vision_config`` sub-dicts, legacy ``*_config_dict`` entries taking precedence as in
    transformers) or the flat ``CLIPTextConfig`` / ``CLIPVisionConfig`` form.
    """
    cls = {"text": CLIPTextConfig, "vision": CLIPVisionConfig}.get(which)
    if cls is None:
        raise ValueError(f"which must be 'text' or 'vision', got {which!r}")
    if isinstance(config, cls):
        return config
    if isinstance(config, (CLIPTextConfig, CLIPVisionConfig)):
        raise ValueError(f"expected a {cls.__name__}, got a {type(config).__name__}")
    d = read_config(config, what="CLIP config")
    sub_key = f"{which}_config"
    other = "vision" if which == "text" else "text"
    model_type = d.get("model_type", "")
    if sub_key in d or f"{sub_key}_dict" in d or model_type == "clip":
        sub = dict(d.get(sub_key) or {})
        sub.update(d.get(f"{sub_key}_dict") or {})
        if d.get("projection_dim") is not None:  # CLIPModel's projections use the top-level one
            sub["projection_dim"] = d["projection_dim"]
        return cls.from_dict(sub)
    if model_type == f"clip_{other}_model":
        raise ValueError(f"config is a CLIP {other} config (model_type {model_type!r}); "
                         f"a {which} model needs a clip_{which}_model or clip config")
    return cls.from_dict(d)


# ----------------------------------------------------------------------------------------------
# outputs


@struct.dataclass
class CLIPOutput:
    """``last_hidden_state (B, L, D)``, ``pooler_output (B, D)``; ``hidden_states``: the
    encoder input then every layer's output (``num_hidden_layers + 1`` arrays, as transformers
    returns them: the text ones before ``final_layer_norm``) when asked; ``text_embeds`` /
    ``image_embeds`` (B, projection_dim) for the ``...WithProjection`` models."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple | None = None
    text_embeds: jax.Array | None = None
    image_embeds: jax.Array | None = None


# ----------------------------------------------------------------------------------------------
# building blocks


def _linear(din, dout, *, dtype, rngs, use_bias=True):
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _layer_norm(d, eps, *, dtype, rngs):
    return nnx.LayerNorm(d, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _project(layer, x, path: str):
    # a per-call LoRA (jaxvedit.adapters) sees the transformers module path; none: plain linear
    return _layers_project(layer, x, path) if path else layer(x)


class CLIPAttention(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, path: str = ""):
        self.path = path
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = d // self.num_heads
        self.k_proj = _linear(d, d, dtype=dtype, rngs=rngs)
        self.v_proj = _linear(d, d, dtype=dtype, rngs=rngs)
        self.q_proj = _linear(d, d, dtype=dtype, rngs=rngs)
        self.out_proj = _linear(d, d, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask=None, is_causal: bool = False):
        b, n, d = x.shape
        heads = (b, n, self.num_heads, self.head_dim)
        p = self.path
        q = _project(self.q_proj, x, p and f"{p}.q_proj").reshape(heads)
        k = _project(self.k_proj, x, p and f"{p}.k_proj").reshape(heads)
        v = _project(self.v_proj, x, p and f"{p}.v_proj").reshape(heads)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                           scale=self.head_dim ** -0.5)
        return _project(self.out_proj, out.reshape(b, n, d), p and f"{p}.out_proj")


class CLIPMLP(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, path: str = ""):
        self.path = path
        self.hidden_act = cfg.hidden_act
        self.fc1 = _linear(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
        self.fc2 = _linear(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        p = self.path
        h = _activation(self.hidden_act)(_project(self.fc1, x, p and f"{p}.fc1"))
        return _project(self.fc2, h, p and f"{p}.fc2")


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, path: str = ""):
        self.self_attn = CLIPAttention(cfg, dtype=dtype, rngs=rngs, path=path and f"{path}.self_attn")
        self.layer_norm1 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = CLIPMLP(cfg, dtype=dtype, rngs=rngs, path=path and f"{path}.mlp")
        self.layer_norm2 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask=None, is_causal: bool = False):
        x = x + self.self_attn(self.layer_norm1(x), mask=mask, is_causal=is_causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, path: str = ""):
        self.layers = nnx.List(
            [CLIPEncoderLayer(cfg, dtype=dtype, rngs=rngs, path=path and f"{path}.layers.{i}")
             for i in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask=None, is_causal: bool = False, output_hidden_states: bool = False):
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask=mask, is_causal=is_causal)
            if output_hidden_states:
                states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


# ----------------------------------------------------------------------------------------------
# text tower


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, dtype, rngs: nnx.Rngs):
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                         param_dtype=jnp.float32, rngs=rngs)
        self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                            dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, input_ids, position_ids=None):
        n = input_ids.shape[-1]
        if position_ids is None:
            position_ids = jnp.arange(n)[None, :]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPTextTransformer(nnx.Module):
    """transformers' ``CLIPTextModel`` body (``CLIPTextTransformer`` in transformers < 5)."""

    def __init__(self, cfg: CLIPTextConfig, *, dtype, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg, dtype=dtype, rngs=rngs)
        self.encoder = CLIPEncoder(cfg, dtype=dtype, rngs=rngs, path="text_model.encoder")
        self.final_layer_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None,
                 output_hidden_states: bool = False) -> CLIPOutput:
        cfg = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be (batch, length) integers, got {input_ids.shape} "
                             f"{input_ids.dtype}")
        b, n = input_ids.shape
        if n > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {n} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        mask = None
        if attention_mask is not None:  # padding mask on the keys, combined with the causal one
            attention_mask = jnp.asarray(attention_mask)
            chex.assert_shape(attention_mask, (b, n))
            mask = attention_mask.astype(bool)[:, None, None, :]
        x = self.embeddings(input_ids, position_ids)
        chex.assert_shape(x, (b, n, cfg.hidden_size))
        x, states = self.encoder(x, mask=mask, is_causal=True, output_hidden_states=output_hidden_states)
        x = self.final_layer_norm(x)
        chex.assert_shape(x, (b, n, cfg.hidden_size))
        if cfg.eos_token_id is None:
            raise ValueError("the text config has no eos_token_id: EOS pooling is undefined")
        if cfg.eos_token_id == 2:
            # legacy configs (before transformers PR #24773): the EOS token has the highest id
            eos_pos = jnp.argmax(input_ids.astype(jnp.int32), axis=-1)
        else:
            # first occurrence of eos_token_id (pad may equal eos); 0 where there is none
            eos_pos = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = x[jnp.arange(b), eos_pos]
        return CLIPOutput(last_hidden_state=x, pooler_output=pooled, hidden_states=states)


# ----------------------------------------------------------------------------------------------
# vision tower


class CLIPVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = dtype
        d = cfg.hidden_size
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.float32))
        p = cfg.patch_size
        self.patch_embedding = nnx.Conv(cfg.num_channels, d, kernel_size=(p, p), strides=(p, p),
                                        padding="VALID", use_bias=False, dtype=dtype,
                                        param_dtype=jnp.float32, rngs=rngs)
        self.position_embedding = nnx.Embed(cfg.num_positions, d, dtype=dtype,
                                            param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, pixel_values):
        cfg = self.config
        b = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values)  # (B, H/p, W/p, D)
        patches = patches.reshape(b, cfg.num_patches, cfg.hidden_size)  # row-major = torch flatten(2)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)
        return x + self.position_embedding(jnp.arange(cfg.num_positions)[None, :])


class CLIPVisionTransformer(nnx.Module):
    """transformers' ``CLIPVisionModel`` body (``CLIPVisionTransformer`` in transformers < 5)."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg, dtype=dtype, rngs=rngs)
        self.pre_layrnorm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.encoder = CLIPEncoder(cfg, dtype=dtype, rngs=rngs, path="vision_model.encoder")
        self.post_layernorm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values, output_hidden_states: bool = False) -> CLIPOutput:
        cfg = self.config
        pixel_values = jnp.asarray(pixel_values)
        s, c = cfg.image_size, cfg.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (s, s, c):
            raise ValueError(f"pixel_values must be channels-last (B, {s}, {s}, {c}), got "
                             f"{pixel_values.shape} (position-embedding interpolation is not ported)")
        b = pixel_values.shape[0]
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        chex.assert_shape(x, (b, cfg.num_positions, cfg.hidden_size))
        x, states = self.encoder(x, output_hidden_states=output_hidden_states)
        chex.assert_shape(x, (b, cfg.num_positions, cfg.hidden_size))
        pooled = self.post_layernorm(x[:, 0, :])
        return CLIPOutput(last_hidden_state=x, pooler_output=pooled, hidden_states=states)


# ----------------------------------------------------------------------------------------------
# loading


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # owner/name


def resolve_model_folder(folder_or_repo_id: str | os.PathLike, subfolder: str | None = None, *,
                         local_files_only: bool = False, cache_dir=None, revision=None,
                         token=None) -> Path:
    """A local folder (``subfolder`` appended) or, when the argument is not an existing local
    path and looks like ``owner/name``, a hub snapshot (through ``huggingface_hub``'s cache)."""
    path = Path(folder_or_repo_id).expanduser()
    local = path / subfolder if subfolder else path
    if path.exists() or not _REPO_ID.match(str(folder_or_repo_id)):
        if not local.is_dir():
            raise FileNotFoundError(f"model folder not found: {local}")
        return local
    from huggingface_hub import snapshot_download

    repo_id = str(folder_or_repo_id)
    patterns = None
    if subfolder:
        patterns = [f"{subfolder}/*.json", f"{subfolder}/*.safetensors", f"{subfolder}/*.txt"]
    try:
        root = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                 local_files_only=local_files_only, allow_patterns=patterns)
    except Exception as err:  # offline, unknown repo, no access: all mean "not available here"
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a hub repo available here "
            f"({type(err).__name__}: {err})") from err
    local = Path(root) / subfolder if subfolder else Path(root)
    if not local.is_dir():
        raise FileNotFoundError(f"hub repo {repo_id!r} has no folder {subfolder!r}")
    return local


# file-key prefixes of a full CLIPModel checkpoint that a single tower does not use
_OTHER_TOWER = {
    "text_model": ("vision_model.", "visual_projection.", "logit_scale"),
    "vision_model": ("text_model.", "text_projection.", "logit_scale"),
}


def _load_tower(module: nnx.Module, state_dict: Mapping[str, np.ndarray], prefix: str, *,
                what: str, projection: str | None) -> _weights.LoadReport:
    """Load a transformers state dict into a model whose tower sits at ``prefix``.

    Accepts keys with or without the tower prefix (transformers >= 5 drops it for bare
    ``CLIPTextModel`` / ``CLIPVisionModel``), ignores ``position_ids`` buffers and, from a full
    ``CLIPModel`` checkpoint, the other tower (and the projection this model does not have).
    """
    expected = {_weights.torch_key(p) for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    renames, ignore = {}, list(_OTHER_TOWER[prefix])
    if projection is None:
        ignore.append("text_projection." if prefix == "text_model" else "visual_projection.")
    for key in state_dict:
        if key.endswith("position_ids"):
            ignore.append(key)
        elif key not in expected and f"{prefix}.{key}" in expected:
            renames[key] = f"{prefix}.{key}"
    return _weights.load_torch_state_dict(module, state_dict, ignore=ignore, renames=renames, what=what)


class _Pretrained:
    """``from_config`` / ``from_pretrained`` / ``load_state_dict`` shared by the CLIP models."""

    _which: str = "text"
    _prefix: str = "text_model"
    _projection: str | None = None

    @classmethod
    def from_config(cls, config, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        """Random-initialised model from a transformers config (dict, path or our config)."""
        return cls(load_clip_config(config, cls._which), dtype=dtype, rngs=rngs or nnx.Rngs(0))

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike, subfolder: str | None = None, *,
                        dtype=jnp.float32, local_files_only: bool = False, cache_dir=None,
                        revision=None, token=None):
        """Model from a transformers folder: ``config.json`` + ``model.safetensors`` (or a
        sharded ``model.safetensors.index.json``). E.g. ``("<sd15>", subfolder="text_encoder")``.
        A hub repo id is fetched through ``huggingface_hub`` only when it is not a local path."""
        folder = resolve_model_folder(folder_or_repo_id, subfolder, local_files_only=local_files_only,
                                      cache_dir=cache_dir, revision=revision, token=token)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no config.json in {folder}")
        cfg = load_clip_config(config_path, cls._which)
        state_dict = _weights.read_weights_folder(folder, "model")
        # build without materialising random weights: every parameter is overwritten below
        model = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
        model.load_state_dict(state_dict, what=f"{cls.__name__} from {folder}")
        return model

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray], *, what: str | None = None):
        """Copy a transformers (PyTorch-layout) state dict into this model, in place."""
        return _load_tower(self, state_dict, self._prefix, what=what or type(self).__name__,
                           projection=self._projection)


class CLIPTextModel(_Pretrained, nnx.Module):
    """``CLIPTextModel``: ``model(input_ids (B, L) int) -> CLIPOutput``.

    ``pooler_output`` is the final-LayerNorm state at the EOS token: the highest id when the
    config's ``eos_token_id == 2`` (legacy configs, SD1.5's included), else the first position
    of ``eos_token_id``; as transformers does.
    """

    _which, _prefix = "text", "text_model"

    def __init__(self, config: CLIPTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None,
                 output_hidden_states: bool = False) -> CLIPOutput:
        return self.text_model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               output_hidden_states=output_hidden_states)


class CLIPTextModelWithProjection(CLIPTextModel):
    """``CLIPTextModelWithProjection``: adds ``text_embeds = text_projection(pooler_output)``."""

    _projection = "text_projection"

    def __init__(self, config: CLIPTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, rngs=rngs)
        self.text_projection = _linear(config.hidden_size, config.projection_dim, dtype=dtype,
                                       rngs=rngs, use_bias=False)

    def __call__(self, input_ids, attention_mask=None, position_ids=None,
                 output_hidden_states: bool = False) -> CLIPOutput:
        out = super().__call__(input_ids, attention_mask, position_ids, output_hidden_states)
        return out.replace(text_embeds=self.text_projection(out.pooler_output))


class CLIPVisionModel(_Pretrained, nnx.Module):
    """``CLIPVisionModel``: ``model(pixel_values (B, H, W, C)) -> CLIPOutput``.

    ``last_hidden_state`` is ``(B, 1 + (H/p)^2, D)`` (no final norm on the sequence, as in
    transformers: (B, 50, 768) for ViT-B/32 at 224); ``pooler_output`` is
    ``post_layernorm`` of the class token.
    """

    _which, _prefix = "vision", "vision_model"

    def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = CLIPVisionTransformer(config, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values, output_hidden_states: bool = False) -> CLIPOutput:
        return self.vision_model(pixel_values, output_hidden_states=output_hidden_states)


class CLIPVisionModelWithProjection(CLIPVisionModel):
    """``CLIPVisionModelWithProjection``: adds ``image_embeds = visual_projection(pooler_output)``."""

    _projection = "visual_projection"

    def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, rngs=rngs)
        self.visual_projection = _linear(config.hidden_size, config.projection_dim, dtype=dtype,
                                         rngs=rngs, use_bias=False)

    def __call__(self, pixel_values, output_hidden_states: bool = False) -> CLIPOutput:
        out = super().__call__(pixel_values, output_hidden_states)
        return out.replace(image_embeds=self.visual_projection(out.pooler_output))


# ----------------------------------------------------------------------------------------------
# tokenizer


def load_tokenizer(folder: str | os.PathLike, subfolder: str | None = "tokenizer", *,
                   max_length: int | None = None):
    """transformers' ``CLIPTokenizer`` from ``folder/subfolder`` (``vocab.json`` + ``merges.txt``).

    For an SD model folder the default ``subfolder="tokenizer"`` is right; when ``folder``
    itself holds the vocabulary (no such subfolder), it is used directly. ``max_length`` sets
    ``model_max_length`` (SD1.5 / CLIP: 77 = ``max_position_embeddings``); by default the
    tokenizer's own, 77 when it has none. Turn prompts into ids with :func:`tokenize`.
    """
    from transformers import CLIPTokenizer

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {root}")
    path = root / subfolder if subfolder and (root / subfolder).is_dir() else root
    if not (path / "vocab.json").is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no CLIP tokenizer (vocab.json + merges.txt or tokenizer.json) in {path}")
    tok = CLIPTokenizer.from_pretrained(str(path))
    if max_length is not None:
        tok.model_max_length = int(max_length)
    elif not tok.model_max_length or tok.model_max_length > 10**6:  # "unset" is a huge int
        tok.model_max_length = 77
    return tok


def tokenize(tokenizer, prompts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
    """Prompts -> ``(B, max_length)`` int32 ids, padded (pad token) and truncated (keeping the
    EOS token) to ``max_length`` (default: the tokenizer's ``model_max_length``, 77)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    n = int(max_length or tokenizer.model_max_length)
    ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=n,
                    return_tensors="np")["input_ids"]
    return np.asarray(ids, dtype=np.int32)
