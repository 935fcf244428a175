"""`decoder run GRID --workers N`: points trained in worker processes give the same results as
one at a time, an interrupted point resumes, finished points are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from decoder.cli import main
from decoder.experiments import experiment_from_dict
from decoder.experiments.parallel import resolve_workers
from decoder.experiments.runner import run_experiment
from decoder.runs import RunDir
from decoder.train import train


def tiny_grid(corpus: Path) -> dict:
    """Three points of d_model 32, context 16, 12 steps, one fp32 thread each (deterministic)."""
    return {
        "name": "tinyworkers",
        "base": {
            "model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "context_length": 16},
            "data": {"corpus": str(corpus), "tokenizer": "gpt2"},
            "training": {"batch_size": 8, "max_steps": 12, "eval_interval": 6, "warmup_steps": 2, "log_interval": 2,
                         "device": "cpu", "precision": "fp32", "lr": 3e-3, "num_threads": 1, "tensorboard": False},
            "sampling": {"max_new_tokens": 4},
        },
        "grid": {"model.n_blocks": [1, 2, 3]},
    }


def val_losses(folder: Path, experiment) -> list[list[float]]:
    """Every evaluation's validation loss of every point, in point order."""
    out = []
    for point in experiment.points:
        lines = (point.run_dir(folder / experiment.name) / "metrics.jsonl").read_text().splitlines()
        out.append([json.loads(line)["val_loss"] for line in lines])
    return out


def test_two_workers_give_the_results_of_one_and_resume_an_interrupted_point(tmp_path, small_corpus):
    experiment = experiment_from_dict(tiny_grid(small_corpus))
    serial = run_experiment(experiment, tmp_path / "one", quiet=True, say=lambda m: None)
    assert [o.status for o in serial] == ["completed"] * 3

    # Point 2 was interrupted after 4 steps (a checkpoint, no summary) before the parallel run.
    interrupted = experiment.points[1]
    folder = tmp_path / "two" / experiment.name
    summary = train(interrupted.config, interrupted.run_dir(folder), quiet=True, on_step=lambda step, _: step >= 4)
    assert summary["status"] == "interrupted" and summary["step"] == 4

    messages: list[str] = []
    parallel = run_experiment(experiment, tmp_path / "two", quiet=True, say=messages.append, workers=2)
    assert [o.status for o in parallel] == ["completed"] * 3
    assert any("resuming from" in m and "[2/3]" in m for m in messages), messages
    assert val_losses(tmp_path / "two", experiment) == val_losses(tmp_path / "one", experiment)  # bitwise

    again: list[str] = []
    rerun = run_experiment(experiment, tmp_path / "two", quiet=True, say=again.append, workers=2)
    assert [o.status for o in rerun] == ["skipped"] * 3


def test_cli_workers_runs_the_grid_and_rejects_a_bad_count(tmp_path, small_corpus, capsys):
    path = tmp_path / "grid.yaml"
    raw = tiny_grid(small_corpus)
    raw["grid"] = {"model.n_blocks": [1, 2]}
    path.write_text(yaml.safe_dump(raw))
    runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
    assert main(["run", str(path), "--workers", "0", "--runs-dir", runs, "--out", out]) == 2
    assert "--workers '0': expected a positive integer or 'auto'" in capsys.readouterr().err
    assert main(["run", str(path), "--workers", "auto", "--runs-dir", runs, "--out", out, "--quiet"]) == 0
    assert "2 points: 2 completed" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "points", "gpu", "cores", "expected"), [
    ("auto", 10, False, 2, 2), ("auto", 1, False, 16, 1), ("auto", 50, True, 16, 4), ("3", 2, False, 2, 2),
    ("2", 9, True, 1, 2),
])
def test_resolve_workers(monkeypatch, text, points, gpu, cores, expected):
    monkeypatch.setattr("decoder.experiments.parallel.cpu_cores", lambda: cores)
    assert resolve_workers(text, points, gpu=gpu) == expected


def test_ctrl_c_stops_every_worker_and_the_same_command_resumes(tmp_path, small_corpus):
    """SIGINT to the process group (what Ctrl-C sends): running points checkpoint and stop, queued
    ones never start, the exit status is 130; running the command again finishes the grid."""
    import os
    import signal
    import subprocess
    import sys
    import time

    raw = tiny_grid(small_corpus)
    raw["base"]["training"].update(max_steps=400, eval_interval=10)
    raw["grid"] = {"model.n_blocks": [1, 2, 3, 4]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "decoder", "run", str(path), "--workers", "2", "--quiet",
               "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    folder = tmp_path / "runs" / "tinyworkers"
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*/checkpoints/latest.pt"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    experiment = experiment_from_dict(raw)
    states = [RunDir(p.run_dir(folder)).state() for p in experiment.points]
    assert states.count("resumable") == 2 and states.count("new") == 2, (states, output)

    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.count("resuming from") == 2
    assert [RunDir(p.run_dir(folder)).state() for p in experiment.points] == ["done"] * 4
