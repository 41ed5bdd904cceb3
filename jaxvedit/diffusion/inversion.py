"""Whole-trajectory DDIM inversion and sampling as one compiled program each.

:func:`ddim_invert` runs deterministic DDIM inversion (diffusers' ``DDIMInverseScheduler``,
SPEC §4) of a batch of frames, optionally with classifier-free guidance and with the bilateral
filter of paper 004 (eq. 9-12) in either form (:class:`BilateralFilterConfig`).
:func:`ddim_sample` runs ``DDIMScheduler`` sampling (eta 0, or eta > 0 with a PRNG key).

Both are a single ``jax.jit`` around a ``lax.scan`` over the steps. The per-step tables
(timesteps, alpha products), the noise predictor's weights, the latents, contexts, guidance scale,
eta and the filter sigmas are *arguments* of that program, so it compiles once per input shape
and static configuration (predictor structure, CFG on/off, eta zero/non-zero, filter form and
radius, trajectory on/off) and is reused for new values.

The noise predictor ``unet`` is either a Flax ``nnx.Module`` -- split outside the jit
(``graphdef, state = nnx.split(unet)``) and merged inside, so its weights are arguments, not baked
constants -- or any callable ``eps = f(sample, timesteps, encoder_hidden_states)`` (a plain
function is a static argument: pass the same function object to reuse the compiled program).
``timesteps`` is passed as a 0-d int32 array (one timestep for the whole batch).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.diffusion.bilateral import _bilateral_frames, _bilateral_latent, _check_sigma
from jaxvedit.diffusion.ddim import ddim_step
from jaxvedit.diffusion.symmetric_bilateral import _apply as _symmetric_apply
from jaxvedit.diffusion.symmetric_bilateral import _weights as _symmetric_weights
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.models.hooks import FeatureHooks

__all__ = [
    "BilateralFilterConfig",
    "FilterConfig",
    "AUTHORS_FEATURE_PATHS",
    "default_feature_paths",
    "ddim_invert",
    "ddim_sample",
]

#: The authors' ``BFHooker`` hooks ``up_blocks[3].attentions[0, 1].transformer_blocks[0].attn1``.
AUTHORS_FEATURE_PATHS: tuple[str, ...] = (
    "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.1.transformer_blocks.0.attn1",
)

_MODES = ("none", "latent", "features", "symmetric")


def default_feature_paths(unet: Any = None) -> tuple[str, ...]:
    """SPEC default for the ``features`` filter: every self-attention (``attn1``) output of the
    up-block attentions at the highest resolution, i.e. of the last up block
    (``up_blocks.3`` for SD1.5, 64x64 latents at 512 px)."""
    n_up = 4
    blocks = getattr(unet, "up_blocks", None)
    if blocks is not None:
        try:
            n_up = len(blocks)
        except TypeError:
            pass
    return (f"up_blocks.{n_up - 1}.attentions.*.transformer_blocks.*.attn1",)


@dataclasses.dataclass(frozen=True)
class BilateralFilterConfig:
    """Which bilateral filter the inversion applies (SPEC §4).

    ``mode``:
      - ``"none"``: plain DDIM inversion.
      - ``"latent"`` (paper 004 eq. 9-12): before every step, ``x_t <- B(x_t)`` with
        :func:`~jaxvedit.diffusion.bilateral.bilateral_filter_latent` (``radius``,
        ``sigma_spatial``, ``sigma_range``, ``range_mode``, ``window``); the filtered latent feeds
        both the UNet and the DDIM update (eq. 12).
      - ``"features"`` (the authors' code): inside every UNet call, the outputs of the modules
        matching ``feature_paths`` (default :func:`default_feature_paths`) are replaced by
        :func:`~jaxvedit.diffusion.bilateral.bilateral_filter_frames` along the frame axis
        (``kernel_size``, ``sigma_spatial``, ``sigma_range``). With CFG each guidance branch is
        filtered separately (the authors' hook runs over the concatenated batch). A batch that
        holds several videos of ``video_frames`` frames each is filtered video by video.
      - ``"symmetric"`` (not in the paper; docs/theory.md, "a filter for which Lemma C.7
        holds"): before every step, ``x_t <- P x_t`` with the symmetric doubly stochastic
        bilateral matrix ``P`` of
        :mod:`~jaxvedit.diffusion.symmetric_bilateral`, computed once from the latents the loop
        starts from (the clean source latents x_0 in :func:`ddim_invert`) with ``radius``,
        ``sigma_spatial``, ``sigma_range``, ``range_mode`` (relative: to the guide's std),
        ``window`` and ``sinkhorn_iters``; linear and non-expansive in x_t.

    ``sigma_range`` defaults to 0.1 (latent and symmetric, absolute units) or 1.0 (features).
    """

    mode: str = "latent"
    radius: int = 2
    sigma_spatial: float = 1.0
    sigma_range: float | None = None
    range_mode: str = "absolute"
    window: str = "square"
    kernel_size: int = 5
    feature_paths: tuple[str, ...] | None = None
    sinkhorn_iters: int = 30
    video_frames: int | None = None  # features: frames per video in the batch (None: one video)

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"filter mode must be one of {_MODES}, got {self.mode!r}")
        if self.mode == "none":
            return
        if self.mode in ("latent", "symmetric"):
            if isinstance(self.radius, bool) or int(self.radius) != self.radius or self.radius < 1:
                raise ValueError(f"radius must be an integer >= 1, got {self.radius!r}")
            if self.range_mode not in ("absolute", "relative"):
                raise ValueError(f"range_mode must be 'absolute' or 'relative', got {self.range_mode!r}")
            if self.window not in ("square", "disk"):
                raise ValueError(f"window must be 'square' or 'disk', got {self.window!r}")
            k = self.sinkhorn_iters
            if self.mode == "symmetric" and (isinstance(k, bool) or int(k) != k or k < 0):
                raise ValueError(f"sinkhorn_iters must be an integer >= 0, got {k!r}")
        else:
            k = self.kernel_size
            if isinstance(k, bool) or int(k) != k or k < 3 or k % 2 == 0:
                raise ValueError(f"kernel_size must be an odd integer >= 3 (radius >= 1), got {k!r}")
            if self.feature_paths is not None:
                if isinstance(self.feature_paths, str) or not all(
                    isinstance(p, str) for p in self.feature_paths
                ):
                    raise ValueError("feature_paths must be a tuple of module-path strings/patterns")
                object.__setattr__(self, "feature_paths", tuple(self.feature_paths))
        _check_sigma("sigma_spatial", self.sigma_spatial)
        _check_sigma("sigma_range", self.resolved_sigma_range, allow_inf=True)

    @property
    def resolved_sigma_range(self) -> float:
        if self.sigma_range is not None:
            return float(self.sigma_range)
        return 1.0 if self.mode == "features" else 0.1

    @classmethod
    def none(cls) -> "BilateralFilterConfig":
        return cls(mode="none")

    @classmethod
    def latent(cls, **kwargs) -> "BilateralFilterConfig":
        return cls(mode="latent", **kwargs)

    @classmethod
    def features(cls, **kwargs) -> "BilateralFilterConfig":
        return cls(mode="features", **kwargs)

    @classmethod
    def symmetric(cls, **kwargs) -> "BilateralFilterConfig":
        return cls(mode="symmetric", **kwargs)


FilterConfig = BilateralFilterConfig


def _as_filter(filter) -> BilateralFilterConfig:
    if filter is None or filter is False:
        return BilateralFilterConfig.none()
    if isinstance(filter, BilateralFilterConfig):
        return filter
    if isinstance(filter, str):
        return BilateralFilterConfig(mode=filter)
    if isinstance(filter, dict):
        return BilateralFilterConfig(**filter)
    raise ValueError(
        f"filter must be None, 'none'/'latent'/'features'/'symmetric', a dict or a BilateralFilterConfig, got {filter!r}"
    )


# --------------------------------------------------------------------------- the predictor


@dataclasses.dataclass(frozen=True, eq=False)
class _Predictor:
    """Static description of the noise predictor: an NNX graphdef (compared by value) or a plain
    callable (compared by identity, so unhashable callables work; the jit cache keeps it alive)."""

    graphdef: Any = None
    fn: Callable | None = None
    takes_hooks: bool = True

    def _key(self):
        return (self.graphdef, id(self.fn), self.takes_hooks)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Predictor) and self._key() == other._key() and self.fn is other.fn

    def bind(self, params):
        if self.graphdef is not None:
            return nnx.merge(self.graphdef, params)
        return self.fn


def _split_predictor(unet) -> tuple[_Predictor, Any]:
    if isinstance(unet, nnx.Module):
        graphdef, state = nnx.split(unet)
        return _Predictor(graphdef=graphdef), state
    if not callable(unet):
        raise ValueError(
            f"unet must be an nnx.Module or a callable f(sample, timesteps, context), got {type(unet)}"
        )
    takes_hooks = True
    try:
        params = inspect.signature(unet).parameters.values()
        takes_hooks = any(p.name == "hooks" or p.kind == p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        pass
    return _Predictor(fn=unet, takes_hooks=takes_hooks), None


# --------------------------------------------------------------------------- the compiled loop


@dataclasses.dataclass(frozen=True)
class _LoopSpec:
    cfg: bool
    stochastic: bool
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    filter_mode: str
    radius: int
    relative: bool
    window: str
    kernel_radius: int
    feature_paths: tuple[str, ...]
    return_trajectory: bool
    sinkhorn_iters: int = 0
    video_frames: int = 0  # 0: the batch is one video


class _Trace:
    """Counts traces of the compiled loop (the tests check it compiles once per shape)."""

    count = 0


def _features_transform(spec: _LoopSpec, groups: int, ss, sr):
    def transform(out):
        # out: (groups * T, N, C); filter along T inside each CFG branch separately
        shp = out.shape
        g = out.reshape((groups, shp[0] // groups) + shp[1:])
        g = jax.vmap(lambda a: _bilateral_frames(a, ss, sr, radius=spec.kernel_radius))(g)
        return g.reshape(shp)

    return transform


@functools.partial(jax.jit, static_argnames=("predictor", "spec"))
def _ddim_loop(params, x, ctx, uctx, ts, a_cur, a_next, guidance, eta, key, fsig, *, predictor, spec):
    _Trace.count += 1
    model = predictor.bind(params)
    B = x.shape[0]
    ss, sr = fsig[0], fsig[1]
    n = ts.shape[0]
    keys = jax.random.split(key, n) if spec.stochastic else jnp.zeros((n,), jnp.uint32)

    def predict(xin, t):
        if spec.cfg:
            xin2 = jnp.concatenate([xin, xin], axis=0)
            ctx2 = jnp.concatenate([uctx, ctx], axis=0)
        else:
            xin2, ctx2 = xin, ctx
        kwargs = {}
        if spec.filter_mode == "features":
            groups = (2 if spec.cfg else 1) * (B // spec.video_frames if spec.video_frames else 1)
            hooks = FeatureHooks(
                transform={p: _features_transform(spec, groups, ss, sr) for p in spec.feature_paths}
            )
            kwargs["hooks"] = hooks
        out = model(xin2, t, ctx2, **kwargs)
        if spec.filter_mode == "features":
            hooks.check_all_matched()
        out = jnp.asarray(out).astype(xin.dtype)
        if spec.cfg:
            e_u, e_c = out[:B], out[B:]
            out = e_u + guidance.astype(xin.dtype) * (e_c - e_u)  # classifier-free guidance
        return out

    if spec.filter_mode == "symmetric":
        # weights once, from the latents the loop starts from (the guide)
        P = _symmetric_weights(x, ss, sr, radius=spec.radius, relative=spec.relative,
                               window=spec.window, iterations=spec.sinkhorn_iters)

    def body(xc, inp):
        t, ac, an, k = inp
        if spec.filter_mode == "symmetric":
            xc = _symmetric_apply(xc, P, radius=spec.radius, window=spec.window)
        if spec.filter_mode == "latent":
            # eq. 9-11: x'_t = B(x_t)
            xc = _bilateral_latent(
                xc, ss, sr, radius=spec.radius, relative=spec.relative, window=spec.window
            )
        mo = predict(xc, t)  # eq. 12: eps(x'_t, t)
        noise = jax.random.normal(k, xc.shape, xc.dtype) if spec.stochastic else None
        xn = ddim_step(
            xc,
            mo,
            ac,
            an,
            eta=eta,
            noise=noise,
            prediction_type=spec.prediction_type,
            clip_sample=spec.clip_sample,
            clip_sample_range=spec.clip_sample_range,
            stochastic=spec.stochastic,
        )
        return xn, (xn if spec.return_trajectory else None)

    xT, traj = jax.lax.scan(body, x, (ts, a_cur, a_next, keys))
    if spec.return_trajectory:
        traj = jnp.concatenate([x[None], traj], axis=0)
    return xT, traj


def _prep_context(c, B: int, name: str):
    c = jnp.asarray(c)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3:
        raise ValueError(f"{name} must be (L, D) or (B, L, D), got shape {c.shape}")
    if c.shape[0] not in (1, B):
        raise ValueError(f"{name} batch {c.shape[0]} does not match the latents' batch {B} (or 1)")
    return jnp.broadcast_to(c, (B,) + c.shape[1:]) if c.shape[0] != B else c


def _run(
    unet,
    latents,
    context,
    schedule,
    table,
    *,
    guidance_scale,
    uncond_context,
    filter,
    return_trajectory,
    eta,
    key,
):
    if not isinstance(schedule, NoiseSchedule):
        schedule = NoiseSchedule.from_config(schedule)
    x = jnp.asarray(latents)
    if x.dtype != jnp.float64:  # the DDIM updates run in (at least) float32, as diffusers'
        x = x.astype(jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"latents must be (B, H, W, C), got shape {x.shape}")
    B = x.shape[0]
    ctx = _prep_context(context, B, "context")
    g = float(guidance_scale)
    if not math.isfinite(g):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    cfg = g != 1.0
    if cfg and uncond_context is None:
        raise ValueError("guidance_scale != 1 needs uncond_context (the unconditional embedding)")
    uctx = _prep_context(uncond_context, B, "uncond_context") if cfg else jnp.zeros((), ctx.dtype)
    if cfg and uctx.shape != ctx.shape:
        raise ValueError(f"uncond_context shape {uctx.shape} differs from context shape {ctx.shape}")

    flt = _as_filter(filter)
    predictor, params = _split_predictor(unet)
    if flt.mode == "features" and not predictor.takes_hooks:
        raise ValueError("the features filter needs a noise predictor that accepts hooks=FeatureHooks(...)")
    paths = flt.feature_paths if flt.feature_paths is not None else default_feature_paths(unet)

    e = float(eta)
    if not math.isfinite(e) or e < 0:
        raise ValueError(f"eta must be finite and >= 0, got {eta!r}")
    stochastic = e > 0
    if stochastic and key is None:
        raise ValueError("ddim_sample with eta > 0 needs a PRNG `key`")
    if key is None:
        key = jax.random.key(0)
    elif not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))

    spec = _LoopSpec(
        cfg=cfg,
        stochastic=stochastic,
        prediction_type=schedule.prediction_type,
        clip_sample=schedule.clip_sample,
        clip_sample_range=float(schedule.clip_sample_range),
        filter_mode=flt.mode,
        radius=int(flt.radius),
        relative=flt.range_mode == "relative",
        window=flt.window,
        kernel_radius=int(flt.kernel_size) // 2,
        feature_paths=tuple(paths) if flt.mode == "features" else (),
        return_trajectory=bool(return_trajectory),
        sinkhorn_iters=int(flt.sinkhorn_iters) if flt.mode == "symmetric" else 0,
        video_frames=int(flt.video_frames or 0) if flt.mode == "features" else 0,
    )
    if spec.video_frames and B % spec.video_frames:
        raise ValueError(f"features filter: batch {B} is not a whole number of videos of "
                         f"{spec.video_frames} frames")
    ts, a_cur, a_next = table
    fsig = np.asarray([flt.sigma_spatial, flt.resolved_sigma_range], np.float32)
    xT, traj = _ddim_loop(
        params,
        x,
        ctx,
        uctx,
        np.asarray(ts, np.int32),
        np.asarray(a_cur, np.float32),
        np.asarray(a_next, np.float32),
        np.float32(g),
        np.float32(e),
        key,
        fsig,
        predictor=predictor,
        spec=spec,
    )
    return (xT, traj) if return_trajectory else xT


def ddim_invert(
    unet,
    latents,
    context,
    schedule,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    uncond_context=None,
    filter=None,
    return_trajectory: bool = False,
):
    """Deterministic DDIM inversion of a batch of frames, as diffusers' ``DDIMInverseScheduler``.

    Step ``i`` (``t = schedule.inverse_timesteps(n)[i]``, ascending) moves the latent from
    ``alphas_cumprod[t - T//n]`` (``final_alpha_cumprod`` below 0) to ``alphas_cumprod[t]`` using
    ``eps(x, t, context)``, optionally guided
    (``eps_u + guidance_scale * (eps_c - eps_u)``) and bilaterally filtered (``filter``).

    Args:
        unet: ``nnx.Module`` or callable ``f(sample, timesteps, encoder_hidden_states)``.
        latents: ``(B, H, W, C)`` clean latents (frames in the batch).
        context / uncond_context: ``(B, L, D)``, ``(1, L, D)`` or ``(L, D)``. Guidance runs
            only when ``guidance_scale != 1`` (then ``uncond_context`` is required); at 1 the
            unconditional branch is skipped.
        schedule: :class:`NoiseSchedule` (or a diffusers scheduler config dict / path).
        filter: ``None`` / ``"none"`` / ``"latent"`` / ``"features"`` / ``"symmetric"`` / a
            :class:`BilateralFilterConfig` (``"symmetric"`` takes ``latents`` as its guide).
        return_trajectory: also return the ``(n+1, B, H, W, C)`` trajectory: ``[0]`` is the
            input, ``[i]`` the latent after step ``i`` (at noise level
            ``inverse_timesteps(n)[i-1]``); ``[-1]`` is the returned result.

    Returns:
        ``x_T`` or ``(x_T, trajectory)``.
    """
    if not isinstance(schedule, NoiseSchedule):
        schedule = NoiseSchedule.from_config(schedule)
    table = schedule.inversion_table(num_inference_steps)
    return _run(
        unet,
        latents,
        context,
        schedule,
        table,
        guidance_scale=guidance_scale,
        uncond_context=uncond_context,
        filter=filter,
        return_trajectory=return_trajectory,
        eta=0.0,
        key=None,
    )


def ddim_sample(
    unet,
    latents,
    context,
    schedule,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    uncond_context=None,
    eta: float = 0.0,
    key=None,
    filter=None,
    return_trajectory: bool = False,
):
    """DDIM sampling from ``latents`` (at the first timestep's noise level), as diffusers'
    ``DDIMScheduler``: step ``i`` (``t = schedule.timesteps(n)[i]``, descending) goes from
    ``alphas_cumprod[t]`` to ``alphas_cumprod[t - T//n]`` (``final_alpha_cumprod`` below 0).

    ``eta > 0`` adds DDIM's variance noise: ``keys = jax.random.split(key, n)``, step ``i``
    draws ``jax.random.normal(keys[i], latents.shape, latents.dtype)``. ``filter`` (default
    none) applies the same filters as in :func:`ddim_invert` before each step. Trajectory as
    in :func:`ddim_invert` (``[i]`` at noise level ``timesteps(n)[i]`` for ``i < n``).
    """
    if not isinstance(schedule, NoiseSchedule):
        schedule = NoiseSchedule.from_config(schedule)
    table = schedule.sampling_table(num_inference_steps)
    return _run(
        unet,
        latents,
        context,
        schedule,
        table,
        guidance_scale=guidance_scale,
        uncond_context=uncond_context,
        filter=filter,
        return_trajectory=return_trajectory,
        eta=eta,
        key=key,
    )
