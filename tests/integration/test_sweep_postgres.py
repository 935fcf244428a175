"""decoder sweep across processes on a real PostgreSQL server (started here in a throwaway data
directory): two workers share one study and run every trial once; the study resumes after both
are stopped and restarted; a worker killed with SIGKILL mid-trial loses the trial to the other
worker, which resumes it from the trial's own checkpoint to the weights of an uninterrupted run;
two workers suggested the same config train it once."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import optuna
import pytest
import torch

from sweepkit import new_database, postgres_server, start_worker, tiny_search, trainings, wait_for

from decoder.sweep.search import load_search
from decoder.train import train

LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


@functools.lru_cache(maxsize=None)
def _storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per database: polling through a new one each time would
    leave a pool per poll open until garbage collection, past the server's max_connections."""
    return optuna.storages.RDBStorage(url)


def _trials(url: str, name: str):
    try:
        return optuna.load_study(study_name=name, storage=_storage(url)).trials
    except KeyError:  # not created yet
        return []


def _count(url: str, name: str, *states: str) -> int:
    return sum(t.state.name in states for t in _trials(url, name))


def _stepping(url: str, name: str, runs: Path) -> bool:
    """A running trial has logged training steps (so its trainer, not its setup, takes the stop: a
    trial stopped before its first step has nothing to resume and rightly starts again)."""
    return any(t.state.name == "RUNNING" and "run_id" in t.user_attrs
               and (runs / t.user_attrs["run_id"] / "metrics.jsonl").is_file() for t in _trials(url, name))


def _workers(path, tmp_path, url, logs):
    return [start_worker(path, tmp_path, log, "--storage", url) for log in logs]


def test_two_workers_share_a_study_and_resume_after_a_restart(postgres, tmp_path, small_corpus):
    url = new_database(postgres, "share")
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "share", {"training.lr": LR}, n_trials=6, seed=3)
    # trials long enough (100 steps) that the stop lands mid-study on a fast machine too
    longer = path.read_text().replace("max_steps: 20", "max_steps: 100").replace("eval_interval: 5", "eval_interval: 25")
    assert "max_steps: 100" in longer and "eval_interval: 25" in longer
    path.write_text(longer)
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = _workers(path, tmp_path, url, logs)
    wait_for(lambda: _count(url, "share", "COMPLETE") >= 2 and _stepping(url, "share", tmp_path / "runs" / "share"),
             what="two trials done and one running past its first steps")
    for w in workers:  # stopped mid-study: each finishes its step, checkpoints, re-queues its trial
        w.send_signal(signal.SIGTERM)
    assert [w.wait(timeout=120) for w in workers] == [130, 130], [log.read_text() for log in logs]
    assert _count(url, "share", "COMPLETE") < 6
    workers = _workers(path, tmp_path, url, logs)  # restarted: the study goes on
    assert [w.wait(timeout=400) for w in workers] == [0, 0], [log.read_text() for log in logs]
    trials = _trials(url, "share")
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 6 and len({t.user_attrs["run_id"] for t in done}) == 6
    assert all(n == 1 for n in trainings(*logs).values())  # no run trained from scratch twice
    text = "".join(log.read_text() for log in logs)
    assert "resuming from" in text  # a stopped trial continued from its checkpoint


def test_a_killed_workers_trial_is_finished_by_another_from_its_checkpoint(postgres, tmp_path, small_corpus):
    url = new_database(postgres, "killed")
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "killed", {"training.lr": LR}, n_trials=3, seed=5)
    text = path.read_text().replace("max_steps: 20", "max_steps: 120").replace("eval_interval: 5", "eval_interval: 20")
    path.write_text(text)
    logs = [tmp_path / "victim.log", tmp_path / "other.log"]
    victim, other = (start_worker(path, tmp_path, log, "--storage", url) for log in logs)
    runs = tmp_path / "runs" / "killed"

    def victim_mid_trial() -> str | None:
        counts = trainings(logs[0])
        for run_id in counts:
            if (runs / run_id / "checkpoints" / "latest.pt").is_file() and not (runs / run_id / "summary.json").exists():
                return run_id
        return None

    wait_for(lambda: victim_mid_trial() is not None, what="the victim's first checkpoint")
    run_id = victim_mid_trial()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert other.wait(timeout=400) == 0, logs[1].read_text()
    trials = _trials(url, "killed")
    mine = [t for t in trials if t.user_attrs.get("run_id") == run_id]
    assert [t.state.name for t in mine] == ["FAIL", "COMPLETE"]  # failed by heartbeat, then taken over
    assert mine[1].system_attrs["failed_trial"] == mine[0].number
    assert f"resuming from runs/killed/{run_id}/checkpoints/latest.pt" in logs[1].read_text()
    assert _count(url, "killed", "COMPLETE") == 3
    # The resumed trial ends with the weights of an uninterrupted run of the same config.
    search = load_search(path)
    config = search.config_of(mine[1].params)
    train(config, tmp_path / "uninterrupted", quiet=True)
    resumed = torch.load(runs / run_id / "checkpoints" / "latest.pt", weights_only=False)["model"]
    straight = torch.load(tmp_path / "uninterrupted" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_the_same_config_suggested_to_two_workers_is_trained_once(postgres, tmp_path, small_corpus):
    url = new_database(postgres, "repeat")
    space = {"training.lr": {"type": "categorical", "choices": [1.0e-3, 3.0e-3]}}
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "repeat", space, n_trials=5, sampler="random", seed=0)
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = _workers(path, tmp_path, url, logs)
    assert [w.wait(timeout=400) for w in workers] == [0, 0], [log.read_text() for log in logs]
    done = [t for t in _trials(url, "repeat") if t.state.name == "COMPLETE"]
    assert len(done) == 5
    counts = trainings(*logs)
    assert sorted(counts.values()) == [1, 1]  # two configs, each trained once
    assert sum(bool(t.user_attrs.get("reused")) for t in done) == 3
