"""Activation checkpointing (rematerialisation) of UNet blocks, compatible with feature hooks.

With ``unet.remat = True`` the UNet runs each down, mid and up block under ``nnx.remat``: the
backward pass recomputes the block's inner activations from its inputs instead of keeping them,
so the training step's activation memory drops to the block boundaries plus one block, for
about one more forward pass of compute (measured in ``bench/train_e2e.py``).

Feature hooks record values *inside* blocks (the temporal loss taps ``attn1`` outputs). Inside
``nnx.remat`` those are values of an inner trace, so a block under remat records into its own
:class:`FeatureHooks` and returns the captured values through the remat boundary; they are then
added to the caller's hooks like an ordinary capture.
"""

from __future__ import annotations

from flax import nnx

from jaxvedit.models import hooks as _hooks


def call_block(block, *args, remat: bool = False, **static):
    """``block(*args, **static)``, under ``nnx.remat`` when ``remat`` (hooks keep working);
    ``static`` holds non-array arguments (sizes), closed over rather than traced."""
    if not remat:
        return block(*args, **static)
    parent = _hooks._ACTIVE.get()
    seen: list[str] = []

    def inner(block, *args):
        child = _hooks.FeatureHooks(parent.capture, parent.transform) if parent is not None else None
        with _hooks.hooks_active(child):
            out = block(*args, **static)
        if child is None:
            return out, {}
        seen.extend(child.seen)
        return out, dict(child.captured)

    out, captured = nnx.remat(inner)(block, *args)
    if parent is not None:
        parent.seen.extend(seen)
        parent.captured.update(captured)
    return out
