"""One training loop for the world's models (full-model training, not adapters).

``fit`` trains the ``nnx.Param`` state of a module with AdamW (global-norm clipping, linear
warm-up then cosine decay to 10 %), optionally keeping an exponential moving average, in one
jit-compiled step over split state (``nnx.split`` outside, ``nnx.merge`` inside; the data and the
weights are arguments). Every random draw of step ``i`` comes from ``fold_in(key, i)``, and
checkpoints (orbax, atomic) hold the parameters, the EMA, the optimizer state and the step, so a
resumed run equals an uninterrupted one. With ``steps=0`` the step count is planned from a time
budget: the first steps are timed after compilation and warm-up, and the plan is written down
before training goes on, so a resume follows the same plan.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxvedit.training.checkpoint import CheckpointStore
from jaxvedit.training.logging import MetricsLog


@dataclass(frozen=True)
class FitConfig:
    steps: int = 0  # 0: plan from `seconds`
    seconds: float = 60.0  # time budget when steps == 0
    max_steps: int = 100_000
    min_steps: int = 50
    learning_rate: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    ema: float = 0.0  # 0: no EMA
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    progress: bool = True


def lr_at(step: int, total: int, cfg: FitConfig) -> float:
    if step < cfg.warmup:
        return cfg.learning_rate * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0))))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fit(name: str, model: nnx.Module, loss_fn: Callable, data, cfg: FitConfig, out_dir: Path,
        resume: bool = True, stop_at: int | None = None) -> nnx.Module:
    """Train ``model`` in place on ``loss_fn(model, key, data) -> (loss, aux dict)``; returns the
    model holding the final weights (the EMA weights when ``cfg.ema``). ``stop_at``: stop after
    that step as a Ctrl-C would (checkpoint, :class:`TrainingInterrupted`)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
                     optax.scale_by_adam(b1=0.9, b2=0.99),
                     optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity())
    state = {"params": params, "ema": jax.tree.map(jnp.copy, params) if cfg.ema else {}}
    opt_state = tx.init(params)

    def step_fn(state, opt_state, step, lr, data):
        key = jax.random.fold_in(jax.random.key(cfg.seed), step)

        def objective(p):
            return loss_fn(nnx.merge(graphdef, p, rest), key, data)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, opt_state, state["params"])
        params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), state["params"], updates)
        new = {"params": params, "ema": state["ema"]}
        if cfg.ema:
            decay = jnp.minimum(cfg.ema, (1.0 + step) / (10.0 + step))
            new["ema"] = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema"], params)
        return new, opt_state, {"loss": loss, **aux}

    step_jit = jax.jit(step_fn, donate_argnums=(0, 1))
    store = CheckpointStore(out_dir / "checkpoints", keep=2)
    plan_file = out_dir / "plan.json"
    start = 0
    if resume and store.latest_step() is not None:
        params_r, opt_r, meta = store.restore_latest(state, opt_state)
        state, opt_state, start = params_r, opt_r, int(meta["step"])
        _log(f"[{name}] resumed at step {start}")
    total = json.loads(plan_file.read_text())["steps"] if (resume and plan_file.is_file()) else cfg.steps
    if not resume:
        plan_file.unlink(missing_ok=True)
    metrics = MetricsLog(out_dir / "metrics.jsonl", truncate_after_step=start)

    def save(step):
        store.save(step, state, opt_state, {"step": step, "total": total, "stage": name})

    stop = {"requested": False}

    def request_stop(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = None
    step, pending, t_last, n_last = start, [], time.perf_counter(), start
    try:
        t_compile = time.perf_counter()
        while total == 0 or step < total:
            if stop["requested"]:
                break
            lr = lr_at(step, total or cfg.max_steps, cfg)
            state, opt_state, aux = step_jit(state, opt_state, jnp.int32(step), jnp.float32(lr), data)
            pending.append(aux)
            step += 1
            if step == start + 1:
                jax.block_until_ready(aux)
                _log(f"[{name}] compiled and ran the first step in {time.perf_counter() - t_compile:.1f} s")
            if total == 0 and step == start + 30:  # plan from the timing of steps 11..30
                jax.block_until_ready(aux)
                t0 = time.perf_counter()
                for _ in range(20):
                    state, opt_state, aux = step_jit(state, opt_state, jnp.int32(step),
                                                     jnp.float32(lr_at(step, cfg.max_steps, cfg)), data)
                    pending.append(aux)
                    step += 1
                jax.block_until_ready(aux)
                per_step = (time.perf_counter() - t0) / 20
                total = int(min(cfg.max_steps, max(cfg.min_steps, cfg.seconds / per_step)))
                total = max(total, step)
                plan_file.write_text(json.dumps({"steps": total, "seconds_per_step": per_step,
                                                 "budget_s": cfg.seconds}))
                _log(f"[{name}] {per_step * 1e3:.2f} ms/step: planned {total} steps for {cfg.seconds:.0f} s")
            if bar is None and total:
                bar = tqdm(total=total, initial=step, unit="step", desc=name, disable=not cfg.progress,
                           dynamic_ncols=True, file=sys.stderr)
            if bar is not None and (step % cfg.log_every == 0 or step == total):
                vals = jax.device_get(pending)
                pending = []
                now = time.perf_counter()
                rec = {"step": step, **{k: float(np.mean([v[k] for v in vals])) for k in vals[0]},
                       "lr": lr, "steps_per_s": (step - n_last) / max(now - t_last, 1e-9)}
                t_last, n_last = now, step
                metrics.write(rec)
                bar.update(step - bar.n)
                bar.set_postfix({k: f"{rec[k]:.4g}" for k in list(vals[0])[:3]}, refresh=False)
            if total and step % cfg.checkpoint_every == 0 and step < total:
                save(step)
            if stop_at is not None and step >= stop_at:
                stop["requested"] = True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if bar is not None:
            bar.close()
    interrupted = stop["requested"] and (total == 0 or step < total)  # total 0: before the plan
    save(step)
    store.wait()
    metrics.plot(out_dir / "loss_curve.png")
    final = state["ema"] if cfg.ema else state["params"]
    nnx.update(model, final)
    if interrupted:
        _log(f"[{name}] interrupted at step {step}: checkpoint written, continue with --resume")
        raise TrainingInterrupted(model, step)
    return model


class TrainingInterrupted(SystemExit):
    """Ctrl-C / SIGTERM during :func:`fit`: the checkpoint is written and ``model`` holds the
    weights reached so far (exit status 130)."""

    def __init__(self, model, step: int):
        super().__init__(130)
        self.model, self.step = model, step
