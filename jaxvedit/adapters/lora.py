"""LoRA on the UNet's attention projections, with a timestep gate (SPEC §2).

``y = W0 x + ratio * gate(t) * (alpha / r) * B A x`` for every targeted projection
(``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of an attention, named by its diffusers module path;
also the other linears of the transformer blocks, ``ff.net.0.proj``, ``ff.net.2``, ``proj_in``,
``proj_out`` (a 1x1 convolution in SD1.5), and the CLIP text encoder's ``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``, ``fc1``, ``fc2``, which is what LoRA files from other tools target).
Rank and alpha may differ per module (``rank_pattern`` / ``alpha_pattern``, as peft).

Design: the LoRA matrices live in their own module (:class:`LoRA`), not inside the UNet. The UNet
keeps its exact parameter tree (it still loads/exports PyTorch checkpoints unchanged), and a
forward pass picks the adapter up through a per-call context (the same contextvar pattern as
feature hooks): :class:`LoRAUNet` (or ``with lora.active(timesteps): unet(...)``) installs it, so
the gate is computed from the timesteps *inside* the traced function: one compiled program serves
every timestep, the gate is a ``(B,)`` multiplier, not a Python branch.

A fresh adapter has ``B = 0`` and leaves the UNet output bit-identical (``y + 0``).
:func:`merge_lora` folds ``ratio * (alpha/r) * A B`` into the base kernels (inference without the
gate); :func:`unmerge_lora` subtracts it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvedit.adapters.params import LoRAParam
from jaxvedit.models import layers as _layers

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")

#: target presets, as fnmatch patterns over module paths
PRESETS: dict[str, tuple[str, ...]] = {
    # the paper (004, FTC blocks): attention projections of the down blocks only
    "down": tuple(f"down_blocks.*.attn*.{p}" for p in PROJECTIONS),
    # the authors' public code (peft target_modules to_q/to_k/to_v/to_out.0): every self- and
    # cross-attention of the UNet (down, mid and up blocks)
    "all": tuple(f"*.attn*.{p}" for p in PROJECTIONS),
}


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA hyper-parameters.

    ``targets``: a preset name (``"down"``, ``"all"``) or a sequence of module paths / fnmatch
    patterns over the LoRA-capable linears (``"up_blocks.*.attn1.to_q"``; preset names may appear
    in the sequence too: ``("down", "up_blocks.*.attn2.to_k")``).
    ``rank_pattern`` / ``alpha_pattern``: per-module rank / alpha, ``{path or fnmatch pattern:
    value}`` (an exact path wins, else the first matching pattern; others use ``rank`` / ``alpha``).
    ``tau``: the adapter acts for timesteps ``t >= tau * num_train_timesteps`` (``None`` or 0:
    always). ``init``: ``"gaussian"`` (A ~ N(0, 1/r), peft's ``init_lora_weights="gaussian"``,
    which diffusers' LoRA training scripts use) or ``"kaiming"`` (peft's default, kaiming-uniform
    with a=sqrt(5)). B starts at zero either way.
    """

    rank: int = 4
    alpha: float = 4.0
    targets: str | tuple[str, ...] = "all"
    tau: float | None = 0.5
    num_train_timesteps: int = 1000
    init: str = "gaussian"
    # given as dicts; held as tuples of (pattern, value) pairs so the config stays hashable (it
    # is static in the adapter's graph definition)
    rank_pattern: dict[str, int] | tuple | None = None
    alpha_pattern: dict[str, float] | tuple | None = None

    def __post_init__(self):
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))
        for name, cast in (("rank_pattern", int), ("alpha_pattern", float)):
            value = getattr(self, name)
            items = tuple((str(k), cast(v)) for k, v in dict(value or {}).items())
            object.__setattr__(self, name, items or None)
        if self.rank < 1 or any(r < 1 for _, r in self.rank_pattern or ()):
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank} "
                             f"(rank_pattern {self.rank_pattern})")
        if self.init not in ("gaussian", "kaiming"):
            raise ValueError(f"unknown LoRA init {self.init!r}; expected 'gaussian' or 'kaiming'")
        if isinstance(self.targets, str) and self.targets not in PRESETS:
            raise ValueError(f"unknown LoRA target preset {self.targets!r}; presets: "
                             f"{sorted(PRESETS)} (or pass a list of module paths/patterns)")

    @property
    def scale(self) -> float:
        """``alpha / rank`` of the modules without a per-module override."""
        return self.alpha / self.rank

    def rank_of(self, path: str) -> int:
        return int(_pattern_value(self.rank_pattern, path, self.rank))

    def alpha_of(self, path: str) -> float:
        return float(_pattern_value(self.alpha_pattern, path, self.alpha))

    @property
    def patterns(self) -> tuple[str, ...]:
        return expand_targets(self.targets)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        for name in ("rank_pattern", "alpha_pattern"):
            d[name] = dict(getattr(self, name)) if getattr(self, name) else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LoRA config key(s) {unknown}")
        d = dict(d)
        if isinstance(d.get("targets"), list):
            d["targets"] = tuple(d["targets"])
        return cls(**d)


