"""Alternative fused attention kernels (Pallas), a speed lever of issue 15.

Each kernel computes ``jax.nn.dot_product_attention(q, k, v, scale=D**-0.5)`` on ``(B, L, heads,
D)`` inputs, forward and gradients (each has a custom VJP):

``"pallas-triton"``
    ``jax.experimental.pallas.ops.gpu.attention.mha``: a Triton flash attention. It pads the head
    dimension to a power of two internally (masked loads: SD1.5's 40 runs as 64, 80 as 128) and
    takes the softmax scale (``sm_scale``). Its block sizes must divide the sequence lengths and be
    powers of two (Triton's tiles), and its fused backward pass needs ``Lq / block_q_dq == Lk /
    block_kv_dkv`` (one grid over both): in practice self-attention only.
``"mosaic"``
    ``jax.experimental.pallas.ops.gpu.attention_mgpu.attention``: the Mosaic GPU FlashAttention-3
    style kernel for Hopper (sm90: warpgroup matmuls, TMA). It applies **no** softmax scale (its
    logits are ``q @ k.T``, as its own ``attention_reference``), so ``q`` is multiplied by
    ``D**-0.5`` first; its head dimension must be a multiple of 64 (heads are zero-padded: the
    scores are unchanged, the padded output columns are sliced off) and its shared-memory buffers
    and ``dk``/``dv`` are float16 whatever the input dtype, so it runs in float16 (bf16 inputs are
    cast; values past float16's 65504 would overflow) and its output is cast back.

Selection: ``JAXVEDIT_ATTENTION=pallas-triton|mosaic`` (``jaxvedit.models.layers.attention``);
tuning: ``JAXVEDIT_ATTENTION_OPTIONS="block_q=64,block_k=64,num_warps=4"`` (fields of
:class:`TritonConfig` / :class:`MosaicConfig`, whichever kernel is selected). A call the kernel
does not take (:func:`why_not` says why: cross-attention with 77 keys, ``kv_length`` masking, a
float32 model, a CPU, ...) falls back to the library's default choice (cuDNN or XLA).

The Pallas modules are imported only when a kernel runs (the GPU machine's jax may differ from the
local one; a missing API raises a ``RuntimeError`` that names it). Measured by
``bench/attention_kernels.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import jax
import jax.numpy as jnp

KERNELS = ("pallas-triton", "mosaic")
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """Tiles of ``pallas.ops.gpu.attention.mha``. Defaults follow Triton's fused-attention tutorial
    for head dims 64-128 (forward 128 x 64; backward: 128 key rows resident against 32-row query
    blocks for dK/dV, 128 query rows against 32-row key blocks for dQ); upstream's own defaults are
    128 x 128 and 32 for all four backward blocks (``bench/attention_kernels.py`` times both)."""

    block_q: int = 128
    block_k: int = 64
    block_q_dkv: int = 32
    block_kv_dkv: int = 128
    block_q_dq: int = 128
    block_kv_dq: int = 32
    num_warps: int | None = None  # None: upstream's heuristic (4 for head dim <= 64, else 8)
    num_stages: int = 2  # forward pass only (the backward pass uses 2)
    max_head_dim: int = 128  # largest padded (power-of-two) head dimension taken
    pad_heads: bool = False  # zero-pad heads to the power of two here instead of masked loads
    interpret: bool = False  # Pallas interpret mode (CPU tests)


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """Tiles of ``pallas.ops.gpu.attention_mgpu`` (its ``TuningConfig``; defaults as its tests:
    forward 64 x 128 with two consumer warpgroups, so queries go in 128s; backward 64 / 128)."""

    block_q: int = 64
    block_kv: int = 128
    max_concurrent_steps: int = 2
    block_q_dq: int = 64
    block_kv_dq: int = 128
    block_q_dkv: int = 128
    block_kv_dkv: int = 64
    compute_wgs_bwd: int | None = None  # None: 2 for padded head dim <= 128, else 1 (upstream's tests)
    # 128: on one H200 (jax 0.11.2) the default tiles at head dim 160 -> 192 asked for 247,896
    # bytes of shared memory (232,448 available) and failed; with 64 x 64 tiles it ran
    # (bench/results/attention_kernels.json). Larger heads fall back unless asked for.
    max_head_dim: int = 128
    dtype: str = "float16"  # the kernel's buffers are float16


def parse_options(kernel: str, raw: str | None = None):
    """The kernel's config from ``raw`` (default: ``JAXVEDIT_ATTENTION_OPTIONS``), e.g.
    ``"block_q=64,block_k=64,num_warps=4"``; unset fields keep their defaults."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: choose from {KERNELS}")
    cls = TritonConfig if kernel == "pallas-triton" else MosaicConfig
    raw = os.environ.get("JAXVEDIT_ATTENTION_OPTIONS", "") if raw is None else raw
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        key, sep, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or key not in fields:
            raise ValueError(f"JAXVEDIT_ATTENTION_OPTIONS item {item!r}: give name=value with a name "
                             f"from {sorted(fields)} ({kernel})")
        if key == "dtype":
            if val not in ("float16", "bfloat16"):
                raise ValueError(f"JAXVEDIT_ATTENTION_OPTIONS dtype={val!r}: float16 or bfloat16")
            values[key] = val
        elif key in ("interpret", "pad_heads"):
            values[key] = val.lower() in ("1", "true", "yes")
        elif key in ("num_warps", "compute_wgs_bwd") and val.lower() == "none":
            values[key] = None
        else:
            try:
                values[key] = int(val)
            except ValueError:
                raise ValueError(f"JAXVEDIT_ATTENTION_OPTIONS {key}={val!r}: give a whole number") from None
            if values[key] < 1:
                raise ValueError(f"JAXVEDIT_ATTENTION_OPTIONS {key}={val!r} must be >= 1")
    return cls(**values)


