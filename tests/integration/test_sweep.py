"""decoder sweep on one machine (SQLite): a tiny TPE search that completes, prunes and reports;
repeated suggestions reuse their run folder; two objectives give a Pareto front; a grid pulled
point by point from a study by two workers; the shipped search file validates and builds."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from sweepkit import start_worker, tiny_search, trainings

from decoder.cli import main
from decoder.experiments import load_experiment
from decoder.experiments.runner import check_data
from decoder.model import GPT
from decoder.sweep.search import load_search, probes
from decoder.sweep.study import default_storage

REPO = Path(__file__).resolve().parents[2]
LR = {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True}


def _study(runs: Path, name: str):
    return optuna.load_study(study_name=name, storage=default_storage(runs, name))


def test_tiny_tpe_sweep_completes_prunes_and_reports(tmp_path, small_corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The pruner is made to fire: after one finished trial, a trial whose first evaluation is
    # worse than the median so far stops there; lr spans 1e-6 (learns nothing) to 1e-2.
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "tiny", {"training.lr": LR,
                       "model.n_blocks": {"type": "int", "low": 1, "high": 2}},
                       n_trials=5, sampler={"type": "tpe", "n_startup_trials": 3},
                       pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}, seed=0)
    assert main(["sweep", str(path), "--quiet"]) == 0
    states = [t.state.name for t in _study(tmp_path / "runs", "tiny").trials]
    assert len(states) == 5 and states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2, states
    report = tmp_path / "results" / "tiny"
    for name in ("summary.md", "trials.md", "trials.csv", "best.yaml", "history.png", "intermediate.png"):
        assert (report / name).is_file(), name
    assert "pruned" in (report / "trials.md").read_text()
    best = min((t for t in _study(tmp_path / "runs", "tiny").trials if t.state.name == "COMPLETE"),
               key=lambda t: t.value)
    (point,) = load_experiment(report / "best.yaml").points  # ready to run
    assert point.run_id == best.user_attrs["run_id"]
    pruned = [t for t in _study(tmp_path / "runs", "tiny").trials if t.state.name == "PRUNED"]
    summary = (tmp_path / "runs" / "tiny" / pruned[0].user_attrs["run_id"] / "summary.json").read_text()
    assert '"status": "pruned"' in summary


def test_a_repeated_suggestion_reuses_the_finished_run(tmp_path, small_corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = {"training.lr": {"type": "categorical", "choices": [1.0e-3, 3.0e-3]}}
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "repeat", space, n_trials=4, sampler="random", seed=1)
    assert main(["sweep", str(path), "--quiet", "--no-report"]) == 0
    trials = _study(tmp_path / "runs", "repeat").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    folders = [p for p in (tmp_path / "runs" / "repeat").iterdir() if p.is_dir()]
    assert len(folders) == len({t.params["training.lr"] for t in trials}) == 2  # pigeonhole: 4 trials, 2 configs
    assert sum(bool(t.user_attrs.get("reused")) for t in trials) == 2
    for run_id in {t.user_attrs["run_id"] for t in trials}:  # a reused trial has its run's value
        assert len({t.value for t in trials if t.user_attrs["run_id"] == run_id}) == 1
    assert capsys.readouterr().out.count("] training\n") == 2


def test_start_from_base_runs_the_base_config_as_trial_0_once(tmp_path, small_corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = {"training.lr": LR, "model.n_blocks": {"type": "int", "low": 1, "high": 2}}
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "based", space, n_trials=3, sampler="random", seed=4,
                       start_from_base=True)
    assert main(["sweep", str(path), "--quiet", "--no-report"]) == 0
    trials = _study(tmp_path / "runs", "based").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params == {"training.lr": 1.0e-3, "model.n_blocks": 1} and trials[0].user_attrs["base"]
    assert all(t.params != trials[0].params for t in trials[1:])
    path.write_text(path.read_text().replace("n_trials: 3", "n_trials: 4"))  # resumed later: not queued again
    assert main(["sweep", str(path), "--quiet", "--no-report"]) == 0
    trials = _study(tmp_path / "runs", "based").trials
    assert len(trials) == 4 and sum(bool(t.user_attrs.get("base")) for t in trials) == 1


def test_two_objectives_give_a_pareto_front(tmp_path, small_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tiny_search(tmp_path / "s.yaml", small_corpus, "pareto",
                       {"model.n_blocks": {"type": "int", "low": 1, "high": 3}}, n_trials=3, sampler="grid",
                       objectives=["val_bpb", "tokens_per_s"])
    assert main(["sweep", str(path), "--quiet"]) == 0
    report = tmp_path / "results" / "pareto"
    assert (report / "pareto.png").is_file()
    assert "Pareto front" in (report / "trials.md").read_text()
    trials = _study(tmp_path / "runs", "pareto").trials
    assert all(len(t.values) == 2 for t in trials)
    assert sorted(t.params["model.n_blocks"] for t in trials) == [1, 2, 3]  # the grid, each point once


def test_two_workers_pull_a_grid_from_one_study(tmp_path, small_corpus):
    grid = tmp_path / "grid.yaml"
    base = tiny_search(tmp_path / "base.yaml", small_corpus, "unused", {}).read_text()
    grid.write_text(base.replace("name: unused", "name: pulled").split("search:")[0]
                    + "grid:\n  model.n_blocks: [1, 2]\n  training.lr: [0.001, 0.003]\n")
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [start_worker(grid, tmp_path, log, "--storage", url, command="run") for log in logs]
    assert [w.wait(timeout=300) for w in workers] == [0, 0], [log.read_text() for log in logs]
    study = optuna.load_study(study_name="pulled-grid", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["point"] for t in done) == [0, 1, 2, 3]  # every point once
    text = "".join(log.read_text() for log in logs)
    assert text.count("] training\n") == 4 and "completed" in text


@pytest.mark.parametrize("path", ["experiments/search.yaml", "research/recipe-search/search-10min.yaml"])
def test_the_shipped_searches_validate_and_build(book_text, path):
    search = load_search(REPO / path)
    header = (REPO / path).read_text().split("\nname:")[0]
    assert "2 CPU cores" in header and "decoder sweep" in header
    assert search.name == Path(path).stem and search.pruner["type"] == "median"
    assert {"training.lr", "model.dropout", "training.weight_decay", "model.d_model", "model.n_heads",
            "model.n_blocks"} <= set(search.varied_keys)
    configs = [search.config_of(s) for s in probes(search)]
    assert len({(c.training.max_seconds, c.training.max_tokens) for c in configs}) == 1  # one budget for all
    from decoder.experiments import Experiment, Point

    datasets = check_data(Experiment(search.name, [Point(i, {}, c) for i, c in enumerate(configs[:1])]))
    vocab = next(iter(datasets.values())).tokenizer.vocab_size
    for config in configs[:: max(1, len(configs) // 20)]:
        with torch.device("meta"):
            assert GPT(config.model, vocab).num_params() > 0


@pytest.mark.parametrize("argv, message", [
    (["sweep", "{grid}"], "is not a search"),
    (["run", "{search}"], "run it with decoder sweep"),
])
def test_grid_and_search_files_name_the_right_command(tmp_path, small_corpus, capsys, argv, message):
    search = tiny_search(tmp_path / "s.yaml", small_corpus, "x", {"training.lr": LR}, n_trials=2)
    grid = tmp_path / "g.yaml"
    grid.write_text(search.read_text().split("search:")[0] + "grid:\n  model.n_blocks: [1, 2]\n")
    assert main([a.format(grid=grid, search=search) for a in argv]) == 2
    assert message in capsys.readouterr().err
