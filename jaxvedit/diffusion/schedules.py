"""Noise schedules and DDIM timestep tables, equal to diffusers' ``DDIMScheduler`` /
``DDIMInverseScheduler`` (diffusers 0.42.1).

Everything here runs on the host in NumPy: the tables (timesteps and the cumulative alpha products
each step goes from / to) are computed once per ``num_inference_steps`` and handed to the
jit-compiled loops in :mod:`jaxvedit.diffusion.inversion` as arrays, so a new schedule or step
count never changes the compiled program's structure (only its input values / shapes).

Float32 fidelity: diffusers builds its betas with ``torch.linspace(..., dtype=float32)`` and its
``alphas_cumprod`` with ``torch.cumprod`` in float32 (accumulating in float64 on CPU). Rounding
the float32 factors ``1 - beta`` differently moves ``alphas_cumprod[999]`` by ~1e-4 relative,
enough to break step-for-step parity, so :func:`torch_linspace_float32` and
:func:`cumprod_float32` reproduce torch's CPU arithmetic bit for bit (see ``docs/diffusion.md``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = [
    "NoiseSchedule",
    "Schedule",
    "SD15_SCHEDULER_CONFIG",
    "sd15_schedule",
    "load_schedule",
    "torch_linspace_float32",
    "cumprod_float32",
    "linear_betas",
    "scaled_linear_betas",
    "squaredcos_cap_v2_betas",
    "rescale_zero_terminal_snr",
    "ddim_timesteps",
    "ddim_inverse_timesteps",
]

#: ``runwayml/stable-diffusion-v1-5`` ``scheduler/scheduler_config.json`` (a PNDM config; loaded
#: into DDIM exactly as ``DDIMScheduler.from_config`` does: missing keys take DDIM defaults).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# DDIMScheduler.__init__ defaults (diffusers 0.42.1); a config's missing keys take these.
_DDIM_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "clip_sample_range": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}

_SPACINGS = ("leading", "trailing", "linspace")
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


# --------------------------------------------------------------------------- float32 helpers


def torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU, bit for bit.

    torch rounds ``start``/``end`` to float32, takes ``step = (end - start) / (steps - 1)`` in
    float32 and evaluates ``start + step * i`` for the first half and ``end - step * (steps-1-i)``
    for the second, each as one fused multiply-add (a single rounding).
    """
    if steps < 1:
        raise ValueError(f"linspace needs steps >= 1, got {steps}")
    if steps == 1:
        return np.asarray([start], dtype=np.float32)
    s = np.float32(start)
    e = np.float32(end)
    step = np.float32(e - s) / np.float32(steps - 1)
    i = np.arange(steps, dtype=np.int64)
    lo = (np.float64(s) + np.float64(step) * i).astype(np.float32)
    hi = (np.float64(e) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, lo, hi).astype(np.float32)


def cumprod_float32(x: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of a float32 CPU tensor: float64 accumulation, float32 outputs."""
    return np.cumprod(np.asarray(x, np.float32).astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------- beta schedules


def linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """``linear``: ``linspace(beta_start, beta_end, T)`` (float32, as diffusers)."""
    return torch_linspace_float32(beta_start, beta_end, num_train_timesteps)


def scaled_linear_betas(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> np.ndarray:
    """``scaled_linear`` (latent diffusion / SD1.5): ``linspace(sqrt(b0), sqrt(b1), T) ** 2``."""
    lin = torch_linspace_float32(beta_start**0.5, beta_end**0.5, num_train_timesteps)
    return (lin * lin).astype(np.float32)


def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """``squaredcos_cap_v2`` (GLIDE cosine): ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)``
    with ``abar(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2``; computed in float64, stored float32."""

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - abar((i + 1) / num_train_timesteps) / abar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return np.asarray(betas, dtype=np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Zero terminal SNR rescaling (Lin et al. 2023, Alg. 1), float32 as diffusers."""
    betas = np.asarray(betas, np.float32)
    alphas = (np.float32(1.0) - betas).astype(np.float32)
    abar_sqrt = np.sqrt(cumprod_float32(alphas)).astype(np.float32)
    a0 = abar_sqrt[0].copy()
    aT = abar_sqrt[-1].copy()
    abar_sqrt = (abar_sqrt - aT).astype(np.float32)
    abar_sqrt = (abar_sqrt * np.float32(a0 / (a0 - aT))).astype(np.float32)
    abar = (abar_sqrt * abar_sqrt).astype(np.float32)
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]]).astype(np.float32)
    return (np.float32(1.0) - alphas).astype(np.float32)


