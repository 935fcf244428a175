"""Running a grid's points concurrently on one machine: `decoder run GRID --workers N`.

N worker processes (spawned, so each has its own torch and thread pool) take the points in order;
each point is trained by `decoder.experiments.runner.run_point` exactly as a one-at-a-time run
trains it (same skip / resume / retry rules, same run folder), so a grid gives the same results
with any number of workers. Threads: a point whose config sets training.num_threads uses that
(it is part of the run id); otherwise each worker gets cores // N threads. On a GPU the workers
share the device. The parent shows one progress display for the grid (a bar of points done when
stderr is a terminal, one line per finished point) and, on Ctrl-C, lets every running point
checkpoint and stop ('interrupted'); running the same command again resumes them.

`--workers auto`: on CPU min(points, cores); on a GPU min(points, cores, GPU_AUTO_WORKERS), since
tiny shapes leave a device mostly idle but each worker holds its own CUDA context.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

from decoder.errors import UserError

GPU_AUTO_WORKERS = 4
"""`--workers auto` on a machine with a GPU runs at most this many points on it at once."""

_DATASETS: dict[Any, Any] = {}  # in a worker: the prepared data of each DataConfig it has seen
_STOP: Any = None  # in a worker: the parent's stop event (set on Ctrl-C: stop the point, start no more)


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(text: str | int, points: int, *, gpu: bool | None = None) -> int:
    """'auto' or a positive integer -> the number of worker processes (never more than points)."""
    if str(text) == "auto":
        if gpu is None:
            from decoder.hardware import resolve_device

            gpu = resolve_device("auto").type == "cuda"
        cap = min(cpu_cores(), GPU_AUTO_WORKERS) if gpu else cpu_cores()
        return max(1, min(points, cap))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--workers {text!r}: expected a positive integer or 'auto'")
    return max(1, min(n, points))


_SIGNALLED = False  # in a worker: Ctrl-C arrived between points (the parent may not have set _STOP yet)


def _init_worker(stop) -> None:
    # Ctrl-C reaches every process of the group: a worker between points notes it (and starts no
    # more), a training point handles it itself (decoder.signals); and the parent sets `stop`, which
    # a point queued in the worker reads before it starts, and a running one after every step. A
    # worker whose point was interrupted sets `stop` itself, so no worker starts another point in
    # the moment before the parent has seen the signal.
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, _note_signal)


def _note_signal(signum, frame) -> None:
    global _SIGNALLED
    _SIGNALLED = True


def _run_in_worker(point, run_dir: Path, force: bool, threads: int):
    import torch

    from decoder.data import prepare
    from decoder.experiments.runner import PointOutcome, run_point

    if _SIGNALLED or _STOP.is_set():
        _STOP.set()
        return PointOutcome(point, run_dir, "cancelled"), ["not started (stopping)"]
    torch.set_num_threads(threads)
    data = point.config.data
    if data not in _DATASETS:
        _DATASETS[data] = prepare(data)
    messages: list[str] = []
    outcome = run_point(point, run_dir, _DATASETS[data], force=force, quiet=True, say=messages.append,
                        on_step=lambda step, info: _STOP.is_set())
    if outcome.status == "interrupted":
        _STOP.set()
    return outcome, messages


def run_parallel(points: list, folder: Path, workers: int, *, force: bool, total: int,
                 say: Callable[[str], None]) -> list:
    """Train `points` (of a grid of `total`) with `workers` processes; the outcomes in point order."""
    from tqdm.auto import tqdm

    threads = max(1, cpu_cores() // workers)
    say(f"{len(points)} points on {workers} workers, {threads} thread(s) each unless a point sets training.num_threads")
    outcomes: dict[int, Any] = {}
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(stop,)) as pool, \
            tqdm(total=len(points), unit="point", disable=not sys.stderr.isatty(), dynamic_ncols=True) as bar:
        futures: dict[Future, Any] = {pool.submit(_run_in_worker, p, p.run_dir(folder), force, threads): p
                                      for p in points}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    _collect(future, futures[future], outcomes, total, say)
                    bar.update(1)
                if any(o.status == "interrupted" for o in outcomes.values()):
                    break  # a point was stopped (a signal): start no more
        except KeyboardInterrupt:
            say("stopping: the running points checkpoint and stop (run the same command again to resume)")
        stop.set()
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for future in pending:
            if future.done() and not future.cancelled():
                _collect(future, futures[future], outcomes, total, say)
    return [outcomes[p.index] for p in points if p.index in outcomes]


def _collect(future: Future, point, outcomes: dict, total: int, say: Callable[[str], None]) -> None:
    from decoder.experiments.runner import PointOutcome

    tag = f"[{point.index + 1}/{total}]"
    try:
        outcome, messages = future.result()
    except Exception as exc:  # the worker process itself died (killed, out of memory)
        outcome, messages = PointOutcome(point, Path(), "failed", error=f"worker died: {exc}"), [f"FAILED: {exc}"]
    say(f"{tag} {point.label} -> {outcome.run_dir}: " + "; ".join(messages))
    outcomes[point.index] = outcome
