"""Adapter training: model assembly, the jitted data-parallel step, checkpoints, logging.

One optimizer step = ``accumulate`` micro-batches (optax ``MultiSteps``); each micro-batch is
``batch_size`` clips of ``frames`` adjacent frames. Everything random is a function of
``(seed, micro-batch position)``, and checkpoints store the adapter and optimizer states with that
position, so a resumed run reproduces an uninterrupted one. See ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvedit.adapters import (PRESETS, LoRAConfig, PromptTokenConfig, PromptTokens, adapter_optimizer,
                               apply_lora, drop_text_condition, init_adapter_training,
                               make_adapter_train_step, save_adapter)
from jaxvedit.cli import config_to_dict
from jaxvedit.data.dataset import ClipDataset, Encoders
from jaxvedit.diffusion.ddim import add_noise
from jaxvedit.diffusion.schedules import NoiseSchedule
from jaxvedit.losses.total import LossConfig, total_loss
from jaxvedit.models.hooks import FeatureHooks
from jaxvedit.training.checkpoint import CheckpointStore
from jaxvedit.training.config import TrainConfig
from jaxvedit.training.logging import MetricsLog, ProgressBar


class AdapterModel(nnx.Module):
    """What training updates: ``unet`` (a LoRA-wrapped UNet) and its prompt ``tokens``; an
    optional frozen ``controlnet`` adds its residuals (its weights are no ``AdapterParam``)."""

    def __init__(self, unet, tokens: PromptTokens | None, controlnet=None):
        self.unet = unet
        self.tokens = tokens
        self.controlnet = controlnet


# ----------------------------------------------------------------------------------------------
# assembly


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_demo(cfg: TrainConfig) -> TrainConfig:
    """The embedded demo: the shipped world model and 12 rendered world videos (once)."""
    from jaxvedit.world.demo import write_demo_dataset
    from jaxvedit.world.models import world_model_path

    data_dir = write_demo_dataset(Path(cfg.output_dir) / "world-data")
    model = world_model_path()
    _log(f"demo: the world model {model}, rendered world videos in {data_dir}")
    return dataclasses.replace(cfg, model=str(model), data=str(data_dir))


def _fingerprint(source: str, extra: dict) -> str:
    p = Path(source)
    if p.exists():
        files = sorted(p.rglob("*.safetensors")) if p.is_dir() else [p]
        ident = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    else:
        ident = [source]
    return hashlib.sha1(json.dumps([ident, extra], sort_keys=True).encode()).hexdigest()[:16]


def _vision_source(cfg: TrainConfig, model_path: Path | None = None) -> tuple[str, str | None]:
    if cfg.vision_model:
        return cfg.vision_model, None
    root = model_path if model_path is not None else (Path(cfg.model) if cfg.model else None)
    if root is not None and (root / "image_encoder" / "config.json").is_file():
        return str(root), "image_encoder"
    return "openai/clip-vit-base-patch32", None


class Components:
    """The frozen pieces (VAE, text and vision encoders, tokenizer) and the trainable model."""

    def __init__(self, cfg: TrainConfig):
        from jaxvedit.models import load_components
        from jaxvedit.models.clip import CLIPVisionModel, load_tokenizer

        from jaxvedit.adapters.records import vision_tower_record
        from jaxvedit.models.loading import resolve_source

        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        kind, model_path = resolve_source(cfg.model, ("unet", "vae", "text_encoder", "tokenizer",
                                                      "scheduler", "image_encoder"))
        comps = load_components(model_path, ("unet", "vae", "text_encoder"), dtype=dtype)
        self.vae, self.text_encoder = comps["vae"], comps["text_encoder"]
        tok_root = model_path if kind == "folder" else None
        if tok_root is None or not (tok_root / "tokenizer").is_dir():
            raise FileNotFoundError(f"--model {cfg.model}: no tokenizer/ folder (a single-file "
                                    "checkpoint carries none: use a diffusers folder)")
        self.tokenizer = load_tokenizer(tok_root)
        self.vision = self.vision_record = None
        if cfg.unshared_tokens:
            src, sub = _vision_source(cfg, model_path)
            self.vision = CLIPVisionModel.from_pretrained(src, subfolder=sub)
            # the adapter file records the tower (source + fingerprints): edit finds and checks it
            self.vision_record = vision_tower_record(self.vision, src, sub)
        sched_file = model_path / "scheduler" / "scheduler_config.json"
        self.schedule = NoiseSchedule.from_config(sched_file) if sched_file.is_file() else NoiseSchedule.sd15()
        unet = comps["unet"]
        ctx_dim = unet.config.cross_attention_dim
        ctx_dim = ctx_dim if isinstance(ctx_dim, int) else ctx_dim[0]
        rngs = nnx.Rngs(cfg.seed)
        targets = cfg.lora_targets
        targets = targets[0] if len(targets) == 1 and targets[0] in PRESETS else tuple(targets)
        try:
            lora_unet = apply_lora(unet, LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                                    targets=targets, tau=cfg.tau), rngs=rngs)
        except KeyError as err:
            raise ValueError(f"--lora-targets: {err.args[0]}") from err
        tokens = None
        if cfg.unshared_tokens or cfg.n_shared_tokens:
            vdim = self.vision.config.hidden_size if self.vision is not None else ctx_dim
            tokens = PromptTokens(PromptTokenConfig(n_share=cfg.n_shared_tokens, vision_dim=vdim,
                                                    context_dim=ctx_dim, pooling=cfg.pooling,
                                                    text_dropout=cfg.text_dropout), rngs=rngs)
        controlnet = None
        if cfg.controlnet:  # frozen, as the authors' (jaxvedit.training.controlnet)
            from jaxvedit.models.controlnet import check_controlnet_fits_unet
            from jaxvedit.models.controlnet_io import load_controlnet

            controlnet = load_controlnet(cfg.controlnet, dtype=dtype)
            check_controlnet_fits_unet(controlnet, unet)
        self.model = AdapterModel(lora_unet, tokens, controlnet)
        self.fingerprint = _fingerprint(cfg.model, {"vision": list(_vision_source(cfg, model_path))
                                                    if cfg.unshared_tokens else None})
        self._text_cache: dict[str, np.ndarray] = {}
        self._encode_text = jax.jit(lambda ids: self.text_encoder(ids).last_hidden_state)

    def encoders(self, batch: int = 8) -> Encoders:
        from jaxvedit.data.video import to_model_range
        from jaxvedit.metrics import clip_preprocess

        vae = self.vae
        enc = jax.jit(lambda x: vae.encode_to_latents(x))

        def latents(frames):
            x = to_model_range(frames)
            return np.concatenate([np.asarray(enc(jnp.asarray(x[i:i + batch])))
                                   for i in range(0, len(x), batch)])

        vision_fn = None  # no unshared tokens: nothing to encode
        if self.vision is not None:
            vis = self.vision
            size = vis.config.image_size
            run = jax.jit(lambda x: vis(x).last_hidden_state)

            def vision_fn(frames):
                x = clip_preprocess(frames, size)
                return np.concatenate([np.asarray(run(jnp.asarray(x[i:i + batch])))
                                       for i in range(0, len(x), batch)])

        return Encoders(latents, vision_fn, self.fingerprint)

    def text_embeddings(self, captions: list[str]) -> np.ndarray:
        from jaxvedit.models.clip import tokenize

        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            ids = tokenize(self.tokenizer, missing)
            emb = np.asarray(self._encode_text(jnp.asarray(ids)), np.float32)
            self._text_cache.update(zip(missing, emb))
        return np.stack([self._text_cache[c] for c in captions])


# ----------------------------------------------------------------------------------------------
# the step


def make_loss_fn(cfg: TrainConfig, schedule: NoiseSchedule, empty_text: jax.Array):
    loss_cfg = LossConfig(w_diff=cfg.diffusion_weight, lambda_temporal=cfg.temporal_weight,
                          tau=cfg.tau, num_train_timesteps=schedule.num_train_timesteps,
                          temporal_form=cfg.temporal_form, temporal_mode=cfg.temporal_mode)
    n_train = schedule.num_train_timesteps

    def loss_fn(model: AdapterModel, batch, key):
        lat = batch["latents"]  # (B, T, h, w, C)
        b, t_frames = lat.shape[:2]
        k_t, k_noise, k_drop, k_t2 = jax.random.split(key, 4)
        t = jax.random.randint(k_t, (b,), 0, n_train)  # one timestep per clip
        if cfg.temporal_form == "cross_timestep":
            # the authors' variant: one adjacent pair at two timesteps -> 2 x 2 frames per clip
            t2 = jax.random.randint(k_t2, (b,), 0, n_train)
            lat = jnp.concatenate([lat[:, :2], lat[:, :2]], axis=1)
            tt = jnp.concatenate([jnp.repeat(t[:, None], 2, 1), jnp.repeat(t2[:, None], 2, 1)], 1)
            t_frames = 4
        else:
            tt = jnp.repeat(t[:, None], t_frames, axis=1)
        noise = jax.random.normal(k_noise, lat.shape, jnp.float32)
        flat = lambda a: a.reshape((b * t_frames,) + a.shape[2:])
        x_t = add_noise(schedule, flat(lat), flat(noise), flat(tt))
        text = jnp.repeat(batch["text"], t_frames, axis=0)  # (B*T, L, D)
        text = drop_text_condition(k_drop, text, empty_text, cfg.text_dropout, group_size=t_frames)
        if model.tokens is not None:
            vision = batch.get("vision")
            if cfg.unshared_tokens:
                if cfg.temporal_form == "cross_timestep":
                    vision = jnp.concatenate([vision[:, :2], vision[:, :2]], axis=1)
                ctx = model.tokens.context(flat(vision), text)
            else:
                shared = jnp.broadcast_to(model.tokens.shared.value[None],
                                          (text.shape[0],) + model.tokens.shared.value.shape)
                ctx = jnp.concatenate([shared.astype(text.dtype), text], axis=1)
        else:
            ctx = text
        hooks = FeatureHooks(capture=cfg.feature_taps)
        extra = {}
        if model.controlnet is not None:  # depth maps (B, T, H, W, 3), arranged as the latents
            from jaxvedit.training.controlnet import residual_kwargs

            depth = batch.get("depth")
            if depth is not None and cfg.temporal_form == "cross_timestep":
                depth = jnp.concatenate([depth[:, :2], depth[:, :2]], axis=1)
            extra = residual_kwargs(model.controlnet, x_t, flat(tt), ctx,
                                    None if depth is None else flat(depth), cfg.controlnet_scale)
        eps = model.unet(x_t, flat(tt), ctx, hooks=hooks, **extra)
        feats = {k: v.astype(jnp.float32) for k, v in hooks.captured.items()}
        if not feats:
            raise ValueError(f"feature_taps {cfg.feature_taps} matched no UNet module")
        if cfg.temporal_form == "cross_timestep":
            per_clip = []
            for c in range(b):
                pairs = [(f[c * 4:c * 4 + 2], f[c * 4 + 2:c * 4 + 4]) for f in feats.values()]
                per_clip.append(total_loss(eps[c * 4:(c + 1) * 4], flat(noise)[c * 4:(c + 1) * 4],
                                           pairs, t[c], loss_cfg))
            loss = jnp.mean(jnp.stack([p[0] for p in per_clip]))
            parts = {k: jnp.mean(jnp.stack([p[1][k] for p in per_clip])) for k in per_clip[0][1]}
        else:
            loss, parts = total_loss(eps, flat(noise), feats, flat(tt), loss_cfg,
                                     frames_per_clip=t_frames)
        return loss, parts

    return loss_fn


# ----------------------------------------------------------------------------------------------
# the loop


def _devices(cfg: TrainConfig):
    devs = jax.devices()
    if cfg.devices:
        if cfg.devices > len(devs):
            raise ValueError(f"--devices {cfg.devices}: only {len(devs)} visible ({devs})")
        devs = devs[:cfg.devices]
    return devs


def _depth_fn(cfg: TrainConfig):
    """``--depth auto``: depth maps computed (and cached with the latents) where none are given."""
    if cfg.depth != "auto":
        return None
    from jaxvedit.models.depth import _fingerprint, compute_depth
    from jaxvedit.models.depth_anything import resolve_depth_folder

    def depth_fn(frames):
        return compute_depth(frames, model=cfg.depth_model)

    depth_fn.fingerprint = _fingerprint(resolve_depth_folder(cfg.depth_model))  # in the cache key
    return depth_fn


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary with the paths written."""
    if cfg.multihost:
        jax.distributed.initialize()
    if cfg.model is None and cfg.data is None:
        cfg = prepare_demo(cfg)
    if cfg.model is None or cfg.data is None:
        raise ValueError("give both --model and --data (or neither, for the embedded demo)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    devices = _devices(cfg)
    n_dev = len(devices)
    batch_size = cfg.batch_size or n_dev
    if batch_size % n_dev:
        raise ValueError(f"batch_size={batch_size} clips cannot be split evenly over {n_dev} devices")
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))

    comps = Components(cfg)
    dataset = ClipDataset(cfg.data, encoders=comps.encoders(), frames=cfg.frames,
                          resolution=cfg.resolution, frame_stride=cfg.frame_stride,
                          max_frames=cfg.max_frames, cache_dir=cfg.cache_dir, seed=cfg.seed, log=_log,
                          depth_fn=_depth_fn(cfg))
    if cfg.controlnet:
        from jaxvedit.training.controlnet import check_training_depth

        check_training_depth(dataset, cfg.controlnet)
    captions = dataset.captions
    empty_text = jnp.asarray(comps.text_embeddings([""])[0])
    tx = adapter_optimizer(cfg.learning_rate, warmup_steps=cfg.warmup_steps,
                           weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm or None,
                           accumulate=cfg.accumulate)
    state = init_adapter_training(comps.model, tx)
    state.params = jax.device_put(state.params, replicated)
    state.frozen = jax.device_put(state.frozen, replicated)
    state.opt_state = jax.device_put(state.opt_state, replicated)
    step_fn = make_adapter_train_step(make_loss_fn(cfg, comps.schedule, empty_text), state)

    store = CheckpointStore(out / "checkpoints", keep=cfg.keep_checkpoints)
    position = 0
    if cfg.resume:
        restored = store.restore_latest(state.params, state.opt_state)
        if restored is None:
            _log(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from scratch")
        else:
            params, opt_state, meta = restored
            state.params = jax.device_put(params, replicated)
            state.opt_state = jax.device_put(opt_state, replicated)
            position = int(meta["position"])
            _log(f"resumed from optimizer step {meta['step']} (micro-batch {position})")
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    metrics = MetricsLog(out / "metrics.jsonl", truncate_after_step=position // cfg.accumulate)
    base_key = jax.random.key(cfg.seed)
    total_micro = cfg.steps * cfg.accumulate
    bar = ProgressBar(cfg.steps, initial=position // cfg.accumulate, enabled=cfg.progress)

    def save(reason: str):
        step = position // cfg.accumulate
        store.save(step, state.params, state.opt_state,
                   {"step": step, "position": position, "seed": cfg.seed, "reason": reason,
                    "config": config_to_dict(cfg)})
        metrics.plot(out / "loss_curve.png")

    pending = []
    stop = {"requested": False}

    def request_stop(signum, frame):  # Ctrl-C / SIGTERM: finish the micro-batch, then save
        if stop["requested"]:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        stop["requested"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    t_start = time.perf_counter()
    try:
        while position < total_micro and not stop["requested"]:
            raw = dataset.batch(position, batch_size)
            batch = {"latents": raw["latents"],
                     "text": comps.text_embeddings([captions[i] for i in raw["caption_index"]])}
            if "vision" in raw and cfg.unshared_tokens:
                batch["vision"] = raw["vision"]
            if cfg.controlnet:
                batch["depth"] = raw["depth"]
            batch = jax.device_put(batch, sharded)
            key = jax.random.fold_in(base_key, position)
            loss, aux = state.step(step_fn, batch, key)
            pending.append((loss, aux))
            position += 1
            if position % cfg.accumulate == 0:
                step = position // cfg.accumulate
                if step % cfg.log_every == 0 or step == cfg.steps:
                    vals = jax.device_get(pending)
                    rec = {"step": step, "loss": float(np.mean([v[0] for v in vals])),
                           **{k: float(np.mean([v[1][k] for v in vals])) for k in vals[0][1]},
                           "time": time.perf_counter() - t_start}
                    metrics.write(rec)
                    bar.update(step, rec)
                    pending = []
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    save("periodic")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bar.close()
    interrupted = stop["requested"] and position < total_micro
    if interrupted:
        _log(f"\ninterrupted at micro-batch {position}: checkpoint written, continue with --resume")
    save("interrupt" if interrupted else "final")
    store.wait()
    state.write_back(comps.model)
    adapter_dir = out / "adapter"
    base = {"base_model": {"source": str(Path(cfg.model).resolve()) if Path(cfg.model).exists()
                           else cfg.model}}
    save_adapter(adapter_dir / "lora", comps.model.unet.lora,
                 extra={"trained_steps": position // cfg.accumulate}, record=base)
    if comps.model.tokens is not None:
        save_adapter(adapter_dir / "prompt_tokens", comps.model.tokens,
                     record={**base, "unshared": bool(cfg.unshared_tokens),
                             "vision_tower": comps.vision_record})
    summary = {"output_dir": str(out), "steps": position // cfg.accumulate, "interrupted": interrupted,
               "adapter": str(adapter_dir), "metrics": str(out / "metrics.jsonl"),
               "loss_curve": str(out / "loss_curve.png"), "checkpoints": str(out / "checkpoints"),
               "first_loss": metrics.first("loss"), "last_loss": metrics.last("loss"),
               "devices": n_dev}
    if interrupted:
        raise SystemExit(130)
    return summary
