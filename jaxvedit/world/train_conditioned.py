"""The world's conditioned models, fine-tuned from the shipped world pipeline:
``python -m jaxvedit.world.train_conditioned`` (``--help`` lists every option).

Stages (each resumable, each writing ``<output>/<stage>/``):

1. ``controlnet``: a depth ControlNet, initialised from the world UNet as diffusers'
   ``ControlNetModel.from_unet`` (:func:`jaxvedit.models.controlnet.controlnet_from_unet`) and
   trained against the frozen UNet on the renderer's ground-truth depth maps (the conditioning
   image: the depth map in [0, 1], quantised to 8 bits as the dataset's PNGs, on three channels).
   The loss is ``train_controlnet.py``'s (uniform timesteps, eps MSE through the UNet with the
   ControlNet's residuals); no caption dropout (its ``--proportion_empty_prompts`` default 0).
2. ``inpaint``: an inpainting UNet (9 input channels) made from the world UNet as
   SD-inpainting was (:func:`jaxvedit.models.inpaint.inpainting_unet_from_text_unet`: 5 extra
   zero-initialised input channels) and fine-tuned with the inpainting loss
   (:func:`jaxvedit.training.inpaint.inpaint_loss`, 10 % caption dropout). Masks, per sample:
   25 % the whole frame (the model card's share), 25 % a random rectangle or ellipse (as
   diffusers' ``random_mask``), 35 % the dilated region of one object (what LoRA-Edit
   regenerates for a colour or shape edit), 15 % everything but the objects (a background edit).
3. ``export``: the ControlNet as a diffusers folder (float16) and the inpainting UNet's
   ``unet/`` folder (float16); :func:`jaxvedit.world.models.world_inpaint_path` assembles the
   inpainting pipeline from it and the world pipeline's other components.

Frames, depth maps and object masks are rendered on the device inside the jitted steps, and
encoded there by the frozen VAE and text encoder (their weights are step arguments).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.training.config import opt
from jaxvedit.world import models as wm
from jaxvedit.world.fit import FitConfig, fit

STAGES = ("controlnet", "inpaint", "export")
#: mask kinds of the inpainting fine-tuning and their shares (see the module docstring)
MASK_SHARES = {"full": 0.25, "random": 0.25, "object": 0.35, "background": 0.15}


@dataclass(frozen=True)
class ConditionedTrainConfig:
    """Fine-tune the world's depth ControlNet and inpainting UNet from the world pipeline, on
    rendered scenes (GPU). Each stage plans its step count from its time budget unless
    --<stage>-steps is given."""

    output_dir: str = opt("runs/world-conditioned", "run folder: one subfolder per stage", "run")
    stages: tuple[str, ...] = opt(STAGES, "stages to run, in order: controlnet, inpaint, export", "run")
    base: str = opt("world", "the world pipeline to start from (a diffusers folder or 'world')", "run")
    scenes: int = opt(8000, "training scenes in the pool (seeds of the training range)", "data")
    frames: int = opt(16, "frames per scene", "data")
    size: int = opt(128, "frame size in pixels (the base pipeline's)", "data")
    seed: int = opt(0, "seed of the training draws", "run")
    resume: bool = opt(True, "continue a stage from its last checkpoint when there is one", "run")
    progress: bool = opt(True, "show progress bars", "run")
    dtype: str = opt("bfloat16", "compute dtype: bfloat16 or float32 (parameters stay float32)", "run")

    controlnet_steps: int = opt(0, "ControlNet steps (0: plan from --controlnet-seconds)", "controlnet")
    controlnet_seconds: float = opt(150.0, "ControlNet time budget in seconds", "controlnet")
    controlnet_batch: int = opt(128, "frames per ControlNet step", "controlnet")
    controlnet_lr: float = opt(1e-4, "ControlNet learning rate", "controlnet")

    inpaint_steps: int = opt(0, "inpainting UNet steps (0: plan from --inpaint-seconds)", "inpaint")
    inpaint_seconds: float = opt(180.0, "inpainting UNet time budget in seconds", "inpaint")
    inpaint_batch: int = opt(128, "frames per inpainting step", "inpaint")
    inpaint_lr: float = opt(1e-4, "inpainting UNet learning rate", "inpaint")
    caption_dropout: float = opt(0.1, "probability of the empty caption (inpainting stage)", "inpaint")

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: choose bfloat16 or float32")
        wm.check_frame_size(self.size)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# batches rendered and encoded on the device


def _draw(key, arrays, n: int, frames: int, size: int):
    """``n`` random (scene, frame) draws rendered with their ground truth."""
    from jaxvedit.world.render import render_maps_batch

    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (n,), 0, arrays["traj"].shape[0])
    t = jax.random.randint(k2, (n,), 0, frames)
    return idx, render_maps_batch(jax.tree.map(lambda a: a[idx], arrays), t, size=size)


def depth_condition(depth: jax.Array) -> jax.Array:
    """``(B, H, W)`` depth in [0, 1] -> the ControlNet's conditioning image ``(B, H, W, 3)``:
    quantised to 8 bits as the dataset's depth PNGs, three channels as the pipeline's
    ``control_image_processor`` makes a grey map."""
    q = jnp.round(jnp.clip(depth, 0.0, 1.0) * 255.0) / 255.0
    return jnp.repeat(q[..., None], 3, axis=-1)


def dilate(mask: jax.Array, radius: int) -> jax.Array:
    """Binary dilation of ``(B, H, W)`` masks by a ``(2 r + 1)`` square."""
    w = 2 * radius + 1
    return jax.lax.reduce_window(mask, 0.0, jax.lax.max, (1, w, w), (1, 1, 1), "SAME")


def random_shape_masks(key, n: int, size: int) -> jax.Array:
    """diffusers' ``random_mask`` drawn on the device: a rectangle or an ellipse of random size
    (up to the image) at a random centre; ``(n, size, size)``, 1 = regenerate."""
    kc, ks, ke = jax.random.split(key, 3)
    centre = jax.random.uniform(kc, (n, 1, 1, 2), minval=0.0, maxval=size)
    half = jax.random.uniform(ks, (n, 1, 1, 2), minval=size / 16, maxval=size / 2)
    ys, xs = jnp.meshgrid(jnp.arange(size) + 0.5, jnp.arange(size) + 0.5, indexing="ij")
    d = (jnp.stack([xs, ys], -1)[None] - centre) / half
    rect = jnp.all(jnp.abs(d) <= 1.0, axis=-1)
    ell = jnp.sum(d * d, axis=-1) <= 1.0
    return jnp.where(jax.random.bernoulli(ke, 0.5, (n, 1, 1)), ell, rect).astype(jnp.float32)


def inpaint_masks(key, visible: jax.Array, size: int) -> jax.Array:
    """Per sample one of :data:`MASK_SHARES`' kinds; ``visible (B, H, W, K)`` object coverage;
    returns ``(B, H, W)`` float, 1 = regenerate."""
    b, k = visible.shape[0], visible.shape[-1]
    kk, kr, ko = jax.random.split(key, 3)
    shares = jnp.asarray(list(MASK_SHARES.values()))
    kind = jax.random.choice(kk, len(shares), (b,), p=shares / shares.sum())
    obj = jax.random.randint(ko, (b,), 0, k)
    one = jnp.take_along_axis(visible, obj[:, None, None, None], axis=-1)[..., 0] > 0.0
    objects = jnp.any(visible > 0.0, axis=-1)
    r = max(1, size // 32)
    cands = jnp.stack([jnp.ones((b, size, size)), random_shape_masks(kr, b, size),
                       dilate(one.astype(jnp.float32), r), 1.0 - dilate(objects.astype(jnp.float32), r)])
    return jnp.take_along_axis(cands, kind[None, :, None, None], axis=0)[0]


# ----------------------------------------------------------------------------------------------
# the stages


class _Frozen:
    """The frozen world components: graph definitions (static) and states (step arguments)."""

    def __init__(self, base: Path, dtype):
        from jaxvedit.models import load_components

        comps = load_components(base, ("unet", "vae", "text_encoder"), dtype=dtype)
        self.unet, self.vae, self.text = comps["unet"], comps["vae"], comps["text_encoder"]
        self.split = {k: nnx.split(m) for k, m in (("unet", self.unet), ("vae", self.vae),
                                                   ("text", self.text))}

    def states(self, *names):
        return {n: self.split[n][1] for n in names}

    def merge(self, data, name):
        return nnx.merge(self.split[name][0], data[name])


def _pool_data(cfg, tokenizer) -> dict:
    from jaxvedit.world.train import Pool

    pool = Pool(cfg, tokenizer)
    return {"arrays": pool.arrays, "tokens": pool.tokens, "empty": pool.empty_tokens[0]}


def _encode(vae, frames01):
    return jax.lax.stop_gradient(vae.encode_to_latents(frames01 * 2.0 - 1.0))


def _own_copy(module):
    """``module`` over copies of its arrays: the training step donates them, and a model made
    from the UNet shares the UNet's arrays, which stay in use (frozen)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


