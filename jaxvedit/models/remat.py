"""Activation checkpointing (rematerialisation) of UNet blocks, compatible with feature hooks.

With ``unet.remat = True`` the UNet runs each down, mid and up block under ``jax.checkpoint``: the
backward pass recomputes the block's inner activations from its inputs instead of keeping them,
so the training step's activation memory drops to the block boundaries plus one block, for
about one more forward pass of compute (measured in ``bench/train_e2e.py``).

Feature hooks record values *inside* blocks (the temporal loss taps ``attn1`` outputs). Inside
the checkpointed function (``jax.checkpoint`` over the block's split state) those are values of
an inner trace, so the block records into its own :class:`FeatureHooks` and returns the
captured values through the checkpoint boundary; they are then added to the caller's hooks
like an ordinary capture.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxvedit.models import hooks as _hooks


def call_block(block, *args, remat: bool = False, **static):
    """``block(*args, **static)``, under ``jax.checkpoint`` when ``remat`` (hooks keep working);
    ``static`` holds non-array arguments (sizes), closed over rather than traced."""
    if not remat:
        return block(*args, **static)
    parent = _hooks._ACTIVE.get()
    seen: list[str] = []
    graphdef, state = nnx.split(block)

    def inner(state, *args):  # split state in, as everywhere: no module crosses the boundary
        child = _hooks.FeatureHooks(parent.capture, parent.transform) if parent is not None else None
        with _hooks.hooks_active(child):
            out = nnx.merge(graphdef, state)(*args, **static)
        if child is None:
            return out, {}
        seen.extend(child.seen)
        return out, dict(child.captured)

    out, captured = jax.checkpoint(inner)(state, *args)
    if parent is not None:
        parent.seen.extend(seen)
        parent.captured.update(captured)
    return out
