"""Train the world's models from scratch with the project's own Flax modules:
``python -m jaxvedit.world.train`` (``--help`` lists every option).

Stages, in order (each resumable, each writing ``<output>/<stage>/``):

1. ``vae``: an ``AutoencoderKL`` on rendered frames (L1 + L2 + 1e-6 KL); afterwards the latent
   scaling factor is set to 1 / std of the latents, as SD's 0.18215 was.
2. ``clip``: a CLIP text tower and a CLIP vision tower trained contrastively on (frame, caption)
   pairs; captions that describe the same visible attributes count as positives of each other
   (a frame does not show motion).
3. ``unet``: a ``UNet2DConditionModel`` of SD1.x blocks as a text-to-image eps-prediction model
   on VAE latents of rendered frames, with the SD1.5 noise schedule, 10 % caption dropout (for
   classifier-free guidance) and an EMA of the weights.

Frames are rendered on the device inside the jitted steps (the renderer is JAX), so no dataset is
stored. ``export`` writes the diffusers folder (float16) that ``jaxvedit`` ships.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvedit.data.encoders import jit_split
from jaxvedit.training.config import opt
from jaxvedit.world import models as wm
from jaxvedit.world.fit import FitConfig, fit

CLIP_MEAN = jnp.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = jnp.array([0.26862954, 0.26130258, 0.27577711])


@dataclass(frozen=True)
class WorldTrainConfig:
    """Train the world pipeline (VAE, CLIP text + vision, UNet) on rendered scenes, on the GPU.
    Each stage plans its step count from its time budget unless --<stage>-steps is given."""

    output_dir: str = opt("runs/world", "run folder: one subfolder per stage, pipeline/ at the end", "run")
    stages: tuple[str, ...] = opt(("vae", "clip", "unet", "export"), "stages to run, in order: vae, "
                                  "clip, unet, export", "run")
    preset: Literal["base", "tiny"] = opt("base", "model sizes: base (shipped) or tiny (CPU smoke tests)", "run")
    scenes: int = opt(20000, "training scenes in the pool (seeds of the training range)", "data")
    latent_scenes: int = opt(8000, "scenes whose frames are VAE-encoded for the UNet stage", "data")
    frames: int = opt(16, "frames per scene", "data")
    size: int = opt(128, "frame size in pixels", "data")
    seed: int = opt(0, "seed of the training draws", "run")
    resume: bool = opt(True, "continue a stage from its last checkpoint when there is one", "run")
    progress: bool = opt(True, "show progress bars", "run")
    dtype: Literal["bfloat16", "float32"] = opt("bfloat16", "compute dtype (parameters stay float32)", "run")

    vae_steps: int = opt(0, "VAE steps (0: plan from --vae-seconds)", "vae")
    vae_seconds: float = opt(100.0, "VAE time budget in seconds", "vae")
    vae_batch: int = opt(32, "frames per VAE step", "vae")
    vae_lr: float = opt(4e-4, "VAE learning rate", "vae")

    clip_steps: int = opt(0, "CLIP steps (0: plan from --clip-seconds)", "clip")
    clip_seconds: float = opt(45.0, "CLIP time budget in seconds", "clip")
    clip_batch: int = opt(256, "pairs per CLIP step", "clip")
    clip_lr: float = opt(5e-4, "CLIP learning rate", "clip")

    unet_steps: int = opt(0, "UNet steps (0: plan from --unet-seconds)", "unet")
    unet_seconds: float = opt(240.0, "UNet time budget in seconds", "unet")
    unet_batch: int = opt(256, "frames per UNet step", "unet")
    unet_lr: float = opt(3e-4, "UNet learning rate", "unet")
    unet_ema: float = opt(0.999, "EMA decay of the UNet weights (0: off)", "unet")
    caption_dropout: float = opt(0.1, "probability of the empty caption (for guidance)", "unet")
    unet_init: str | None = opt(None, "start the UNet from these weights (a unet/ folder) instead "
                                "of a random initialisation (continued training)", "unet")

    def __post_init__(self):
        bad = [s for s in self.stages if s not in ("vae", "clip", "unet", "export")]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; choose from vae, clip, unet, export")
        wm.check_frame_size(self.size)
        if self.latent_scenes > self.scenes:
            raise ValueError("latent_scenes must be <= scenes")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dtype(cfg):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def clip_pixels(frames01: jax.Array, image_size: int) -> jax.Array:
    """In-graph twin of :func:`jaxvedit.metrics.clip_preprocess` for square frames in [0, 1]."""
    b, h, w, _ = frames01.shape
    a = frames01 * 255.0
    if (h, w) != (image_size, image_size):
        a = jax.image.resize(a, (b, image_size, image_size, 3), method="cubic", antialias=True)
    a = jnp.clip(jnp.round(a), 0, 255) / 255.0
    return (a - CLIP_MEAN) / CLIP_STD


# ----------------------------------------------------------------------------------------------
# data on the device


class Pool:
    """The training scenes as device arrays, their captions' token ids, and visual-caption ids."""

    def __init__(self, cfg: WorldTrainConfig, tokenizer):
        from jaxvedit.models.clip import tokenize
        from jaxvedit.world.data import pool_arrays, training_scenes
        from jaxvedit.world.scene import caption

        t0 = time.perf_counter()
        self.specs = training_scenes(cfg.scenes, frames=cfg.frames, size=cfg.size)
        self.arrays = {k: jnp.asarray(v) for k, v in pool_arrays(self.specs).items()}
        caps = [caption(s) for s in self.specs]
        visual = [caption(s, with_motion=False) for s in self.specs]
        ids = {c: i for i, c in enumerate(dict.fromkeys(visual))}
        self.visual_id = jnp.asarray([ids[v] for v in visual], jnp.int32)
        self.tokens = jnp.asarray(tokenize(tokenizer, caps, max_length=wm.MAX_TOKENS))
        self.empty_tokens = jnp.asarray(tokenize(tokenizer, [""], max_length=wm.MAX_TOKENS))
        _log(f"scene pool: {len(self.specs)} scenes, {len(ids)} distinct visual captions "
             f"({time.perf_counter() - t0:.1f} s)")