def train_world_controlnet(cfg: ConditionedTrainConfig, frozen: _Frozen, pool: dict, out: Path):
    from jaxvedit.diffusion.ddim import add_noise
    from jaxvedit.diffusion.schedules import NoiseSchedule
    from jaxvedit.models.controlnet import controlnet_from_unet

    schedule = NoiseSchedule.sd15()
    controlnet = _own_copy(controlnet_from_unet(frozen.unet, seed=cfg.seed + 11))
    data = {**pool, **frozen.states("unet", "vae", "text")}

    def loss_fn(model, key, data):
        k1, k2, k3 = jax.random.split(key, 3)
        b = cfg.controlnet_batch
        idx, (rgb, depth, _) = _draw(k1, data["arrays"], b, cfg.frames, cfg.size)
        x0 = _encode(frozen.merge(data, "vae"), rgb).astype(jnp.float32)
        ctx = jax.lax.stop_gradient(frozen.merge(data, "text")(data["tokens"][idx]).last_hidden_state)
        t = jax.random.randint(k2, (b,), 0, schedule.num_train_timesteps)
        noise = jax.random.normal(k3, x0.shape)
        x_t = add_noise(schedule, x0, noise, t)
        down, mid = model(x_t, t, ctx, depth_condition(depth))
        eps = frozen.merge(data, "unet")(x_t, t, ctx, down_block_additional_residuals=down,
                                         mid_block_additional_residual=mid)
        return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise)), {}

    fcfg = FitConfig(steps=cfg.controlnet_steps, seconds=cfg.controlnet_seconds,
                     learning_rate=cfg.controlnet_lr, warmup=100, seed=cfg.seed + 11,
                     progress=cfg.progress, log_every=50, checkpoint_every=1000)
    try:
        controlnet = fit("controlnet", controlnet, loss_fn, data, fcfg, out / "controlnet",
                         resume=cfg.resume)
    finally:  # interrupted too: keep the weights reached
        save_world_controlnet(out / "controlnet" / "model", controlnet, np.float32)
    return controlnet