# --------------------------------------------------------------------------- timesteps


def _check_steps(num_inference_steps: int, num_train_timesteps: int) -> int:
    n = int(num_inference_steps)
    if n != num_inference_steps or n < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if n > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={n} cannot be larger than num_train_timesteps={num_train_timesteps}"
        )
    return n


def ddim_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """``DDIMScheduler.set_timesteps``: descending int64 timesteps.

    - ``linspace``: ``round(linspace(0, T-1, n))[::-1]``
    - ``leading``: ``arange(n) * (T // n)`` reversed, ``+ steps_offset``
    - ``trailing``: ``round(arange(T, 0, -T/n)) - 1``
    """
    n = _check_steps(num_inference_steps, num_train_timesteps)
    T = num_train_timesteps
    if timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        ts += steps_offset
    elif timestep_spacing == "trailing":
        ratio = T / n
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64)
        ts -= 1
    else:
        raise ValueError(f"timestep_spacing must be one of {_SPACINGS}, got {timestep_spacing!r}")
    return ts


def ddim_inverse_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """``DDIMInverseScheduler.set_timesteps``: ascending int64 timesteps (the step *targets*).

    - ``leading``: ``arange(n) * (T // n) + steps_offset``
    - ``trailing``: ``round(arange(T, 0, -T/n)[::-1]) - 1``
    - ``linspace``: rejected by diffusers; here defined as the reverse of the sampling timesteps
      (so an inversion followed by sampling visits the same levels; documented extension).
    """
    n = _check_steps(num_inference_steps, num_train_timesteps)
    T = num_train_timesteps
    if timestep_spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round().copy().astype(np.int64)
        ts += steps_offset
    elif timestep_spacing == "trailing":
        ratio = T / n
        ts = np.round(np.arange(T, 0, -ratio)[::-1]).astype(np.int64)
        ts -= 1
    elif timestep_spacing == "linspace":
        ts = ddim_timesteps(n, T, "linspace", steps_offset)[::-1].copy()
    else:
        raise ValueError(f"timestep_spacing must be one of {_SPACINGS}, got {timestep_spacing!r}")
    return ts


