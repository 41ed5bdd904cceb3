"""Command-line interfaces generated from typed config dataclasses.

Every dataclass field becomes a ``--flag`` with its default and its ``help`` metadata; a config
file (JSON or TOML) given with ``--config`` sets fields by name, and flags override the file.
A key that does not exist is an error that names it and suggests the closest real one.

    @dataclass
    class MyConfig:
        steps: int = field(default=100, metadata={"help": "optimizer steps"})

    cfg = parse_config(MyConfig, sys.argv[1:], prog="python -m mything")
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or flag names a key that does not exist, or has a bad value."""


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _converter(tp):
    tp, _ = _unwrap_optional(tp)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), choices
    if tp in (int, float, str):
        return tp, None
    if tp is Path:
        return Path, None
    return str, None


def build_parser(cls, *, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON or TOML file of option values (flags override it)")
    hints = _field_types(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text")
        group_name = f.metadata.get("group", "options")
        group = groups.get(group_name) or groups.setdefault(
            group_name, parser.add_argument_group(group_name))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _unwrap_optional(hints[f.name])
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
            continue
        if typing.get_origin(tp) in (tuple, list):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            group.add_argument(flag, dest=f.name, nargs="*", type=inner, default=argparse.SUPPRESS,
                               help=f"{help_text} (default: {' '.join(map(str, default)) or 'none'})")
            continue
        conv, choices = _converter(hints[f.name])
        group.add_argument(flag, dest=f.name, type=conv, choices=choices, default=argparse.SUPPRESS,
                           help=f"{help_text} (default: {default})")
    return parser


def read_config_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except Exception as err:
        raise ConfigError(f"cannot parse config file {path}: {err}") from err


def config_from_dict(cls, values: dict, *, source: str = "config"):
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: option {key!r} does not exist{hint}")
        tp, optional = _unwrap_optional(hints[name])
        if value is None and optional:
            kwargs[name] = None
            continue
        if typing.get_origin(tp) in (tuple, list) and isinstance(value, (list, tuple)):
            value = tuple(value)
        elif typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            raise ConfigError(f"{source}: option {key!r}={value!r} must be one of "
                              f"{list(typing.get_args(tp))}")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif tp in (int, float, str, bool) and not isinstance(value, tp):
            raise ConfigError(f"{source}: option {key!r} expects {tp.__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_config(cls, argv: list[str] | None = None, *, prog: str, description: str = "",
                 defaults: dict | None = None, use_defaults=None):
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of dataclass ``cls``.

    ``defaults``: alternative defaults (e.g. a demo preset), applied to the options neither the
    file nor the flags set, when ``use_defaults(explicit_values)`` is true.
    """
    parser = build_parser(cls, prog=prog, description=description or (cls.__doc__ or ""))
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    file_path = args.pop("config", None)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    values = read_config_file(file_path) if file_path else {}
    try:
        base = config_from_dict(cls, values, source=str(file_path or "config"))
    except ConfigError as err:
        parser.error(str(err))
    explicit = {**{k.replace("-", "_"): v for k, v in values.items()}, **args}
    if defaults and (use_defaults is None or use_defaults(explicit)):
        args = {**{k: v for k, v in defaults.items() if k not in explicit}, **args}
    try:
        return dataclasses.replace(base, **args)
    except (TypeError, ValueError) as err:
        parser.error(str(err))


def config_to_dict(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v)
    return out
