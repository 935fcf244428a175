"""The `search:` experiment format (Optuna studies) and its validation before anything runs.

A search file has the grid file's `name`, `description` and `base`, and a `search` section::

    search:
      space:                     # dotted key -> distribution
        training.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
        model.dropout: {type: float, low: 0.0, high: 0.3}              # step: 0.1 makes it a grid axis
        model.n_blocks: {type: int, low: 2, high: 6}                    # step: optional (default 1)
        model.d_model: {type: categorical, choices: [128, 192, 256]}
      sampler: tpe               # tpe | random | grid, or {type: tpe, n_startup_trials: 5, multivariate: true}
      n_trials: 30               # trials to finish (every worker on the study counts); grid: default all points
      objectives: [val_bpb]      # val_bpb (min); [val_bpb, tokens_per_s] (max): a Pareto front
      pruner: median             # median | successive_halving | hyperband | none, or {type: median, ...options}
      seed: 0
      start_from_base: false     # true: the study's first trial is the base config's own values, so the
                                 # search's best is compared with the hand-picked recipe under the same conditions

The pruner is fed each evaluation's validation bits per byte, at step = the evaluation's ordinal (1,
2, ...), so trials of different speeds compare at the same share of the budget when
`training.eval_fraction` is set. Every problem (bad distributions, unknown keys, options, a pruner
with two objectives, probe configs of the space that do not build) is reported at once, as for grids.
The space itself (parameters and their parsing) is `decoder.sweep.space`; running a search is
`decoder.sweep.worker`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoder.config import ConfigError, RunConfig, config_from_dict, read_yaml, set_dotted
from decoder.experiments.grid import check_header, raise_problems, settings_label
from decoder.sweep.space import Param, in_space, parse_param

SEARCH_KEYS = ("name", "description", "base", "search")
SECTION_KEYS = ("space", "sampler", "n_trials", "objectives", "pruner", "seed", "start_from_base")
OBJECTIVES = {"val_bpb": "minimize", "tokens_per_s": "maximize"}
"""Objective name -> direction; the value of a trial is its run's summary.json entry (best_val_bpb
for val_bpb: the best evaluation's bits per byte)."""
SAMPLER_OPTIONS = {"tpe": ("n_startup_trials", "multivariate"), "random": (), "grid": ()}
PRUNER_OPTIONS = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}
MAX_PROBES = 4096  # configs built to validate a space: every categorical choice x numeric ends


@dataclass(frozen=True)
class Search:
    """A parsed search file."""

    name: str
    base: dict
    params: list[Param]
    sampler: dict
    n_trials: int
    objectives: tuple[str, ...]
    pruner: dict
    seed: int = 0
    start_from_base: bool = False
    description: str = ""
    path: Path | None = None
    raw: dict = field(default_factory=dict)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def varied_keys(self) -> list[str]:
        return [p.key for p in self.params]

    def config_of(self, settings: dict[str, Any], source: str = "trial") -> RunConfig:
        """The resolved config of a trial's settings (dotted key -> value) on the base."""
        raw = copy.deepcopy(self.base)
        for key, value in settings.items():
            set_dotted(raw, key, value)
        return config_from_dict(raw, source=source)

    def base_settings(self) -> dict[str, Any]:
        """The base config's value of every searched key (what `start_from_base` enqueues)."""
        resolved = self.config_of({}, source="base").to_dict()
        out = {}
        for param in self.params:
            section, name = param.key.split(".", 1)
            out[param.key] = resolved[section][name]
        return out

    def fingerprint(self) -> str:
        """What a study's trials are comparable under (base, space, objectives): a study created
        with another one is refused; n_trials, sampler, pruner and seed may change between runs."""
        what = {k: self.raw["search"].get(k) for k in ("space", "objectives")}
        text = json.dumps({"base": self.base, **what}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _named_spec(section: dict, what: str, options: dict[str, tuple], default: str, problems: list[str]) -> dict:
    """`sampler:` / `pruner:` as {type: NAME, option: value, ...} (a bare NAME is {type: NAME})."""
    given = section.get(what, default)
    spec = {"type": given} if isinstance(given, str) or given is None else given
    if not isinstance(spec, dict) or spec.get("type") not in options:
        problems.append(f"search.{what}: {given!r}: allowed {' | '.join(options)}, or a mapping "
                        f"{{type: NAME, option: value}}")
        return {"type": default}
    unknown = [k for k in spec if k != "type" and k not in options[spec["type"]]]
    if unknown:
        allowed = ", ".join(options[spec["type"]]) or "none"
        problems.append(f"search.{what}: {', '.join(map(str, unknown))}: unknown option of {spec['type']} "
                        f"(options: {allowed})")
    return spec


def _objectives(section: dict, problems: list[str]) -> tuple[str, ...]:
    raw = section.get("objectives", ["val_bpb"])
    raw = [raw] if isinstance(raw, str) else raw
    if (not isinstance(raw, list) or not 1 <= len(raw) <= 2 or len(set(map(str, raw))) != len(raw)
            or any(o not in OBJECTIVES for o in raw) or raw[0] != "val_bpb"):
        problems.append(f"search.objectives: {raw!r}: allowed [val_bpb] (minimise) or [val_bpb, tokens_per_s] "
                        "(a Pareto front of bits per byte against training throughput)")
        return ("val_bpb",)
    return tuple(raw)


def _check_pruner_and_sampler(params: list[Param], sampler: dict, pruner: dict, objectives: tuple,
                              n_trials: Any, problems: list[str]) -> int | None:
    """Cross-field rules; returns the grid size for a grid sampler."""
    if len(objectives) > 1 and pruner["type"] != "none":
        problems.append(f"search.pruner: {pruner['type']}: pruning needs a single objective (val_bpb); "
                        "with two objectives set pruner: none")
    if sampler["type"] != "grid":
        return None
    steps = [p.key for p in params if p.type == "float" and p.step is None]
    steps += [p.key for p in params if p.type != "categorical" and p.log]
    if steps:
        problems.append(f"search.sampler: grid needs a finite space: give {', '.join(dict.fromkeys(steps))} "
                        "a step (and no log), or make it categorical")
        return None
    size = math.prod(len(p.grid_values()) for p in params)
    if isinstance(n_trials, int) and n_trials > size:
        problems.append(f"search.n_trials={n_trials}: the grid has only {size} points")
    return size


def _section(raw: dict, problems: list[str]) -> tuple[list[Param], dict, Any, tuple, dict, Any]:
    section = raw.get("search")
    if not isinstance(section, dict):
        problems.append("search: must be a mapping with space, sampler, n_trials, objectives, pruner, seed")
        section = {}
    for key in section:
        if key not in SECTION_KEYS:
            problems.append(f"search.{key}: unknown key; valid keys: {', '.join(SECTION_KEYS)}")
    space = section.get("space")
    if not isinstance(space, dict) or not space:
        problems.append("search.space: must map dotted keys (section.field) to distributions")
        space = {}
    params = [p for p in (parse_param(k, v, problems) for k, v in space.items()) if p is not None]
    sampler = _named_spec(section, "sampler", SAMPLER_OPTIONS, "tpe", problems)
    pruner = _named_spec(section, "pruner", PRUNER_OPTIONS, "none", problems)
    objectives = _objectives(section, problems)
    seed = section.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"search.seed={seed!r}: must be an integer")
    n_trials = section.get("n_trials")
    size = _check_pruner_and_sampler(params, sampler, pruner, objectives, n_trials, problems)
    n_trials = size if n_trials is None and size is not None else n_trials
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        problems.append(f"search.n_trials={n_trials!r}: required, an integer >= 1 (trials to finish)")
    return params, sampler, n_trials, objectives, pruner, seed


