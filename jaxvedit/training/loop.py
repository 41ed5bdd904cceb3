"""The training loop: devices and mesh, data, optimizer, checkpoints and exact resume,
Ctrl-C handling, metrics, and the adapter files written at the end.

One optimizer step = ``accumulate`` micro-batches (optax ``MultiSteps``); each micro-batch is
``batch_size`` clips of ``frames`` adjacent frames. Everything random is a function of
``(seed, micro-batch position)``, and checkpoints store the adapter and optimizer states with that
position, so a resumed run reproduces an uninterrupted one. See ``docs/training.md``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvedit.adapters import adapter_optimizer, init_adapter_training, make_adapter_train_step, save_adapter
from jaxvedit.cli import config_to_dict
from jaxvedit.data.dataset import ClipDataset
from jaxvedit.training.checkpoint import CheckpointStore
from jaxvedit.training.components import Components, _log, prepare_demo
from jaxvedit.training.config import TrainConfig
from jaxvedit.training.logging import MetricsLog, ProgressBar
from jaxvedit.training.step import make_loss_fn




def _devices(cfg: TrainConfig):
    devs = jax.devices()
    if cfg.devices:
        if cfg.devices > len(devs):
            raise ValueError(f"--devices {cfg.devices}: only {len(devs)} visible ({devs})")
        devs = devs[:cfg.devices]
    return devs


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
                          max_frames=cfg.max_frames, cache_dir=cfg.cache_dir, seed=cfg.seed, log=_log)
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
    save_adapter(adapter_dir / "lora", comps.model.unet.lora,
                 extra={"trained_steps": position // cfg.accumulate})
    if comps.model.tokens is not None:
        save_adapter(adapter_dir / "prompt_tokens", comps.model.tokens)
    summary = {"output_dir": str(out), "steps": position // cfg.accumulate, "interrupted": interrupted,
               "adapter": str(adapter_dir), "metrics": str(out / "metrics.jsonl"),
               "loss_curve": str(out / "loss_curve.png"), "checkpoints": str(out / "checkpoints"),
               "first_loss": metrics.first("loss"), "last_loss": metrics.last("loss"),
               "devices": n_dev}
    if interrupted:
        raise SystemExit(130)
    return summary
