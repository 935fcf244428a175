"""Experiment grids: a YAML file -> points -> run folders -> results tables and plots.

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

Every point is resolved and validated when the file is loaded; all invalid points are reported
together in one ConfigError. A point's run folder is named by `decoder.train.run_id_of` of its
resolved config, so re-running a file finds its folders again: completed points are skipped,
interrupted ones resumed, failed ones retried from scratch.

The report (`decoder report`) writes, under results/<name>/: summary.csv (one row per run, the
columns in REPORT_COLUMNS plus the varied keys; summary.parquet too when pyarrow is importable),
summary.md (ranked by validation bits per byte, mean ± std over seeds, the best row marked, the
Kneser-Ney bigram and trigram baselines on the same split), loss_vs_tokens.png,
loss_vs_seconds.png, bpb_vs_params.png, heatmap.png (when exactly two keys vary) and samples.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import importlib.util
import io
import itertools
import json
import math
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from decoder.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    RunConfig,
    config_from_dict,
    load_config,
    read_yaml,
    set_dotted,
)

EXPERIMENT_KEYS = ("name", "description", "base", "grid", "zip", "seeds", "exclude")
DONE = ("completed", "early_stopped")
SEED_KEY = "training.seed"
NGRAM = 8  # memorisation: share of the sample's 8-token n-grams found verbatim in the training split
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Columns of summary.csv after experiment, run_id, status and the varied keys.
REPORT_COLUMNS = (
    "seed", "params_total", "params_non_embedding", "tokens_seen", "steps", "elapsed_s", "tokens_per_s",
    "best_val_loss", "best_val_ppl", "best_val_bpb", "final_val_loss", "final_val_ppl", "final_val_bpb",
    "train_loss_at_best", "error", "run_dir",
)
_INT_COLUMNS = ("seed", "params_total", "params_non_embedding", "tokens_seen", "steps")


class ExperimentError(ValueError):
    """A report or run request that cannot be served (nothing to report, bad source)."""


USER_ERRORS = (ExperimentError,)


# ---------------------------------------------------------------------------------------------
# The file format and its expansion into points


@dataclass(frozen=True)
class Point:
    """One run of a grid: its varied settings (dotted key -> value) and its resolved config."""

    index: int
    settings: dict[str, Any]
    config: RunConfig

    @property
    def run_id(self) -> str:
        from decoder.train import run_id_of

        return run_id_of(self.config)

    @property
    def label(self) -> str:
        return _label(self.settings)


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file: its points in run order and the dotted keys its grid varies."""

    name: str
    points: list[Point]
    description: str = ""
    path: Path | None = None
    varied_keys: list[str] = field(default_factory=list)


def _setting(value: Any) -> str:
    """A setting as YAML writes it (None is null; so is a float NaN, how a table stores None)."""
    value = value.item() if hasattr(value, "item") else value
    return "null" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_setting(v)}" for k, v in settings.items()) or "base config"


def _dotted_keys() -> list[str]:
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)]


def _key_problem(where: str, key: Any) -> str | None:
    allowed = _dotted_keys()
    if key in allowed:
        return None
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: {key}: unknown key{hint}; keys are section.field with section one of {', '.join(SECTIONS)}"


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
        return None, str(exc)[len(source) + 2:].split("; ")


