"""Checking configuration values: the error users see, the bounds and choices of single fields, and
building a frozen dataclass section from a raw mapping with every problem collected (unknown keys
with a close match suggested, wrong types, non-finite numbers). `decoder.config` defines the
sections; this module knows nothing of them."""

from __future__ import annotations

import difflib
import functools
import math
import re
import types
import typing
from dataclasses import fields
from typing import Any, Literal

from decoder.errors import UserError


class ConfigError(UserError, ValueError):
    """Configuration problems a user must fix. `problems` lists each one (naming the field, its
    value and what is allowed); the message is `source: ` and the problems joined by '; '."""

    def __init__(self, problems: str | list[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__((f"{source}: " if source else "") + "; ".join(self.problems))


def check(config: Any) -> Any:
    """`config` (a RunConfig or one section) if it has no problems, else one ConfigError listing them."""
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    return config


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass (cached: the classes never change)."""
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple[Any, ...]:
    """The allowed values of a `Literal` field (empty for any other field)."""
    annotation = hints(cls)[name]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


_BOUND = re.compile(r"(>=|>) (\S+)|in ([\[(])(\S+), (\S+?)([\])])")


def _within(value: float, bound: str) -> bool:
    """Whether `value` meets `bound`: '>= 1', '> 0', 'in [0, 1)', ... (False for NaN)."""
    m = _BOUND.match(bound)
    if m[1]:
        return value >= float(m[2]) if m[1] == ">=" else value > float(m[2])
    low, high = float(m[4]), float(m[5])
    return (low <= value if m[3] == "[" else low < value) and (value <= high if m[6] == "]" else value < high)


def field_problems(config: Any, section: str, bounds: dict[str, str]) -> list[str]:
    """Problems of single fields of a config section: a `Literal` field must hold one of its
    arguments; a numeric field named in `bounds` must meet its bound ('>= 1', 'in (0, 1]', ...,
    with an optional note after it), unless it is None (null)."""
    out = []
    for f in fields(config):
        value, allowed = getattr(config, f.name), choices(type(config), f.name)
        if allowed and value not in allowed:
            out.append(f"{section}.{f.name}={value!r}: allowed {', '.join(map(repr, allowed))}")
        if f.name in bounds and value is not None and not _within(value, bounds[f.name]):
            out.append(f"{section}.{f.name}={value}: must be {bounds[f.name]}")
    return out


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether `value` (from YAML) fits the field annotation; ints are accepted for floats."""
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:  # the value itself is checked by field_problems
        return any(type(value) is type(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) if a is not type(None) else value is None for a in typing.get_args(annotation))
    return True


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else a.__name__ for a in typing.get_args(annotation))
    return annotation.__name__


def unknown_key(prefix: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{prefix}{key}: unknown key{hint}; valid keys: {', '.join(allowed)}"


def build_section(name: str, cls: type, raw: Any, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: must be a mapping of keys to values, got {type(raw).__name__}")
        return cls()
    annotations = hints(cls)
    allowed = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            problems.append(unknown_key(f"{name}.", str(key), allowed))
            continue
        if not _type_ok(value, annotations[key]):
            problems.append(f"{name}.{key}={value!r}: must be {_type_name(annotations[key])}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}.{key}={value!r}: must be a finite number")
            continue
        if annotations[key] is float or (float in typing.get_args(annotations[key]) and isinstance(value, int)):
            value = float(value) if value is not None else None
        kwargs[key] = value
    return cls(**kwargs)
