"""Running a search (`decoder sweep`) and pulling a grid point by point (`decoder run --storage`).

Every trial is an ordinary run folder, runs/<name>/<run id>, named by its resolved config's hash
like a grid point's. A trial takes an exclusive lock on its folder (fcntl, released by the kernel
when its process dies), then looks at it: a finished run is reused (a repeated suggestion is not
retrained), a pruned or failed one gives the same verdict again, a folder with a checkpoint is
resumed (a trial taken over from a stopped worker ends with the weights an uninterrupted run
would have), an empty one is trained. The study bookkeeping (heartbeats, slots, take-overs) is
`decoder.sweep.study`.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

from decoder.experiments.grid import Experiment, Point, settings_label
from decoder.experiments.runner import check_data, run_point
from decoder.sweep.search import Search, probes
from decoder.sweep.space import Param
from decoder.sweep.study import (HEARTBEAT_S, Interrupted, Surplus, TrialFailed, create_or_load,
                                       default_storage, enqueue_base, open_storage, slot_of, stop_now, work,
                                       import_optuna)
from decoder.runs import RunDir


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold runs/<name>/.<run id>.lock: one process trains a run folder at a time."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


class EvalWatcher:
    """train's on_step: reports each new evaluation's val_bpb to the trial at step = its ordinal
    and asks the pruner; returning True stops the run gracefully (checkpoint written)."""

    def __init__(self, trial, run_dir: Path, prune: bool, report: bool) -> None:
        self.trial, self.run, self.prune, self.report = trial, RunDir(run_dir), prune, report
        self.reported, self.size, self.pruned = 0, -1, False

    def __call__(self, step: int = 0, info: dict | None = None) -> bool:
        try:
            size = self.run.metrics_file.stat().st_size
        except OSError:
            return False
        if size == self.size:  # one stat per step: nothing new, nothing read
            return False
        self.size = size
        rows = self.run.read_metrics()[0]
        for ordinal, row in enumerate(rows[self.reported:], start=self.reported + 1):
            self.reported = ordinal
            if self.report and math.isfinite(row.get("val_bpb", math.nan)):
                self.trial.report(row["val_bpb"], ordinal)
                if self.prune and self.trial.should_prune():
                    self.pruned = True
                    return True
        return False


def _suggest(trial, param: Param) -> Any:
    if param.type == "categorical":
        return trial.suggest_categorical(param.key, list(param.choices))
    suggest = trial.suggest_int if param.type == "int" else trial.suggest_float
    kwargs = {"log": True} if param.log else ({"step": param.step} if param.step is not None else {})
    return suggest(param.key, param.low, param.high, **kwargs)


class _Datasets:
    """Prepared datasets by data config, so a worker tokenizes each corpus once."""

    def __init__(self) -> None:
        self.cache: dict = {}

    def __call__(self, config) -> Any:
        from decoder.data import prepare

        if config.data not in self.cache:
            self.cache[config.data] = prepare(config.data)
        return self.cache[config.data]


def _values(summary: dict, objectives: tuple[str, ...]) -> list[float]:
    key = {"val_bpb": "best_val_bpb", "tokens_per_s": "tokens_per_s"}
    values = [summary.get(key[o]) for o in objectives]
    if any(v is None for v in values):
        raise TrialFailed(f"the run's summary has no {', '.join(o for o, v in zip(objectives, values) if v is None)}")
    return values


class SearchObjective:
    """One trial of a search: suggest, resolve, then reuse / resume / train its run folder."""

    def __init__(self, search: Search, runs_dir: Path, *, quiet: bool, say: Callable[[str], None]) -> None:
        self.search, self.folder, self.quiet, self.say = search, Path(runs_dir) / search.name, quiet, say
        self.datasets = _Datasets()

    def __call__(self, trial) -> Any:
        from decoder.config import ConfigError

        slot = slot_of(trial.study, trial.number)
        if slot is not None and slot >= self.search.n_trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"all {self.search.n_trials} trials were taken by other workers")
        settings = {p.key: _suggest(trial, p) for p in self.search.params}
        try:
            config = self.search.config_of(settings, source=f"trial {trial.number}")
        except ConfigError as exc:
            trial.set_user_attr("error", str(exc))
            self.say(f"[trial {trial.number}] {settings_label(settings)}: invalid config: {exc}")
            raise TrialFailed(str(exc)) from None
        point = Point(trial.number, settings, config)
        run_dir = point.run_dir(self.folder)
        trial.set_user_attr("run_id", point.run_id)
        self.say(f"[trial {trial.number}] {point.label} -> {run_dir}")
        with run_lock(run_dir):
            return self._run(trial, point, run_dir)

    def _run(self, trial, point: Point, run_dir: Path) -> Any:
        optuna = import_optuna()
        say = lambda message: self.say(f"[trial {trial.number}] {message}")  # noqa: E731
        single = len(self.search.objectives) == 1
        run = RunDir(run_dir)
        summary = run.read_summary() or {}
        state = run.state()
        if summary.get("status") == "pruned" or state in ("done", "failed"):
            trial.set_user_attr("reused", True)
            EvalWatcher(trial, run_dir, prune=False, report=single)()
            say(f"reused: already {summary.get('status') or state} (not retrained)")
            if summary.get("status") == "pruned":
                raise optuna.TrialPruned(f"pruned at evaluation {summary.get('pruned_at_eval')}")
            if state == "failed":
                failure = run.read_failure() or {}
                raise TrialFailed(failure.get("error") or summary.get("error") or "failed")
            return _values(summary, self.search.objectives)
        watcher = EvalWatcher(trial, run_dir, prune=single and self.search.pruner["type"] != "none", report=single)
        outcome = run_point(point, run_dir, self.datasets(point.config), force=False, quiet=self.quiet, say=say,
                            on_step=watcher)
        if outcome.status == "failed":
            trial.set_user_attr("error", outcome.error)
            raise TrialFailed(outcome.error)
        if outcome.status == "interrupted" and watcher.pruned:
            run.write_summary({**(outcome.summary or {}), "status": "pruned", "pruned_at_eval": watcher.reported})
            say(f"pruned at evaluation {watcher.reported}")
            raise optuna.TrialPruned(f"pruned at evaluation {watcher.reported}")
        if outcome.status == "interrupted":
            raise Interrupted(f"trial {trial.number} stopped; its checkpoint is kept for whoever resumes it")
        return _values(outcome.summary, self.search.objectives)


def check_search_data(search: Search) -> None:
    """Corpora found and long enough for the space's probe configs (as `decoder run` checks a grid)."""
    points = [Point(i, s, search.config_of(s)) for i, s in enumerate(probes(search))]
    check_data(Experiment(search.name, points, path=search.path))


