"""The training loop: processes, devices and mesh, the clip store and its loader, optimizer,
checkpoints and exact resume, Ctrl-C, metrics (JSONL + TensorBoard), validation edits, and the
adapter files written at the end.

One optimizer step = ``accumulate`` micro-batches (optax ``MultiSteps``); each micro-batch is
``batch_size`` clips of ``frames`` adjacent frames. Everything random is a function of
``(seed, micro-batch position)``, and checkpoints store the adapter and optimizer states with that
position, so a resumed run reproduces an uninterrupted one. See ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvedit.adapters import adapter_optimizer, init_adapter_training, make_adapter_train_step, save_adapter
from jaxvedit.cli import config_to_dict
from jaxvedit.data import store as st
from jaxvedit.data.loader import MicroBatchSource, make_dataset, on_device
from jaxvedit.training import distributed as dist
from jaxvedit.training.checkpoint import CheckpointStore
from jaxvedit.training.components import Components, _log, prepare_demo
from jaxvedit.training.config import TrainConfig
from jaxvedit.training.logging import MetricsLog, ProgressBar, TensorBoardLog
from jaxvedit.training.step import make_loss_fn

# options that may differ between a run and its --resume (they change neither the data order nor
# the arithmetic of a step); every other option must be equal
RESUME_MAY_CHANGE = frozenset({
    "resume", "steps", "checkpoint_every", "keep_checkpoints", "log_every", "devices", "multihost",
    "coordinator_address", "num_processes", "process_id", "progress", "loader_threads",
    "loader_workers", "prefetch", "tensorboard", "validate_every", "validation_video",
    "validation_prompt", "validation_frames", "validation_steps", "output_dir", "cache_dir", "remat",
})


class ResumeError(ValueError):
    """``--resume`` with a configuration that differs from the checkpoint's."""


def config_changes(saved: dict, current: dict) -> list[str]:
    keys = sorted((set(saved) | set(current)) - RESUME_MAY_CHANGE)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def _devices(cfg: TrainConfig):
    devs = jax.devices()
    if cfg.devices:
        if jax.process_count() > 1:
            raise ValueError("--devices selects devices of one process; a multi-host run uses all")
        if cfg.devices > len(devs):
            raise ValueError(f"--devices {cfg.devices}: only {len(devs)} visible ({devs})")
        devs = devs[:cfg.devices]
    return devs


def _peak_memory_gib() -> float | None:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    return max(peaks) / 2**30 if peaks else None


