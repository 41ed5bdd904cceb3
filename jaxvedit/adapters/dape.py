"""DAPE (paper 000, SPEC §2): adjustable norm-tuning and the vision adapter on the UNet.

Stage 1, **adjustable norm-tuning** (the authors' ``AdjustableNorm``,
``dape/modules/diffusionmodules/util.py``): every targeted GroupNorm / LayerNorm of the UNet
becomes ``gamma * Norm(z) + beta + alpha0 * z`` with the norm's own gamma, beta and a learnable
scalar ``alpha0`` initialised to 0 (:class:`TunedNorm`).

Stage 2, **vision adapter** (the authors' ``DAPEAdapter``, ``dape/modules/attention.py``), in a
transformer block's residual stream after the self-attention residual (:class:`DAPEAdapter`)::

    x' = LN(x) * g + x * gx                      (g init 0.1, gx init 1, per channel)
    p  = Linear(C -> 64)(x');  p = DWConv5x5(p on the token grid) + p
    x  = x + Linear(64 -> C)(Dropout(0.1)(GELU(p)))

Design: like the LoRA, DAPE lives *beside* the UNet (:class:`DAPE`), not inside it; the UNet's
parameter tree and code path stay untouched. :class:`DAPEUNet` (or ``with dape.active(): unet(...)``)
installs two per-call contexts of :mod:`jaxvedit.models.layers` for one UNet call: the norm
context (each targeted norm asks DAPE for its affine part, by module path) and the block context
(each targeted transformer block passes its residual stream through its adapter). The tuned
norms hold *copies* of the base gamma/beta (``DAPENormParam``), so the base weights stay frozen
and untouched; the adapters hold ``DAPEAdapterParam``. Without an active DAPE the UNet is the
plain one; a fresh DAPE (``alpha0 = 0``, gamma/beta copied) with ``identity_init=True`` (last
projection zero) gives a bit-identical output (tested).

Where the authors' public code differs from SPEC §2 it is an option here (docs/dape.md):
``norm_targets="attention"`` (the norms the code's name filter actually trains),
``adapter_targets="code"`` (the code builds adapters only in the decoder level 2 transformers,
SD1.5's ``up_blocks.1``), ``placement="attn1+ff"`` (the code applies the same adapter a second
time after the feed-forward residual). :meth:`DAPEConfig.authors_code` sets all three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.adapters.params import DAPEAdapterParam, DAPENormParam
from jaxvedit.models import layers as _layers

#: norm target presets: fnmatch patterns over the UNet's norm module paths
NORM_PRESETS: dict[str, tuple[str, ...]] = {
    # SPEC §2 / the issue: every GroupNorm and LayerNorm of the UNet
    "all": ("*",),
    # what the authors' code trains: parameters whose (LDM-layout) name contains "norm", i.e. the
    # spatial transformers' GroupNorm and the blocks' LayerNorms; the resnets' GroupNorms
    # (``in_layers.0`` / ``out_layers.0``) and the final one (``out.0``) stay frozen there
    "attention": ("*.attentions.*.norm", "*.transformer_blocks.*.norm[123]"),
}

#: where the adapter acts in a block: after the self-attention residual, and (the authors' code)
#: again after the feed-forward residual, with the same weights
PLACEMENTS: dict[str, tuple[str, ...]] = {"attn1": ("attn1",), "attn1+ff": ("attn1", "ff")}

ADAPTER_PRESETS = ("all", "code")


def _path_key(path: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def _norm_patterns(targets: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        return NORM_PRESETS.get(targets, (targets,))
    return tuple(targets)


def _adapter_patterns(unet: nnx.Module, targets: str | Sequence[str]) -> tuple[str, ...]:
    if not isinstance(targets, str):
        return tuple(targets)
    if targets == "all":  # SPEC §2: every transformer block of the UNet
        return ("*.transformer_blocks.*",)
    if targets == "code":
        # the authors' code: ``is_PEFT=1`` only for the output-block transformers of level 2
        # (openaimodel.py, ``level != 2`` branch): diffusers' up_blocks[n - 3] (SD1.5: up_blocks.1)
        n = len(unet.up_blocks)
        if n < 3:
            raise KeyError(f"adapter_targets='code' needs a UNet with >= 3 levels (the authors' "
                           f"adapter sits at decoder level 2); this one has {n}")
        return (f"up_blocks.{n - 3}.attentions.*.transformer_blocks.*",)
    return (targets,)


def _match(available: dict, patterns: tuple[str, ...], what: str, presets) -> dict:
    chosen = {}
    for pattern in patterns:
        hits = [p for p in available if p == pattern or fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            examples = list(available)[:4]
            raise KeyError(f"DAPE {what} {pattern!r} matches no module of the UNet (presets: "
                           f"{presets}; or module paths / fnmatch patterns such as {examples})")
        chosen.update((p, available[p]) for p in hits)
    return dict(sorted(chosen.items(), key=lambda kv: _path_key(kv[0])))


def unet_norms(unet: nnx.Module) -> dict[str, nnx.Module]:
    """Every GroupNorm / LayerNorm of ``unet`` by diffusers module path, in UNet order."""
    out = {}
    for _, m in nnx.iter_graph(unet):
        if isinstance(m, (_layers.GroupNorm, _layers.LayerNorm)) and m.path:
            out[m.path] = m
    return dict(sorted(out.items(), key=lambda kv: _path_key(kv[0])))


def unet_blocks(unet: nnx.Module) -> dict[str, int]:
    """Every transformer block of ``unet``: ``{module path: channels}``, in UNet order."""
    out = {}
    for _, m in nnx.iter_graph(unet):
        if isinstance(m, _layers.BasicTransformerBlock) and m.path:
            out[m.path] = int(m.norm1.scale.value.shape[0])
    return dict(sorted(out.items(), key=lambda kv: _path_key(kv[0])))


# ----------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class DAPEConfig:
    """The DAPE modules.

    ``norm_tuning``: stage 1's tuned norms are part of this DAPE. ``vision_adapter``: the stage 2
    adapters are (a stage-1 result has ``vision_adapter=False``; :meth:`DAPE.add_vision_adapter`
    adds them). ``norm_targets``: ``"all"`` / ``"attention"`` or module paths / fnmatch patterns
    of norms; ``adapter_targets``: ``"all"`` / ``"code"`` or transformer-block paths / patterns.
    ``identity_init``: the adapter's last Linear starts at zero (the block starts as the
    identity; the authors' code uses torch's default init, which does not).
    """

    norm_tuning: bool = True
    vision_adapter: bool = True
    norm_targets: str | tuple[str, ...] = "all"
    adapter_targets: str | tuple[str, ...] = "all"
    placement: str = "attn1"
    inner_dim: int = 64
    kernel_size: int = 5
    dropout: float = 0.1
    gamma_init: float = 0.1
    identity_init: bool = False

    def __post_init__(self):
        for name in ("norm_targets", "adapter_targets"):
            if not isinstance(getattr(self, name), str):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not (self.norm_tuning or self.vision_adapter):
            raise ValueError("DAPEConfig: neither norm_tuning nor vision_adapter: nothing to adapt")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown DAPE placement {self.placement!r}; expected one of "
                             f"{sorted(PLACEMENTS)}")
        if self.inner_dim < 1:
            raise ValueError(f"DAPE inner_dim must be >= 1, got {self.inner_dim}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"DAPE kernel_size must be odd and >= 1, got {self.kernel_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DAPE dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def authors_code(cls, **kwargs) -> "DAPEConfig":
        """The placement of the authors' public code: norms of the attention path only, adapters
        in the decoder level-2 transformers, applied after attn1 and again after the FF."""
        return cls(**{"norm_targets": "attention", "adapter_targets": "code",
                      "placement": "attn1+ff", **kwargs})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("norm_targets", "adapter_targets"):
            if not isinstance(d[name], str):
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DAPEConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DAPE config key(s) {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# stage 1: the tuned norm


class TunedNorm(nnx.Module):
    """The tuned affine part of one GroupNorm / LayerNorm: ``scale`` (gamma) and ``bias`` (beta)
    start as copies of the base norm's, ``alpha0`` (shape ``(1,)``, as the code's
    ``torch.zeros(1)``) at 0."""

    def __init__(self, path: str, scale: jax.Array, bias: jax.Array, param_dtype=jnp.float32):
        self.path = path
        # real copies: the training step donates adapter buffers, the base ones must survive
        self.scale = DAPENormParam(jnp.array(scale, dtype=param_dtype, copy=True))
        self.bias = DAPENormParam(jnp.array(bias, dtype=param_dtype, copy=True))
        self.alpha0 = DAPENormParam(jnp.zeros((1,), param_dtype))

    def __call__(self, z: jax.Array, normalized: jax.Array) -> jax.Array:
        """``z``: the norm's input; ``normalized``: float32 ``(z - mean) / std``. Float32 out."""
        f32 = jnp.float32
        # paper eq. 3 (as the code's AdjustableNorm docstring states it):
        # z_hat = gamma * Norm(z) + beta + alpha0 * z
        return (normalized * self.scale.value.astype(f32) + self.bias.value.astype(f32)
                + self.alpha0.value.astype(f32) * z.astype(f32))


