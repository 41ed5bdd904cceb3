"""One compiled training step over adapter parameters only.

The model (e.g. a :class:`~jaxvedit.adapters.lora.LoRAUNet`, or any module holding the UNet and
its adapters) is split once, outside the step, into ``graphdef``, the trainable adapter state
(``wrt``, default every :class:`AdapterParam`) and the frozen rest (the base weights). The step is
one ``jax.jit``: it merges them back inside, differentiates with respect to the adapter state
only, applies the optax update and returns the new adapter and optimizer states (both donated).
The frozen state is an ordinary, non-donated input: the base weights are never copied or
updated, and the optimizer state is built over the adapter state alone, so it has no entry for
any base weight.

Usage::

    state = init_adapter_training(model, adapter_optimizer())
    step = make_adapter_train_step(loss_fn, state)   # loss_fn(model, batch, key) -> (loss, aux)
    for batch in data:
        key, sub = jax.random.split(key)
        loss, aux = state.step(step, batch, sub)
    state.write_back(model)  # adapter values into the model object
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import optax
from flax import nnx

from jaxvedit.adapters.params import AdapterParam


def adapter_optimizer(learning_rate: float = 3e-5, *, warmup_steps: int = 500,
                      weight_decay: float = 1e-2, b1: float = 0.9, b2: float = 0.999,
                      clip_norm: float | None = 1.0, accumulate: int = 1) -> optax.GradientTransformation:
    """SPEC §3 defaults: AdamW(0.9, 0.999, wd 1e-2), lr 3e-5 after a linear warm-up of 500
    steps then constant, global-norm clipping 1.0, gradient accumulation ``accumulate``."""
    if warmup_steps > 0:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps),
             optax.constant_schedule(learning_rate)], [warmup_steps])
    else:
        sched = learning_rate
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay))
    tx = optax.chain(*parts)
    return optax.MultiSteps(tx, every_k_schedule=accumulate) if accumulate > 1 else tx


@dataclass
class AdapterTrainState:
    """Split model plus optimizer state. ``params``: the trainable adapter state; ``frozen``:
    everything else (base weights; never updated)."""

    graphdef: Any
    params: nnx.State
    frozen: nnx.State
    opt_state: Any
    tx: optax.GradientTransformation
    wrt: Any = AdapterParam

    def step(self, step_fn, batch, key):
        self.params, self.opt_state, loss, aux = step_fn(self.params, self.frozen, self.opt_state,
                                                         batch, key)
        return loss, aux

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.frozen)

    def write_back(self, model: nnx.Module) -> None:
        """Copy the trained adapter values into ``model`` (the object that was split)."""
        nnx.update(model, self.params)


def init_adapter_training(model: nnx.Module, tx: optax.GradientTransformation | None = None, *,
                          wrt=AdapterParam) -> AdapterTrainState:
    """Split ``model`` into adapter state (``wrt``) and frozen rest; init ``tx`` on the former."""
    tx = tx if tx is not None else adapter_optimizer()
    graphdef, params, frozen = nnx.split(model, wrt, ...)
    if not jax.tree.leaves(params):
        raise ValueError(f"model has no parameters matching {wrt!r}: nothing to train")
    return AdapterTrainState(graphdef, params, frozen, tx.init(params), tx, wrt)


def make_adapter_train_step(loss_fn: Callable, state: AdapterTrainState, *, donate: bool = True):
    """``step(params, frozen, opt_state, batch, key) -> (params, opt_state, loss, aux)``, jitted.

    ``loss_fn(model, batch, key) -> (loss, aux)`` sees the merged model (adapter + frozen base).
    """
    graphdef, tx = state.graphdef, state.tx

    def step(params, frozen, opt_state, batch, key):
        def objective(p):
            return loss_fn(nnx.merge(graphdef, p, frozen), batch, key)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, aux

    return jax.jit(step, donate_argnums=(0, 2) if donate else ())


def adapter_train_step(model: nnx.Module, loss_fn: Callable, tx=None, *, wrt=AdapterParam):
    """Convenience: ``(state, step)`` ready for ``state.step(step, batch, key)``."""
    state = init_adapter_training(model, tx, wrt=wrt)
    return state, make_adapter_train_step(loss_fn, state)