def _check_header(raw: Any, source: str) -> tuple[str, dict, list[str]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: an experiment must be a mapping with keys {', '.join(EXPERIMENT_KEYS)}")
    problems = []
    for key in raw:
        if key not in EXPERIMENT_KEYS:
            close = difflib.get_close_matches(str(key), EXPERIMENT_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{key}: unknown key{hint}; valid keys: {', '.join(EXPERIMENT_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
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
    name, base, problems = _check_header(raw, source)
    axes = _parse_axes(raw, problems)
    seeds = _parse_seeds(raw, axes, problems)
    varied = [k for keys, _ in axes for k in keys] + ([SEED_KEY] if seeds is not None else [])
    exclude = _parse_exclude(raw, varied, problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    all_settings = _expand(axes, seeds)
    for i, entry in enumerate(exclude):
        if not any(all(s.get(k) == v for k, v in entry.items()) for s in all_settings):
            problems.append(f"exclude[{i}]: {_label(entry)} matches no point")
    kept = [s for s in all_settings if not any(all(s.get(k) == v for k, v in e.items()) for e in exclude)]
    if not kept:
        problems.append("exclude removes every point")
    points, per_point = _build_points(base, kept)
    problems.extend(per_point)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return Experiment(name=name, points=points, description=raw.get("description", ""), path=path,
                      varied_keys=varied)


def _build_points(base: dict, kept: list[dict[str, Any]]) -> tuple[list[Point], list[str]]:
    """Build every point; problems shared by all points are reported once."""
    built = [_build(base, s, f"point {i + 1}") for i, s in enumerate(kept)]
    common = set.intersection(*(set(p) for _, p in built)) if built else set()
    problems = [f"every point: {p}" for p in built[0][1] if p in common] if built else []
    bad = [(i, s, [p for p in probs if p not in common]) for i, (s, (_, probs)) in enumerate(zip(kept, built))]
    bad = [b for b in bad if b[2]]
    if bad:
        problems.append(f"{len(bad)} of {len(kept)} points are invalid")
        problems.extend(f"point {i + 1} ({_label(s)}): {'; '.join(p)}" for i, s, p in bad)
    if problems:
        return [], problems
    points = [Point(i, s, config) for i, (s, (config, _)) in enumerate(zip(kept, built))]
    ids: dict[str, int] = {}
    for p in points:
        if p.run_id in ids:
            problems.append(f"points {ids[p.run_id] + 1} and {p.index + 1} resolve to the same config ({p.label})")
        ids.setdefault(p.run_id, p.index)
    return points, problems


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment YAML file (see the module docstring for the format)."""
    path = Path(path)
    return experiment_from_dict(read_yaml(path), source=str(path), path=path)


# ---------------------------------------------------------------------------------------------
# Runner


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n: run points whose index is i modulo n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n with 0 <= i < n, e.g. 0/2 and 1/2")
    return int(match[1]), int(match[2])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def point_state(run_dir: Path) -> str:
    """'done', 'failed', 'resumable' (a checkpoint without a finished summary) or 'new'."""
    summary = _read_json(run_dir / "summary.json") or {}
    if summary.get("status") in DONE:
        return "done"
    if (run_dir / "failure.json").is_file() or summary.get("status") == "diverged":
        return "failed"
    if (run_dir / "checkpoints" / "latest.pt").is_file():
        return "resumable"
    return "new"


def check_data(experiment: Experiment) -> dict:
    """Prepare every distinct data config (corpus found, tokenizer loads, split long enough);
    returns {DataConfig: Dataset}; raises one ConfigError listing every problem."""
    from decoder.data import DataError, prepare
    from decoder.tokenizer import TokenizerError

    datasets, problems = {}, []
    for point in experiment.points:
        data = point.config.data
        if data not in datasets:
            try:
                datasets[data] = prepare(data)
            except (DataError, TokenizerError) as exc:
                datasets[data] = None
                problems.append(f"data {data.corpus!r} / {data.tokenizer}: {exc}")
        dataset = datasets[data]
        need = point.config.model.context_length + 1
        if dataset is not None and len(dataset.train) < need:
            problems.append(f"point {point.index + 1} ({point.label}): training split has {len(dataset.train)} "
                            f"tokens, fewer than context_length + 1 = {need}")
    if problems:
        raise ConfigError(f"{experiment.path or experiment.name}: " + "; ".join(dict.fromkeys(problems)))
    return datasets


def _atomic_text(path: Path, text: str) -> None:
    from decoder.train import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _write_failure(run_dir: Path, point: Point, exc: BaseException) -> str:
    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    record = {"status": "failed", "error": error, "settings": point.settings, "run_id": point.run_id,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
    _atomic_text(run_dir / "failure.json", json.dumps(record, indent=2, default=str))
    return error


@dataclass
class PointOutcome:
    point: Point
    run_dir: Path
    status: str  # completed, early_stopped, skipped, failed, interrupted
    error: str | None = None
    summary: dict | None = None


def run_point(point: Point, run_dir: Path, dataset: Any, *, force: bool, quiet: bool,
              say: Callable[[str], None]) -> PointOutcome:
    """Train one point into run_dir (skip, resume or start over as its folder's state says)."""
    from decoder import distributed as dist_utils
    from decoder.train import train

    ctx = dist_utils.init()  # under torchrun every rank runs the same points together (DDP)
    state = point_state(run_dir)
    dist_utils.barrier(ctx)  # every rank has read the folder's state before rank 0 changes it
    if state == "done" and not force:
        summary = _read_json(run_dir / "summary.json")
        say(f"skipped: already {summary['status']} (--force re-runs it)")
        return PointOutcome(point, run_dir, "skipped", summary=summary)
    if force or state == "failed":
        if ctx.rank == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
        dist_utils.barrier(ctx)
    resume = state == "resumable" and not force
    say(f"resuming from {run_dir / 'checkpoints' / 'latest.pt'}" if resume else "training")
    start = time.perf_counter()
    try:
        summary = train(point.config, run_dir, resume=resume, quiet=quiet, dataset=dataset)
    except Exception as exc:  # one failing point (OOM, NaN, bad data) must not stop the grid
        error = _write_failure(run_dir, point, exc) if ctx.rank == 0 else str(exc)
        if ctx.world_size > 1:
            raise  # ranks cannot skip a point independently: take the job down (torchrun shows why)
        say(f"FAILED: {error}")
        return PointOutcome(point, run_dir, "failed", error=error)
    bpb = summary.get("best_val_bpb")
    say(f"{summary['status']} in {time.perf_counter() - start:.0f} s"
        + (f", best val bpb {bpb:.4f}" if bpb is not None else ""))
    return PointOutcome(point, run_dir, summary["status"], summary=summary)


def run_experiment(experiment: Experiment, runs_dir: str | Path = "runs", *, force: bool = False,
                   shard: tuple[int, int] = (0, 1), quiet: bool = False,
                   say: Callable[[str], None] | None = None) -> list[PointOutcome]:
    """Train every point of this shard in turn; stops early only when a run is interrupted."""
    say = say or _print
    datasets = check_data(experiment)
    folder = Path(runs_dir) / experiment.name
    mine = [p for p in experiment.points if p.index % shard[1] == shard[0]]
    n = len(experiment.points)
    outcomes = []
    for point in mine:
        run_dir = folder / point.run_id
        prefix = f"[{point.index + 1}/{n}] {point.label} -> {run_dir}"
        say(prefix)
        outcome = run_point(point, run_dir, datasets[point.config.data], force=force, quiet=quiet,
                            say=lambda message: say(f"[{point.index + 1}/{n}] {message}"))
        outcomes.append(outcome)
        if outcome.status == "interrupted":
            say(f"interrupted at point {point.index + 1}; run the same command again to resume it")
            break
    return outcomes


def _print(message: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    print(message, flush=True)


def dry_run_table(experiment: Experiment, runs_dir: str | Path, shard: tuple[int, int] = (0, 1)) -> str:
    """The expanded points as a text table: number, run id, folder state, settings."""
    folder = Path(runs_dir) / experiment.name
    keys = experiment.varied_keys
    rows = [[str(p.index + 1), p.run_id, point_state(folder / p.run_id)] + [_setting(p.settings[k]) for k in keys]
            for p in experiment.points if p.index % shard[1] == shard[0]]
    header = ["#", "run id", "state"] + keys
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.append(f"{len(rows)} of {len(experiment.points)} points in shard {shard[0]}/{shard[1]}; runs in {folder}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading run folders


@dataclass
class RunRecord:
    """What a run folder says about one run (or that it has not run)."""

    experiment: str
    run_dir: Path
    config: RunConfig | None
    status: str  # completed, early_stopped, interrupted, diverged, failed, incomplete, not run
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    error: str | None = None


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """Rows of metrics.jsonl (last row per step wins, as a resumed run may repeat steps) and
    whether the file ended in a damaged line (a crash mid-write)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return [], False
    rows: dict[int, dict] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return list(rows.values()), True
        if isinstance(row, dict) and "step" in row:
            rows[row["step"]] = row
    return sorted(rows.values(), key=lambda r: r["step"]), False


def read_run(run_dir: Path, experiment: str, config: RunConfig | None = None) -> RunRecord:
    """A RunRecord from a run folder; `config` (the point's) is used when the folder has none."""
    if not run_dir.is_dir():
        return RunRecord(experiment, run_dir, config, "not run")
    if (run_dir / "config.yaml").is_file():
        try:
            config = load_config(run_dir / "config.yaml")
        except ConfigError:
            pass
    summary = _read_json(run_dir / "summary.json") or {}
    failure = _read_json(run_dir / "failure.json") or {}
    metrics, truncated = read_metrics(run_dir / "metrics.jsonl")
    samples = _read_json(run_dir / "samples.json") or []
    if failure:
        status, error = "failed", failure.get("error")
    elif summary.get("status"):
        status, error = summary["status"], summary.get("error")
    else:
        status, error = "incomplete", "metrics.jsonl ends in a damaged line" if truncated else None
    return RunRecord(experiment, run_dir, config, status, summary, metrics, samples, error)


def _is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "summary.json").is_file() or (path / "failure.json").is_file()


def load_records(sources: Iterable[str | Path], runs_dir: str | Path = "runs") -> tuple[list[RunRecord], list[str]]:
    """Records of every source (experiment files: all their points; run folders; folders of run
    folders) and the names of the sources."""
    records, names = [], []
    for source in sources:
        path = Path(source)
        if path.is_file():
            experiment = load_experiment(path)
            folder = Path(runs_dir) / experiment.name
            records += [read_run(folder / p.run_id, experiment.name, p.config) for p in experiment.points]
            names.append(experiment.name)
        elif path.is_dir() and _is_run_folder(path):
            records.append(read_run(path, path.resolve().parent.name))
            names.append(path.resolve().parent.name)
        elif path.is_dir() and any(_is_run_folder(p) for p in path.iterdir()):
            records += [read_run(p, path.resolve().name) for p in sorted(path.iterdir()) if _is_run_folder(p)]
            names.append(path.resolve().name)
        else:
            raise ExperimentError(f"{source}: neither an experiment file nor a run folder (or a folder of them)")
    return records, list(dict.fromkeys(names))


def _flat(config: RunConfig | None) -> dict[str, Any]:
    if config is None:
        return {}
    return {f"{s}.{k}": v for s, section in config.to_dict().items() for k, v in section.items()}


def _seeds_vary(records: list[RunRecord]) -> bool:
    return len({_flat(r.config).get(SEED_KEY) for r in records}) > 1


def varied_keys(records: list[RunRecord]) -> list[str]:
    """Dotted keys (training.seed aside) whose value differs between runs of the same experiment."""
    keys: dict[str, None] = {}
    for name in dict.fromkeys(r.experiment for r in records):
        flats = [_flat(r.config) for r in records if r.experiment == name and r.config is not None]
        for key in flats[0] if flats else []:
            if key != SEED_KEY and len({repr(f.get(key)) for f in flats}) > 1:
                keys[key] = None
    return list(keys)


# ---------------------------------------------------------------------------------------------
# The table


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def record_row(record: RunRecord, keys: list[str]) -> dict[str, Any]:
    """One row of summary.csv; numbers from summary.json, else from metrics.jsonl (unfinished runs)."""
    s, m = record.summary, record.metrics
    flat = _flat(record.config)
    best = min((r for r in m if _finite(r.get("val_loss")) is not None), key=lambda r: r["val_loss"], default={})
    last = m[-1] if m else {}
    tokens, elapsed = s.get("tokens_seen", last.get("tokens_seen")), s.get("elapsed_s", last.get("elapsed_s"))
    best_loss = s.get("best_val_loss", best.get("val_loss"))
    row = {"experiment": record.experiment, "run_id": record.run_dir.name, "status": record.status}
    row.update({k: flat.get(k) for k in keys})
    row.update({
        "seed": flat.get(SEED_KEY),
        "params_total": s.get("params_total"),
        "params_non_embedding": s.get("params_non_embedding"),
        "tokens_seen": tokens,
        "steps": s.get("step", last.get("step")),
        "elapsed_s": elapsed,
        "tokens_per_s": s.get("tokens_per_s") or (tokens / elapsed if tokens and elapsed else None),
        "best_val_loss": best_loss,
        "best_val_ppl": math.exp(min(best_loss, 700.0)) if _finite(best_loss) is not None else None,
        "best_val_bpb": s.get("best_val_bpb", best.get("val_bpb")),
        "final_val_loss": s.get("final_val_loss", last.get("val_loss")),
        "final_val_ppl": s.get("final_val_ppl", last.get("val_ppl")),
        "final_val_bpb": s.get("final_val_bpb", last.get("val_bpb")),
        "train_loss_at_best": s.get("train_loss_at_best", best.get("train_loss")),
        "error": record.error,
        "run_dir": str(record.run_dir),
    })
    return row


def summary_frame(records: list[RunRecord]):
    """summary.csv as a pandas DataFrame (integer columns nullable)."""
    import pandas as pd

    keys = varied_keys(records)
    rows = [record_row(r, keys) for r in records]
    frame = pd.DataFrame(rows, columns=["experiment", "run_id", "status", *keys, *REPORT_COLUMNS])
    for key in keys:  # settings as written (512 stays 512 beside a null, not 512.0)
        frame[key] = pd.Series([row[key] for row in rows], dtype=object)
    for column in _INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in REPORT_COLUMNS:
        if column not in _INT_COLUMNS and column not in ("error", "run_dir"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame.sort_values("best_val_bpb", na_position="last", kind="stable").reset_index(drop=True)


@dataclass
class Group:
    """Runs of one configuration (all seeds): what a row of summary.md shows."""

    experiment: str
    settings: dict[str, Any]
    rows: list[dict]

    @property
    def scored(self) -> list[dict]:
        return [r for r in self.rows if _finite(r["best_val_bpb"]) is not None]

    def mean_std(self, column: str) -> tuple[float | None, float | None]:
        values = [_finite(r[column]) for r in self.scored]
        values = [v for v in values if v is not None]
        if not values:
            return None, None
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        return mean, std

    @property
    def label(self) -> str:
        return _label(self.settings)


def group_runs(frame, keys: list[str]) -> list[Group]:
    """Rows grouped by experiment and varied settings, ranked by mean best val bpb (unscored last)."""
    groups: dict[str, Group] = {}
    for row in frame.to_dict("records"):
        settings = {k: _plain(row[k]) for k in keys}
        ident = json.dumps([row["experiment"], settings], default=str)
        groups.setdefault(ident, Group(row["experiment"], settings, [])).rows.append(row)
    return sorted(groups.values(), key=lambda g: (g.mean_std("best_val_bpb")[0] is None,
                                                  g.mean_std("best_val_bpb")[0] or 0.0))


def _plain(value: Any) -> Any:
    """pandas' missing values (NaN, NA) as None, numpy scalars as Python ones."""
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------------------------------------
# Baselines and memorisation


def baselines(records: list[RunRecord]) -> list[dict]:
    """Kneser-Ney bigram and trigram on each distinct data config of the runs."""
    from decoder.baseline import kn_baseline
    from decoder.data import DataError
    from decoder.tokenizer import TokenizerError

    # The training-window scheme does not change the splits, so it does not make another baseline.
    datas = list(dict.fromkeys(dataclasses.replace(r.config.data, windows="random")
                               for r in records if r.config is not None))
    out = []
    for data in datas:
        for order, name in ((2, "KN bigram"), (3, "KN trigram")):
            try:
                result = kn_baseline(data, order)
            except (DataError, TokenizerError) as exc:
                out.append({"name": name, "data": data, "error": str(exc)})
                continue
            out.append({"name": name, "data": data, **result})
    return out


def _ngram_keys(ids: Iterable[int], n: int) -> list[bytes]:
    """The n-grams of `ids` in order, each as the bytes of its int64 ids."""
    import numpy as np

    ids = np.ascontiguousarray(np.asarray(ids if hasattr(ids, "__len__") else list(ids), dtype=np.int64))
    if len(ids) < n:
        return []
    windows = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(ids, n))
    return windows.view(np.dtype((np.void, 8 * n))).ravel().tolist()


def ngram_set(tokens: Iterable[int], n: int = NGRAM) -> set[bytes]:
    """Every n-gram of a token stream (for verbatim membership tests with `memorisation`)."""
    return set(_ngram_keys(tokens, n))


def memorisation(ids: Iterable[int], train_ngrams: set[bytes], n: int = NGRAM) -> float | None:
    """Share of the n-grams of `ids` that occur verbatim in the training split (whose n-grams are
    `train_ngrams`, from ngram_set); None when `ids` has fewer than n tokens."""
    grams = _ngram_keys(ids, n)
    if not grams:
        return None
    return sum(g in train_ngrams for g in grams) / len(grams)


# ---------------------------------------------------------------------------------------------
# Writing the report


def _fmt(value: Any, kind: str = "float") -> str:
    value = _plain(value)
    if value is None:
        return ""
    if kind == "count":
        for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{unit}"
        return str(int(value))
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "seconds":
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if kind == "ppl":
        return f"{value:,.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _mean_cell(group: Group, column: str, kind: str = "float") -> str:
    """The mean over the group's scored runs, with ± sample std when they differ."""
    mean, std = group.mean_std(column)
    if mean is None:
        return ""
    return _fmt(mean, kind) + (f" ± {_fmt(std, kind)}" if std else "")


def _status_cell(group: Group) -> str:
    counts: dict[str, int] = {}
    for row in group.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{n}× {s}" if len(group.rows) > 1 else s for s, n in counts.items())


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows])


def summary_markdown(name: str, frame, keys: list[str], bases: list[dict], *, command: str,
                     description: str = "") -> str:
    """summary.md: one row per configuration ranked by val bpb, mean ± std over seeds, baselines."""
    groups = group_runs(frame, keys)
    many = len({g.experiment for g in groups}) > 1
    header = [""] + (["experiment"] if many else []) + keys + [
        "runs", "params", "non-emb params", "tokens seen", "train s", "tokens/s", "val loss", "val ppl",
        "val bpb", "final val bpb", "train loss at best", "status"]
    best = next((g for g in groups if g.scored), None)
    ranked: list[tuple[float, list[str]]] = []
    for g in groups:
        mark = "**best**" if g is best else ""
        cells = [mark] + ([g.experiment] if many else []) + [_setting(g.settings[k]) for k in keys] + [
            str(len(g.rows)), _mean_cell(g, "params_total", "count"), _mean_cell(g, "params_non_embedding", "count"),
            _mean_cell(g, "tokens_seen", "count"), _mean_cell(g, "elapsed_s", "seconds"),
            _mean_cell(g, "tokens_per_s", "int"), _mean_cell(g, "best_val_loss"), _mean_cell(g, "best_val_ppl", "ppl"),
            _mean_cell(g, "best_val_bpb"), _mean_cell(g, "final_val_bpb"), _mean_cell(g, "train_loss_at_best"),
            _status_cell(g)]
        mean = g.mean_std("best_val_bpb")[0]
        ranked.append((mean if mean is not None else math.inf, cells))
    for b in bases:
        if "val_bpb" not in b:
            continue
        where = f" ({b['data'].tokenizer}, {b['data'].corpus})" if _many_data(bases) else ""
        numbers = [_fmt(b["val_loss"]), _fmt(b["val_ppl"], "ppl"), _fmt(b["val_bpb"]), "", "", "n-gram"]
        cells = [f"baseline: {b['name']}{where}"] + [""] * (len(header) - 1 - len(numbers)) + numbers
        ranked.append((b["val_bpb"], cells))
    ranked.sort(key=lambda item: item[0])
    lines = [f"# {name}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [
        f"Regenerate: `{command}`", "",
        "Ranked by best validation bits per byte (lower is better); with repeated seeds each cell is "
        "mean ± std (sample std) over the runs of that configuration. 'train s' is training time "
        "without evaluation. The baselines are interpolated Kneser-Ney n-gram models fitted on the "
        "same training split and scored on the same validation tokens.", "",
        _md_table(header, [cells for _, cells in ranked]), "",
    ]
    lines += [f"- {b['name']} baseline unavailable: {b['error']}" for b in bases if "error" in b]
    lines += _machine_lines(frame)
    return "\n".join(lines).rstrip() + "\n"


def _many_data(bases: list[dict]) -> bool:
    return len({repr(b["data"]) for b in bases}) > 1


def _machine_lines(frame) -> list[str]:
    summaries = [_read_json(Path(d) / "summary.json") or {} for d in frame["run_dir"]]
    seen = dict.fromkeys(f"{s.get('cpu')}, device {s.get('device')}, precision {s.get('precision')}, torch "
                         f"{s.get('torch')}" for s in summaries if s.get("device"))
    return [""] + [f"Trained on: {m}" for m in seen] if seen else []


def samples_markdown(name: str, records: list[RunRecord], *, command: str) -> str:
    """samples.md: the greedy and the sampled continuation of every run, with memorisation."""
    from decoder.data import prepare

    train_sets: dict[DataConfig, Any] = {}
    keys = varied_keys(records)
    seeds = _seeds_vary(records)
    lines = [f"# {name}: samples", "", f"Regenerate: `{command}`", "",
             f"Memorised: the share of the continuation's {NGRAM}-token n-grams that occur verbatim in the "
             "training split (100% = recited from the book).", ""]
    for record in records:
        if not record.samples or record.config is None:
            continue
        data = record.config.data
        if data not in train_sets:
            dataset = prepare(data)
            train_sets[data] = (dataset.tokenizer, ngram_set(dataset.train))
        tokenizer, grams = train_sets[data]
        flat = _flat(record.config)
        title = _label({k: flat.get(k) for k in keys + ([SEED_KEY] if seeds else [])})
        lines += [f"## {record.experiment}: {title}", "", f"Run `{record.run_dir}`, prompt: "
                  f"`{record.samples[0].get('prompt', '')}`", ""]
        for sample in record.samples:
            share = memorisation(tokenizer.encode(sample["text"]), grams)
            figure = f"{share:.0%}" if share is not None else f"n/a (< {NGRAM} tokens)"
            lines += [f"**{sample['strategy']}** (memorised: {figure})", "", "```text",
                      sample["prompt"] + sample["text"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Plots


def _figure(width: float = 8.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    from decoder.train import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _run_label(record: RunRecord, keys: list[str], many: bool, seeds: bool) -> str:
    flat = _flat(record.config)
    parts = ([record.experiment] if many else []) + [f"{k.split('.')[-1]}={_setting(flat.get(k))}" for k in keys]
    if seeds:
        parts.append(f"seed={flat.get(SEED_KEY)}")
    return ", ".join(parts) or record.experiment


def _baseline_lines(ax, bases: list[dict], column: str) -> None:
    styles = {"KN bigram": ":", "KN trigram": "--"}
    for b in bases:
        if column in b:
            label = b["name"] + (f" ({b['data'].tokenizer})" if _many_data(bases) else "")
            ax.axhline(b[column], color="black", linestyle=styles.get(b["name"], "-."), linewidth=1, label=label)


def plot_curves(name: str, records: list[RunRecord], bases: list[dict], x: str, path: Path) -> bool:
    """Validation loss of every run against tokens seen or training seconds; False if no data."""
    keys = varied_keys(records)
    many = len({r.experiment for r in records}) > 1
    seeds = _seeds_vary(records)
    runs = [r for r in records if r.metrics]
    if not runs:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    for record in runs:
        ax.plot([row[x] for row in record.metrics], [row["val_loss"] for row in record.metrics], marker=".",
                label=_run_label(record, keys, many, seeds))
    _baseline_lines(ax, bases, "val_loss")
    ax.set_xlabel("tokens seen (training tokens)" if x == "tokens_seen" else "training time (s, evaluation excluded)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{name}: validation loss vs {'tokens seen' if x == 'tokens_seen' else 'wall-clock training time'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def plot_bpb_vs_params(name: str, frame, keys: list[str], bases: list[dict], path: Path) -> bool:
    """Best validation bpb against total parameters (mean ± std over seeds)."""
    groups = [g for g in group_runs(frame, keys) if g.scored and g.mean_std("params_total")[0]]
    if not groups:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    many = len({g.experiment for g in groups}) > 1
    for g in groups:
        mean, std = g.mean_std("best_val_bpb")
        parts = [f"{k.split('.')[-1]}={_setting(v)}" for k, v in g.settings.items()]
        label = ", ".join(([g.experiment] if many else []) + parts)
        ax.errorbar([g.mean_std("params_total")[0]], [mean], yerr=[std or 0.0], marker="o", capsize=3,
                    linestyle="none", label=label or g.experiment)
    _baseline_lines(ax, bases, "val_bpb")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (total, log scale)")
    ax.set_ylabel("best validation bits per byte")
    ax.set_title(f"{name}: validation bpb vs parameter count")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def plot_heatmap(name: str, frame, keys: list[str], path: Path) -> bool:
    """Mean best val bpb over the two varied keys; False unless one experiment with exactly two."""
    if len(keys) != 2 or frame["experiment"].nunique() != 1:
        return False
    groups = group_runs(frame, keys)
    rows = sorted({g.settings[keys[0]] for g in groups}, key=_sort_key)
    cols = sorted({g.settings[keys[1]] for g in groups}, key=_sort_key)
    grid = [[math.nan] * len(cols) for _ in rows]
    for g in groups:
        mean = g.mean_std("best_val_bpb")[0]
        if mean is not None:
            grid[rows.index(g.settings[keys[0]])][cols.index(g.settings[keys[1]])] = mean
    fig = _figure(1.2 * len(cols) + 3, 0.8 * len(rows) + 2.5)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, "failed / not run" if math.isnan(value) else f"{value:.3f}", ha="center", va="center",
                    fontsize="small", bbox=dict(facecolor="white", alpha=0.6, linewidth=0))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    seeds = frame["seed"].nunique() > 1
    ax.set_title(f"{name}: best validation bpb" + (" (mean over seeds)" if seeds else ""))
    fig.colorbar(image, ax=ax, label="validation bits per byte (lower is better)")
    _save(fig, path)
    return True


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def write_report(sources: list[str | Path], *, runs_dir: str | Path = "runs", out: str | Path = "results",
                 name: str | None = None, command: str | None = None) -> Path:
    """Write summary.csv/.md, the plots and samples.md for `sources` under out/<name>/."""
    records, names = load_records(sources, runs_dir)
    if not records:
        raise ExperimentError(f"{', '.join(map(str, sources))}: no runs to report")
    name = name or "-vs-".join(names)
    if not _NAME.fullmatch(name):
        raise ExperimentError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    command = command or "decoder report " + " ".join(map(str, sources))
    frame = summary_frame(records)
    keys = varied_keys(records)
    bases = baselines(records)
    _atomic_text(folder / "summary.csv", frame.to_csv(index=False))
    _write_parquet(frame, folder / "summary.parquet")
    description = _description(sources) if len(names) == 1 else ""
    _atomic_text(folder / "summary.md", summary_markdown(name, frame, keys, bases, command=command,
                                                         description=description))
    plot_curves(name, records, bases, "tokens_seen", folder / "loss_vs_tokens.png")
    plot_curves(name, records, bases, "elapsed_s", folder / "loss_vs_seconds.png")
    plot_bpb_vs_params(name, frame, keys, bases, folder / "bpb_vs_params.png")
    plot_heatmap(name, frame, keys, folder / "heatmap.png")
    _atomic_text(folder / "samples.md", samples_markdown(name, records, command=command))
    return folder


def _description(sources: list[str | Path]) -> str:
    files = [Path(s) for s in sources if Path(s).is_file()]
    return load_experiment(files[0]).description if files else ""


def _write_parquet(frame, path: Path) -> None:
    if importlib.util.find_spec("pyarrow") is None:
        return
    from decoder.train import atomic_write_bytes

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_run(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.experiment)
    if args.dry_run:
        check_data(experiment)
        print(dry_run_table(experiment, args.runs_dir, args.shard))
        return 0
    from decoder.distributed import shutdown

    try:
        outcomes = run_experiment(experiment, args.runs_dir, force=args.force, shard=args.shard, quiet=args.quiet)
    finally:
        shutdown()
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return 1 if counts.get("failed") else 0
    print(f"{experiment.name}: {len(outcomes)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    folder = write_report([args.experiment], runs_dir=args.runs_dir, out=args.out,
                          command=f"decoder report {args.experiment}")
    print(f"report: {folder}/summary.md")
    if counts.get("interrupted"):
        return 130
    return 1 if counts.get("failed") else 0


def cmd_report(args: argparse.Namespace) -> int:
    folder = write_report(args.sources, runs_dir=args.runs_dir, out=args.out, name=args.name)
    print(f"report: {folder}/summary.md")
    return 0


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="train every point of an experiment grid (YAML), then report")
    p.add_argument("experiment", help="experiment YAML file (name, base, grid, zip, seeds, exclude)")
    p.add_argument("--runs-dir", default="runs", help="run folders go to RUNS_DIR/<name>/<run id> (default runs)")
    p.add_argument("--out", default="results", help="report folder parent (default results)")
    p.add_argument("--force", action="store_true", help="re-run points that already completed")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                   help="run only points whose index is I modulo N (0 <= I < N)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded points and exit")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("report", help="tables, plots and samples from experiment files or run folders")
    p.add_argument("sources", nargs="+", help="experiment YAML files, run folders, or folders of run folders")
    p.add_argument("--runs-dir", default="runs", help="where experiment files' runs are (default runs)")
    p.add_argument("--out", default="results", help="writes OUT/<name>/ (default results)")
    p.add_argument("--name", help="report folder name (default: the experiment names joined by -vs-)")
    p.set_defaults(func=cmd_report)
