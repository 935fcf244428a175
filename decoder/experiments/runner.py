"""Running an experiment's points into their run folders.

A point's run folder is runs/<experiment>/<run id>. Re-running an experiment file skips completed
points, resumes interrupted ones from their latest checkpoint and retries failed ones from scratch;
--force re-runs everything, --shard I/N runs only the points whose index is I modulo N, --workers N
trains N of them at once (`decoder.experiments.parallel`). A failing
point writes its failure record (`RunDir.write_failure`) and the grid goes on. File names, and
reading the folders back for a report: `decoder.runs`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from decoder.experiments.grid import Experiment, Point, raise_problems, setting_text
from decoder.runs import RunDir


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n: run points whose index is i modulo n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n with 0 <= i < n, e.g. 0/2 and 1/2")
    return int(match[1]), int(match[2])


def point_state(run_dir: Path) -> str:
    """'done', 'failed', 'resumable' or 'new' (`RunDir.state`)."""
    return RunDir(run_dir).state()


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
    raise_problems(str(experiment.path or experiment.name), list(dict.fromkeys(problems)))
    return datasets


def _write_failure(run: RunDir, point: Point, exc: BaseException) -> str:
    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    run.write_failure({"status": "failed", "error": error, "settings": point.settings, "run_id": point.run_id,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))})
    return error


@dataclass
class PointOutcome:
    point: Point
    run_dir: Path
    status: str  # completed, early_stopped, skipped, failed, interrupted
    error: str | None = None
    summary: dict | None = None


def run_point(point: Point, run_dir: Path, dataset: Any, *, force: bool, quiet: bool,
              say: Callable[[str], None], on_step: Callable[[int, dict], bool] | None = None) -> PointOutcome:
    """Train one point into run_dir (skip, resume or start over as its folder's state says);
    `on_step` is train's (a sweep's pruning watches the evaluations through it)."""
    from decoder import distributed as dist_utils
    from decoder.train import train

    ctx = dist_utils.init()  # under torchrun every rank runs the same points together (DDP)
    run = RunDir(run_dir)
    state = run.state()
    dist_utils.barrier(ctx)  # every rank has read the folder's state before rank 0 changes it
    if state == "done" and not force:
        summary = run.read_summary()
        say(f"skipped: already {summary['status']} (--force re-runs it)")
        return PointOutcome(point, run_dir, "skipped", summary=summary)
    if force or state == "failed":
        if dist_utils.is_rank0():
            shutil.rmtree(run_dir, ignore_errors=True)
        dist_utils.barrier(ctx)
    resume = state == "resumable" and not force
    say(f"resuming from {run.latest}" if resume else "training")
    start = time.perf_counter()
    try:
        summary = train(point.config, run_dir, resume=resume, quiet=quiet, dataset=dataset, on_step=on_step)
    except Exception as exc:  # one failing point (OOM, NaN, bad data) must not stop the grid
        error = _write_failure(run, point, exc) if dist_utils.is_rank0() else str(exc)
        if ctx.world_size > 1:
            raise  # ranks cannot skip a point independently: take the job down (torchrun shows why)
        say(f"FAILED: {error}")
        return PointOutcome(point, run_dir, "failed", error=error)
    bpb = summary.get("best_val_bpb")
    protocols = summary.get("protocols") or {}
    say(f"{summary['status']} in {time.perf_counter() - start:.0f} s"
        + (f", best val bpb {bpb:.4f}" if bpb is not None else "")
        + "".join(f"; {name} {p['bits_per_byte']:.4f} ({p['seconds']:.0f} s)" for name, p in protocols.items()))
    return PointOutcome(point, run_dir, summary["status"], summary=summary)


def run_experiment(experiment: Experiment, runs_dir: str | Path = "runs", *, force: bool = False,
                   shard: tuple[int, int] = (0, 1), quiet: bool = False,
                   say: Callable[[str], None] | None = None, workers: int = 1,
                   points: list[Point] | None = None) -> list[PointOutcome]:
    """Train every point of this shard (or the given `points`) in turn, or `workers` at a time
    (`decoder.experiments.parallel`); stops early only when a run is interrupted."""
    say = say or _print
    datasets = check_data(experiment)
    folder = Path(runs_dir) / experiment.name
    mine = [p for p in (points or experiment.points) if p.index % shard[1] == shard[0]]
    n = len(points or experiment.points)
    if workers > 1:
        from decoder.experiments.parallel import run_parallel

        skipped = {p.index: run_point(p, p.run_dir(folder), None, force=False, quiet=True,
                                      say=lambda message, p=p: say(f"[{p.index + 1}/{n}] {p.label}: {message}"))
                   for p in mine if not force and point_state(p.run_dir(folder)) == "done"}  # no worker needed
        todo = [p for p in mine if p.index not in skipped]
        ran = run_parallel(todo, folder, min(workers, len(todo)), force=force, total=n, say=say) if todo else []
        by_index = {**skipped, **{o.point.index: o for o in ran}}
        return [by_index[p.index] for p in mine if p.index in by_index]
    outcomes = []
    for point in mine:
        run_dir = point.run_dir(folder)
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
    from decoder.distributed import is_rank0

    if is_rank0():  # under torchrun only rank 0 reports
        print(message, flush=True)


def dry_run_table(experiment: Experiment, runs_dir: str | Path, shard: tuple[int, int] = (0, 1)) -> str:
    """The expanded points as a text table: number, run id, folder state, settings."""
    folder = Path(runs_dir) / experiment.name
    keys = experiment.varied_keys
    rows = [[str(p.index + 1), p.run_id, point_state(p.run_dir(folder))] + [setting_text(p.settings[k]) for k in keys]
            for p in experiment.points if p.index % shard[1] == shard[0]]
    header = ["#", "run id", "state"] + keys
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.append(f"{len(rows)} of {len(experiment.points)} points in shard {shard[0]}/{shard[1]}; runs in {folder}")
    return "\n".join(lines)
