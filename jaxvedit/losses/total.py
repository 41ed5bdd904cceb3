"""The training objective (SPEC §3; paper 004 eq. 19 with paper 001's ratio):

    L = w_diff * L_diff + lambda * L_temporal * [t >= tau * T]

defaults ``w_diff=1, lambda=0.01, tau=0.5, T=1000`` (:meth:`LossConfig.paper004` gives paper
004 eq. 6's weighting ``w_diff=0.01, lambda=1``). ``L_temporal`` is averaged over the tapped
layers. The indicator is computed from the clip's timestep inside the traced function (no
recompilation across timesteps).

Temporal forms: ``"frames"`` (paper 004 eq. 22 over the T >= 3 frames of a clip; fewer frames
raise ``ValueError``) and ``"cross_timestep"`` (the authors' code: one pair of adjacent frames at
two diffusion timesteps; each feature is then a pair ``(feats_at_t_a, feats_at_t_b)`` of shape
``(2, ...)`` each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxvedit.losses.diffusion import diffusion_loss
from jaxvedit.losses.temporal import cross_timestep_loss, temporal_consistency_loss

__all__ = ["LossConfig", "temporal_gate", "temporal_term", "total_loss"]

_FORMS = ("frames", "cross_timestep")


@dataclass(frozen=True)
class LossConfig:
    w_diff: float = 1.0
    lambda_temporal: float = 0.01
    tau: float = 0.5
    num_train_timesteps: int = 1000
    temporal_form: str = "frames"  # or "cross_timestep"
    temporal_mode: str = "tensor"  # cosine over the whole per-frame tensor, or "token"

    def __post_init__(self):
        if self.temporal_form not in _FORMS:
            raise ValueError(f"unknown temporal_form {self.temporal_form!r}; expected one of {_FORMS}")
        if self.temporal_mode not in ("tensor", "token"):
            raise ValueError(f"unknown temporal_mode {self.temporal_mode!r}; expected 'tensor' or 'token'")

    @classmethod
    def paper004(cls, **kw) -> "LossConfig":
        """Paper 004 eq. 6 weighting: ``0.01 * L_diff + 1 * L_temporal``."""
        return cls(**{"w_diff": 0.01, "lambda_temporal": 1.0, **kw})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def temporal_gate(timestep, tau: float = 0.5, num_train_timesteps: int = 1000) -> jax.Array:
    """``[t >= tau * T]`` as float32, elementwise (traceable)."""
    t = jnp.asarray(timestep)
    return (t >= tau * num_train_timesteps).astype(jnp.float32)


def _layers(features) -> list:
    if isinstance(features, Mapping):
        items = list(features.values())
    elif isinstance(features, (list, tuple)):
        items = list(features)
    else:
        items = [features]
    if not items:
        raise ValueError("temporal loss: no tapped features given")
    return items


def temporal_term(features, *, form: str = "frames", mode: str = "tensor") -> jax.Array:
    """``L_temporal`` averaged over layers.

    ``features``: one array, a list of arrays or a ``{layer path: array}`` mapping. For
    ``form="frames"`` each array is ``(T, ...)`` with T >= 3 frames of one clip; for
    ``"cross_timestep"`` each entry is a pair ``(a, b)`` of ``(2, ...)`` arrays.
    """
    if form not in _FORMS:
        raise ValueError(f"unknown temporal form {form!r}; expected one of {_FORMS}")
    values = []
    if form == "frames":
        items = _layers(features)
        for f in items:
            values.append(temporal_consistency_loss(f, mode=mode))  # eq. 22
    else:
        if isinstance(features, Mapping):
            items = list(features.values())
        elif isinstance(features, (list, tuple)) and len(features) == 2 and hasattr(features[0], "shape"):
            items = [features]  # one pair
        else:
            items = list(features)
        for pair in items:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError("temporal form 'cross_timestep' takes a pair (feats_t_a, feats_t_b) "
                                 "per layer")
            values.append(cross_timestep_loss(pair[0], pair[1], mode=mode))
    return jnp.mean(jnp.stack(values))


def total_loss(eps_pred, eps_true, features, timestep, config: LossConfig | None = None, *,
               frames_per_clip: int | None = None, mask=None):
    """``(loss, parts)`` with ``parts = {"diffusion", "temporal", "gate"}``.

    ``timestep``: the clip's diffusion timestep (all frames of a clip share it): a scalar, or an
    array whose first entry (per clip) is used. ``frames_per_clip``: when the batch holds several
    clips of T frames each (leading axis ``n*T``), the temporal term and its gate are computed
    per clip and averaged; otherwise the whole leading axis is one clip.
    """
    cfg = config or LossConfig()
    l_diff = diffusion_loss(eps_pred, eps_true, mask=mask)
    t = jnp.asarray(timestep).reshape(-1)
    if frames_per_clip is None or cfg.temporal_form == "cross_timestep":
        l_temp = temporal_term(features, form=cfg.temporal_form, mode=cfg.temporal_mode)
        gate = temporal_gate(t[0], cfg.tau, cfg.num_train_timesteps)
        gated = gate * l_temp
    else:
        T = frames_per_clip
        items = _layers(features)
        n = items[0].shape[0] // T
        if n < 1 or any(f.shape[0] != n * T for f in items):
            raise ValueError(f"features' leading axes {[f.shape[0] for f in items]} are not a "
                             f"whole number of clips of {T} frames")
        per_clip = jnp.stack([
            temporal_term([f[c * T:(c + 1) * T] for f in items], form="frames",
                          mode=cfg.temporal_mode) for c in range(n)])
        tc = jnp.broadcast_to(t, (n * T,)).reshape(n, T)[:, 0] if t.size > 1 else jnp.broadcast_to(t, (n,))
        gates = temporal_gate(tc, cfg.tau, cfg.num_train_timesteps)
        l_temp = jnp.mean(per_clip)
        gate = jnp.mean(gates)
        gated = jnp.mean(gates * per_clip)
    loss = cfg.w_diff * l_diff + cfg.lambda_temporal * gated  # eq. 19
    return loss, {"diffusion": l_diff, "temporal": l_temp, "gate": gate}