def train_world_inpaint(cfg: ConditionedTrainConfig, frozen: _Frozen, pool: dict, out: Path):
    from jaxvedit.diffusion.schedules import NoiseSchedule
    from jaxvedit.models.inpaint import inpainting_unet_from_text_unet
    from jaxvedit.training.inpaint import inpaint_loss

    schedule = NoiseSchedule.sd15()
    unet9 = _own_copy(inpainting_unet_from_text_unet(frozen.unet))
    data = {**pool, **frozen.states("vae", "text")}

    def loss_fn(model, key, data):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        b = cfg.inpaint_batch
        idx, (rgb, _, visible) = _draw(k1, data["arrays"], b, cfg.frames, cfg.size)
        regen = inpaint_masks(k2, visible, cfg.size)
        vae = frozen.merge(data, "vae")
        x = rgb * 2.0 - 1.0
        both = jax.lax.stop_gradient(vae.encode_to_latents(
            jnp.concatenate([x, x * (regen < 0.5)[..., None]])))
        f = cfg.size // both.shape[1]
        text = frozen.merge(data, "text")
        ctx = jax.lax.stop_gradient(text(data["tokens"][idx]).last_hidden_state)
        empty = jax.lax.stop_gradient(text(data["empty"][None]).last_hidden_state)
        batch = {"latents": both[:b].astype(jnp.float32),
                 "mask": regen[:, ::f, ::f, None],  # nearest resize at an integer factor
                 "masked_latents": both[b:].astype(jnp.float32), "context": ctx,
                 "uncond_context": jnp.broadcast_to(empty, ctx.shape)}
        return inpaint_loss(model, batch, k3, schedule, uncond_prob=cfg.caption_dropout)

    fcfg = FitConfig(steps=cfg.inpaint_steps, seconds=cfg.inpaint_seconds,
                     learning_rate=cfg.inpaint_lr, warmup=100, seed=cfg.seed + 12,
                     progress=cfg.progress, log_every=50, checkpoint_every=1000)
    try:
        unet9 = fit("inpaint", unet9, loss_fn, data, fcfg, out / "inpaint", resume=cfg.resume)
    finally:
        save_world_inpaint_unet(out / "inpaint" / "model", unet9, np.float32)
    return unet9