def _pattern_value(patterns: tuple | None, path: str, default):
    """An exact path first, else the first matching fnmatch pattern, else ``default``."""
    if not patterns:
        return default
    exact = dict(patterns)
    if path in exact:
        return exact[path]
    for pattern, value in patterns:
        if fnmatch.fnmatchcase(path, pattern):
            return value
    return default


def expand_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Patterns of a preset name, or of a sequence of paths / patterns / preset names."""
    if isinstance(targets, str):
        return PRESETS[targets] if targets in PRESETS else (targets,)
    out: list[str] = []
    for t in targets:
        out.extend(PRESETS[t] if t in PRESETS else (t,))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# finding the projections


def _get_child(module, name: str):
    return module[int(name)] if name.isdigit() else getattr(module, name)


def get_submodule(model: nnx.Module, path: str):
    """The submodule at a diffusers module path (``"down_blocks.0.attentions.0...to_out.0"``)."""
    node = model
    for part in path.split("."):
        try:
            node = _get_child(node, part)
        except (AttributeError, IndexError, TypeError) as err:
            raise KeyError(f"no module {path!r} in {type(model).__name__} (failed at {part!r})") from err
    return node


def attention_projections(unet: nnx.Module) -> dict[str, tuple[int, int]]:
    """All attention projections of ``unet``: ``{module path: (in_features, out_features)}``."""
    out = {}
    for _, module in nnx.iter_graph(unet):
        if isinstance(module, _layers.Attention) and module.path:
            for name, lin in (("to_q", module.to_q), ("to_k", module.to_k),
                              ("to_v", module.to_v), ("to_out.0", module.to_out[0])):
                din, dout = lin.kernel.value.shape
                out[f"{module.path}.{name}"] = (int(din), int(dout))
    return dict(sorted(out.items(), key=lambda kv: _path_key(kv[0])))


def lora_linears(model: nnx.Module) -> dict[str, tuple[int, int]]:
    """Every linear a LoRA can adapt: ``{module path: (in_features, out_features)}``.

    UNet: the attention projections, ``ff.net.0.proj`` / ``ff.net.2`` of every transformer block
    and ``proj_in`` / ``proj_out`` of every spatial transformer (Linear, or the 1x1 convolution of
    SD1.5: a LoRA on it acts on channels, exactly as peft's Conv2d LoRA with a 1x1 kernel).
    CLIP text / vision encoder: ``self_attn.{q,k,v,out}_proj`` and ``mlp.fc1`` / ``mlp.fc2``.
    These are the layers whose forward consults the per-call adapter (``layers._project``)."""
    from jaxvedit.models import clip as _clip

    out = {}

    def add(base, name, lin):
        k = lin.kernel.value.shape
        out[f"{base}.{name}"] = (int(k[-2]), int(k[-1]))

    for _, module in nnx.iter_graph(model):
        path = getattr(module, "path", "")
        if not path:
            continue
        if isinstance(module, _layers.Attention):
            for name, lin in (("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v),
                              ("to_out.0", module.to_out[0])):
                add(path, name, lin)
        elif isinstance(module, _layers.FeedForward):
            add(path, "net.0.proj", module.net[0].proj)
            add(path, "net.2", module.net[2])
        elif isinstance(module, _layers.Transformer2DModel):
            add(path, "proj_in", module.proj_in)
            add(path, "proj_out", module.proj_out)
        elif isinstance(module, _clip.CLIPAttention):
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                add(path, name, getattr(module, name))
        elif isinstance(module, _clip.CLIPMLP):
            add(path, "fc1", module.fc1)
            add(path, "fc2", module.fc2)
    return dict(sorted(out.items(), key=lambda kv: _path_key(kv[0])))


def module_kinds(model: nnx.Module) -> dict[str, str]:
    """``{module path: kind}`` of every weight-holding layer (``"Linear"``, ``"Conv 3x3"``,
    ``"Conv 1x1"``, ``"Embed"``, ``"GroupNorm"``, ``"LayerNorm"``): to name a module a LoRA
    file targets that we do not adapt."""
    kinds = {}
    for path, node in nnx.iter_graph(model):
        name = ".".join(str(p) for p in path)
        if isinstance(node, nnx.Linear):
            kinds[name] = "Linear"
        elif isinstance(node, nnx.Conv):
            kinds[name] = "Conv " + "x".join(str(k) for k in node.kernel_size)
        elif isinstance(node, nnx.Embed):
            kinds[name] = "Embed"
        elif isinstance(node, (nnx.LayerNorm, _layers.LayerNorm)):
            kinds[name] = "LayerNorm"
        elif isinstance(node, _layers.GroupNorm):
            kinds[name] = "GroupNorm"
    return kinds


def _path_key(path: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def resolve_targets(unet: nnx.Module, targets: str | Sequence[str]) -> dict[str, tuple[int, int]]:
    """Paths selected by a preset name or by paths / patterns (preset names may be among them)
    over :func:`lora_linears`; every pattern must match."""
    patterns = expand_targets(targets)
    available = lora_linears(unet)
    chosen = {}
    for pattern in patterns:
        hits = [p for p in available if p == pattern or fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            examples = list(available)[:4]
            raise KeyError(f"LoRA target {pattern!r} matches no attention projection or other "
                           f"LoRA-capable linear of the {type(unet).__name__} (targets are "
                           f"module paths such as {examples}, or the presets {sorted(PRESETS)})")
        chosen.update((p, available[p]) for p in hits)
    return dict(sorted(chosen.items(), key=lambda kv: _path_key(kv[0])))


# ----------------------------------------------------------------------------------------------
# the adapter


class LoRALayer(nnx.Module):
    """``lora_A`` (in, r) and ``lora_B`` (r, out) for one projection (flax layout: ``x @ A @ B``);
    ``scale = alpha / r`` of this module."""

    def __init__(self, path: str, din: int, dout: int, rank: int, init: str, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, alpha: float | None = None):
        self.path = path
        self.rank = int(rank)
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / self.rank
        key = rngs.params()
        if init == "gaussian":
            a = jax.random.normal(key, (din, rank), param_dtype) / rank
        else:  # kaiming_uniform(a=sqrt(5)) on torch's (r, in) weight: bound = 1/sqrt(in)
            bound = 1.0 / math.sqrt(din)
            a = jax.random.uniform(key, (din, rank), param_dtype, -bound, bound)
        self.lora_A = LoRAParam(a)
        self.lora_B = LoRAParam(jnp.zeros((rank, dout), param_dtype))

    def delta(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        return (x @ self.lora_A.value.astype(dt)) @ self.lora_B.value.astype(dt)


class LoRA(nnx.Module):
    """The LoRA adapter of one UNet: one :class:`LoRALayer` per targeted projection.

    Build with :func:`apply_lora` (or ``LoRA(unet, config, rngs=...)``). ``paths`` lists the
    targeted projections in UNet order; ``layers[i]`` belongs to ``paths[i]``.
    """

    def __init__(self, unet: nnx.Module, config: LoRAConfig | None = None, *,
                 rngs: nnx.Rngs | None = None, param_dtype=jnp.float32):
        config = config or LoRAConfig()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        targets = resolve_targets(unet, config.patterns)
        self.config = config
        self.paths = tuple(targets)
        self.layers = nnx.List([
            LoRALayer(p, din, dout, config.rank_of(p), config.init, rngs, param_dtype,
                      alpha=config.alpha_of(p))
            for p, (din, dout) in targets.items()])
        self.merged_ratio = 0.0  # how much of the adapter is folded into the base kernels now

    def layer(self, path: str) -> LoRALayer:
        try:
            return self.layers[self.paths.index(path)]
        except ValueError:
            raise KeyError(f"LoRA has no layer for {path!r}") from None

    def gate(self, timesteps, batch: int, tau: float | None = None) -> jax.Array:
        """``(B,)`` float gate: 1 where ``t >= tau * num_train_timesteps`` (always 1 if no tau).
        ``tau`` overrides the config's (e.g. 0.9 at inference after training with 0.5)."""
        t = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        cfg = self.config
        tau = cfg.tau if tau is None else tau
        if not tau:
            return jnp.ones((batch,), jnp.float32)
        return (t >= tau * cfg.num_train_timesteps).astype(jnp.float32)

    def active(self, timesteps=None, *, ratio: float | jax.Array = 1.0, gate: jax.Array | None = None):
        """Context manager: during a UNet forward inside it, every targeted projection adds
        ``ratio * gate * (alpha/r) * B A x``. ``gate``: ``(B,)`` or scalar; by default computed
        from ``timesteps`` (``None`` timesteps and no gate: ungated)."""
        return _LoRAContext(self, timesteps, ratio, gate)

    def _adapter_fn(self, gate, ratio):
        index = {p: i for i, p in enumerate(self.paths)}

        def fn(path, x, y):
            i = index.get(path)
            if i is None:
                return y
            d = self.layers[i].delta(x)
            g = jnp.asarray(gate, jnp.float32) * ratio * self.layers[i].scale
            if g.ndim == 1:  # per sample
                g = g.reshape((-1,) + (1,) * (d.ndim - 1))
            return y + (d * g.astype(d.dtype)).astype(y.dtype)

        return fn


class _LoRAContext:
    def __init__(self, lora: LoRA, timesteps, ratio, gate):
        self.lora, self.timesteps, self.ratio, self.gate = lora, timesteps, ratio, gate
        self._token = None

    def __enter__(self):
        if self.lora.merged_ratio:
            raise ValueError("this LoRA is merged into the base weights (ratio "
                             f"{self.lora.merged_ratio}); unmerge it before applying it per call")
        gate = self.gate
        if gate is None:
            if self.timesteps is None:
                gate = jnp.ones((), jnp.float32)
            else:
                t = jnp.asarray(self.timesteps)
                gate = self.lora.gate(t, t.shape[0] if t.ndim else 1)
                if t.ndim == 0:
                    gate = gate[0]
        self._token = _layers._PROJECTION_ADAPTER.set(self.lora._adapter_fn(gate, self.ratio))
        return self.lora

    def __exit__(self, *exc):
        _layers._PROJECTION_ADAPTER.reset(self._token)
        return False


def apply_lora(unet: nnx.Module, config: LoRAConfig | None = None, rngs: nnx.Rngs | None = None,
               **kwargs) -> "LoRAUNet":
    """Wrap ``unet`` with a fresh LoRA: returns a :class:`LoRAUNet` (``.unet``, ``.lora``)."""
    return LoRAUNet(unet, LoRA(unet, config, rngs=rngs, **kwargs))


class LoRAUNet(nnx.Module):
    """A UNet with a LoRA adapter, callable as a noise predictor.

    ``eps = model(sample, timesteps, encoder_hidden_states, lora_ratio=1.0, lora_tau=None,
    adapter_gate=None, hooks=None, ...)``: the gate is computed from ``timesteps`` inside the call
    (so inside the caller's jit) with the config's tau, or ``lora_tau`` (inference: 0.9), or
    given directly as ``adapter_gate`` (scalar or ``(B,)``); ``lora_ratio`` scales the update
    (inference: 0.5). Only the UNet call runs under the adapter: a ControlNet (same module
    paths) called outside it is not adapted. The
    base weights are ``model.unet`` (plain ``nnx.Param``), the adapter's ``model.lora``
    (``LoRAParam``). When the LoRA is merged, the call runs the merged UNet without the adapter.
    """

    def __init__(self, unet: nnx.Module, lora: LoRA):
        self.unet = unet
        self.lora = lora

    def __call__(self, sample, timesteps, encoder_hidden_states, *, lora_ratio=1.0,
                 lora_tau: float | None = None, adapter_gate=None, **kwargs):
        if self.lora.merged_ratio:
            return self.unet(sample, timesteps, encoder_hidden_states, **kwargs)
        b = sample.shape[0]
        gate = (adapter_gate if adapter_gate is not None
                else self.lora.gate(timesteps, b, tau=lora_tau))
        with self.lora.active(gate=gate, ratio=lora_ratio):
            return self.unet(sample, timesteps, encoder_hidden_states, **kwargs)


class LoRAModel(nnx.Module):
    """Any model with an ungated LoRA, e.g. the CLIP text encoder: ``model(*args, lora_ratio=1.0,
    **kwargs)`` calls ``model.model`` with ``lora_ratio * (alpha/r) * B A x`` added on every
    targeted linear. (The UNet's gated adapter is :class:`LoRAUNet`.)"""

    def __init__(self, model: nnx.Module, lora: LoRA):
        self.model = model
        self.lora = lora

    def __call__(self, *args, lora_ratio=1.0, **kwargs):
        if self.lora.merged_ratio:
            return self.model(*args, **kwargs)
        with self.lora.active(ratio=lora_ratio):
            return self.model(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# merge / unmerge


def _merge(unet: nnx.Module, lora: LoRA, ratio: float, sign: float) -> None:
    for layer in lora.layers:
        lin = get_submodule(unet, layer.path)
        k = lin.kernel.value
        delta = (layer.lora_A.value.astype(jnp.float32) @ layer.lora_B.value.astype(jnp.float32))
        delta = delta.reshape(k.shape)  # a 1x1 convolution's kernel is (1, 1, in, out)
        lin.kernel.value = (k.astype(jnp.float32)
                            + sign * ratio * layer.scale * delta).astype(k.dtype)


def merge_lora(unet: nnx.Module, lora: LoRA, ratio: float = 0.5) -> None:
    """Fold ``ratio * (alpha/r) * A B`` into the targeted base kernels, in place (ungated:
    use it where the adapter should act at every timestep, or for export of merged weights)."""
    if lora.merged_ratio:
        raise ValueError(f"LoRA already merged at ratio {lora.merged_ratio}; unmerge first")
    _merge(unet, lora, ratio, 1.0)
    lora.merged_ratio = float(ratio)


def unmerge_lora(unet: nnx.Module, lora: LoRA) -> None:
    """Subtract what :func:`merge_lora` added (exact up to float rounding)."""
    if not lora.merged_ratio:
        raise ValueError("LoRA is not merged")
    _merge(unet, lora, lora.merged_ratio, -1.0)
    lora.merged_ratio = 0.0


@contextlib.contextmanager
def merged_lora(unet: nnx.Module, lora: LoRA, ratio: float = 0.5):
    """Context manager: the LoRA merged at ``ratio`` inside, the *exact* original kernels back
    afterwards (kept by reference, so nothing is recomputed and no rounding is left behind;
    :func:`unmerge_lora` subtracts, which restores only to float rounding)."""
    saved = [(get_submodule(unet, layer.path), get_submodule(unet, layer.path).kernel.value)
             for layer in lora.layers]
    merge_lora(unet, lora, ratio)
    try:
        yield lora
    finally:
        for lin, kernel in saved:
            lin.kernel.value = kernel
        lora.merged_ratio = 0.0


def lora_state(lora: LoRA) -> dict[str, jax.Array]:
    """``{f"{path}.lora_A": (in, r), f"{path}.lora_B": (r, out)}`` in flax layout."""
    out = {}
    for layer in lora.layers:
        out[f"{layer.path}.lora_A"] = layer.lora_A.value
        out[f"{layer.path}.lora_B"] = layer.lora_B.value
    return out


def count_params(lora: LoRA) -> int:
    return sum(int(v.size) for v in lora_state(lora).values())


__all__: Iterable[str] = [
    "PRESETS", "PROJECTIONS", "LoRAConfig", "LoRA", "LoRALayer", "LoRAUNet", "LoRAModel", "apply_lora",
    "merge_lora", "unmerge_lora", "merged_lora", "attention_projections", "lora_linears",
    "module_kinds", "expand_targets", "resolve_targets", "get_submodule", "lora_state",
    "count_params",
]
