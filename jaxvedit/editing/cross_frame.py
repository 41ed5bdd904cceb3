"""Cross-frame attention without touching the model: every frame's self-attention (``attn1``)
also attends to the keys and values of the first frame of its group.

It works through the attention-projection context of :mod:`jaxvedit.models.layers`
(``_PROJECTION_ADAPTER``, the same per-call hook the LoRA uses): the outputs of ``attn1.to_k`` and
``attn1.to_v`` ``(B, N, C)`` become ``(B, 2N, C)`` = ``[own tokens; anchor frame's tokens]``
along the token axis. ``jaxvedit.models.layers.attention`` takes the key length from ``k``, so
the softmax then runs over ``2N`` keys: the frame's own ``N`` and the anchor's ``N`` (the
"sparse-causal" attention of Tune-A-Video / Text2Video-Zero, with the first frame as anchor).

The batch is split into consecutive groups of ``group`` frames (one group per classifier-free
guidance branch: ``[uncond frames; cond frames]``), and the anchor of a group is its first
element. With the switch off nothing is installed: the UNet call is bit-identical to a plain
one. For the anchor itself the keys are its own tokens twice, which leaves softmax attention
unchanged (up to rounding); a single frame therefore gives the plain output to ~1e-6.

The hook composes with an active LoRA context: it must be entered *inside* it (the LoRA's
delta is added to the projection output first, then the tokens are concatenated);
:class:`jaxvedit.editing.predictor.EditPredictor` does this.
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp

from jaxvedit.models import layers as _layers

_SUFFIXES = ("attn1.to_k", "attn1.to_v")


def _with_anchor(y, group: int):
    b = y.shape[0]
    if b % group:
        raise ValueError(f"cross-frame attention: batch {b} is not a multiple of the group size {group}")
    g = y.reshape((b // group, group) + y.shape[1:])
    anchor = jnp.broadcast_to(g[:, :1], g.shape)
    return jnp.concatenate([g, anchor], axis=2).reshape((b, 2 * y.shape[1]) + y.shape[2:])


@contextlib.contextmanager
def cross_frame_attention(group: int):
    """During a UNet call inside this context, self-attention keys/values of every frame are
    extended with those of the first frame of its group of ``group`` consecutive samples."""
    group = int(group)
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    inner = _layers._PROJECTION_ADAPTER.get()

    def fn(path, x, y):
        if inner is not None:
            y = inner(path, x, y)
        if path.endswith(_SUFFIXES):
            y = _with_anchor(y, group)
        return y

    token = _layers._PROJECTION_ADAPTER.set(fn)
    try:
        yield
    finally:
        _layers._PROJECTION_ADAPTER.reset(token)
