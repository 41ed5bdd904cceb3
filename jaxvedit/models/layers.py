"""Building blocks shared by the UNet, VAE and ControlNet ports (channels-last, NNX).

Each class mirrors the diffusers module of the same name; attribute names match diffusers'
so PyTorch state dicts load by path (see :mod:`jaxvedit.models.weights`). Every module that
diffusers users hook (attention, transformer blocks, resnets) carries its diffusers module path
in ``self.path`` and passes its output through :func:`jaxvedit.models.hooks.emit`.

Numerics follow PyTorch: GroupNorm/LayerNorm statistics are computed in float32 whatever the
compute dtype; GEGLU uses the exact (erf) GELU; attention goes through
``jax.nn.dot_product_attention`` (XLA on CPU, cuDNN's fused kernel on GPU when asked). Where no
fused kernel runs, :func:`attention` processes the queries in chunks once the score matrix would
exceed a budget (:func:`attention_chunking`), as diffusers' attention slicing, so memory stays
bounded at any sequence length.

Two per-call contexts let editors change a forward pass without touching the model:
``_PROJECTION_ADAPTER`` (the attention projections; LoRA, cross-frame attention) and
:func:`attention_processor` (a whole attention call, as diffusers' attention processors;
TokenFlow's extended attention and feature propagation, ``jaxvedit/editing/tokenflow.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.models import groupnorm_kernels as _groupnorm_kernels
from jaxvedit.models import attention_kernels
from jaxvedit.models.hooks import emit
from jaxvedit.models.trace_choice import TraceChoice


@dataclass(frozen=True)
class Precision:
    """Compute dtype and attention kernel choice, shared by all modules of a model."""

    dtype: jnp.dtype = jnp.float32  # compute dtype (float32 or bfloat16)
    param_dtype: jnp.dtype = jnp.float32  # parameters stay float32 by default
    attention_implementation: str | None = None  # None (default), "xla", "cudnn", "pallas-triton", "mosaic"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _child(prefix: str, name: str) -> str:
    """A child's module path, or "" when the parent has none (pathless modules stay pathless)."""
    return f"{prefix}.{name}" if prefix else ""


def linear(din: int, dout: int, p: Precision, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=p.dtype, param_dtype=p.param_dtype, rngs=rngs)


def conv(din: int, dout: int, k: int, p: Precision, rngs: nnx.Rngs, stride: int = 1,
         padding: int | None = None) -> nnx.Conv:
    pad = k // 2 if padding is None else padding
    return nnx.Conv(din, dout, kernel_size=(k, k), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), dtype=p.dtype, param_dtype=p.param_dtype,
                    rngs=rngs)


# Per-call norm context (DAPE norm-tuning, ``jaxvedit.adapters.dape``, installs it): a function
# ``(path, x, normalized) -> output | None`` that replaces the affine part of the norm at module
# path ``path`` (``normalized`` is the float32 ``(x - mean) / std`` before gamma and beta; None:
# this norm is not tuned). Absent (the default), norms are the plain ones, bit-identical.
_NORM_ADAPTER: contextvars.ContextVar = contextvars.ContextVar("jaxvedit_norm_adapter", default=None)


def _tuned_norm(path: str, x, normalized):
    tuned = _NORM_ADAPTER.get()
    return None if tuned is None or not path else tuned(path, x, normalized)


NORM_STATISTICS = ("two-pass", "one-pass")
_NORM_STATS = TraceChoice("norm statistics", "JAXVEDIT_NORM_STATS", NORM_STATISTICS, "two-pass")


def norm_statistics(mode: str | None):
    """How GroupNorm / LayerNorm compute the variance in the forward passes *traced* inside this
    context (read while tracing, like :func:`attention_chunking`), both in float32:
    ``"two-pass"`` (the default) ``mean((x - mean(x))**2)``, as stable as PyTorch's Welford
    kernels; ``"one-pass"`` ``mean(x**2) - mean(x)**2`` (clamped at 0), which lets XLA compute
    both statistics in one read of ``x`` (a speed lever, issue 15: measured by
    ``bench/levers.py``, bench/RESULTS.md §10), at the cost of cancellation when
    ``|mean| >> std``. ``None``: the process default, ``JAXVEDIT_NORM_STATS`` or ``"two-pass"``."""
    return _NORM_STATS.use(mode)


