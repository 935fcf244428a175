"""The experiment file format and its expansion into validated points.

An experiment file::

    name: shape                  # results go to results/<name>/, runs to runs/<name>/<run id>/
    description: heads x blocks  # optional, shown in summary.md
    base:                        # a run config (model, data, training, sampling); holds the budget
      model: {d_model: 128}
      training: {max_seconds: 120}
    grid:                        # dotted key -> list of values; the points are the cartesian product
      model.n_heads: [2, 4]
      model.n_blocks: [2, 4]
    zip:                         # optional: groups of keys that vary together (one axis each)
      - {model.d_model: [128, 256], model.d_ff: [512, 1024]}
    seeds: [0, 1]                # optional: repeat every point with training.seed set to each
    exclude:                     # optional: partial points to drop (a point matching all given keys)
      - {model.n_heads: 4, model.n_blocks: 2}
    predict: {factor: 4}         # optional, a scaling study over training.max_flops: after the grid,
                                 # fit it and run the predicted best shape at factor x the largest
                                 # budget (`decoder.experiments.predict`)

Every point is resolved and validated when the file is loaded; all invalid points are reported
together in one ConfigError. A point's run folder is named by `decoder.run_ids.run_id` of its
resolved config, so re-running a file finds its folders again (see `decoder.experiments.runner`).
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from decoder.config import SECTIONS, ConfigError, RunConfig, config_from_dict, read_yaml, set_dotted
from decoder.errors import UserError

EXPERIMENT_KEYS = ("name", "description", "base", "grid", "zip", "seeds", "exclude", "predict")
SEED_KEY = "training.seed"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # an experiment or report name: a folder name


class ExperimentError(UserError, ValueError):
    """A report or run request that cannot be served (nothing to report, bad source)."""


@dataclass(frozen=True)
class Point:
    """One run of a grid: its varied settings (dotted key -> value) and its resolved config."""

    index: int
    settings: dict[str, Any]
    config: RunConfig

    @property
    def run_id(self) -> str:
        from decoder.run_ids import run_id

        return run_id(self.config)

    def run_dir(self, folder: Path) -> Path:
        """This point's run folder under an experiment's folder: the one named by `run_id`, or a
        folder a run of the same config made under an earlier id (`decoder.run_ids.run_ids`)."""
        from decoder.run_ids import run_ids

        current, *earlier = run_ids(self.config)
        if (folder / current).exists():
            return folder / current
        return next((folder / i for i in earlier if (folder / i).exists()), folder / current)

    @property
    def label(self) -> str:
        return settings_label(self.settings)


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file: its points in run order and the dotted keys its grid varies."""

    name: str
    points: list[Point]
    description: str = ""
    path: Path | None = None
    varied_keys: list[str] = field(default_factory=list)
    predict: Any = None
    """The `predict:` section (`decoder.experiments.predict.Prediction`), or None."""


def setting_text(value: Any) -> str:
    """A setting as YAML writes it (None is null; so is a float NaN, how a table stores None)."""
    value = value.item() if hasattr(value, "item") else value
    return "null" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def settings_label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={setting_text(v)}" for k, v in settings.items()) or "base config"


def _dotted_keys() -> list[str]:
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)]