def _triton_blocks(config: TritonConfig, lq: int, lk: int) -> dict:
    """The blocks ``mha`` uses: each clipped to its sequence length, as upstream does."""
    return {"block_q": min(config.block_q, lq), "block_k": min(config.block_k, lk),
            "block_q_dkv": min(config.block_q_dkv, lq), "block_kv_dkv": min(config.block_kv_dkv, lk),
            "block_q_dq": min(config.block_q_dq, lq), "block_kv_dq": min(config.block_kv_dq, lk)}


def _mosaic_head(d: int) -> int:
    return -(-d // 64) * 64


def _mosaic_wgs(config: MosaicConfig, dp: int) -> int:
    return config.compute_wgs_bwd or (2 if dp <= 128 else 1)


def why_not(kernel: str, q_shape, k_shape, dtype, *, kv_length=None, backend: str | None = None,
            config=None, device_kind: str | None = None) -> str | None:
    """Why ``kernel`` does not take this call (a sentence), or ``None`` when it does.
    ``q_shape`` / ``k_shape``: ``(B, L, heads, D)``; ``backend`` / ``device_kind`` default to
    jax's first device (``device_kind``: its compute capability, e.g. ``"9.0"``)."""
    config = parse_options(kernel) if config is None else config
    b, lq, h, d = q_shape
    lk = k_shape[1]
    backend = jax.default_backend() if backend is None else backend
    if jnp.dtype(dtype) not in _HALF:
        return f"{jnp.dtype(dtype)} inputs (the fused kernels take bfloat16 / float16)"
    if kv_length is not None:
        return "kv_length masking (not implemented for the Pallas kernels)"
    if kernel == "pallas-triton":
        if backend != "gpu" and not config.interpret:
            return f"{backend} backend (Triton needs a GPU, or interpret=1)"
        dp = _next_pow2(d)
        if dp > config.max_head_dim or dp < 16:
            return f"head dim {d} (padded to {dp}; taken: 16..{config.max_head_dim})"
        blocks = _triton_blocks(config, lq, lk)
        for name, blk in blocks.items():
            seq = lq if name.startswith("block_q") else lk
            if not _pow2(blk) or blk < 16 or seq % blk:
                return (f"{name}={blk} for sequence {seq} (blocks must be powers of two >= 16 that "
                        f"divide the sequence)")
        if lq // blocks["block_q_dq"] != lk // blocks["block_kv_dkv"]:
            return (f"{lq} queries / block_q_dq {blocks['block_q_dq']} != {lk} keys / block_kv_dkv "
                    f"{blocks['block_kv_dkv']} (the fused backward pass)")
        return None
    if kernel != "mosaic":
        raise ValueError(f"attention kernel {kernel!r}: choose from {KERNELS}")
    if backend != "gpu":
        return f"{backend} backend (Mosaic GPU needs a Hopper GPU)"
    if device_kind is None:
        device_kind = str(getattr(jax.devices()[0], "compute_capability", ""))
    if device_kind != "9.0":
        return f"compute capability {device_kind or 'unknown'} (this kernel is for Hopper, 9.0)"
    dp = _mosaic_head(d)
    if dp > config.max_head_dim:
        return f"head dim {d} (padded to {dp} > {config.max_head_dim})"
    wgs = _mosaic_wgs(config, dp)
    rules = [(lq, 2 * config.block_q, "2 * block_q"), (lk, config.block_kv, "block_kv"),
             (lq, config.block_q_dq * wgs, "block_q_dq * compute_wgs_bwd"),
             (lk, config.block_kv_dkv * wgs, "block_kv_dkv * compute_wgs_bwd"),
             (lq, config.block_q_dkv, "block_q_dkv"), (lk, config.block_kv_dq, "block_kv_dq")]
    for seq, blk, what in rules:
        if seq % blk:
            return f"sequence {seq} is not a multiple of {what} = {blk}"
    return None


def triton_attention(q, k, v, config: TritonConfig = TritonConfig()):
    """``softmax(q k^T / sqrt(D)) v`` by the Pallas Triton kernel (no applicability check: see
    :func:`why_not`)."""
    try:
        with warnings.catch_warnings():  # jax 0.11 deprecates the module in favour of tokamax
            warnings.simplefilter("ignore", DeprecationWarning)
            from jax.experimental.pallas.ops.gpu import attention as tri
        blocks = tri.BlockSizes(**_triton_blocks(config, q.shape[1], k.shape[1]))
        mha = tri.mha
    except (ImportError, AttributeError, TypeError) as e:
        raise RuntimeError(f"pallas-triton: jax {jax.__version__} lacks the API used here "
                           f"(jax.experimental.pallas.ops.gpu.attention.mha / BlockSizes): {e}") from e
    d = q.shape[-1]
    pad = _next_pow2(d) - d if config.pad_heads else 0
    if pad:  # zero head dimensions: the same scores (the scale stays d**-0.5) and outputs
        q, k, v = (jnp.pad(a, ((0, 0), (0, 0), (0, 0), (0, pad))) for a in (q, k, v))
    out = mha(q, k, v, None, sm_scale=d ** -0.5, causal=False, block_sizes=blocks,
              num_warps=config.num_warps, num_stages=config.num_stages, interpret=config.interpret)
    return out[..., :d] if pad else out


def _mosaic_kernel():
    """``(attention(q, k, v, TuningConfig), TuningConfig)`` of the Mosaic GPU module (tests swap
    it for the module's reference, as the kernel cannot run on a CPU)."""
    try:
        from jax.experimental.pallas.ops.gpu import attention_mgpu as mg

        return mg.attention, mg.TuningConfig
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"mosaic: jax {jax.__version__} lacks the API used here "
                           f"(jax.experimental.pallas.ops.gpu.attention_mgpu.attention / "
                           f"TuningConfig): {e}") from e