def _draw_frames(key, arrays, n, frames, size):
    from jaxvedit.world.render import render_frames_batch

    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (n,), 0, arrays["traj"].shape[0])
    t = jax.random.randint(k2, (n,), 0, frames)
    batch = jax.tree.map(lambda a: a[idx], arrays)
    return idx, render_frames_batch(batch, t, size=size)


# ----------------------------------------------------------------------------------------------
# stages


def vae_loss(model, key, data, *, batch: int, frames: int, size: int):
    """L1 + L2 + 1e-6 KL on ``batch`` frames rendered from the scene pool ``data``."""
    k1, k2 = jax.random.split(key)
    _, images = _draw_frames(k1, data, batch, frames, size)
    x = images * 2.0 - 1.0
    post = model.encode(x)
    rec = model.decode(post.sample(k2))
    err = rec - x
    l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(err * err)
    kl = jnp.mean(post.kl())
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(l2, 1e-12))  # [-1, 1] range: peak-to-peak 2
    return l1 + l2 + 1e-6 * kl, {"l2": l2, "psnr": psnr}


def train_vae(cfg: WorldTrainConfig, pool: Pool, out: Path):
    from jaxvedit.models.vae import AutoencoderKL

    vcfg = wm.vae_config(cfg.preset)
    vae = AutoencoderKL(vcfg, rngs=nnx.Rngs(cfg.seed), dtype=_dtype(cfg))
    loss_fn = functools.partial(vae_loss, batch=cfg.vae_batch, frames=cfg.frames, size=cfg.size)

    fcfg = FitConfig(steps=cfg.vae_steps, seconds=cfg.vae_seconds, learning_rate=cfg.vae_lr,
                     warmup=200, seed=cfg.seed, progress=cfg.progress, log_every=50,
                     checkpoint_every=1000)
    vae = fit("vae", vae, loss_fn, pool.arrays, fcfg, out / "vae", resume=cfg.resume)

    # scaling factor: 1 / std of the latents of 2048 frames (SD: 0.18215)
    enc = jit_split(vae, lambda m, x: m.encode(x).mode())
    zs = []
    for i in range(8):
        _, frames = _draw_frames(jax.random.key(10_000 + i), pool.arrays, 256, cfg.frames, cfg.size)
        zs.append(np.asarray(enc(frames * 2 - 1)))
    std = float(np.std(np.concatenate(zs)))
    vcfg = {**vcfg, "scaling_factor": round(1.0 / std, 5)}
    wm.save_component(out / "vae" / "model", vae, vcfg, "diffusion_pytorch_model.safetensors", np.float32)
    _log(f"[vae] latent std {std:.4f}: scaling_factor {vcfg['scaling_factor']}")
    return vae, vcfg


class CLIPPair(nnx.Module):
    def __init__(self, text, vision):
        self.text, self.vision = text, vision
        self.logit_scale = nnx.Param(jnp.asarray(np.log(1 / 0.07), jnp.float32))


