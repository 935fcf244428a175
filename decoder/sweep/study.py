"""Optuna studies as a work queue shared by many processes and machines.

Storage is an Optuna RDB storage: a SQLite file on one machine (the default,
runs/<name>/study.db), any SQLAlchemy URL (PostgreSQL) across machines. Every worker records a
heartbeat while it runs a trial; a trial whose worker stopped beating for the grace period is
failed by the next worker that looks and re-queued as a WAITING copy with the same parameters
(Optuna's RetryHeartbeatStaleTrialCallback), so whoever takes it resumes the same run folder.

The study's size is counted in *fresh* trials (those that are not such retries): a fresh trial's
rank among them (trial numbers are assigned under a lock on the study row) is its slot; a fresh
trial whose slot is past the size (two workers asked at the same moment) is a surplus one: it is
failed at once, without running, and marked `surplus`. A worker stops when every slot is taken and
no trial is running or waiting: it stays while another worker's trial runs, to take it over if
that worker dies.
"""

from __future__ import annotations

import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from decoder.errors import UserError

HEARTBEAT_S = 10
"""Seconds between a running trial's heartbeats; a trial is taken over after GRACE x this."""
GRACE = 3
OPEN_ATTEMPTS = 4
MAX_RETRY = 5  # a trial whose workers keep dying is given up after this many takeovers


class StudyError(UserError):
    """A study that cannot be opened or does not fit the experiment file."""


class Surplus(Exception):
    """A fresh trial past the study's size (raised inside the objective; the trial fails unrun)."""


class TrialFailed(Exception):
    """A trial's run failed (the run folder's failure.json or summary says why)."""


class Interrupted(Exception):
    """The worker was asked to stop (Ctrl-C, SIGTERM) mid-trial; its checkpoint is saved."""


class _StopHold:
    """A worker's SIGTERM is Ctrl-C, but not while Optuna records a trial (ask, tell, the heartbeat
    thread's start and stop): a KeyboardInterrupt raised in the middle of that bookkeeping escapes it
    as some other error (an unbound local in Optuna's `finally`) and the worker exits 1, not 130.
    So study.optimize runs held, the objective itself unheld; a signal that came while held is
    raised as KeyboardInterrupt when the hold ends."""

    depth = 0
    pending = False


def stop_now(signum=None, frame=None) -> None:
    """A sweep worker's SIGTERM handler: KeyboardInterrupt now, or when Optuna's bookkeeping ends."""
    if _StopHold.depth:
        _StopHold.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def _hold_stop(hold: bool):
    """Hold (True) or release (False) stop_now's KeyboardInterrupt for the duration; a held one is
    raised on release (at the objective's start or when the hold ends)."""
    saved = _StopHold.depth
    _StopHold.depth = saved + 1 if hold else 0
    try:
        if not _StopHold.depth and _StopHold.pending:
            _StopHold.pending = False
            raise KeyboardInterrupt
        yield
    finally:
        _StopHold.depth = saved
    if not saved and _StopHold.pending:
        _StopHold.pending = False
        raise KeyboardInterrupt


def import_optuna():
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # workers print their own lines
    return optuna


def default_storage(runs_dir: str | Path, name: str) -> str:
    """sqlite:////abs/runs/<name>/study.db (the folder is created)."""
    folder = (Path(runs_dir) / name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'study.db'}"


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg2 to SQLAlchemy; with only psycopg 3 installed use its driver."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and sep and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    return url


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S):
    """An Optuna RDBStorage with heartbeats; a stale trial is re-queued with its parameters."""
    optuna = import_optuna()
    url = normalise_url(url)
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 120}}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=GRACE * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        except ImportError as exc:
            raise StudyError(f"{url.partition('://')[0]}: the database driver is not installed ({exc})") from None
        except Exception as exc:  # sqlalchemy's errors: a server that does not answer, or two workers
            error = exc           # creating the tables of a new database at once (the retry finds them)
            time.sleep(0.5 + random.random())
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise StudyError(f"cannot open the study storage {_redacted(url)}: {message}")


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def create_or_load(storage, name: str, directions: list[str], fingerprint: str,
                   on_create: Callable[[Any], None] | None = None):
    """The study `name` (created if new); one made for another experiment is refused. `on_create`
    runs only in the one process whose call created the study (creation is atomic in the storage:
    of several workers starting together, exactly one creates it)."""
    optuna = import_optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    if [d.name.lower() for d in study.directions] != directions:
        raise StudyError(f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, "
                         f"this file {directions}; use another name or storage")
    found = study.user_attrs.get("fingerprint")
    if found is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif found != fingerprint:
        raise StudyError(f"study {name!r} in this storage was made from another base config or search space "
                         "(only n_trials, sampler, pruner and seed may change); rename the experiment, "
                         "or delete the study (optuna delete-study) to start over")
    if created and on_create is not None:
        on_create(study)
    return study


def enqueue_base(study, settings: dict) -> None:
    """Queue the base config's values as a trial (`start_from_base`; called once, by the process
    that created the study, so the base is queued once however many workers start together)."""
    study.enqueue_trial(settings, user_attrs={"base": True})


def is_retry(trial) -> bool:
    return "failed_trial" in trial.system_attrs


def slot_of(study, trial_number: int) -> int | None:
    """A fresh trial's rank among the fresh trials (None for a retry: it keeps its parameters)."""
    trials = study.get_trials(deepcopy=False)
    mine = next(t for t in trials if t.number == trial_number)
    if is_retry(mine):
        return None
    return sum(1 for t in trials if t.number < trial_number and not is_retry(t))


@dataclass
class Progress:
    fresh: int
    running: int
    waiting: int


def progress(study) -> Progress:
    optuna = import_optuna()
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    return Progress(fresh=sum(1 for t in trials if not is_retry(t)),
                    running=sum(1 for t in trials if t.state == states.RUNNING),
                    waiting=sum(1 for t in trials if t.state == states.WAITING))


def requeue(study, trial_number: int) -> None:
    """Queue a WAITING copy of a trial this worker stopped (it resumes from its checkpoint)."""
    optuna = import_optuna()
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    if frozen.state.is_finished() and frozen.state.name != "FAIL":  # completed (or pruned) before the stop
        return
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)


def work(study, objective: Callable, size: int, *, heartbeat_s: int = HEARTBEAT_S,
         say: Callable[[str], None] = print) -> None:
    """Run trials of the study until every slot is taken and nothing runs or waits.

    `objective(trial)` runs one
    (raising Surplus, TrialFailed, optuna.TrialPruned or Interrupted). Interrupted (and Ctrl-C)
    re-queue the trial and propagate."""
    optuna = import_optuna()
    said_waiting = False
    while True:
        optuna.storages.fail_stale_trials(study)
        state = progress(study)
        if state.waiting or state.fresh < size:
            said_waiting = False
            _run_one(study, objective)
            continue
        if not state.running:
            return
        if not said_waiting:
            say(f"all {size} trials taken; waiting for {state.running} running on other workers "
                f"(a stopped worker's trial is taken over after {GRACE * heartbeat_s} s)")
            said_waiting = True
        time.sleep(heartbeat_s)


def _run_one(study, objective: Callable) -> None:
    current: list[int] = []

    def tracked(trial):
        current.append(trial.number)
        with _hold_stop(False):
            return objective(trial)

    try:
        with _hold_stop(True):
            study.optimize(tracked, n_trials=1, catch=(Surplus, TrialFailed), gc_after_trial=False)
    except (Interrupted, KeyboardInterrupt):
        if current:
            requeue(study, current[0])
        raise
