"""Feature hooks: tap (and optionally transform) intermediate UNet outputs by module path.

Module paths are diffusers' ``named_modules`` names, e.g.
``"up_blocks.1.attentions.0.transformer_blocks.0.attn1"`` (the self-attention output, before
the residual add). A forward pass under a :class:`FeatureHooks` records the output of every
tapped module into ``hooks.captured`` and, where a transform is registered for a path, replaces
that output with ``transform(output)`` before the network continues (the feature-space
bilateral filter of the authors' code is such a transform).

Hooks work under ``jax.jit``: recording happens while tracing, so the captured values are
tracers that the traced function returns like any other output. Use one ``FeatureHooks`` per
traced call (create it inside the jitted function).

Usage::

    hooks = FeatureHooks(capture=["up_blocks.3.attentions.0.transformer_blocks.0.attn1"])
    eps = unet(x, t, ctx, hooks=hooks)
    feats = hooks.captured  # {path: array}
"""

from __future__ import annotations

import contextvars
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

_ACTIVE: contextvars.ContextVar["FeatureHooks | None"] = contextvars.ContextVar(
    "jaxvedit_feature_hooks", default=None
)


class FeatureHooks:
    """Which module outputs to capture, and which to transform.

    ``capture`` and the keys of ``transform`` are module paths or ``fnmatch`` patterns
    (``"up_blocks.*.attentions.*.transformer_blocks.0.attn1"``).
    """

    def __init__(
        self,
        capture: Iterable[str] = (),
        transform: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None,
    ):
        self.capture = tuple(capture)
        self.transform = dict(transform or {})
        self.captured: dict[str, jax.Array] = {}
        self.seen: list[str] = []

    @staticmethod
    def _matches(path: str, patterns: Iterable[str]) -> str | None:
        for pattern in patterns:
            if path == pattern or fnmatch.fnmatchcase(path, pattern):
                return pattern
        return None

    def emit(self, path: str, value: jax.Array) -> jax.Array:
        self.seen.append(path)
        pattern = self._matches(path, self.transform)
        if pattern is not None:
            value = self.transform[pattern](value)
        if self._matches(path, self.capture) is not None:
            self.captured[path] = value
        return value

    def check_all_matched(self) -> None:
        """Raise if a requested path or pattern matched no module (typo protection)."""
        for pattern in (*self.capture, *self.transform):
            if not any(p == pattern or fnmatch.fnmatchcase(p, pattern) for p in self.seen):
                near = [p for p in self.seen if p.split(".")[0] == pattern.split(".")[0]][:5]
                raise KeyError(
                    f"feature hook {pattern!r} matched no module; examples of valid paths: {near}"
                )


class hooks_active:
    """Context manager installing ``hooks`` for the duration of a forward pass."""

    def __init__(self, hooks: FeatureHooks | None):
        self.hooks = hooks
        self._token: Any = None

    def __enter__(self):
        self._token = _ACTIVE.set(self.hooks)
        return self.hooks

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        return False


def emit(path: str, value: jax.Array) -> jax.Array:
    """Called by modules on their output; identity when no hooks are active."""
    hooks = _ACTIVE.get()
    if hooks is None or not path:
        return value
    return hooks.emit(path, value)