# --------------------------------------------------------------------------- schedule object


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A DDPM/DDIM noise schedule built like diffusers' ``DDIMScheduler``.

    A pytree: ``betas``, ``alphas_cumprod`` and ``final_alpha_cumprod`` are leaves (NumPy float32
    on the host), the rest is static metadata. The host-side table methods
    (:meth:`timesteps`, :meth:`sampling_table`, :meth:`inversion_table`) need concrete leaves.

    ``final_alpha_cumprod`` is diffusers' ``final_alpha_cumprod`` (DDIMScheduler) and equally its
    ``initial_alpha_cumprod`` (DDIMInverseScheduler): 1.0 if ``set_alpha_to_one`` else
    ``alphas_cumprod[0]``; it stands in for the alpha product of the (virtual) timestep -1.
    """

    betas: Any
    alphas_cumprod: Any
    final_alpha_cumprod: Any
    num_train_timesteps: int = 1000
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    set_alpha_to_one: bool = True
    prediction_type: str = "epsilon"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    beta_schedule: str = "linear"

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas, **meta) -> "NoiseSchedule":
        betas = np.asarray(betas, dtype=np.float32)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or np.any(betas < 0) or np.any(betas > 1):
            raise ValueError("betas must be finite and lie in [0, 1]")
        alphas = (np.float32(1.0) - betas).astype(np.float32)
        acp = cumprod_float32(alphas)
        set_one = bool(meta.get("set_alpha_to_one", True))
        final = np.float32(1.0) if set_one else acp[0]
        meta.setdefault("num_train_timesteps", int(betas.size))
        if meta["num_train_timesteps"] != betas.size:
            raise ValueError(
                f"num_train_timesteps={meta['num_train_timesteps']} but {betas.size} betas given"
            )
        return cls(betas=betas, alphas_cumprod=acp, final_alpha_cumprod=np.float32(final), **meta)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike) -> "NoiseSchedule":
        """From a diffusers scheduler config: a dict, a ``*.json`` path, or a folder holding
        ``scheduler_config.json`` / ``config.json`` (also a model folder's ``scheduler/``).

        Missing keys take ``DDIMScheduler``'s defaults, exactly as ``DDIMScheduler.from_config``.
        """
        if not isinstance(config, Mapping):
            config = _read_config(config)
        cfg = dict(_DDIM_DEFAULTS)
        cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
        if "set_alpha_to_zero" in config and "set_alpha_to_one" not in config:
            cfg["set_alpha_to_one"] = config["set_alpha_to_zero"]  # diffusers' deprecated alias
        T = int(cfg["num_train_timesteps"])
        if T < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {T}")
        sched = cfg["beta_schedule"]
        if cfg.get("trained_betas") is not None:
            betas = np.asarray(cfg["trained_betas"], dtype=np.float32)
        elif sched == "linear":
            betas = linear_betas(cfg["beta_start"], cfg["beta_end"], T)
        elif sched == "scaled_linear":
            betas = scaled_linear_betas(cfg["beta_start"], cfg["beta_end"], T)
        elif sched == "squaredcos_cap_v2":
            betas = squaredcos_cap_v2_betas(T)
        else:
            raise ValueError(
                f"beta_schedule {sched!r} is not supported "
                "(use 'linear', 'scaled_linear', 'squaredcos_cap_v2' or trained_betas)"
            )
        if cfg.get("rescale_betas_zero_snr"):
            betas = rescale_zero_terminal_snr(betas)
        if cfg.get("thresholding"):
            raise ValueError("dynamic thresholding (thresholding=True) is not supported")
        if cfg["timestep_spacing"] not in _SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {_SPACINGS}, got {cfg['timestep_spacing']!r}"
            )
        if cfg["prediction_type"] not in _PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {_PREDICTION_TYPES}, got {cfg['prediction_type']!r}"
            )
        return cls.from_betas(
            betas,
            num_train_timesteps=T,
            steps_offset=int(cfg["steps_offset"]),
            timestep_spacing=str(cfg["timestep_spacing"]),
            set_alpha_to_one=bool(cfg["set_alpha_to_one"]),
            prediction_type=str(cfg["prediction_type"]),
            clip_sample=bool(cfg["clip_sample"]),
            clip_sample_range=float(cfg["clip_sample_range"]),
            beta_schedule="trained" if cfg.get("trained_betas") is not None else str(sched),
        )

    @classmethod
    def sd15(cls, **overrides) -> "NoiseSchedule":
        """SD1.5's schedule (scaled_linear 0.00085-0.012, 1000 steps, steps_offset 1,
        set_alpha_to_one False, leading spacing, no clipping); keys can be overridden,
        e.g. ``NoiseSchedule.sd15(timestep_spacing="trailing")``."""
        return cls.from_config({**SD15_SCHEDULER_CONFIG, **overrides})

    def replace(self, **changes) -> "NoiseSchedule":
        """A copy with metadata changed (``timestep_spacing``, ``prediction_type``, ...).
        Changing ``set_alpha_to_one`` recomputes ``final_alpha_cumprod``."""
        if "set_alpha_to_one" in changes:
            final = np.float32(1.0) if changes["set_alpha_to_one"] else self.alphas_cumprod[0]
            changes.setdefault("final_alpha_cumprod", np.float32(final))
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ tables
    def step_size(self, num_inference_steps: int) -> int:
        """``T // n``: diffusers' step from ``t`` to its "previous" timestep (all spacings)."""
        return self.num_train_timesteps // _check_steps(num_inference_steps, self.num_train_timesteps)

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """``DDIMScheduler.set_timesteps(n).timesteps`` (descending)."""
        return ddim_timesteps(
            num_inference_steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset
        )

    def inverse_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """``DDIMInverseScheduler.set_timesteps(n).timesteps`` (ascending)."""
        return ddim_inverse_timesteps(
            num_inference_steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset
        )

    def alpha_at(self, t) -> np.ndarray:
        """``alphas_cumprod[t]`` for ``t >= 0``, ``final_alpha_cumprod`` for ``t < 0``."""
        t = np.asarray(t, dtype=np.int64)
        acp = np.asarray(self.alphas_cumprod, np.float32)
        if np.any(t >= self.num_train_timesteps):
            raise ValueError(f"timestep {t.max()} >= num_train_timesteps={self.num_train_timesteps}")
        return np.where(t >= 0, acp[np.clip(t, 0, None)], np.float32(self.final_alpha_cumprod)).astype(
            np.float32
        )

    def sampling_table(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(timesteps, alpha_prod_t, alpha_prod_t_prev)`` of the ``n`` DDIMScheduler steps.

        As ``DDIMScheduler.step``: the model is evaluated at ``t``; the step goes to
        ``prev = t - T // n`` (for every spacing, as diffusers), ``final_alpha_cumprod`` if < 0.
        """
        ts = self.timesteps(num_inference_steps)
        prev = ts - self.step_size(num_inference_steps)
        return ts, self.alpha_at(ts), self.alpha_at(prev)

    def inversion_table(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(timesteps, alpha_prod_from, alpha_prod_to)`` of the ``n`` DDIMInverseScheduler steps.

        As ``DDIMInverseScheduler.step``: the model is evaluated at the *target* ``t`` (the
        current latent sits at ``from = min(t - T // n, T - 1)``, ``final_alpha_cumprod`` if < 0);
        the step goes from ``alphas_cumprod[from]`` to ``alphas_cumprod[t]``. Step ``i`` of the
        inversion is the exact reverse of sampling step ``n-1-i``.
        """
        ts = self.inverse_timesteps(num_inference_steps)
        frm = np.minimum(ts - self.step_size(num_inference_steps), self.num_train_timesteps - 1)
        return ts, self.alpha_at(frm), self.alpha_at(ts)

    # ------------------------------------------------------------------ forward process
    def add_noise(self, original_samples, noise, timesteps):
        """DDPM forward process ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; see
        :func:`jaxvedit.diffusion.ddim.add_noise`."""
        from jaxvedit.diffusion.ddim import add_noise

        return add_noise(self, original_samples, noise, timesteps)

    def __repr__(self) -> str:  # arrays are long
        return (
            f"NoiseSchedule(beta_schedule={self.beta_schedule!r}, T={self.num_train_timesteps}, "
            f"spacing={self.timestep_spacing!r}, steps_offset={self.steps_offset}, "
            f"set_alpha_to_one={self.set_alpha_to_one}, prediction_type={self.prediction_type!r}, "
            f"clip_sample={self.clip_sample})"
        )


jax.tree_util.register_dataclass(
    NoiseSchedule,
    data_fields=["betas", "alphas_cumprod", "final_alpha_cumprod"],
    meta_fields=[
        "num_train_timesteps",
        "steps_offset",
        "timestep_spacing",
        "set_alpha_to_one",
        "prediction_type",
        "clip_sample",
        "clip_sample_range",
        "beta_schedule",
    ],
)

Schedule = NoiseSchedule


def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    p = os.fspath(path)
    if os.path.isdir(p):
        for cand in (
            "scheduler_config.json",
            "config.json",
            os.path.join("scheduler", "scheduler_config.json"),
        ):
            q = os.path.join(p, cand)
            if os.path.isfile(q):
                p = q
                break
        else:
            raise FileNotFoundError(
                f"no scheduler_config.json / config.json in {p!r} (nor in its scheduler/ folder)"
            )
    if not os.path.isfile(p):
        raise FileNotFoundError(f"scheduler config not found: {p!r}")
    with open(p) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"scheduler config {p!r} is not a JSON object")
    return cfg


def load_schedule(config: Mapping[str, Any] | str | os.PathLike) -> NoiseSchedule:
    """:meth:`NoiseSchedule.from_config`."""
    return NoiseSchedule.from_config(config)


def sd15_schedule(**overrides) -> NoiseSchedule:
    """:meth:`NoiseSchedule.sd15`."""
    return NoiseSchedule.sd15(**overrides)