# ----------------------------------------------------------------------------------------------
# stage 2: the vision adapter


def _torch_uniform(key, shape, fan_in: int, dtype):
    """torch's default Linear / Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weight and bias)."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class _Linear(nnx.Module):
    def __init__(self, din: int, dout: int, rngs: nnx.Rngs, zero: bool, param_dtype):
        if zero:
            k, b = jnp.zeros((din, dout), param_dtype), jnp.zeros((dout,), param_dtype)
        else:
            k = _torch_uniform(rngs.params(), (din, dout), din, param_dtype)
            b = _torch_uniform(rngs.params(), (dout,), din, param_dtype)
        self.kernel = DAPEAdapterParam(k)
        self.bias = DAPEAdapterParam(b)

    def __call__(self, x):
        return x @ self.kernel.value.astype(x.dtype) + self.bias.value.astype(x.dtype)


class _DepthwiseConv(nnx.Module):
    """``nn.Conv2d(c, c, k, padding=k // 2, groups=c)`` on ``(B, H, W, c)``; kernel ``(k, k, 1, c)``."""

    def __init__(self, channels: int, k: int, rngs: nnx.Rngs, param_dtype):
        self.kernel = DAPEAdapterParam(_torch_uniform(rngs.params(), (k, k, 1, channels), k * k,
                                                      param_dtype))
        self.bias = DAPEAdapterParam(_torch_uniform(rngs.params(), (channels,), k * k, param_dtype))

    def __call__(self, x):
        k = self.kernel.value.shape[0]
        y = jax.lax.conv_general_dilated(
            x, self.kernel.value.astype(x.dtype), window_strides=(1, 1),
            padding=((k // 2, k // 2), (k // 2, k // 2)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1])
        return y + self.bias.value.astype(x.dtype)


class _AdapterLayerNorm(nnx.Module):
    """The adapter's own ``nn.LayerNorm(C)`` (eps 1e-5, statistics in float32)."""

    def __init__(self, dim: int, param_dtype):
        self.scale = DAPEAdapterParam(jnp.ones((dim,), param_dtype))
        self.bias = DAPEAdapterParam(jnp.zeros((dim,), param_dtype))

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        return ((xf - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale.value.astype(jnp.float32)
                + self.bias.value.astype(jnp.float32))


class DAPEAdapter(nnx.Module):
    """The vision adapter of one transformer block (the authors' ``DAPEAdapter``; attribute names
    as theirs: ``norm``, ``gamma``, ``gammax``, ``project1``, ``adapter_conv``, ``project2``)."""

    def __init__(self, dim: int, inner_dim: int = 64, kernel_size: int = 5, dropout: float = 0.1,
                 gamma_init: float = 0.1, identity_init: bool = False, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.dim, self.inner_dim, self.dropout = dim, inner_dim, float(dropout)
        self.norm = _AdapterLayerNorm(dim, param_dtype)
        self.gamma = DAPEAdapterParam(jnp.full((dim,), gamma_init, param_dtype))
        self.gammax = DAPEAdapterParam(jnp.ones((dim,), param_dtype))
        self.project1 = _Linear(dim, inner_dim, rngs, False, param_dtype)
        self.adapter_conv = _DepthwiseConv(inner_dim, kernel_size, rngs, param_dtype)
        self.project2 = _Linear(inner_dim, dim, rngs, identity_init, param_dtype)

    def __call__(self, x: jax.Array, grid: tuple[int, int], dropout_key: jax.Array | None = None):
        """``x (B, N, C)`` tokens laid out on ``grid = (H, W)``; ``dropout_key``: train mode
        (dropout on), None: eval mode."""
        chex.assert_rank(x, 3)
        b, n, c = x.shape
        h, w = grid
        if n != h * w or c != self.dim:
            raise ValueError(f"DAPE adapter: tokens {x.shape} do not fit the grid {grid} with "
                             f"{self.dim} channels")
        dt = x.dtype
        identity = x
        mixed = self.norm(x) * self.gamma.value.astype(jnp.float32) \
            + x.astype(jnp.float32) * self.gammax.value.astype(jnp.float32)  # LN(x) * g + x * gx
        p = self.project1(mixed.astype(dt))  # Linear(C -> 64)
        g = p.reshape(b, h, w, self.inner_dim)
        g = self.adapter_conv(g) + g  # depthwise 5x5 conv on the token grid plus its input
        a = jax.nn.gelu(g.reshape(b, n, self.inner_dim), approximate=False)
        if dropout_key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout, a.shape)
            a = jnp.where(keep, a / (1.0 - self.dropout), jnp.zeros((), a.dtype))
        return identity + self.project2(a)  # Linear(64 -> C), residual add


# ----------------------------------------------------------------------------------------------
# the DAPE of one UNet


class DAPE(nnx.Module):
    """DAPE for one UNet: ``norms[i]`` tunes the norm at ``norm_paths[i]``, ``adapters[i]`` sits in
    the transformer block at ``block_paths[i]`` (``adapters`` is empty until the vision adapter
    is added: stage 1)."""

    def __init__(self, unet: nnx.Module, config: DAPEConfig | None = None, *,
                 rngs: nnx.Rngs | None = None, param_dtype=jnp.float32):
        config = config or DAPEConfig()
        norms = (_match(unet_norms(unet), _norm_patterns(config.norm_targets), "norm target",
                        sorted(NORM_PRESETS)) if config.norm_tuning else {})
        try:
            blocks = _match(unet_blocks(unet), _adapter_patterns(unet, config.adapter_targets),
                            "adapter target", list(ADAPTER_PRESETS))
            self.block_error = None
        except KeyError as err:
            if config.vision_adapter:
                raise
            blocks, self.block_error = {}, str(err.args[0])  # raised if the adapter is added
        self.param_dtype = param_dtype
        self.norm_paths = tuple(norms)
        self.norms = nnx.List([TunedNorm(p, m.scale.value, m.bias.value, param_dtype)
                               for p, m in norms.items()])
        self.block_dims = tuple(blocks.items())  # where the adapters go (stage 2)
        self.block_paths: tuple[str, ...] = ()
        self.adapters = nnx.List([])  # filled by add_vision_adapter (stage 2)
        self.config = dataclasses.replace(config, vision_adapter=False)
        if config.vision_adapter:
            self.add_vision_adapter(rngs if rngs is not None else nnx.Rngs(0))

    def add_vision_adapter(self, rngs: nnx.Rngs) -> "DAPE":
        """Build the stage-2 adapters (fresh init) in every targeted transformer block."""
        if self.config.vision_adapter:
            raise ValueError("this DAPE already has its vision adapter")
        if self.block_error:
            raise KeyError(self.block_error)
        cfg = self.config
        self.block_paths = tuple(p for p, _ in self.block_dims)
        self.adapters = nnx.List([
            DAPEAdapter(dim, cfg.inner_dim, cfg.kernel_size, cfg.dropout, cfg.gamma_init,
                        cfg.identity_init, rngs=rngs, param_dtype=self.param_dtype)
            for _, dim in self.block_dims])
        self.config = dataclasses.replace(cfg, vision_adapter=True)
        return self

    def adapter(self, path: str) -> DAPEAdapter:
        try:
            return self.adapters[self.block_paths.index(path)]
        except ValueError:
            raise KeyError(f"DAPE has no vision adapter for {path!r}") from None

    def norm(self, path: str) -> TunedNorm:
        try:
            return self.norms[self.norm_paths.index(path)]
        except ValueError:
            raise KeyError(f"DAPE does not tune the norm {path!r}") from None

    @contextlib.contextmanager
    def active(self, dropout_key: jax.Array | None = None):
        """Context manager: a UNet call inside it runs with the tuned norms and the adapters.
        ``dropout_key``: the adapters' dropout is on (training), drawn from this key; None: off."""
        tokens = []
        if self.norms:
            index = {p: i for i, p in enumerate(self.norm_paths)}

            def norm_fn(path, x, normalized):
                i = index.get(path)
                return None if i is None else self.norms[i](x, normalized)

            tokens.append((_layers._NORM_ADAPTER, _layers._NORM_ADAPTER.set(norm_fn)))
        if self.config.vision_adapter:
            bindex = {p: i for i, p in enumerate(self.block_paths)}
            sites = PLACEMENTS[self.config.placement]

            def block_fn(path, site, x, grid):
                i = bindex.get(path)
                if i is None or site not in sites:
                    return x
                if grid is None:
                    raise ValueError(f"DAPE adapter at {path}: the block was called without its "
                                     "token grid (H, W)")
                key = None
                if dropout_key is not None:  # one dropout draw per block and site, as the code
                    key = jax.random.fold_in(jax.random.fold_in(dropout_key, i), sites.index(site))
                return self.adapters[i](x, grid, key)

            tokens.append((_layers._BLOCK_ADAPTER, _layers._BLOCK_ADAPTER.set(block_fn)))
        try:
            yield self
        finally:
            for var, token in reversed(tokens):
                var.reset(token)


class DAPEUNet(nnx.Module):
    """A UNet with DAPE, callable as a noise predictor:
    ``eps = model(sample, timesteps, encoder_hidden_states, dropout_key=None, hooks=None, ...)``.
    The base weights are ``model.unet`` (plain ``nnx.Param``), DAPE's ``model.dape``."""

    def __init__(self, unet: nnx.Module, dape: DAPE):
        self.unet = unet
        self.dape = dape

    def __call__(self, sample, timesteps, encoder_hidden_states, *, dropout_key=None, **kwargs):
        with self.dape.active(dropout_key):
            return self.unet(sample, timesteps, encoder_hidden_states, **kwargs)


def apply_dape(unet: nnx.Module, config: DAPEConfig | None = None, rngs: nnx.Rngs | None = None,
               **kwargs) -> DAPEUNet:
    """Wrap ``unet`` with a fresh DAPE: returns a :class:`DAPEUNet` (``.unet``, ``.dape``)."""
    return DAPEUNet(unet, DAPE(unet, config, rngs=rngs, **kwargs))


# ----------------------------------------------------------------------------------------------
# tensors by name (adapter files)

_ADAPTER_LEAVES = ("norm.scale", "norm.bias", "gamma", "gammax", "project1.kernel", "project1.bias",
                   "adapter_conv.kernel", "adapter_conv.bias", "project2.kernel", "project2.bias")


def _leaf(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def dape_variables(dape: DAPE) -> dict[str, nnx.Variable]:
    """``{name: variable}``: ``norm.{norm path}.scale|bias|alpha0`` and
    ``adapter.{block path}.{norm.scale, gamma, project1.kernel, ...}`` (flax layout)."""
    out = {}
    for n in dape.norms:
        for leaf in ("scale", "bias", "alpha0"):
            out[f"norm.{n.path}.{leaf}"] = getattr(n, leaf)
    for path, a in zip(dape.block_paths, dape.adapters):
        for leaf in _ADAPTER_LEAVES:
            out[f"adapter.{path}.{leaf}"] = _leaf(a, leaf)
    return out


def dape_state(dape: DAPE) -> dict[str, jax.Array]:
    return {k: v.value for k, v in dape_variables(dape).items()}


def count_params(dape: DAPE) -> dict[str, int]:
    """Parameter counts: ``{"norms": ..., "adapters": ...}``."""
    norms = sum(int(v.value.size) for k, v in dape_variables(dape).items() if k.startswith("norm."))
    adapters = sum(int(v.value.size) for k, v in dape_variables(dape).items() if k.startswith("adapter."))
    return {"norms": norms, "adapters": adapters}


__all__ = ["NORM_PRESETS", "ADAPTER_PRESETS", "PLACEMENTS", "DAPEConfig", "TunedNorm", "DAPEAdapter",
           "DAPE", "DAPEUNet", "apply_dape", "unet_norms", "unet_blocks", "dape_variables",
           "dape_state", "count_params"]
