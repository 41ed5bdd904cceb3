"""Typed model configs built from diffusers ``config.json`` files, with clear refusals.

A diffusers config holds many keys. Each config class here lists the keys it implements (with
diffusers' defaults) and the keys it knows but only supports at their default value; any other
value is refused with an error naming the key, instead of silently building another network.
Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path


class UnsupportedConfigError(ValueError):
    """A config asks for an architecture variant this port does not implement."""


def read_config(source: str | os.PathLike | Mapping, what: str = "config") -> dict:
    """A config dict from a dict, a ``config.json`` path or the folder holding it."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"cannot parse {what} {path}: {err}") from err


def build_config(cls, raw: dict, *, allowed: dict[str, tuple], what: str):
    """Instantiate dataclass ``cls`` from ``raw``; refuse unknown or unsupported keys.

    ``allowed`` maps keys the port knows but does not implement beyond certain values to the
    tuple of values it accepts (usually just diffusers' default).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key in fields:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in allowed:
            norm = tuple(value) if isinstance(value, list) else value
            if norm not in allowed[key]:
                raise UnsupportedConfigError(
                    f"{what} config key {key!r}={value!r} is not supported by the jaxvedit port "
                    f"(supported: {' or '.join(repr(v) for v in allowed[key])})")
        else:
            raise UnsupportedConfigError(f"{what} config has an unknown key {key!r}")
    return cls(**kwargs)


def per_block(value, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"config {name} has {len(value)} entries for {n} blocks")
        return tuple(value)
    return (value,) * n