def mosaic_attention(q, k, v, config: MosaicConfig = MosaicConfig()):
    """``softmax(q k^T / sqrt(D)) v`` by the Mosaic GPU kernel: ``q`` prescaled by ``D**-0.5``
    (the kernel applies no scale), heads zero-padded to a multiple of 64, computed in
    ``config.dtype`` and cast back (no applicability check: see :func:`why_not`)."""
    attend, tuning_cls = _mosaic_kernel()
    d = q.shape[-1]
    dp = _mosaic_head(d)
    cdt = jnp.dtype(config.dtype)
    try:
        tuning = tuning_cls(block_q=config.block_q, block_kv=config.block_kv,
                            max_concurrent_steps=config.max_concurrent_steps,
                            compute_wgs_bwd=_mosaic_wgs(config, dp),
                            block_q_dkv=config.block_q_dkv, block_kv_dkv=config.block_kv_dkv,
                            block_q_dq=config.block_q_dq, block_kv_dq=config.block_kv_dq)
    except TypeError as e:
        raise RuntimeError(f"mosaic: jax {jax.__version__}'s TuningConfig differs: {e}") from e
    qs = q.astype(jnp.float32) * d ** -0.5  # the kernel's logits are q @ k.T, unscaled
    widths = ((0, 0), (0, 0), (0, 0), (0, dp - d))
    q_, k_, v_ = (jnp.pad(a.astype(cdt), widths) for a in (qs, k, v))  # zero dims: same scores
    return attend(q_, k_, v_, tuning)[..., :d].astype(q.dtype)


def fused_attention(kernel: str, q, k, v, *, kv_length=None, config=None):
    """``kernel``'s attention of ``(B, L, heads, D)`` inputs, or ``None`` when it does not take
    the call (the caller falls back; ``config`` default: ``JAXVEDIT_ATTENTION_OPTIONS``)."""
    config = parse_options(kernel) if config is None else config
    if why_not(kernel, q.shape, k.shape, q.dtype, kv_length=kv_length, config=config) is not None:
        return None
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape:
        return None
    run = triton_attention if kernel == "pallas-triton" else mosaic_attention
    return run(q, k, v, config)