def train_clip(cfg: WorldTrainConfig, pool: Pool, out: Path):
    from jaxvedit.models.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    tcfg, vcfg = wm.text_config(cfg.preset), wm.vision_config(cfg.preset)
    rngs = nnx.Rngs(cfg.seed + 1)
    pair = CLIPPair(CLIPTextModelWithProjection.from_config(tcfg, dtype=_dtype(cfg), rngs=rngs),
                    CLIPVisionModelWithProjection.from_config(vcfg, dtype=_dtype(cfg), rngs=rngs))
    image_size = vcfg["image_size"]
    data = {"arrays": pool.arrays, "tokens": pool.tokens, "visual_id": pool.visual_id}

    def loss_fn(model, key, data):
        idx, frames = _draw_frames(key, data["arrays"], cfg.clip_batch, cfg.frames, cfg.size)
        img = model.vision(clip_pixels(frames, image_size)).image_embeds.astype(jnp.float32)
        txt = model.text(data["tokens"][idx]).text_embeds.astype(jnp.float32)
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        logits = jnp.exp(jnp.minimum(model.logit_scale[...], np.log(100.0))) * img @ txt.T
        vid = data["visual_id"][idx]
        pos = (vid[:, None] == vid[None, :]).astype(jnp.float32)
        target = pos / pos.sum(axis=1, keepdims=True)
        loss_i = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1))
        loss_t = -jnp.mean(jnp.sum(target.T * jax.nn.log_softmax(logits.T, axis=1), axis=1))
        acc = jnp.mean(pos[jnp.arange(len(vid)), jnp.argmax(logits, axis=1)])
        return 0.5 * (loss_i + loss_t), {"top1": acc}

    fcfg = FitConfig(steps=cfg.clip_steps, seconds=cfg.clip_seconds, learning_rate=cfg.clip_lr,
                     warmup=100, weight_decay=0.0, seed=cfg.seed + 1, progress=cfg.progress,
                     log_every=25, checkpoint_every=1000)
    pair = fit("clip", pair, loss_fn, data, fcfg, out / "clip", resume=cfg.resume)
    wm.save_component(out / "clip" / "text_encoder", pair.text, tcfg, "model.safetensors", np.float32)
    wm.save_component(out / "clip" / "image_encoder", pair.vision, vcfg, "model.safetensors", np.float32)
    return pair.text, tcfg, pair.vision, vcfg


def _batched(fn, x, bs):
    return jnp.concatenate([fn(x[i:i + bs]) for i in range(0, x.shape[0], bs)])


