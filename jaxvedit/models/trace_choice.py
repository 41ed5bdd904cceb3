"""A choice read while a function is *traced*: the innermost context that sets it, else an
environment variable, else a default. A compiled function keeps the choice it was traced with.
The speed levers of issue 15 (``layers.norm_statistics``, ``groupnorm_kernels.groupnorm_implementation``)
are such choices."""

from __future__ import annotations

import contextlib
import contextvars
import os


class TraceChoice:
    """One named choice among ``choices``; ``what`` names it in errors, ``env`` is its variable."""

    def __init__(self, what: str, env: str, choices: tuple[str, ...], default: str):
        if default not in choices:
            raise ValueError(f"{what}: default {default!r} is not one of {choices}")
        self.what, self.env, self.choices, self.default = what, env, choices, default
        self._var: contextvars.ContextVar = contextvars.ContextVar(f"jaxvedit_{env.lower()}", default=None)

    @contextlib.contextmanager
    def use(self, mode: str | None):
        """``mode`` for what is traced inside (``None``: the process default)."""
        if mode is not None and mode not in self.choices:
            raise ValueError(f"{self.what} {mode!r}: choose from {self.choices}")
        token = self._var.set(mode)
        try:
            yield
        finally:
            self._var.reset(token)

    def get(self) -> str:
        """The choice in force: context, then the environment variable, then the default."""
        mode = self._var.get() or os.environ.get(self.env) or self.default
        if mode not in self.choices:
            raise ValueError(f"{self.env}={mode!r}: choose from {self.choices}")
        return mode