_norm_stats_mode = _NORM_STATS.get


def _mean_var(xf, axis):
    """Float32 mean and (biased) variance of ``xf`` over ``axis`` (see :func:`norm_statistics`)."""
    return _groupnorm_kernels.mean_var(xf, axis, _norm_stats_mode() == "one-pass")


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm`` over the last (channel) axis; statistics in float32."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, p: Precision, path: str = ""):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels not divisible into {num_groups} groups")
        self.num_groups, self.eps, self.dtype = num_groups, eps, p.dtype
        self.path = path
        self.scale = nnx.Param(jnp.ones((num_channels,), p.param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_channels,), p.param_dtype))

    def __call__(self, x: jax.Array, silu: bool = False) -> jax.Array:
        """``silu=True``: ``jax.nn.silu`` of the output (fused into the norm under
        ``JAXVEDIT_GROUPNORM=custom-vjp``, :mod:`jaxvedit.models.groupnorm_kernels`; a norm
        that a DAPE context may tune keeps this plain path)."""
        if (_groupnorm_kernels.current_implementation() != "xla"
                and (_NORM_ADAPTER.get() is None or not self.path)):
            return _groupnorm_kernels.group_norm(
                x, self.scale.value, self.bias.value, self.num_groups, self.eps, silu,
                _norm_stats_mode() == "one-pass", jnp.dtype(self.dtype))
        xf = _groupnorm_kernels.grouped(x.astype(jnp.float32), self.num_groups)
        mean, var = _mean_var(xf, (1, 3))
        xf = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        out = _tuned_norm(self.path, x, xf)
        if out is None:
            out = xf * self.scale.value.astype(jnp.float32) + self.bias.value.astype(jnp.float32)
        out = out.astype(self.dtype)
        return jax.nn.silu(out) if silu else out


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm`` over the last axis; statistics in float32."""

    def __init__(self, dim: int, eps: float, p: Precision, path: str = ""):
        self.eps, self.dtype = eps, p.dtype
        self.path = path
        self.scale = nnx.Param(jnp.ones((dim,), p.param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), p.param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean, var = _mean_var(xf, -1)
        xf = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        out = _tuned_norm(self.path, x, xf)
        if out is None:
            out = xf * self.scale.value.astype(jnp.float32) + self.bias.value.astype(jnp.float32)
        return out.astype(self.dtype)


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: int = 10000) -> jax.Array:
    """Sinusoidal timestep embedding, as diffusers' ``get_timestep_embedding`` (float32)."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    emb = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    def __init__(self, in_dim: int, dim: int, p: Precision, rngs: nnx.Rngs):
        self.linear_1 = linear(in_dim, dim, p, rngs)
        self.linear_2 = linear(dim, dim, p, rngs)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