def train_unet(cfg: WorldTrainConfig, pool: Pool, vae, text, out: Path):
    from jaxvedit.diffusion.ddim import add_noise
    from jaxvedit.diffusion.schedules import NoiseSchedule
    from jaxvedit.models.unet import UNet2DConditionModel
    from jaxvedit.world.render import render_frames_batch

    ucfg = wm.unet_config(cfg.preset)
    schedule = NoiseSchedule.sd15()
    n = cfg.latent_scenes
    t0 = time.perf_counter()
    enc = jit_split(vae, lambda m, x: m.encode_to_latents(x * 2.0 - 1.0))
    sub = jax.tree.map(lambda a: a[:n], pool.arrays)
    lat = []
    per = max(1, 512 // cfg.frames)
    for i in range(0, n, per):
        part = jax.tree.map(lambda a: a[i:i + per], sub)
        b = part["traj"].shape[0]
        vid = jnp.repeat(jnp.arange(b), cfg.frames)
        ts = jnp.tile(jnp.arange(cfg.frames), b)
        frames = render_frames_batch(jax.tree.map(lambda a: a[vid], part), ts, size=cfg.size)
        z = enc(frames)
        lat.append(z.astype(jnp.bfloat16).reshape((b, cfg.frames) + z.shape[1:]))
    latents = jnp.concatenate(lat)
    text_fn = jit_split(text, lambda m, ids: m(ids).last_hidden_state)
    emb = _batched(text_fn, pool.tokens[:n], 1024).astype(jnp.bfloat16)
    empty = text_fn(pool.empty_tokens)[0].astype(jnp.bfloat16)
    jax.block_until_ready(emb)
    _log(f"[unet] encoded {n} x {cfg.frames} frames to latents {latents.shape} "
         f"({time.perf_counter() - t0:.1f} s)")
    if cfg.unet_init:
        from jaxvedit.models.loading import load_unet

        unet = load_unet(cfg.unet_init, subfolder=None, dtype=_dtype(cfg))
        unet = nnx.merge(*nnx.split(unet))  # concrete arrays
        _log(f"[unet] initialised from {cfg.unet_init}")
    else:
        unet = UNet2DConditionModel(ucfg, rngs=nnx.Rngs(cfg.seed + 2), dtype=_dtype(cfg))
    sched = {"a": jnp.asarray(schedule.alphas_cumprod)}
    data = {"latents": latents, "emb": emb, "empty": empty, **sched}

    def loss_fn(model, key, data):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        b = cfg.unet_batch
        v = jax.random.randint(k1, (b,), 0, data["latents"].shape[0])
        f = jax.random.randint(k2, (b,), 0, cfg.frames)
        x0 = data["latents"][v, f].astype(jnp.float32)
        t = jax.random.randint(k3, (b,), 0, schedule.num_train_timesteps)
        noise = jax.random.normal(k4, x0.shape)
        x_t = add_noise(schedule, x0, noise, t)
        drop = jax.random.uniform(k5, (b,)) < cfg.caption_dropout
        ctx = jnp.where(drop[:, None, None], data["empty"][None], data["emb"][v])
        eps = model(x_t, t, ctx)
        return jnp.mean(jnp.square(eps - noise)), {}

    fcfg = FitConfig(steps=cfg.unet_steps, seconds=cfg.unet_seconds, learning_rate=cfg.unet_lr,
                     warmup=500, weight_decay=0.0, ema=cfg.unet_ema, seed=cfg.seed + 2,
                     progress=cfg.progress, log_every=100, checkpoint_every=2000)
    try:
        unet = fit("unet", unet, loss_fn, data, fcfg, out / "unet", resume=cfg.resume)
    finally:  # interrupted too: keep the weights reached (the checkpoint allows --resume)
        wm.save_component(out / "unet" / "model", unet, ucfg, "diffusion_pytorch_model.safetensors",
                          np.float32)
    return unet, ucfg


# ----------------------------------------------------------------------------------------------
# the command


def _load_stage(out: Path, stage: str, cfg: WorldTrainConfig):
    """Reload a finished stage's weights (a later stage run on its own)."""
    from jaxvedit.models.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    from jaxvedit.models.loading import load_unet, load_vae

    dt = _dtype(cfg)
    if stage == "vae":
        folder = out / "vae" / "model"
        return load_vae(folder, subfolder=None, dtype=dt), json.loads((folder / "config.json").read_text())
    if stage == "clip":
        t = CLIPTextModelWithProjection.from_pretrained(out / "clip" / "text_encoder", dtype=dt)
        v = CLIPVisionModelWithProjection.from_pretrained(out / "clip" / "image_encoder", dtype=dt)
        return (t, json.loads((out / "clip" / "text_encoder" / "config.json").read_text()),
                v, json.loads((out / "clip" / "image_encoder" / "config.json").read_text()))
    folder = out / "unet" / "model"
    return load_unet(folder, subfolder=None, dtype=dt), json.loads((folder / "config.json").read_text())


def train_world(cfg: WorldTrainConfig) -> dict:
    from jaxvedit.models.clip import load_tokenizer
    from jaxvedit.world.tokenizer import write_world_tokenizer

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    write_world_tokenizer(out / "tokenizer", max_length=wm.MAX_TOKENS)
    tokenizer = load_tokenizer(out)
    _log(f"devices: {jax.devices()}")
    pool = Pool(cfg, tokenizer)
    times = {}
    vae = vcfg = text = tcfg = vision = vis_cfg = unet = ucfg = None
    for stage in cfg.stages:
        t0 = time.perf_counter()
        if stage == "vae":
            vae, vcfg = train_vae(cfg, pool, out)
        elif stage == "clip":
            text, tcfg, vision, vis_cfg = train_clip(cfg, pool, out)
        elif stage == "unet":
            if vae is None:
                vae, vcfg = _load_stage(out, "vae", cfg)
            if text is None:
                text, tcfg, vision, vis_cfg = _load_stage(out, "clip", cfg)
            unet, ucfg = train_unet(cfg, pool, vae, text, out)
        elif stage == "export":
            if vae is None:
                vae, vcfg = _load_stage(out, "vae", cfg)
            if text is None:
                text, tcfg, vision, vis_cfg = _load_stage(out, "clip", cfg)
            if unet is None:
                unet, ucfg = _load_stage(out, "unet", cfg)
            stats = {s: json.loads((out / s / "plan.json").read_text()) for s in ("vae", "clip", "unet")
                     if (out / s / "plan.json").is_file()}
            wm.write_pipeline(out / "pipeline", unet=unet, unet_cfg=ucfg, vae=vae, vae_cfg=vcfg,
                              text=text, text_cfg=tcfg, vision=vision, vision_cfg=vis_cfg,
                              extra={"training": stats, "preset": cfg.preset})
            _log(f"[export] wrote {out / 'pipeline'}")
        times[stage] = time.perf_counter() - t0
    summary = {"output_dir": str(out), "stage_seconds": times, "pipeline": str(out / "pipeline")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    from jaxvedit.cli import parse_config

    cfg = parse_config(WorldTrainConfig, argv, prog="python -m jaxvedit.world.train")
    print(json.dumps(train_world(cfg), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