# ----------------------------------------------------------------------------------------------
# saving


def save_world_controlnet(folder: Path, controlnet, dtype=np.float16) -> Path:
    """The ControlNet as a diffusers folder with ``dtype`` weights."""
    from safetensors.numpy import save_file

    from jaxvedit.models.controlnet_io import WEIGHTS_NAME
    from jaxvedit.models.weights import module_to_torch_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conf = {"_class_name": "ControlNetModel", "_diffusers_version": "0.42.0",
            **controlnet.config.to_dict()}
    (folder / "config.json").write_text(json.dumps(conf, indent=2))
    state = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(dtype))
             for k, v in module_to_torch_state_dict(controlnet).items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def save_world_inpaint_unet(folder: Path, unet9, dtype=np.float16) -> Path:
    conf = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.30.0",
            **unet9.config.to_dict()}
    return wm.save_component(folder, unet9, conf, "diffusion_pytorch_model.safetensors", dtype)


def train_conditioned(cfg: ConditionedTrainConfig) -> dict:
    from jaxvedit.models.clip import load_tokenizer
    from jaxvedit.models.loading import resolve_source

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    _, base = resolve_source(cfg.base)
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    _log(f"devices: {jax.devices()}; base pipeline {base}")
    frozen = _Frozen(base, dtype)
    pool = _pool_data(cfg, load_tokenizer(base)) if set(cfg.stages) - {"export"} else None
    times, written = {}, {}
    for stage in cfg.stages:
        t0 = time.perf_counter()
        if stage == "controlnet":
            train_world_controlnet(cfg, frozen, pool, out)
        elif stage == "inpaint":
            train_world_inpaint(cfg, frozen, pool, out)
        else:
            from jaxvedit.models.controlnet_io import load_controlnet
            from jaxvedit.models.loading import load_unet

            if (out / "controlnet" / "model").is_dir():
                cn = load_controlnet(out / "controlnet" / "model")
                written["controlnet"] = str(save_world_controlnet(out / "export" / "controlnet", cn))
            if (out / "inpaint" / "model").is_dir():
                u9 = load_unet(out / "inpaint" / "model", subfolder=None)
                written["inpaint_unet"] = str(save_world_inpaint_unet(out / "export" / "inpaint" / "unet", u9))
            _log(f"[export] wrote {written}")
        times[stage] = time.perf_counter() - t0
    summary = {"output_dir": str(out), "stage_seconds": times, "exported": written}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    from jaxvedit.cli import parse_config

    cfg = parse_config(ConditionedTrainConfig, argv, prog="python -m jaxvedit.world.train_conditioned")
    print(json.dumps(train_conditioned(cfg), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