def _sampler(search: Search, seed: int):
    """The search's sampler with this seed (`PerTrialSeed` gives each trial its own)."""
    optuna = import_optuna()
    options = {k: v for k, v in search.sampler.items() if k != "type"}
    kind = search.sampler["type"]
    if kind == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid_values() for p in search.params}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **options)


def _pruner(search: Search):
    optuna = import_optuna()
    options = {k: v for k, v in search.pruner.items() if k != "type"}
    return {"none": lambda: optuna.pruners.NopPruner(),
            "median": lambda: optuna.pruners.MedianPruner(**options),
            "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**options),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(**options)}[search.pruner["type"]]()


def _per_trial_seed(search: Search):
    """A sampler that delegates each trial to the search's sampler seeded with seed + trial number:
    a trial's suggestions depend on the study's history and its number, not on which worker asks
    (two workers asking at once draw different points; one worker's sweep is reproducible). The grid
    sampler keeps one seed: it shuffles its grid with it, and every worker must see the same order."""
    optuna = import_optuna()
    if search.sampler["type"] == "grid":
        return _sampler(search, search.seed)

    class PerTrialSeed(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner: dict[int, Any] = {}

        def _for(self, trial):
            if trial.number not in self.inner:
                self.inner = {trial.number: _sampler(search, search.seed + trial.number)}
            return self.inner[trial.number]

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return PerTrialSeed()


def _stop_on_sigterm() -> None:
    """SIGTERM outside training acts as Ctrl-C (training handles it itself: checkpoint, then stop)."""
    signal.signal(signal.SIGTERM, stop_now)


def _search_worker(search: Search, url: str, runs_dir: str, quiet: bool, heartbeat_s: int, tag: str,
                   threads: int | None) -> None:
    """One worker: take trials of the study until it is done."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    say = (lambda m: print(f"{tag}{m}", flush=True))
    _stop_on_sigterm()
    optuna = import_optuna()
    storage = open_storage(url, heartbeat_s)
    def queue_base(study) -> None:
        enqueue_base(study, search.base_settings())
        say("the base config is queued as the first trial (start_from_base)")

    create_or_load(storage, search.name, search.directions, search.fingerprint(),
                   on_create=queue_base if search.start_from_base else None)
    study = optuna.load_study(study_name=search.name, storage=storage, sampler=_per_trial_seed(search),
                              pruner=_pruner(search))
    work(study, SearchObjective(search, Path(runs_dir), quiet=quiet, say=say), search.n_trials,
         heartbeat_s=heartbeat_s, say=say)


def run_sweep(search: Search, runs_dir: str | Path = "runs", *, storage: str | None = None, workers: int = 1,
              quiet: bool = False, heartbeat_s: int = HEARTBEAT_S) -> int:
    """Run `workers` processes on the search's study (SQLite under runs/<name>/ unless `storage`);
    returns the exit status: 0, 1 when a worker failed, 130 when interrupted."""
    url = storage or default_storage(runs_dir, search.name)
    check_search_data(search)
    open_storage(url, heartbeat_s)  # one clear error before any worker starts
    if workers == 1:
        try:
            _search_worker(search, url, str(runs_dir), quiet, heartbeat_s, "", None)
        except (Interrupted, KeyboardInterrupt):
            return 130
        return 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_search_worker, args=(search, url, str(runs_dir), True, heartbeat_s,
                                                                 f"[w{i}] ", threads)) for i in range(workers)]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:
        for p in processes:
            p.join()
        return 130
    return 0 if all(p.exitcode == 0 for p in processes) else 1


class GridObjective:
    """One trial of a pulled grid: the point at the trial's slot (a take-over keeps its point)."""

    def __init__(self, experiment: Experiment, runs_dir: Path, datasets: dict, *, quiet: bool,
                 say: Callable[[str], None], outcomes: list) -> None:
        self.experiment, self.folder = experiment, Path(runs_dir) / experiment.name
        self.datasets, self.quiet, self.say, self.outcomes = datasets, quiet, say, outcomes

    def __call__(self, trial) -> float:
        points = self.experiment.points
        slot = slot_of(trial.study, trial.number)
        if slot is not None and slot >= len(points):
            trial.set_user_attr("surplus", True)
            raise Surplus(f"all {len(points)} points were taken by other workers")
        index = trial.user_attrs["point"] if slot is None else slot
        trial.set_user_attr("point", index)
        point = points[index]
        run_dir = point.run_dir(self.folder)
        trial.set_user_attr("run_id", point.run_id)
        prefix = f"[{index + 1}/{len(points)}]"
        self.say(f"{prefix} {point.label} -> {run_dir}")
        with run_lock(run_dir):
            outcome = run_point(point, run_dir, self.datasets[point.config.data], force=False, quiet=self.quiet,
                                say=lambda m: self.say(f"{prefix} {m}"))
        self.outcomes.append(outcome)
        if outcome.status == "failed":
            raise TrialFailed(outcome.error)
        if outcome.status == "interrupted":
            raise Interrupted(f"point {index + 1} stopped; its checkpoint is kept for whoever resumes it")
        bpb = (outcome.summary or {}).get("best_val_bpb")
        return bpb if bpb is not None else math.inf


def pull_grid(experiment: Experiment, runs_dir: str | Path, storage: str, *, quiet: bool = False,
              heartbeat_s: int = HEARTBEAT_S, say: Callable[[str], None] = print) -> list:
    """Train grid points handed out by the study `<name>-grid` in `storage` until none is left (or
    this worker is stopped: its point is re-queued); returns this worker's PointOutcomes."""
    import hashlib

    optuna = import_optuna()
    datasets = check_data(experiment)
    ids = ",".join(p.run_id for p in experiment.points)
    name = f"{experiment.name}-grid"
    _stop_on_sigterm()
    store = open_storage(storage, heartbeat_s)
    create_or_load(store, name, ["minimize"], hashlib.sha256(ids.encode()).hexdigest()[:12])
    outcomes: list = []
    objective = GridObjective(experiment, Path(runs_dir), datasets, quiet=quiet, say=say, outcomes=outcomes)
    try:
        work(optuna.load_study(study_name=name, storage=store), objective, len(experiment.points),
             heartbeat_s=heartbeat_s, say=say)
    except Interrupted:
        pass  # the outcome says 'interrupted'
    return outcomes

