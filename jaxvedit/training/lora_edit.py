"""Mask-aware LoRA training of LoRA-Edit (paper 003 §3.3), per video, on the SD1.5 inpainting UNet.

Paper 003 eq. (§3.3): ``L = E_{t,eps} || eps_theta(x_t, t; V_condition, M_condition, [p*] + c) -
eps ||^2`` with ``x_t = Add_Noise(E(V_target), eps, t)``. On SD1.5 the inpainting UNet takes the
condition as its extra channels: ``M_condition`` (1 = keep) becomes the mask channel ``1 - M``
(diffusers' 1 = regenerate) and ``V_condition`` the masked-image latents ``E(V * M)``.

- **Video samples (§3.3.1)**: ``M_condition`` is 1 on the whole first frame and, on later frames,
  1 on unedited regions and 0 on the regions to regenerate; ``V_condition`` is the input video
  with the zero regions emptied; ``V_target`` is the input video. The text is the source prompt.
- **Appearance samples (§3.3.2)**: for each user-edited later frame ``k``: ``V_target`` = the
  edited frame, ``V_condition`` = the pre-edit frame with the region emptied, ``M_condition`` =
  the frame's mask; each edited frame is a separate single-frame sample (no motion). The text is
  the target prompt.

Transposition to an image UNet (the authors train a video DiT, Wan2.1-I2V, on all 49 frames at
once; see docs/lora_edit.md): a training step is one clip of ``clip_frames`` frames, always the
first frame followed by the others (all of them when the video is short enough, else a random
sorted subset), one timestep for the clip, its own noise per frame; with ``cross_frame`` the
self-attention of every frame also attends to the clip's first frame (as at inference, where
that frame is the edited one). Defaults from the authors' code (``predata_app.py``,
``predata_additional.py``, ``train.py``): rank 16, alpha = rank, AdamW lr 1e-4, betas (0.9,
0.99), weight decay 0.01, no warm-up, clipping 1.0, uniform timesteps, 100 steps on the video;
then (if edited later frames are given) the same LoRA trained on, with a fresh optimizer, for
another 100 steps on the video (once) and each edited frame (9 times) per epoch, shuffled.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.adapters.lora import LoRA, LoRAConfig, LoRAUNet
from jaxvedit.adapters.params import LoRAParam
from jaxvedit.adapters.train import adapter_optimizer, init_adapter_training, make_adapter_train_step
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.models.inpaint import check_inpainting_unet
from jaxvedit.training.inpaint import inpaint_loss

__all__ = ["LoRAEditTrainConfig", "LoRAEditData", "train_lora_edit", "video_clip_indices",
           "appearance_schedule"]


@dataclass(frozen=True)
class LoRAEditTrainConfig:
    """Per-video mask-aware LoRA training (defaults: paper 003 §4.1 and the authors' code)."""

    train_steps: int = 100  # paper: 100 steps on the input video; code: 100 epochs of its one sample
    appearance_steps: int = 100  # paper: another 100 steps when later frames are edited
    appearance_repeats: int = 9  # code: num_repeats 9 per edited frame, 1 for the video
    rank: int = 16  # code: rank = 16
    alpha: float | None = None  # code: alpha forced to the rank (scale 1); None = rank
    targets: str | tuple = "all"  # paper: self- and cross-attention
    init: str = "kaiming"  # peft's default init (the code uses peft)
    learning_rate: float = 1e-4  # paper and code (fp16)
    b1: float = 0.9
    b2: float = 0.99  # code: betas = [0.9, 0.99]
    weight_decay: float = 0.01
    warmup_steps: int = 0
    clip_norm: float = 1.0
    clip_frames: int = 8  # frames per training step (first frame included)
    cross_frame: bool = True  # attention of every frame to the clip's first frame
    seed: int = 0

    def __post_init__(self):
        for name in ("train_steps", "appearance_steps", "appearance_repeats", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"LoRA-Edit {name}={getattr(self, name)} must be >= 0")
        if self.rank < 1:
            raise ValueError(f"LoRA-Edit rank={self.rank} must be >= 1")
        if self.clip_frames < 1:
            raise ValueError(f"LoRA-Edit clip_frames={self.clip_frames} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"LoRA-Edit learning_rate={self.learning_rate} must be > 0")

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=float(self.rank if self.alpha is None else self.alpha),
                          targets=self.targets, tau=None, init=self.init)

    def optimizer(self):
        return adapter_optimizer(self.learning_rate, warmup_steps=self.warmup_steps,
                                 weight_decay=self.weight_decay, b1=self.b1, b2=self.b2,
                                 clip_norm=self.clip_norm)


@dataclass
class LoRAEditData:
    """The encoded training data of one video (latents channels-last, mask 1 = regenerate).

    ``latents (T, h, w, C)``: ``E(V_input)``; ``mask (T, h, w, 1)``: ``1 - M_condition`` at latent
    size (frame 0 all zero: kept); ``masked_latents (T, h, w, C)``: ``E(V_input * M_condition)``;
    ``context (L, D)``: the source prompt's embedding. Appearance samples (may be empty):
    ``appearance`` = list of ``(index, edited latents (h, w, C))``, conditioned on ``mask[index]``
    and ``masked_latents[index]``, with ``appearance_context (L, D)`` (the target prompt).
    """

    latents: np.ndarray
    mask: np.ndarray
    masked_latents: np.ndarray
    context: np.ndarray
    appearance: list = field(default_factory=list)
    appearance_context: np.ndarray | None = None

    def __post_init__(self):
        t = len(self.latents)
        if self.latents.ndim != 4 or self.masked_latents.shape != self.latents.shape:
            raise ValueError(f"latents {np.shape(self.latents)} and masked latents "
                             f"{np.shape(self.masked_latents)} must be equal (T, h, w, C)")
        if self.mask.shape != self.latents.shape[:-1] + (1,):
            raise ValueError(f"mask {self.mask.shape} does not fit the latents {self.latents.shape}")
        for k, lat in self.appearance:
            if not 0 < k < t:
                raise ValueError(f"appearance sample for frame {k}: must be a later frame (1..{t - 1})")
            if lat.shape != self.latents.shape[1:]:
                raise ValueError(f"appearance latents {lat.shape} differ from the frames' {self.latents.shape[1:]}")
        if self.appearance and self.appearance_context is None:
            raise ValueError("appearance samples need appearance_context (the target prompt)")


def video_clip_indices(num_frames: int, clip_frames: int, rng: np.random.Generator) -> list[int]:
    """Frame 0 followed by the others: all of them, or a random sorted subset of
    ``clip_frames - 1`` of them."""
    if num_frames <= clip_frames:
        return list(range(num_frames))
    rest = np.sort(rng.choice(np.arange(1, num_frames), clip_frames - 1, replace=False))
    return [0] + [int(i) for i in rest]


def appearance_schedule(n_edited: int, steps: int, repeats: int, rng: np.random.Generator) -> list[int]:
    """The sample of every appearance-stage step: ``-1`` = a video clip, ``j`` = edited frame
    ``j``. Epochs of ``[video] + [frame j] * repeats`` (the authors' dataset repeats), shuffled."""
    out: list[int] = []
    epoch = [-1] + [j for j in range(n_edited) for _ in range(repeats)]
    while len(out) < steps:
        out.extend(int(i) for i in rng.permutation(epoch))
    return out[:steps]


def _loss_fn(schedule: NoiseSchedule, cross_frame: bool):
    # imported here: jaxvedit.editing imports this module (jaxvedit.editing.lora_edit)
    from jaxvedit.editing.cross_frame import cross_frame_attention

    def loss_fn(model: LoRAUNet, batch, key):
        f = batch["latents"].shape[0]
        group = f if cross_frame and f > 1 else 0

        def eps_fn(x, t, ctx):
            with model.lora.active(gate=jnp.ones((), jnp.float32)):  # LoRA-Edit: no timestep gate
                with cross_frame_attention(group) if group else contextlib.nullcontext():
                    return model.unet(x, t, ctx)

        return inpaint_loss(eps_fn, batch, key, schedule, shared_timestep=True)  # eq. §3.3

    return loss_fn


def _batch(data: LoRAEditData, idx: list[int], context) -> dict:
    idx = np.asarray(idx)
    ctx = np.broadcast_to(np.asarray(context, np.float32)[None], (len(idx),) + np.shape(context))
    return {"latents": jnp.asarray(data.latents[idx]), "mask": jnp.asarray(data.mask[idx]),
            "masked_latents": jnp.asarray(data.masked_latents[idx]), "context": jnp.asarray(ctx)}


def train_lora_edit(unet, data: LoRAEditData, config: LoRAEditTrainConfig | None = None, *,
                    schedule: NoiseSchedule | None = None, lora: LoRA | None = None,
                    progress: bool = False) -> tuple[LoRA, dict]:
    """Train (or continue training ``lora``) on one video; returns ``(lora, {"losses": [...],
    "appearance_losses": [...]})``. The UNet's weights stay frozen; only the LoRA trains."""
    from tqdm.auto import tqdm

    check_inpainting_unet(unet, "LoRA-Edit training")
    cfg = config or LoRAEditTrainConfig()
    schedule = schedule if schedule is not None else NoiseSchedule.sd15()
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    if lora is None:
        lora = LoRA(unet, cfg.lora_config(), rngs=nnx.Rngs(cfg.seed))
    model = LoRAUNet(unet, lora)
    state = init_adapter_training(model, cfg.optimizer(), wrt=LoRAParam)
    step = make_adapter_train_step(_loss_fn(schedule, cfg.cross_frame), state)
    n = len(data.latents)
    plan = [-1] * cfg.train_steps
    n_app = len(data.appearance)
    app_plan = appearance_schedule(n_app, cfg.appearance_steps, cfg.appearance_repeats, rng) if n_app else []
    logs = {"losses": [], "appearance_losses": []}
    bar = tqdm(total=len(plan) + len(app_plan), desc="LoRA-Edit training", unit="step",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for stage, sched in (("losses", plan), ("appearance_losses", app_plan)):
            if stage == "appearance_losses" and sched:
                state.opt_state = state.tx.init(state.params)  # a new run from the LoRA, as the code
            for which in sched:
                if which < 0:
                    batch = _batch(data, video_clip_indices(n, cfg.clip_frames, rng), data.context)
                else:
                    k, lat = data.appearance[which]
                    batch = _batch(data, [k], data.appearance_context)
                    batch["latents"] = jnp.asarray(lat)[None]
                key, sub = jax.random.split(key)
                loss, _ = state.step(step, batch, sub)
                logs[stage].append(float(loss))
                bar.update()
                bar.set_postfix_str(f"loss {logs[stage][-1]:.4f}", refresh=False)
    finally:
        bar.close()
    state.write_back(model)
    return lora, logs