def _nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(mode="nearest")`` to ``size``: source index floor(i * in / out)."""
    h, w = x.shape[1:3]
    if size == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = jnp.floor(jnp.arange(size[0]) * (h / size[0])).astype(jnp.int32)
    cols = jnp.floor(jnp.arange(size[1]) * (w / size[1])).astype(jnp.int32)
    return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
    def __init__(self, channels: int, p: Precision, rngs: nnx.Rngs, path: str = ""):
        self.conv = conv(channels, channels, 3, p, rngs)
        self.path = path

    def __call__(self, x, output_size: tuple[int, int] | None = None):
        size = output_size or (2 * x.shape[1], 2 * x.shape[2])
        return self.conv(_nearest_resize(x, tuple(size)))


class Downsample2D(nnx.Module):
    """Strided 3x3 conv; ``padding=0`` pads (0, 1) on each spatial axis first, as diffusers."""

    def __init__(self, channels: int, out_channels: int, padding: int, p: Precision, rngs: nnx.Rngs):
        self.padding = padding
        self.conv = conv(channels, out_channels, 3, p, rngs, stride=2, padding=padding)

    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


class ResnetBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int,
                 eps: float, output_scale_factor: float, p: Precision, rngs: nnx.Rngs, path: str = ""):
        self.path = path
        self.output_scale_factor = output_scale_factor
        self.norm1 = GroupNorm(groups, in_channels, eps, p, path=_child(path, "norm1"))
        self.conv1 = conv(in_channels, out_channels, 3, p, rngs)
        self.time_emb_proj = linear(temb_channels, out_channels, p, rngs) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps, p, path=_child(path, "norm2"))
        self.conv2 = conv(out_channels, out_channels, 3, p, rngs)
        self.conv_shortcut = (conv(in_channels, out_channels, 1, p, rngs)
                              if in_channels != out_channels else None)

    def __call__(self, x, temb=None):
        h = self.conv1(self.norm1(x, silu=True))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        # the residual branch before the skip is added: diffusers' ``<path>.conv2`` output (the
        # feature TokenFlow / plug-and-play inject)
        h = emit(_join(self.path, "conv2") if self.path else "", self.conv2(self.norm2(h, silu=True)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = (x + h) / self.output_scale_factor if self.output_scale_factor != 1 else x + h
        return emit(self.path, out)


def choose_attention_implementation(requested: str | None, dtype, head_dim: int) -> str | None:
    """The kernel for one attention call.

    ``None`` (default): cuDNN's fused flash attention on a GPU for bf16/fp16 inputs whose head
    dimension it supports (a multiple of 8, at most 128), otherwise XLA's (which materialises the
    score matrix: fine on CPU and for short sequences). ``"cudnn"`` asks for cuDNN but falls back
    to XLA for unsupported head dimensions (SD1.5's 1280-channel blocks have 160), ``"xla"``
    forces XLA. ``"pallas-triton"`` / ``"mosaic"`` (a speed lever): a Pallas kernel of
    :mod:`jaxvedit.models.attention_kernels`, returned as asked; :func:`attention` falls back to
    the default choice where the kernel does not take the call. The environment variable
    ``JAXVEDIT_ATTENTION`` (``xla`` / ``cudnn`` / ``pallas-triton`` / ``mosaic``) sets the
    default for calls that ask for none (for small models with short sequences, such as the
    world models, a fused kernel's fixed cost per call can dominate).
    """
    if requested is None:  # a process-wide default, e.g. JAXVEDIT_ATTENTION=xla for small models
        requested = os.environ.get("JAXVEDIT_ATTENTION", "") or None
        if requested not in (None, "xla", "cudnn", *attention_kernels.KERNELS):
            raise ValueError(f"JAXVEDIT_ATTENTION={requested!r}: choose from "
                             f"{('xla', 'cudnn', *attention_kernels.KERNELS)} or leave it unset")
    if requested == "xla":
        return "xla"
    if requested in attention_kernels.KERNELS:
        return requested
    if requested == "cudnn":
        return "cudnn" if _cudnn_takes(dtype, head_dim) else "xla"
    return _default_attention(dtype, head_dim)


def _cudnn_takes(dtype, head_dim: int) -> bool:
    return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and head_dim % 8 == 0 and head_dim <= 128 and jax.default_backend() == "gpu")


def _default_attention(dtype, head_dim: int) -> str | None:
    """The choice when none is asked for: cuDNN's fused kernel where it applies, else XLA's."""
    return "cudnn" if _cudnn_takes(dtype, head_dim) else None


#: Most score-matrix elements (batch x heads x queries x keys) one XLA attention call may
#: materialise before its queries are chunked (2**26: 256 MiB in float32). ``None``: never chunk.
_ATTENTION_CHUNK: contextvars.ContextVar = contextvars.ContextVar(
    "jaxvedit_attention_chunk", default=2 ** 26)


@contextlib.contextmanager
def attention_chunking(max_score_elements: int | None):
    """Set the score budget of :func:`attention` for the forward passes *traced* inside this
    context (it is read while tracing: a compiled function keeps the budget it was traced
    with). ``None`` turns chunking off."""
    if max_score_elements is not None and int(max_score_elements) < 1:
        raise ValueError(f"max_score_elements must be >= 1 or None, got {max_score_elements}")
    token = _ATTENTION_CHUNK.set(None if max_score_elements is None else int(max_score_elements))
    try:
        yield
    finally:
        _ATTENTION_CHUNK.reset(token)


def _head_pad(d: int) -> int:
    """Zero dimensions to append to each head so that its width is a multiple of
    ``JAXVEDIT_ATTENTION_HEAD_PAD`` (unset or 0: none; a speed lever of ``bench/levers.py``:
    SD1.5's 64x64-latent attentions have head dim 40, which fused kernels may tile poorly).
    Padded heads stay within fused kernels' 128 limit or are left as they are."""
    raw = os.environ.get("JAXVEDIT_ATTENTION_HEAD_PAD", "")
    try:
        multiple = int(raw or 0)
    except ValueError:
        raise ValueError(f"JAXVEDIT_ATTENTION_HEAD_PAD={raw!r}: give a whole number of dimensions") from None
    if multiple < 0:
        raise ValueError(f"JAXVEDIT_ATTENTION_HEAD_PAD={raw!r} must be >= 0")
    if not multiple or d % multiple == 0:
        return 0
    padded = -(-d // multiple) * multiple
    return padded - d if padded <= 128 else 0


def attention(q, k, v, heads: int, implementation: str | None = None, *,
              kv_length: int | jax.Array | None = None):
    """Multi-head scaled dot-product attention on ``(B, L, heads*D)`` projections.

    ``kv_length``: only the first ``kv_length`` keys / values count (the rest are padding).
    Without a fused kernel, XLA materialises the ``(B, heads, Lq, Lk)`` scores; above the budget
    of :func:`attention_chunking` the queries go through in chunks (one ``lax.map``, each chunk
    rematerialised in a backward pass), which gives the same output to float rounding: every
    query's softmax still runs over all its keys.
    """
    b, lq, inner = q.shape
    lk = k.shape[1]
    d = inner // heads
    q = q.reshape(b, lq, heads, d)
    k = k.reshape(b, lk, heads, d)
    v = v.reshape(b, v.shape[1], heads, d)
    impl = choose_attention_implementation(implementation, q.dtype, d)
    if impl in attention_kernels.KERNELS:  # a Pallas kernel where it takes the call, else the default
        out = attention_kernels.fused_attention(impl, q, k, v, kv_length=kv_length)
        if out is not None:
            return out.reshape(b, lq, inner)
        impl = _default_attention(q.dtype, d)
    kwargs = {}
    if kv_length is not None:
        kwargs["key_value_seq_lengths"] = jnp.broadcast_to(jnp.asarray(kv_length, jnp.int32), (b,))

    pad = _head_pad(d)
    if pad:  # zero head dimensions: the same scores (scale stays d**-0.5) and outputs, sliced off
        widths = ((0, 0), (0, 0), (0, 0), (0, pad))
        q, k, v = (jnp.pad(a, widths) for a in (q, k, v))

    def run(qc):
        o = jax.nn.dot_product_attention(qc, k, v, scale=d ** -0.5, implementation=impl, **kwargs)
        return o[..., :d] if pad else o

    budget = _ATTENTION_CHUNK.get()
    if impl == "cudnn" or budget is None or b * heads * lq * lk <= budget:
        out = run(q)
    else:
        chunk = max(1, budget // (b * heads * lk))
        n = -(-lq // chunk)
        qp = jnp.pad(q, ((0, 0), (0, n * chunk - lq), (0, 0), (0, 0)))
        qs = qp.reshape(b, n, chunk, heads, q.shape[-1]).swapaxes(0, 1)  # (n, B, chunk, heads, D)
        out = jax.lax.map(jax.checkpoint(run), qs).swapaxes(0, 1).reshape(b, n * chunk, heads, d)
        out = out[:, :lq]
    return out.reshape(b, lq, inner)


# Per-call adapter context for the attention projections and the other linears of the
# transformer blocks (``jaxvedit.adapters`` installs it): a function ``(path, x, base_output) ->
# output`` where ``path`` is the layer's diffusers module path (``...attn1.to_q``,
# ``...attn1.to_out.0``, ``...ff.net.2``, ``...proj_in``; the CLIP encoders' ``...q_proj``).
# Absent (the default), the layers are plain linears, bit-identical to a model without adapters.
_PROJECTION_ADAPTER: contextvars.ContextVar = contextvars.ContextVar(
    "jaxvedit_projection_adapter", default=None)


def _project(layer, x, path: str):
    y = layer(x)
    adapter = _PROJECTION_ADAPTER.get()
    return y if adapter is None else adapter(path, x, y)


# Per-call attention processor (diffusers' ``attn.processor``): a function
# ``(attention_module, x, context) -> output or None``. It gets every ``Attention`` call of the
# forward pass; returning ``None`` leaves that call to the default computation.
_ATTENTION_PROCESSOR: contextvars.ContextVar = contextvars.ContextVar(
    "jaxvedit_attention_processor", default=None)


@contextlib.contextmanager
def attention_processor(fn):
    """During forward passes traced inside this context, every :class:`Attention` call first
    asks ``fn(module, x, context)``; a non-``None`` result replaces the call's output (before
    the module's feature hook). Processors use ``module.qkv`` / ``module.out`` (which apply an
    active projection adapter such as a LoRA) and :func:`attention`."""
    token = _ATTENTION_PROCESSOR.set(fn)
    try:
        yield
    finally:
        _ATTENTION_PROCESSOR.reset(token)


class Attention(nnx.Module):
    """diffusers ``Attention`` with ``AttnProcessor2_0``: self- or cross-attention.

    ``group_norm``/``residual_connection`` cover the VAE mid-block attention, which takes and
    returns an image ``(B, H, W, C)``; otherwise input and output are token sequences.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, p: Precision, rngs: nnx.Rngs, *,
                 cross_attention_dim: int | None = None, bias: bool = False, out_bias: bool = True,
                 norm_num_groups: int | None = None, eps: float = 1e-5,
                 residual_connection: bool = False, rescale_output_factor: float = 1.0,
                 path: str = ""):
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        self.heads, self.path = heads, path
        self.attention_implementation = p.attention_implementation
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = (GroupNorm(norm_num_groups, query_dim, eps, p, path=_child(path, "group_norm"))
                           if norm_num_groups else None)
        self.to_q = linear(query_dim, inner, p, rngs, use_bias=bias)
        self.to_k = linear(kv_dim, inner, p, rngs, use_bias=bias)
        self.to_v = linear(kv_dim, inner, p, rngs, use_bias=bias)
        self.to_out = nnx.List([linear(inner, query_dim, p, rngs, use_bias=out_bias)])

    def qkv(self, x, context=None):
        """The query, key and value projections (with any active projection adapter)."""
        context = x if context is None else context
        return (_project(self.to_q, x, _join(self.path, "to_q")),
                _project(self.to_k, context, _join(self.path, "to_k")),
                _project(self.to_v, context, _join(self.path, "to_v")))

    def out(self, h):
        """The output projection ``to_out.0`` (with any active projection adapter)."""
        return _project(self.to_out[0], h, _join(self.path, "to_out.0"))

    def __call__(self, x, context=None):
        processor = _ATTENTION_PROCESSOR.get()
        if processor is not None:
            h = processor(self, x, context)
            if h is not None:
                return emit(self.path, h)
        residual = x
        image_shape = None
        if x.ndim == 4:
            image_shape = x.shape
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.group_norm is not None:
            x = self.group_norm(x)
        h = attention(*self.qkv(x, context), self.heads, self.attention_implementation)
        h = self.out(h)
        if image_shape is not None:
            h = h.reshape(image_shape)
        if self.residual_connection:
            h = h + residual
        if self.rescale_output_factor != 1.0:
            h = h / self.rescale_output_factor
        return emit(self.path, h)


class GEGLU(nnx.Module):
    def __init__(self, dim_in: int, dim_out: int, p: Precision, rngs: nnx.Rngs, path: str = ""):
        self.path = path
        self.proj = linear(dim_in, dim_out * 2, p, rngs)

    def __call__(self, x):
        hidden, gate = jnp.split(_project(self.proj, x, _join(self.path, "proj")), 2, axis=-1)
        return hidden * jax.nn.gelu(gate, approximate=False)  # exact GELU, as torch's default


class Identity(nnx.Module):
    """Placeholder keeping diffusers' list indices (their Dropout layers hold no weights)."""

    def __call__(self, x):
        return x


class FeedForward(nnx.Module):
    def __init__(self, dim: int, p: Precision, rngs: nnx.Rngs, mult: int = 4, path: str = ""):
        inner = dim * mult
        self.path = path
        self.net = nnx.List([GEGLU(dim, inner, p, rngs, path=_join(path, "net.0")), Identity(),
                             linear(inner, dim, p, rngs)])

    def __call__(self, x):
        x = self.net[1](self.net[0](x))
        return _project(self.net[2], x, _join(self.path, "net.2"))


# Per-call transformer-block context (the DAPE vision adapter installs it): a function
# ``(path, site, x, grid) -> x`` applied to the residual stream of the block at module path
# ``path`` after the self-attention residual (``site="attn1"``) and after the feed-forward
# residual (``site="ff"``); ``grid`` is the token layout ``(H, W)``. Absent (the default), the
# block is the plain one, bit-identical.
_BLOCK_ADAPTER: contextvars.ContextVar = contextvars.ContextVar("jaxvedit_block_adapter", default=None)


def _adapt_block(path: str, site: str, x, grid):
    adapter = _BLOCK_ADAPTER.get()
    return x if adapter is None or not path else adapter(path, site, x, grid)


class BasicTransformerBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int,
                 p: Precision, rngs: nnx.Rngs, path: str = "", only_cross_attention: bool = False):
        self.path = path
        self.only_cross_attention = only_cross_attention
        self.norm1 = LayerNorm(dim, 1e-5, p, path=_child(path, "norm1"))
        self.attn1 = Attention(dim, heads, dim_head, p, rngs,
                               cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               path=_join(path, "attn1"))
        self.norm2 = LayerNorm(dim, 1e-5, p, path=_child(path, "norm2"))
        self.attn2 = Attention(dim, heads, dim_head, p, rngs, cross_attention_dim=cross_attention_dim,
                               path=_join(path, "attn2"))
        self.norm3 = LayerNorm(dim, 1e-5, p, path=_child(path, "norm3"))
        self.ff = FeedForward(dim, p, rngs, path=_join(path, "ff"))

    def __call__(self, x, context, grid: tuple[int, int] | None = None):
        """``x (B, N, C)`` tokens; ``grid``: their ``(H, W)`` layout (``N = H * W``), for a block
        adapter that works on the token grid."""
        x = self.attn1(self.norm1(x), context if self.only_cross_attention else None) + x
        x = _adapt_block(self.path, "attn1", x, grid)
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        x = _adapt_block(self.path, "ff", x, grid)
        return emit(self.path, x)


class Transformer2DModel(nnx.Module):
    """Spatial transformer: GroupNorm, proj_in, transformer blocks, proj_out, residual."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, num_layers: int,
                 cross_attention_dim: int, norm_num_groups: int, use_linear_projection: bool,
                 p: Precision, rngs: nnx.Rngs, path: str = "", only_cross_attention: bool = False):
        inner = heads * dim_head
        self.path = path
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, 1e-6, p, path=_child(path, "norm"))
        if use_linear_projection:
            self.proj_in = linear(in_channels, inner, p, rngs)
            self.proj_out = linear(inner, in_channels, p, rngs)
        else:
            self.proj_in = conv(in_channels, inner, 1, p, rngs)
            self.proj_out = conv(inner, in_channels, 1, p, rngs)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, p, rngs,
                                  path=_join(path, f"transformer_blocks.{i}"),
                                  only_cross_attention=only_cross_attention)
            for i in range(num_layers)
        ])

    def __call__(self, x, context):
        b, h, w, _ = x.shape
        residual = x
        x = self.norm(x)
        proj_in, proj_out = _join(self.path, "proj_in"), _join(self.path, "proj_out")
        if self.use_linear_projection:
            x = _project(self.proj_in, x.reshape(b, h * w, -1), proj_in)
        else:  # 1x1 convolution: a linear on channels, adapted as one
            x = _project(self.proj_in, x, proj_in)
            x = x.reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            x = block(x, context, grid=(h, w))
        if self.use_linear_projection:
            x = _project(self.proj_out, x, proj_out).reshape(b, h, w, -1)
        else:
            x = _project(self.proj_out, x.reshape(b, h, w, -1), proj_out)
        return emit(self.path, x + residual)