def _did_you_mean(key: Any, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _key_problem(where: str, key: Any) -> str | None:
    allowed = _dotted_keys()
    if key in allowed:
        return None
    return f"{where}: {key}: unknown key{_did_you_mean(key, allowed)}; keys are section.field with section one of {', '.join(SECTIONS)}"


def _axis_values(where: str, key: Any, values: Any, problems: list[str]) -> list | None:
    problem = _key_problem(where, key)
    if problem:
        problems.append(problem)
        return None
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: {key}: must be a non-empty list of values, got {values!r}")
        return None
    if any(isinstance(v, (list, dict)) for v in values):
        problems.append(f"{where}: {key}: values must be scalars (numbers, strings, booleans, null)")
        return None
    return values


def _parse_axes(raw: dict, problems: list[str]) -> list[tuple[list[str], list[tuple]]]:
    """[(keys, [value tuple per position])]: one axis per grid key, one per zip group."""
    axes: list[tuple[list[str], list[tuple]]] = []
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        problems.append("grid: must be a mapping of dotted keys to lists of values")
        grid = {}
    for key, values in grid.items():
        values = _axis_values("grid", key, values, problems)
        if values is not None:
            axes.append(([key], [(v,) for v in values]))
    groups = raw.get("zip") or []
    if not isinstance(groups, list) or not all(isinstance(g, dict) and g for g in groups):
        problems.append("zip: must be a list of mappings, each of dotted keys to equally long lists")
        groups = []
    for i, group in enumerate(groups):
        columns = {k: _axis_values(f"zip[{i}]", k, v, problems) for k, v in group.items()}
        if any(v is None for v in columns.values()):
            continue
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            problems.append(f"zip[{i}]: lists must have the same length, got {lengths}")
            continue
        axes.append((list(columns), list(zip(*columns.values()))))
    seen: set[str] = set()
    for keys, _ in axes:
        for key in keys:
            if key in seen:
                problems.append(f"{key}: varied twice (in grid and zip, or in two zip groups); vary it once")
            seen.add(key)
    return axes


def _parse_seeds(raw: dict, axes: list, problems: list[str]) -> list[int] | None:
    seeds = raw.get("seeds")
    if seeds is None:
        return None
    if (not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        problems.append(f"seeds: must be a non-empty list of distinct integers, got {seeds!r}")
        return None
    if any(SEED_KEY in keys for keys, _ in axes):
        problems.append(f"seeds: {SEED_KEY} is also in grid/zip; use one of them")
        return None
    return seeds


def _parse_exclude(raw: dict, varied: list[str], problems: list[str]) -> list[dict]:
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        problems.append("exclude: must be a list of mappings of varied dotted keys to values")
        return []
    for i, entry in enumerate(exclude):
        for key in entry:
            if key not in varied:
                problems.append(f"exclude[{i}]: {key} is not a varied key (varied: {', '.join(varied) or 'none'})")
    return exclude


def _expand(axes: list, seeds: list[int] | None) -> list[dict[str, Any]]:
    """Settings of every point: seeds outermost, so an interrupted grid has whole seeds done."""
    out = []
    for seed in seeds if seeds is not None else [None]:
        for combo in itertools.product(*(values for _, values in axes)):
            settings = {k: v for (keys, _), values in zip(axes, combo) for k, v in zip(keys, values)}
            if seed is not None:
                settings[SEED_KEY] = seed
            out.append(settings)
    return out


def _build(base: dict, settings: dict[str, Any], source: str) -> tuple[RunConfig | None, list[str]]:
    raw = copy.deepcopy(base)
    for key, value in settings.items():
        set_dotted(raw, key, value)
    try:
        return config_from_dict(raw, source=source), []
    except ConfigError as exc:
        return None, exc.problems


def check_header(raw: Any, source: str, keys: tuple[str, ...] = EXPERIMENT_KEYS) -> tuple[str, dict, list[str]]:
    """An experiment file's name and base (grids and searches share them) and the problems found."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an experiment must be a mapping with keys {', '.join(keys)}", source)
    problems = []
    for key in raw:
        if key not in keys:
            problems.append(f"{key}: unknown key{_did_you_mean(key, keys)}; valid keys: {', '.join(keys)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        problems.append(f"name: required, letters, digits, '.', '_' or '-' (a folder name), got {name!r}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        problems.append("base: must be a mapping with sections model, data, training, sampling")
        base = {}
    for section in SECTIONS:
        if base.get(section) is not None and not isinstance(base[section], dict):
            problems.append(f"base.{section}: must be a mapping of keys to values")
    if not isinstance(raw.get("description", ""), str):
        problems.append("description: must be a string")
    return str(name), base, problems


def experiment_from_dict(raw: Any, *, source: str = "experiment", path: Path | None = None) -> Experiment:
    """Parse, expand and validate an experiment; one ConfigError lists every problem."""
    if isinstance(raw, dict) and "search" in raw:
        raise ConfigError("a search (it has a search: section): run it with decoder sweep", source)
    name, base, problems = check_header(raw, source)
    axes = _parse_axes(raw, problems)
    seeds = _parse_seeds(raw, axes, problems)
    varied = [k for keys, _ in axes for k in keys] + ([SEED_KEY] if seeds is not None else [])
    exclude = _parse_exclude(raw, varied, problems)
    predict = _parse_predict(raw, varied, problems)
    raise_problems(source, problems)
    all_settings = _expand(axes, seeds)
    for i, entry in enumerate(exclude):
        if not any(all(s.get(k) == v for k, v in entry.items()) for s in all_settings):
            problems.append(f"exclude[{i}]: {settings_label(entry)} matches no point")
    kept = [s for s in all_settings if not any(all(s.get(k) == v for k, v in e.items()) for e in exclude)]
    if not kept:
        problems.append("exclude removes every point")
    points, per_point = _build_points(base, kept)
    problems.extend(per_point)
    raise_problems(source, problems)
    return Experiment(name=name, points=points, description=raw.get("description", ""), path=path,
                      varied_keys=varied, predict=predict)


def _parse_predict(raw: dict, varied: list[str], problems: list[str]):
    if raw.get("predict") is None:
        return None
    from decoder.experiments.predict import parse_prediction

    return parse_prediction(raw["predict"], varied, problems)


def _build_points(base: dict, kept: list[dict[str, Any]]) -> tuple[list[Point], list[str]]:
    """Build every point; problems shared by all points are reported once."""
    built = [_build(base, s, f"point {i + 1}") for i, s in enumerate(kept)]
    common = set.intersection(*(set(p) for _, p in built)) if built else set()
    problems = [f"every point: {p}" for p in built[0][1] if p in common] if built else []
    bad = [(i, s, [p for p in probs if p not in common]) for i, (s, (_, probs)) in enumerate(zip(kept, built))]
    bad = [b for b in bad if b[2]]
    if bad:
        problems.append(f"{len(bad)} of {len(kept)} points are invalid")
        problems.extend(f"point {i + 1} ({settings_label(s)}): {'; '.join(p)}" for i, s, p in bad)
    if problems:
        return [], problems
    points = [Point(i, s, config) for i, (s, (config, _)) in enumerate(zip(kept, built))]
    ids: dict[str, int] = {}
    for p in points:
        if p.run_id in ids:
            problems.append(f"points {ids[p.run_id] + 1} and {p.index + 1} resolve to the same config ({p.label})")
        ids.setdefault(p.run_id, p.index)
    return points, problems


def raise_problems(source: str, problems: list[str]) -> None:
    """One ConfigError listing every problem ("<source>: a; b"), if there is any."""
    if problems:
        raise ConfigError(problems, source)


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment YAML file (see the module docstring for the format)."""
    path = Path(path)
    return experiment_from_dict(read_yaml(path), source=str(path), path=path)


