"""A search's space: one `Param` per searched dotted key (int / float with low, high, log, step; or
categorical choices), parsed from the `search.space` section of a search file with every problem
collected, and the values the rest of the search needs of it (probes, grid points, membership)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from decoder.experiments.grid import _key_problem


@dataclass(frozen=True)
class Param:
    """One searched dotted key: int / float (low, high, log, step) or categorical (choices)."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def probe_values(self) -> list:
        """Values every config of the space is checked at: all choices, all ints of a short range,
        else the two ends."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int" and not self.log and (self.high - self.low) // (self.step or 1) < 16:
            return list(range(self.low, self.high + 1, self.step or 1))
        return [self.low, self.high]

    def grid_values(self) -> list:
        """Every value (grid sampler): choices, or low..high by step."""
        if self.type == "categorical":
            return list(self.choices)
        step = self.step or 1  # an int's default step
        count = int(round((self.high - self.low) / step)) + 1
        return [self.low + i * step for i in range(count)] if self.type == "int" else \
            [round(self.low + i * step, 12) for i in range(count)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numeric_param(key: str, spec: dict, problems: list[str]) -> Param | None:
    kind, low, high, log, step = spec["type"], spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    where = f"search.space.{key}"
    exact = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if kind == "int" else _number
    bad = [f"{name}={v!r}" for name, v in (("low", low), ("high", high)) if not exact(v)]
    if bad:
        problems.append(f"{where}: {', '.join(bad)}: low and high must be {'integers' if kind == 'int' else 'numbers'}")
        return None
    if not isinstance(log, bool):
        problems.append(f"{where}: log={log!r}: must be true or false")
        return None
    if low > high:
        problems.append(f"{where}: low={low} > high={high}")
    if log and low <= 0:
        problems.append(f"{where}: log=true needs low > 0, got {low}")
    if step is not None and (not exact(step) or step <= 0):
        problems.append(f"{where}: step={step!r}: must be a positive {'integer' if kind == 'int' else 'number'}")
    elif step is not None and log:
        problems.append(f"{where}: step and log=true cannot be combined")
    elif step is not None and low <= high and abs((high - low) / step - round((high - low) / step)) > 1e-9:
        problems.append(f"{where}: high - low = {high - low} is not a multiple of step={step}")
    return Param(key, kind, low, high, log, step)


def parse_param(key: Any, spec: Any, problems: list[str]) -> Param | None:
    problem = _key_problem("search.space", key)
    if problem:
        problems.append(problem)
        return None
    where = f"search.space.{key}"
    if not isinstance(spec, dict) or spec.get("type") not in ("int", "float", "categorical"):
        problems.append(f"{where}: must be a mapping with type int, float or categorical, e.g. "
                        "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}, got " + repr(spec))
        return None
    allowed = ("type", "choices") if spec["type"] == "categorical" else ("type", "low", "high", "log", "step")
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        problems.append(f"{where}: {', '.join(map(str, unknown))}: unknown for type {spec['type']}; "
                        f"valid: {', '.join(allowed)}")
        return None
    if spec["type"] != "categorical":
        return _numeric_param(key, spec, problems)
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices or any(isinstance(c, (list, dict)) for c in choices):
        problems.append(f"{where}: choices must be a non-empty list of scalars, got {choices!r}")
        return None
    if len({repr(c) for c in choices}) != len(choices):
        problems.append(f"{where}: choices repeat a value: {choices}")
        return None
    return Param(key, "categorical", choices=tuple(choices))


def in_space(param: Param, value: Any) -> bool:
    """Whether `value` is a point of `param` (same type as a categorical choice; on a numeric step grid)."""
    if param.type == "categorical":
        return any(type(c) is type(value) and c == value for c in param.choices)
    if not _number(value) or (param.type == "int" and not isinstance(value, int)):
        return False
    if not param.low <= value <= param.high:
        return False
    if param.step:
        steps = (value - param.low) / param.step
        return abs(steps - round(steps)) < 1e-9
    return True