def open_training_store(cfg: TrainConfig, comps_factory) -> tuple[st.ClipStore, Components]:
    """The run's store and components: ``--data`` is a store, or a dataset folder whose store
    is prepared here on first use (each process preparing its share of the shards)."""
    data = Path(cfg.data)
    if (data / st.MANIFEST).is_file():
        store = st.ClipStore(data)
        comps = comps_factory(store.vision_shape[-1] if store.vision_shape else None)
        return store, comps
    from jaxvedit.data.prepare import PrepareConfig, default_store_path, prepare_store, store_key

    comps = comps_factory(None)
    pcfg = PrepareConfig(data=str(data), model=str(cfg.model), tokenizer=cfg.tokenizer,
                         vision_model=cfg.vision_model, vision=cfg.unshared_tokens, dtype=cfg.dtype,
                         resolution=cfg.resolution, max_frames=cfg.max_frames,
                         depth_model=cfg.depth_model if cfg.depth == "auto" else None,
                         shard=jax.process_index(), num_shards=jax.process_count(),
                         progress=cfg.progress)
    enc = comps.store_encoders()
    path = Path(cfg.cache_dir) if cfg.cache_dir else default_store_path(
        data, store_key(f"{enc.fingerprint}/{enc.vision_fingerprint if cfg.unshared_tokens else None}", pcfg))
    prepare_store(dataclasses.replace(pcfg, out=str(path)), enc, log=_log)
    dist.barrier("jaxvedit-prepare")
    return st.ClipStore(path), comps


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary with the paths written."""
    dist.initialize(cfg)
    if cfg.model is None and cfg.data is None:
        cfg = prepare_demo(cfg)
    if cfg.model is None or cfg.data is None:
        raise ValueError("give both --model and --data (or neither, for the embedded demo)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    devices = _devices(cfg)
    n_dev = len(devices)
    batch_size = cfg.batch_size or n_dev
    if batch_size % n_dev:
        raise ValueError(f"batch_size={batch_size} clips cannot be split evenly over {n_dev} devices")
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))

    store, comps = open_training_store(cfg, lambda vdim: Components(cfg, vision_dim=vdim))
    store.check(model_fingerprint=comps.fingerprint, vision_fingerprint=comps.vision_fingerprint,
                dtype=cfg.dtype, resolution=cfg.resolution, need_vision=cfg.unshared_tokens)
    if store.token_length != comps.token_length:
        raise st.StoreError(f"store {store.path} holds token ids of length {store.token_length}, "
                            f"this model's text encoder takes {comps.token_length}")
    if cfg.controlnet:
        store.check_depth(cfg.controlnet)
    fields = ("latents", "token_ids") + (("vision",) if cfg.unshared_tokens else ()) \
        + (("depth",) if cfg.controlnet else ())
    total_micro = cfg.steps * cfg.accumulate
    rows = dist.local_rows(sharded, batch_size)
    source = MicroBatchSource(store, seed=cfg.seed, frames=cfg.frames, stride=cfg.frame_stride,
                              batch_size=batch_size, rows=rows, fields=fields, length=total_micro)
    _log(f"store {store.path}: {store.num_videos} videos ({len(source.eligible)} with a clip of "
         f"{cfg.frames} frames), {len(store.skipped)} skipped when prepared; "
         f"process {jax.process_index()} of {jax.process_count()} reads clips {rows[0]}..{rows[1] - 1} "
         f"of each micro-batch of {batch_size}")

    empty_ids = comps.token_ids([""])[0]
    tx = adapter_optimizer(cfg.learning_rate, warmup_steps=cfg.warmup_steps,
                           weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm or None,
                           accumulate=cfg.accumulate)
    state = init_adapter_training(comps.model, tx)
    state.params = jax.device_put(state.params, replicated)
    state.frozen = jax.device_put(jax.tree.map(comps.base_dtype_cast, state.frozen), replicated)
    state.opt_state = jax.device_put(state.opt_state, replicated)
    nnx.update(comps.model, state.frozen)  # the model object holds the placed base, not a copy
    step_fn = make_adapter_train_step(make_loss_fn(cfg, comps.schedule, empty_ids=empty_ids), state)

    ckpts = CheckpointStore(out / "checkpoints", keep=cfg.keep_checkpoints)
    position = 0
    if cfg.resume:
        step_meta = ckpts.latest_meta()
        if step_meta is not None:
            changed = config_changes(step_meta.get("config", {}), config_to_dict(cfg))
            if changed:
                raise ResumeError(f"--resume: the configuration differs from the checkpoint's in "
                                  f"{'; '.join(changed)} (start a new --output-dir, or resume "
                                  "with the same options)")
        restored = ckpts.restore_latest(state.params, state.opt_state)
        if restored is None:
            _log(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from scratch")
        else:
            params, opt_state, meta = restored
            state.params = jax.device_put(params, replicated)
            state.opt_state = jax.device_put(opt_state, replicated)
            position = int(meta["position"])
            _log(f"resumed from optimizer step {meta['step']} (micro-batch {position})")
    if primary:
        (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    first_step = position // cfg.accumulate
    metrics = MetricsLog(out / "metrics.jsonl", truncate_after_step=first_step) if primary else None
    tb = TensorBoardLog(out / "tensorboard", purge_step=first_step + 1) \
        if primary and cfg.tensorboard else None
    validator = None
    if cfg.validate_every:
        if jax.process_count() > 1:
            _log("validation edits are off in multi-process runs (edit with the saved adapter)")
        else:
            from jaxvedit.training.validation import Validator

            validator = Validator(cfg, comps, store, out)
    base_key = jax.random.key(cfg.seed)
    bar = ProgressBar(cfg.steps, initial=first_step, enabled=cfg.progress and primary)

    def local_params():
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)

    def save(reason: str):
        step = position // cfg.accumulate
        ckpts.save(step, state.params, state.opt_state,
                   {"step": step, "position": position, "seed": cfg.seed, "reason": reason,
                    "config": config_to_dict(cfg)})
        if primary:
            try:
                metrics.plot(out / "loss_curve.png")
            except ImportError as err:  # matplotlib is optional at run time
                _log(f"loss curve not drawn ({err})")

    stop = {"requested": False}

    def request_stop(signum, frame):  # Ctrl-C / SIGTERM: finish the micro-batch, then save
        if stop["requested"]:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        stop["requested"] = True

    t_start = time.perf_counter()
    ds = make_dataset(source, start=position, stop=total_micro, threads=cfg.loader_threads,
                      prefetch=cfg.prefetch, workers=cfg.loader_workers)
    batches = iter(on_device(ds, lambda b: dist.global_batch(sharded, b, batch_size)))
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    pending, queued = [], []  # micro-batch results of the current step; steps awaiting logging
    wait = {"data_s": 0.0, "first_batch_s": None}
    last = {"step": first_step, "time": 0.0}

    def flush(keep: int):
        """Log the queued steps but the newest ``keep`` (fetching a step's loss right after
        dispatching the next keeps the device busy)."""
        while len(queued) > keep:
            step, vals, extra = queued.pop(0)
            vals = jax.device_get(vals)
            now = time.perf_counter() - t_start
            rec = {"step": step, "loss": float(np.mean([v[0] for v in vals])),
                   **{k: float(np.mean([v[1][k] for v in vals])) for k in vals[0][1]},
                   "time": now, "steps_per_s": (step - last["step"]) / max(now - last["time"], 1e-9),
                   "data_wait_s": wait["data_s"], **extra}
            last.update(step=step, time=now)
            if primary:
                metrics.write(rec)
                if tb is not None:
                    tb.write(rec)
                bar.update(step, rec)

    multi = jax.process_count() > 1
    halt = False  # single process: stop after the current micro-batch; several: at a step, all
    try:
        while position < total_micro and not halt:
            t0 = time.perf_counter()
            batch = next(batches)
            wait["data_s"] += time.perf_counter() - t0
            if wait["first_batch_s"] is None:
                wait["first_batch_s"] = time.perf_counter() - t_start
            key = jax.random.fold_in(base_key, position)
            loss, aux = state.step(step_fn, batch, key)
            pending.append((loss, aux))
            position += 1
            if position % cfg.accumulate == 0:
                step = position // cfg.accumulate
                extra = {}
                if validator is not None and step % cfg.validate_every == 0:
                    nnx.update(comps.model, jax.tree.map(jnp.copy, state.params))
                    extra = validator(step)
                if step % cfg.log_every == 0 or step == cfg.steps or extra:
                    queued.append((step, pending, extra))
                    flush(keep=1)
                pending = []
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    flush(keep=0)
                    save("periodic")
                if multi:  # every process stops at the same optimizer step
                    halt = stop["requested"] = dist.any_process(stop["requested"])
            if not multi:
                halt = stop["requested"]
        flush(keep=0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bar.close()
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    interrupted = stop["requested"] and position < total_micro
    if interrupted:
        _log(f"\ninterrupted at micro-batch {position}: checkpoint written, continue with --resume")
    save("interrupt" if interrupted else "final")
    ckpts.wait()
    if tb is not None:
        tb.close()
    nnx.update(comps.model, local_params())
    adapter_dir = out / "adapter"
    if primary:  # the files record what edit needs: base model, vision tower, unshared flag
        base = {"base_model": {"source": str(Path(cfg.model).resolve()) if Path(cfg.model).exists()
                               else cfg.model}}
        save_adapter(adapter_dir / "lora", comps.model.unet.lora,
                     extra={"trained_steps": position // cfg.accumulate}, record=base)
        if comps.model.tokens is not None:
            save_adapter(adapter_dir / "prompt_tokens", comps.model.tokens,
                         record={**base, "unshared": bool(cfg.unshared_tokens),
                                 "vision_tower": comps.vision_record})
    dist.barrier("jaxvedit-train-end")
    summary = {"output_dir": str(out), "steps": position // cfg.accumulate, "interrupted": interrupted,
               "adapter": str(adapter_dir), "metrics": str(out / "metrics.jsonl"),
               "loss_curve": str(out / "loss_curve.png"), "checkpoints": str(out / "checkpoints"),
               "first_loss": metrics.first("loss") if primary else None,
               "last_loss": metrics.last("loss") if primary else None,
               "devices": n_dev, "processes": jax.process_count(), "store": str(store.path),
               "first_batch_s": wait["first_batch_s"], "data_wait_s": wait["data_s"],
               "tensorboard": str(out / "tensorboard") if tb is not None else None,
               "peak_device_mem_gib": _peak_memory_gib()}
    if interrupted:
        raise SystemExit(130)
    return summary