def probes(search: Search) -> list[dict[str, Any]]:
    """Settings a space is checked at: every combination of each parameter's probe values (or, when
    there are more than MAX_PROBES, each probe value alone on the base)."""
    axes = [(p.key, p.probe_values()) for p in search.params]
    if math.prod(len(v) for _, v in axes) <= MAX_PROBES:
        return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]
    return [{key: value} for key, values in axes for value in values]


def _probe_problems(search: Search) -> list[str]:
    """What does not build at a probe is a problem of the space; problems every probe shares (the
    base's own) are reported once."""
    probes_ = probes(search)
    found: dict[str, list[dict]] = {}
    for settings in probes_:
        try:
            search.config_of(settings)
        except ConfigError as exc:
            for problem in exc.problems:
                found.setdefault(problem, []).append(settings)
    out = []
    for problem, where in found.items():
        if len(where) == len(probes_):
            out.append(f"every trial: {problem}")
        else:
            examples = "; ".join(settings_label(s) for s in where[:2]) + ("; ..." if len(where) > 2 else "")
            out.append(f"{len(where)} of {len(probes_)} probe configs ({examples}): {problem}")
    return out


def is_search(raw: Any) -> bool:
    """Whether a parsed experiment file is a search (it has a `search:` section)."""
    return isinstance(raw, dict) and "search" in raw


def is_search_file(path: str | Path) -> bool:
    """Whether an experiment YAML file is a search (decoder run and decoder report tell them apart)."""
    return is_search(read_yaml(path))


def search_from_dict(raw: Any, *, source: str = "experiment", path: Path | None = None) -> Search:
    """Parse and validate a search file; one ConfigError lists every problem."""
    if isinstance(raw, dict) and "search" not in raw:
        raise ConfigError("is not a search (it has no search: section); a grid runs with decoder run", source)
    name, base, problems = check_header(raw, source, SEARCH_KEYS)
    params, sampler, n_trials, objectives, pruner, seed = _section(raw, problems)
    section = raw.get("search") if isinstance(raw, dict) else None
    start_from_base = section.get("start_from_base", False) if isinstance(section, dict) else False
    if not isinstance(start_from_base, bool):
        problems.append(f"search.start_from_base={start_from_base!r}: must be true or false")
    elif start_from_base and isinstance(sampler, dict) and sampler.get("type") == "grid":
        problems.append("search.start_from_base: the grid sampler already visits every point (and skips a "
                        "queued one); use start_from_base with tpe or random")
    raise_problems(source, problems)
    search = Search(name=name, base=base, params=params, sampler=sampler, n_trials=n_trials, objectives=objectives,
                    pruner=pruner, seed=seed, start_from_base=start_from_base, description=raw.get("description", ""),
                    path=path, raw=raw)
    raise_problems(source, _probe_problems(search) + _base_problems(search))
    return search


def _base_problems(search: Search) -> list[str]:
    """With start_from_base, every base value must be a point of its distribution (Optuna only
    warns about fixed values outside it)."""
    if not search.start_from_base:
        return []
    try:
        values = search.base_settings()
    except ConfigError:
        return []  # the base's own problems are reported by the probes
    out = []
    for param in search.params:
        value = values[param.key]
        if not in_space(param, value):
            where = list(param.choices) if param.type == "categorical" else \
                f"{param.type} in [{param.low}, {param.high}]" + (f" by {param.step}" if param.step else "")
            out.append(f"search.start_from_base: the base's {param.key}={value!r} is outside the space ({where})")
    return out


def load_search(path: str | Path) -> Search:
    """Read a search YAML file (see the module docstring for the format)."""
    path = Path(path)
    return search_from_dict(read_yaml(path), source=str(path), path=path)
