"""DAPE training: stage 1 (norm-tuning) then stage 2 (vision adapter) from one config.

``python -m jaxvedit.train --method dape`` runs :func:`train_dape`; :func:`run_dape` is the same
two-stage loop on data already in memory (a benchmark row or a script calls it with the models it
holds; :mod:`jaxvedit.editing.dape` tunes on one video and edits with the result).

Both stages use an adapter-only jitted step (the one of :mod:`jaxvedit.adapters.train`, with the
graph definition a static argument and the jit cached per optimizer/loss settings, so the stages of
many videos share one compilation each): stage 1 splits the model into the ``DAPENormParam`` state (trained) and the rest (frozen: base UNet), stage 2 into the
``DAPEAdapterParam`` state (trained) and the rest (base UNet *and* stage 1's tuned norms). Each
stage has its own AdamW and optimizer state over its own subset only (stage 1: lr 5e-5 after a
100-step warm-up from 1e-6 * lr; stage 2: a fresh AdamW at constant 1e-5, as the authors' code
builds a new optimizer for it).

Optimizer steps are numbered globally (stage 1: 1..S1, stage 2: S1+1..S1+S2). Everything random
is a function of ``(seed, micro-batch position)``; stage 2's adapter init of the seed alone.
Checkpoints go to ``checkpoints/stage1`` and ``checkpoints/stage2`` (stage 2's hold the tuned
norms too); one is always written at the end of stage 1, so a run stopped anywhere, including
right at the stage boundary, resumes to exactly the adapter an uninterrupted run gives.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxvedit.adapters.dape import DAPE, DAPEUNet, count_params
from jaxvedit.adapters.params import DAPEAdapterParam, DAPENormParam
from jaxvedit.adapters.prompt_tokens import drop_text_condition
from jaxvedit.adapters.train import init_adapter_training
from jaxvedit.data import video as vio
from jaxvedit.diffusion.ddim import add_noise
from jaxvedit.losses.diffusion import diffusion_loss
from jaxvedit.training.dape_config import DAPETrainConfig


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# data in memory


class LatentClips:
    """Encoded videos in memory and the same deterministic clip sampler as
    :class:`jaxvedit.data.dataset.ClipDataset`: ``batch(position, batch_size)`` depends only on
    ``(seed, position)``. ``videos``: latents ``(N_i, h, w, C)`` per video; ``captions``: the
    captions of each video."""

    def __init__(self, videos: list[np.ndarray], captions: list[list[str]], *, frames: int,
                 frame_stride: int = 1, seed: int = 0):
        if len(videos) != len(captions) or not videos:
            raise ValueError(f"LatentClips: {len(videos)} videos but {len(captions)} caption lists")
        span = vio.clip_span(frames, frame_stride)
        for i, v in enumerate(videos):
            if np.ndim(v) != 4:
                raise ValueError(f"LatentClips: video {i} latents must be (N, h, w, C), got {np.shape(v)}")
            if len(v) < span:
                raise ValueError(f"LatentClips: video {i} has {len(v)} frames, fewer than one clip of "
                                 f"{frames} frames (stride {frame_stride})")
            if not captions[i]:
                raise ValueError(f"LatentClips: video {i} has no caption")
        self.videos = [np.asarray(v, np.float32) for v in videos]
        self.video_captions = [list(c) for c in captions]
        self.frames, self.stride, self.seed = frames, frame_stride, seed

    @property
    def captions(self) -> list[str]:
        return sorted({c for caps in self.video_captions for c in caps})

    def batch(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, position])
        index = {c: i for i, c in enumerate(self.captions)}
        lat, cap = [], []
        for _ in range(batch_size):
            k = int(rng.integers(len(self.videos)))
            starts = vio.sample_clip_starts(len(self.videos[k]), self.frames, self.stride)
            s = int(starts[int(rng.integers(len(starts)))])
            lat.append(self.videos[k][s:s + vio.clip_span(self.frames, self.stride):self.stride])
            caps = self.video_captions[k]
            cap.append(index[caps[int(rng.integers(len(caps)))]])
        return {"latents": np.stack(lat), "caption_index": np.asarray(cap, np.int32)}


# ----------------------------------------------------------------------------------------------
# optimizer and loss


def dape_optimizer(learning_rate: float, *, warmup_steps: int = 0, warmup_start: float = 1e-6,
                   weight_decay: float = 1e-2, clip_norm: float | None = None,
                   accumulate: int = 1) -> optax.GradientTransformation:
    """AdamW (0.9, 0.999, eps 1e-8, weight decay ``weight_decay``: torch's AdamW defaults, as the
    code) with the code's ``LambdaLinearScheduler`` warm-up: ``lr * (f0 + (1 - f0) * n / W)`` for
    step ``n < W`` (``f0 = warmup_start``), then ``lr``; no warm-up: constant."""
    if warmup_steps > 0:
        def sched(count):  # the multiplier as the code computes it (optax's linear_schedule
            n = jnp.minimum(count, warmup_steps).astype(jnp.float32)  # cancels at f0 ~ 1e-6)
            f = warmup_start + (1.0 - warmup_start) * n / warmup_steps
            return jnp.where(count >= warmup_steps, learning_rate, learning_rate * f)
    else:
        sched = learning_rate
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))
    tx = optax.chain(*parts)
    return optax.MultiSteps(tx, every_k_schedule=accumulate) if accumulate > 1 else tx


def make_dape_loss_fn(num_train_timesteps: int = 1000, *, text_dropout: float = 0.5,
                      offset_noise: float = 0.1):
    """``loss_fn(model: DAPEUNet, batch, key) -> (loss, {"diffusion": loss})``: the noise-prediction
    MSE (SPEC §3; the code's ``StandardDiffusionLoss`` with eps weighting is the same loss) on clips
    ``batch["latents"] (B, T, h, w, C)`` with one timestep per clip, noise per frame plus the
    code's offset noise per frame and channel, the caption ``batch["text"] (B, L, D)`` replaced by
    the empty prompt ``batch["empty_text"] (L, D)`` with probability ``text_dropout``, and the
    adapters' dropout on. ``batch["alphas_cumprod"]``: the noise schedule. (Both are inputs, not
    compiled-in constants: one compiled step serves every model folder of the same shapes.)"""

    def loss_fn(model, batch, key):
        lat = batch["latents"]
        b, t_frames = lat.shape[:2]
        k_t, k_noise, k_off, k_text, k_drop = jax.random.split(key, 5)
        t = jnp.repeat(jax.random.randint(k_t, (b,), 0, num_train_timesteps), t_frames)  # one t a clip
        noise = jax.random.normal(k_noise, lat.shape, jnp.float32)
        if offset_noise:
            noise = noise + offset_noise * jax.random.normal(k_off, (b, t_frames, 1, 1, lat.shape[-1]))
        flat = lambda a: a.reshape((b * t_frames,) + a.shape[2:])
        x_t = add_noise(batch["alphas_cumprod"], flat(lat), flat(noise), t)
        text = jnp.repeat(batch["text"], t_frames, axis=0)
        if text_dropout:
            text = drop_text_condition(k_text, text, batch["empty_text"], text_dropout,
                                       group_size=t_frames)
        eps = model(x_t, t, text, dropout_key=k_drop)
        loss = diffusion_loss(eps, flat(noise))
        return loss, {"diffusion": loss}

    return loss_fn


def _tx_spec(cfg: DAPETrainConfig, stage: int) -> tuple:
    clip = float(cfg.clip_norm) or None
    if stage == 1:
        return (cfg.stage1_learning_rate, cfg.stage1_warmup_steps, cfg.warmup_start,
                cfg.weight_decay, clip, cfg.accumulate)
    return (cfg.stage2_learning_rate, 0, cfg.warmup_start, cfg.weight_decay, clip, cfg.accumulate)


@functools.lru_cache(maxsize=32)
def _stage_tx(spec: tuple) -> optax.GradientTransformation:
    lr, warmup, start, wd, clip, acc = spec
    return dape_optimizer(lr, warmup_steps=warmup, warmup_start=start, weight_decay=wd,
                          clip_norm=clip, accumulate=acc)


@functools.lru_cache(maxsize=8)
def _compiled_step(tx_spec: tuple, loss_spec: tuple):
    """One jitted step per (optimizer, loss) settings, the model's graph definition static: runs
    of the same shapes (the stages of several videos, a resumed run) reuse one compilation."""
    tx = _stage_tx(tx_spec)
    loss_fn = make_dape_loss_fn(loss_spec[0], text_dropout=loss_spec[1], offset_noise=loss_spec[2])

    def step(graphdef, params, frozen, opt_state, batch, key):
        def objective(p):
            return loss_fn(nnx.merge(graphdef, p, frozen), batch, key)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    return jax.jit(step, static_argnums=0, donate_argnums=(1, 3))


def stage_trainer(model: DAPEUNet, stage: int, cfg: DAPETrainConfig, num_train_timesteps: int = 1000):
    """``(state, step)`` for one stage: ``state`` an :class:`~jaxvedit.adapters.train.AdapterTrainState`
    over stage 1's ``DAPENormParam`` or stage 2's ``DAPEAdapterParam`` (the optimizer state covers
    that subset only), ``step`` for ``state.step(step, batch, key)``. ``batch``: ``latents``,
    ``text``, ``empty_text``, ``alphas_cumprod``."""
    if stage not in (1, 2):
        raise ValueError(f"DAPE has stages 1 and 2, not {stage}")
    if stage == 2 and not model.dape.config.vision_adapter:
        raise ValueError("stage 2 needs the vision adapter: call dape.add_vision_adapter(rngs) first")
    spec = _tx_spec(cfg, stage)
    state = init_adapter_training(model, _stage_tx(spec),
                                  wrt=DAPENormParam if stage == 1 else DAPEAdapterParam)
    fn = _compiled_step(spec, (int(num_train_timesteps), float(cfg.text_dropout),
                               float(cfg.offset_noise)))
    graphdef = state.graphdef

    def step(params, frozen, opt_state, batch, key):
        return fn(graphdef, params, frozen, opt_state, batch, key)

    return state, step


# ----------------------------------------------------------------------------------------------
# the two-stage loop


class _Run:
    """Checkpoint stores and the metrics log of one run folder (or nothing, in memory)."""

    def __init__(self, output_dir, cfg: DAPETrainConfig, position: int | None = None):
        from jaxvedit.training.checkpoint import CheckpointStore

        self.out = Path(output_dir) if output_dir is not None else None
        self.records: list[dict] = []
        self.stores = {}
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            for s in (1, 2):
                self.stores[s] = CheckpointStore(self.out / "checkpoints" / f"stage{s}",
                                                 keep=cfg.keep_checkpoints)

    def open_metrics(self, resumed_step: int):
        from jaxvedit.training.logging import MetricsLog

        if self.out is not None:
            self.metrics = MetricsLog(self.out / "metrics.jsonl", truncate_after_step=resumed_step)
            self.records = self.metrics.records

    def write(self, rec: dict):
        if self.out is not None:
            self.metrics.write(rec)
        else:
            self.records.append(rec)


def _stage_rngs(seed: int) -> nnx.Rngs:
    return nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 2))


def run_dape(unet, clips, text_embeddings, empty_text, schedule, cfg: DAPETrainConfig, *,
             output_dir=None, log=_log) -> tuple[DAPE, dict]:
    """Train DAPE on ``unet`` (frozen; its compute dtype is used as it is) in two stages.

    ``clips``: a :class:`LatentClips` or :class:`~jaxvedit.data.dataset.ClipDataset`;
    ``text_embeddings(captions) -> (N, L, D)``; ``empty_text (L, D)``: the empty prompt's
    embedding. ``output_dir``: checkpoints, ``metrics.jsonl`` and resume (``cfg.resume``); None:
    in memory only. Returns the trained :class:`DAPE` and a summary (``interrupted`` is true
    when stopped by a signal or ``cfg.stop_after``; the DAPE is then the partial one).
    """
    acc = cfg.accumulate
    s1_micro, total_micro = cfg.stage1_steps * acc, cfg.total_steps * acc
    dape = DAPE(unet, cfg.dape_config())
    model = DAPEUNet(unet, dape)
    n_train = schedule.num_train_timesteps
    constants = {"empty_text": jnp.asarray(empty_text, jnp.float32),
                 "alphas_cumprod": jnp.asarray(schedule.alphas_cumprod, jnp.float32)}
    run = _Run(output_dir, cfg)
    position, restored = 0, None  # restored: (stage, opt_state); the values go into the model

    if cfg.resume and run.stores:
        if run.stores[2].latest_step() is not None:
            dape.add_vision_adapter(_stage_rngs(cfg.seed))
            like, _ = stage_trainer(model, 2, cfg, n_train)
            got = run.stores[2].restore_latest({"norms": nnx.state(model, DAPENormParam),
                                                "adapter": like.params}, like.opt_state)
            params, opt_state, meta = got
            params = jax.tree.map(jnp.asarray, params)
            nnx.update(model, params["norms"])
            nnx.update(model, params["adapter"])
            restored = (2, opt_state)
        elif run.stores[1].latest_step() is not None:
            like, _ = stage_trainer(model, 1, cfg, n_train)
            params, opt_state, meta = run.stores[1].restore_latest(like.params, like.opt_state)
            nnx.update(model, jax.tree.map(jnp.asarray, params))
            restored = (1, opt_state)
        else:
            meta = None
            log(f"--resume: no checkpoint in {run.out / 'checkpoints'}; starting from scratch")
        if meta is not None:
            position = int(meta["position"])
            log(f"resumed from optimizer step {meta['step']} (stage {meta['stage']}, "
                f"micro-batch {position})")
    run.open_metrics(position // acc)

    captions = clips.captions
    base_key = jax.random.key(cfg.seed)
    stop = {"requested": False}

    def request_stop(signum, frame):  # Ctrl-C / SIGTERM: finish the micro-batch, then save
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    def save(stage: int, state, reason: str):
        if not run.stores:
            return
        step = position // acc
        params = state.params if stage == 1 else {"norms": nnx.state(model, DAPENormParam),
                                                   "adapter": state.params}
        run.stores[stage].save(step, params, state.opt_state,
                               {"step": step, "stage": stage, "position": position, "seed": cfg.seed,
                                "reason": reason, "config": _config_dict(cfg)})

    def stage_loop(stage: int, state, step_fn, end: int, bar) -> bool:
        """Micro-batches up to ``end``; returns True when stopped early."""
        nonlocal position
        pending = []
        t0 = time.perf_counter()
        while position < end:
            if stop["requested"] or (cfg.stop_after and position >= cfg.stop_after * acc):
                return True
            raw = clips.batch(position, cfg.batch_size)
            batch = {"latents": jnp.asarray(raw["latents"]),
                     "text": jnp.asarray(text_embeddings([captions[i] for i in raw["caption_index"]])),
                     **constants}
            loss, aux = state.step(step_fn, batch, jax.random.fold_in(base_key, position))
            pending.append((loss, aux))
            position += 1
            if position % acc == 0:
                step = position // acc
                if step % cfg.log_every == 0 or position == end:
                    vals = jax.device_get(pending)
                    rec = {"step": step, "stage": stage, "loss": float(np.mean([v[0] for v in vals])),
                           **{k: float(np.mean([v[1][k] for v in vals])) for k in vals[0][1]},
                           "time": time.perf_counter() - t0}
                    run.write(rec)
                    bar.update(step, rec)
                    pending = []
                if step % cfg.checkpoint_every == 0 and position < end:
                    save(stage, state, "periodic")
        return False

    from jaxvedit.training.logging import ProgressBar

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = ProgressBar(cfg.total_steps, initial=position // acc, enabled=cfg.progress)
    stopped = False
    try:
        # stage 1: adjustable norm-tuning (only gamma, beta, alpha0 train)
        if position < s1_micro:
            state, step_fn = stage_trainer(model, 1, cfg, n_train)
            if restored is not None and restored[0] == 1:
                state.opt_state = restored[1]
            stopped = stage_loop(1, state, step_fn, s1_micro, bar)
            save(1, state, "interrupt" if stopped else "stage1-final")
            state.write_back(model)
        # stage 2: the vision adapter, from stage 1's result (norms frozen)
        if not stopped and cfg.stage2_steps:
            if not dape.config.vision_adapter:
                dape.add_vision_adapter(_stage_rngs(cfg.seed))
            state, step_fn = stage_trainer(model, 2, cfg, n_train)
            if restored is not None and restored[0] == 2:
                state.opt_state = restored[1]
            if position < total_micro:
                stopped = stage_loop(2, state, step_fn, total_micro, bar)
                save(2, state, "interrupt" if stopped else "final")
            state.write_back(model)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bar.close()
        for store in run.stores.values():
            store.wait()
    summary = {"steps": position // acc, "stage1_steps": cfg.stage1_steps,
               "stage2_steps": cfg.stage2_steps, "interrupted": stopped,
               "params": count_params(dape),
               "first_loss": run.records[0]["loss"] if run.records else None,
               "last_loss": run.records[-1]["loss"] if run.records else None}
    if run.out is not None and run.records:
        run.metrics.plot(run.out / "loss_curve.png")
    return dape, summary


def _config_dict(cfg) -> dict:
    from jaxvedit.cli import config_to_dict

    return config_to_dict(cfg)


# ----------------------------------------------------------------------------------------------
# models and data from a config (the CLI)


def _fingerprint(source: str) -> str:
    p = Path(source)
    if p.exists():
        files = sorted(p.rglob("*.safetensors")) if p.is_dir() else [p]
        ident = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    else:
        ident = [source]
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class DAPEModels:
    """The frozen UNet, VAE, text encoder, tokenizer and noise schedule of ``cfg.model``."""

    def __init__(self, cfg: DAPETrainConfig):
        from jaxvedit.diffusion.schedules import NoiseSchedule
        from jaxvedit.models import load_components
        from jaxvedit.models.clip import load_tokenizer

        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        root = Path(cfg.model)
        comps = load_components(cfg.model, ("unet", "vae", "text_encoder"), dtype=dtype)
        self.unet, self.vae, self.text_encoder = comps["unet"], comps["vae"], comps["text_encoder"]
        if not (root.is_dir() and (root / "tokenizer").is_dir()):
            raise FileNotFoundError(f"--model {cfg.model}: no tokenizer/ folder (a single-file "
                                    "checkpoint carries none: use a diffusers folder)")
        self.tokenizer = load_tokenizer(root)
        sched = root / "scheduler" / "scheduler_config.json"
        self.schedule = NoiseSchedule.from_config(sched) if sched.is_file() else NoiseSchedule.sd15()
        self.fingerprint = _fingerprint(cfg.model)
        vae, te = self.vae, self.text_encoder
        self._encode = jax.jit(lambda x: vae.encode_to_latents(x))
        self._text = jax.jit(lambda ids: te(ids).last_hidden_state)
        self._text_cache: dict[str, np.ndarray] = {}

    def latents(self, frames: np.ndarray, batch: int = 8) -> np.ndarray:
        x = vio.to_model_range(frames)
        return np.concatenate([np.asarray(self._encode(jnp.asarray(x[i:i + batch])), np.float32)
                               for i in range(0, len(x), batch)])

    def text_embeddings(self, captions: list[str]) -> np.ndarray:
        from jaxvedit.models.clip import tokenize

        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            emb = np.asarray(self._text(jnp.asarray(tokenize(self.tokenizer, missing))), np.float32)
            self._text_cache.update(zip(missing, emb))
        return np.stack([self._text_cache[c] for c in captions])


def prepare_demo(cfg: DAPETrainConfig) -> DAPETrainConfig:
    """The embedded demo: the tiny random model and one generated clip (written once)."""
    from jaxvedit.models.tiny import make_tiny_model

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    model_dir, video = root / "tiny-model", root / "sample.mp4"
    if not (model_dir / "unet" / "config.json").is_file():
        make_tiny_model(model_dir)
    if not video.is_file():
        vio.make_sample_video(video, frames=cfg.max_frames, size=cfg.resolution, seed=0,
                              color="red", shape="square", direction="right")
    _log(f"demo: tiny random model in {model_dir}, generated sample clip {video}")
    return dataclasses.replace(cfg, model=str(model_dir), video=str(video),
                               caption="a red square moving right")


def _clips(cfg: DAPETrainConfig, models: DAPEModels):
    if cfg.video is not None:
        video = vio.read_video(cfg.video, max_frames=cfg.max_frames)
        frames = vio.resize_center_crop(video.frames, cfg.resolution)
        _log(f"one-shot: {cfg.video}: {len(frames)} frames at {cfg.resolution}x{cfg.resolution}")
        return LatentClips([models.latents(frames)], [[cfg.caption]], frames=cfg.frames,
                           frame_stride=cfg.frame_stride, seed=cfg.seed)
    from jaxvedit.data.dataset import ClipDataset, Encoders

    return ClipDataset(cfg.data, encoders=Encoders(models.latents, None, models.fingerprint),
                       frames=cfg.frames, resolution=cfg.resolution, frame_stride=cfg.frame_stride,
                       max_frames=cfg.max_frames, cache_dir=cfg.cache_dir, seed=cfg.seed, log=_log)


def train_dape(cfg: DAPETrainConfig) -> dict:
    """Run (or resume) both stages as configured; writes ``<output_dir>/adapter/dape``. A stopped
    run (signal or ``stop_after``) writes its checkpoint and raises ``SystemExit(130)``."""
    from jaxvedit.adapters.io import save_adapter

    if cfg.model is None and cfg.data is None and cfg.video is None:
        cfg = prepare_demo(cfg)
    if cfg.model is None or (cfg.data is None and cfg.video is None):
        raise ValueError("give --model and either --video with --caption (one-shot) or --data "
                         "(or none of them, for the embedded demo)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = DAPEModels(cfg)
    clips = _clips(cfg, models)
    empty = models.text_embeddings([""])[0]
    (out / "config.json").write_text(json.dumps(_config_dict(cfg), indent=2))
    dape, summary = run_dape(models.unet, clips, models.text_embeddings, empty, models.schedule, cfg,
                             output_dir=out)
    if summary["interrupted"]:
        _log(f"\nstopped after optimizer step {summary['steps']}: checkpoint written, continue "
             "with --resume")
        raise SystemExit(130)
    adapter = save_adapter(out / "adapter" / "dape", dape,
                           extra={"trained_steps": summary["steps"],
                                  "stage1_steps": cfg.stage1_steps, "stage2_steps": cfg.stage2_steps})
    return {"output_dir": str(out), **summary, "adapter": str(adapter.parent),
            "metrics": str(out / "metrics.jsonl"), "loss_curve": str(out / "loss_curve.png"),
            "checkpoints": str(out / "checkpoints")}


def main(argv: list[str] | None = None) -> int:
    """``python -m jaxvedit.train --method dape ...``"""
    from jaxvedit.cli import parse_config
    from jaxvedit.training.dape_config import DEMO_OVERRIDES

    cfg = parse_config(DAPETrainConfig, argv, prog="python -m jaxvedit.train --method dape",
                       defaults=DEMO_OVERRIDES,
                       use_defaults=lambda given: all(given.get(k) is None
                                                      for k in ("model", "data", "video")))
    demo = cfg.model is None and cfg.data is None and cfg.video is None
    summary = train_dape(cfg)
    print(json.dumps(summary, indent=2))
    print(f"\nwrote: adapter {summary['adapter']} (edit with python -m jaxvedit.edit --adapter "
          f"{summary['adapter']}), metrics {summary['metrics']}", file=sys.stderr)
    if demo:
        print("\nThat was the embedded demo (tiny random model, generated clip). Tune on a real "
              "video with\n  python -m jaxvedit.train --method dape --model "
              "stable-diffusion-v1-5/stable-diffusion-v1-5 --video input.mp4 --caption \"...\" "
              "--output-dir runs/dape", file=sys.stderr)
    return 0
