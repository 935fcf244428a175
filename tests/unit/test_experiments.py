"""Experiment grids: expansion, validation, the runner (skip, resume, force, shard, failures) and
the report (tables, plots, samples, baselines, memorisation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import decoder.train
from decoder.cli import main
from decoder.config import ConfigError
from decoder.experiments import experiment_from_dict, load_experiment
from decoder.experiments.runner import parse_shard, point_state, run_experiment
from decoder.report import REPORT_COLUMNS, report_command, write_report
from decoder.report.table import memorisation, ngram_set, repeated_spans

REAL_TRAIN = decoder.train.train


def tiny_base(corpus: Path | str) -> dict:
    """d_model 32, 2 blocks, context 16, 10 steps on a small text: about a second per point.
    One thread: on a shared 2-core machine two threads of a tiny model mostly wait for each other."""
    return {
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "context_length": 16},
        "data": {"corpus": str(corpus), "tokenizer": "gpt2"},
        "training": {"batch_size": 8, "max_steps": 10, "eval_interval": 5, "warmup_steps": 2, "log_interval": 1,
                     "device": "cpu", "precision": "fp32", "lr": 3e-3, "num_threads": 1},
        "sampling": {"max_new_tokens": 8},
    }


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """train() sets torch's thread count from training.num_threads; give later tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_experiment(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def grid_file(tmp_path, small_corpus) -> Path:
    """Three points: n_blocks 1, 2, 3."""
    raw = {"name": "tiny", "base": tiny_base(small_corpus), "grid": {"model.n_blocks": [1, 2, 3]}}
    return write_experiment(tmp_path / "tiny.yaml", raw)


class TrainSpy:
    """Wraps decoder.train.train, recording (run folder name, resume) per call; can make points fail."""

    def __init__(self, monkeypatch, fail_if=None):
        self.calls: list[tuple[str, bool]] = []
        self.real = REAL_TRAIN
        self.fail_if = fail_if
        monkeypatch.setattr(decoder.train, "train", self)

    def __call__(self, config, run_dir, **kwargs):
        self.calls.append((Path(run_dir).name, kwargs.get("resume", False)))
        if self.fail_if is not None and self.fail_if(config):
            raise RuntimeError("simulated out of memory")
        return self.real(config, run_dir, **kwargs)


# ---------------------------------------------------------------------------------------------
# Expansion and validation (no training)


def test_grid_is_the_cartesian_product_in_file_order():
    exp = experiment_from_dict({"name": "g", "base": tiny_base("x.txt"),
                                "grid": {"model.n_blocks": [1, 2, 3], "training.lr": [0.001, 0.01]}})
    assert [p.settings for p in exp.points] == [
        {"model.n_blocks": b, "training.lr": lr} for b in (1, 2, 3) for lr in (0.001, 0.01)]
    assert [(p.config.model.n_blocks, p.config.training.lr) for p in exp.points] == [
        (b, lr) for b in (1, 2, 3) for lr in (0.001, 0.01)]
    assert [p.index for p in exp.points] == list(range(6))
    assert all(p.config.model.d_model == 32 for p in exp.points)  # the base fills the rest


def test_seeds_repeat_every_point_outermost():
    exp = experiment_from_dict({"name": "s", "base": tiny_base("x.txt"), "grid": {"model.n_blocks": [1, 2]},
                                "seeds": [7, 8]})
    assert [(p.settings["model.n_blocks"], p.config.training.seed) for p in exp.points] == [
        (1, 7), (2, 7), (1, 8), (2, 8)]


def test_zip_varies_keys_together_and_combines_with_the_grid():
    exp = experiment_from_dict({"name": "z", "base": tiny_base("x.txt"), "grid": {"model.n_blocks": [1, 2]},
                                "zip": [{"model.d_model": [32, 64], "model.d_ff": [64, 256]}]})
    pairs = [(p.config.model.n_blocks, p.config.model.d_model, p.config.model.d_ff) for p in exp.points]
    assert pairs == [(1, 32, 64), (1, 64, 256), (2, 32, 64), (2, 64, 256)]


def test_exclude_drops_matching_partial_points():
    exp = experiment_from_dict({"name": "e", "base": tiny_base("x.txt"),
                                "grid": {"model.n_heads": [1, 2], "model.n_blocks": [1, 2, 3]},
                                "exclude": [{"model.n_heads": 2, "model.n_blocks": 3}, {"model.n_blocks": 1}]})
    assert [(p.config.model.n_heads, p.config.model.n_blocks) for p in exp.points] == [(1, 2), (1, 3), (2, 2)]


def test_a_grid_without_keys_is_one_point_of_the_base_config():
    exp = experiment_from_dict({"name": "one", "base": tiny_base("x.txt"), "grid": {}})
    assert len(exp.points) == 1 and exp.points[0].settings == {}
    assert exp.points[0].config.model.d_model == 32


def test_every_invalid_point_is_reported_in_one_error():
    raw = {"name": "bad", "base": tiny_base("x.txt"),
           "grid": {"model.d_model": [100, 96, 64], "model.n_heads": [8, 3]}}
    with pytest.raises(ConfigError) as info:
        experiment_from_dict(raw, source="bad.yaml")
    message = str(info.value)
    assert "\n" not in message  # the CLI prints the first line: all of it must be there
    assert "3 of 6 points are invalid" in message
    for d_model, n_heads in ((100, 8), (100, 3), (64, 3)):
        assert f"model.d_model={d_model}, model.n_heads={n_heads}: d_model must be divisible by n_heads" in message
    assert "model.d_model=96, model.n_heads=8:" not in message


def test_a_problem_of_every_point_is_reported_once():
    base = tiny_base("x.txt")
    del base["training"]["max_steps"]
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({"name": "b", "base": base, "grid": {"model.n_blocks": [1, 2, 3]}})
    assert str(info.value).count("no budget") == 1
    assert "every point: training: no budget" in str(info.value)


@pytest.mark.parametrize("raw, expected", [
    ({"grid": {"model.d_modle": [32]}}, "model.d_modle: unknown key (did you mean 'model.d_model'?)"),
    ({"grid": {"optim.lr": [1.0]}}, "optim.lr: unknown key"),
    ({"gird": {"model.d_model": [32]}}, "gird: unknown key (did you mean 'grid'?)"),
    ({"zip": [{"training.learning_rate": [1, 2]}]}, "training.learning_rate: unknown key"),
    ({"base": {"model": {"widht": 3}}}, "model.widht: unknown key"),
    ({"exclude": [{"model.n_blocks": 1}], "grid": {"model.d_model": [32]}},
     "exclude[0]: model.n_blocks is not a varied key"),
    ({"exclude": [{"model.d_model": 48}], "grid": {"model.d_model": [32, 64]}},
     "exclude[0]: model.d_model=48 matches no point"),
    ({"zip": [{"model.d_model": [32, 64], "model.d_ff": [64]}]}, "lists must have the same length"),
    ({"grid": {"model.d_model": [32]}, "zip": [{"model.d_model": [64]}]}, "model.d_model: varied twice"),
    ({"grid": {"training.seed": [1]}, "seeds": [1, 2]}, "training.seed is also in grid/zip"),
    ({"seeds": [1, 1]}, "seeds: must be a non-empty list of distinct integers"),
    ({"grid": {"model.d_model": 32}}, "model.d_model: must be a non-empty list"),
    ({"grid": {"training.lr": [0.001, 1.0e-3]}}, "points 1 and 2 resolve to the same config"),
    ({"name": "has space"}, "name: required"),
])
def test_format_errors_name_the_problem(raw, expected):
    full = {"name": "x", "base": tiny_base("x.txt"), **raw}
    if "base" in raw:
        full["base"] = {**tiny_base("x.txt"), **raw["base"]}
    with pytest.raises(ConfigError) as info:
        experiment_from_dict(full)
    assert expected in str(info.value)


def test_run_ids_are_stable_across_processes_and_change_with_any_value(grid_file):
    ids = [p.run_id for p in load_experiment(grid_file).points]
    assert len(set(ids)) == 3
    assert ids == [p.run_id for p in load_experiment(grid_file).points]
    script = ("import sys; from decoder.experiments import load_experiment; "
              "print(' '.join(p.run_id for p in load_experiment(sys.argv[1]).points))")
    fresh = subprocess.run([sys.executable, "-c", script, str(grid_file)], capture_output=True, text=True, check=True)
    assert fresh.stdout.split() == ids
    raw = yaml.safe_load(grid_file.read_text())
    raw["base"]["training"]["lr"] = 2e-3
    changed = [p.run_id for p in experiment_from_dict(raw).points]
    assert not set(changed) & set(ids)


def test_parse_shard():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(Exception, match="expected i/n"):
            parse_shard(bad)


# ---------------------------------------------------------------------------------------------
# Runner


def test_shards_cover_the_grid_once_and_a_rerun_skips_everything(grid_file, tmp_path, monkeypatch):
    exp = load_experiment(grid_file)
    spy = TrainSpy(monkeypatch)
    runs = tmp_path / "runs"
    first = run_experiment(exp, runs, shard=(0, 2), quiet=True, say=lambda m: None)
    second = run_experiment(exp, runs, shard=(1, 2), quiet=True, say=lambda m: None)
    assert [o.point.index for o in first] == [0, 2] and [o.point.index for o in second] == [1]
    assert sorted(name for name, _ in spy.calls) == sorted(p.run_id for p in exp.points)
    for p in exp.points:
        summary = json.loads((runs / "tiny" / p.run_id / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["step"] == 10
        assert summary["run_id"] == p.run_id
    spy.calls.clear()
    again = run_experiment(exp, runs, quiet=True, say=lambda m: None)
    assert [o.status for o in again] == ["skipped"] * 3 and spy.calls == []


def test_force_reruns_completed_points(grid_file, tmp_path, monkeypatch):
    raw = yaml.safe_load(grid_file.read_text())
    raw["grid"] = {"model.n_blocks": [1]}
    exp = experiment_from_dict(raw)
    run_experiment(exp, tmp_path / "runs", quiet=True, say=lambda m: None)
    marker = tmp_path / "runs" / "tiny" / exp.points[0].run_id / "stale.txt"
    marker.write_text("from the previous run")
    spy = TrainSpy(monkeypatch)
    outcomes = run_experiment(exp, tmp_path / "runs", force=True, quiet=True, say=lambda m: None)
    assert [o.status for o in outcomes] == ["completed"] and spy.calls == [(exp.points[0].run_id, False)]
    assert not marker.exists()  # started from a clean folder


@pytest.mark.parametrize("killed", [False, True], ids=["interrupted", "killed-without-summary"])
def test_an_interrupted_point_is_resumed_and_ends_like_an_uninterrupted_one(grid_file, tmp_path, monkeypatch,
                                                                           killed):
    raw = yaml.safe_load(grid_file.read_text())
    raw["grid"] = {"model.n_blocks": [1]}
    exp = experiment_from_dict(raw)
    point = exp.points[0]
    run_dir = tmp_path / "runs" / "tiny" / point.run_id
    stopped = decoder.train.train(point.config, run_dir, quiet=True, on_step=lambda step, lr: step >= 5)
    assert stopped["status"] == "interrupted"
    if killed:
        (run_dir / "summary.json").unlink()
    assert point_state(run_dir) == "resumable"
    spy = TrainSpy(monkeypatch)
    lines: list[str] = []
    outcomes = run_experiment(exp, tmp_path / "runs", quiet=True, say=lines.append)
    assert spy.calls == [(point.run_id, True)] and outcomes[0].status == "completed"
    assert any("resuming" in line for line in lines)
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["step"] == 10
    if not killed:  # resuming gives what an uninterrupted run gives
        straight = REAL_TRAIN(point.config, tmp_path / "straight", quiet=True)
        assert resumed["final_val_loss"] == pytest.approx(straight["final_val_loss"], rel=1e-6)


def test_a_failing_point_is_recorded_and_the_grid_goes_on(grid_file, tmp_path, monkeypatch, capsys):
    exp = load_experiment(grid_file)
    bad = exp.points[1]
    TrainSpy(monkeypatch, fail_if=lambda config: config == bad.config)
    runs, out = tmp_path / "runs", tmp_path / "results"
    code = main(["run", str(grid_file), "--runs-dir", str(runs), "--out", str(out), "--quiet"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "[2/3] FAILED: RuntimeError: simulated out of memory" in printed
    assert "tiny: 3 points: 2 completed, 1 failed" in printed
    failure = json.loads((runs / "tiny" / bad.run_id / "failure.json").read_text())
    assert failure["status"] == "failed" and "simulated out of memory" in failure["error"]
    assert failure["settings"] == bad.settings
    states = [point_state(runs / "tiny" / p.run_id) for p in exp.points]
    assert states == ["done", "failed", "done"]
    table = pd.read_csv(out / "tiny" / "summary.csv")
    assert table.set_index("run_id").loc[bad.run_id, "status"] == "failed"
    monkeypatch.setattr(decoder.train, "train", REAL_TRAIN)
    assert main(["run", str(grid_file), "--runs-dir", str(runs), "--out", str(out), "--quiet"]) == 0
    assert point_state(runs / "tiny" / bad.run_id) == "done"  # retried from scratch, now completed
    assert not (runs / "tiny" / bad.run_id / "failure.json").exists()


def test_dry_run_prints_the_points_and_trains_nothing(grid_file, tmp_path, capsys, monkeypatch):
    spy = TrainSpy(monkeypatch)
    assert main(["run", str(grid_file), "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--shard", "1/2"]) == 0
    out = capsys.readouterr().out
    exp = load_experiment(grid_file)
    assert exp.points[1].run_id in out and exp.points[0].run_id not in out and exp.points[2].run_id not in out
    assert "1 of 3 points in shard 1/2" in out
    assert spy.calls == [] and not (tmp_path / "runs").exists()


def test_cli_reports_an_invalid_grid_in_one_line_with_exit_2(tmp_path, small_corpus, capsys):
    raw = {"name": "bad", "base": tiny_base(small_corpus), "grid": {"model.d_model": [30, 32], "model.n_heads": [4]}}
    path = write_experiment(tmp_path / "bad.yaml", raw)
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "model.d_model=30, model.n_heads=4: d_model must be divisible by n_heads" in err
    assert not (tmp_path / "runs").exists()


def test_data_problems_are_found_before_anything_trains(tmp_path, small_corpus, monkeypatch):
    raw = {"name": "d", "base": tiny_base(small_corpus),
           "grid": {"data.corpus": [str(small_corpus), str(tmp_path / "missing.txt")]}}
    spy = TrainSpy(monkeypatch)
    with pytest.raises(ConfigError, match="missing.txt"):
        run_experiment(experiment_from_dict(raw), tmp_path / "runs", say=lambda m: None)
    assert spy.calls == []


# ---------------------------------------------------------------------------------------------
# Report


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory, excerpt_text):
    """Two configurations x 2 seeds (4 tiny runs) on a small corpus; two keys vary (a heatmap
    with two of its four cells not run)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECODER_CACHE_DIR", str(root / "cache"))
        corpus = root / "small.txt"
        corpus.write_text(excerpt_text, encoding="utf-8")
        raw = {"name": "seeded", "base": tiny_base(corpus), "seeds": [0, 1],
               "grid": {"model.n_heads": [1, 2], "model.n_blocks": [1, 2]},
               "exclude": [{"model.n_heads": 1, "model.n_blocks": 2}, {"model.n_heads": 2, "model.n_blocks": 1}]}
        path = write_experiment(root / "seeded.yaml", raw)
        outcomes = run_experiment(load_experiment(path), root / "runs", quiet=True, say=lambda m: None)
        assert all(o.status == "completed" for o in outcomes)
        yield root, path


def test_report_tables_plots_and_samples(seeded_runs, tmp_path, monkeypatch):
    root, path = seeded_runs
    monkeypatch.setenv("DECODER_CACHE_DIR", str(root / "cache"))
    folder = write_report([path], runs_dir=root / "runs", out=tmp_path / "results")
    assert folder == tmp_path / "results" / "seeded"
    for png in ("loss_vs_tokens.png", "loss_vs_seconds.png", "bpb_vs_params.png", "heatmap.png"):
        data = (folder / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, png

    table = pd.read_csv(folder / "summary.csv")
    assert list(table.columns) == ["experiment", "run_id", "status", "model.n_heads", "model.n_blocks",
                                   *REPORT_COLUMNS]
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    for column in ("params_total", "params_non_embedding", "tokens_seen", "steps", "seed"):
        assert pd.api.types.is_integer_dtype(table[column]), column
    for column in ("elapsed_s", "tokens_per_s", "best_val_loss", "best_val_ppl", "best_val_bpb", "final_val_bpb",
                   "train_loss_at_best"):
        assert pd.api.types.is_float_dtype(table[column]) and table[column].notna().all(), column
    assert table["best_val_bpb"].is_monotonic_increasing
    assert (table["tokens_seen"] == 10 * 8 * 16).all()
    np.testing.assert_allclose(table["best_val_ppl"], np.exp(table["best_val_loss"]))

    table_lines = [line for line in (folder / "summary.md").read_text().splitlines() if line.startswith("|")]
    cells = [c.strip() for c in table_lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table_lines[2:]]
    bpb = cells.index("val bpb")
    model_rows = [r for r in rows if not r[0].startswith("baseline")]
    assert len(model_rows) == 2  # one per configuration, over both seeds
    assert all("±" in r[bpb] and r[cells.index("runs")] == "2" for r in model_rows)
    means = [float(r[bpb].split("±")[0]) for r in rows]
    assert means == sorted(means)
    assert model_rows[0][0] == "**best**" and all(r[0] == "" for r in model_rows[1:])
    import shutil

    compressors = ["baseline: bzip2 -9", "baseline: xz -9e"] + (["baseline: zpaq -m5"] if shutil.which("zpaq") else [])
    assert sorted(r[0] for r in rows if r[0].startswith("baseline")) == [
        "baseline: KN bigram (min_count 2, pieces)", "baseline: KN trigram (min_count 2, pieces)",  # the runs' ids
        *compressors]  # the same validation bytes
    grouped = table.groupby(["model.n_heads", "model.n_blocks"])["best_val_bpb"]
    best_mean = grouped.mean().min()
    assert float(model_rows[0][bpb].split("±")[0]) == pytest.approx(best_mean, abs=1e-4)
    assert float(model_rows[0][bpb].split("±")[1]) == pytest.approx(
        grouped.std().loc[grouped.mean().idxmin()], abs=1e-4)

    samples = (folder / "samples.md").read_text()
    assert samples.count("**greedy** (memorised: ") == 4 and samples.count("**sampled** (memorised: ") == 4
    assert samples.count(", repeats: ") == 8


def test_report_marks_a_crashed_run_incomplete_and_compares_sources(seeded_runs, tmp_path, monkeypatch):
    root, path = seeded_runs
    monkeypatch.setenv("DECODER_CACHE_DIR", str(root / "cache"))
    source = next(p for p in sorted((root / "runs" / "seeded").iterdir()))
    crashed = tmp_path / "crashed" / source.name
    crashed.mkdir(parents=True)
    for name in ("config.yaml", "tokenizer.json"):
        (crashed / name).write_bytes((source / name).read_bytes())
    text = (source / "metrics.jsonl").read_text()
    (crashed / "metrics.jsonl").write_text(text + text.splitlines()[0][:25])  # a crash mid-write
    folder = write_report([path, tmp_path / "crashed"], runs_dir=root / "runs", out=tmp_path / "results")
    assert folder.name == "seeded-vs-crashed"
    table = pd.read_csv(folder / "summary.csv")
    row = table[table["experiment"] == "crashed"].iloc[0]
    assert row["status"] == "incomplete" and "damaged line" in row["error"]
    assert row["best_val_bpb"] == pytest.approx(min(json.loads(line)["val_bpb"] for line in text.splitlines()))
    summary = (folder / "summary.md").read_text()
    assert "| experiment |" in summary and "incomplete" in summary


def test_report_of_nothing_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2


# ---------------------------------------------------------------------------------------------
# Memorisation


def test_memorisation_is_the_share_of_ngrams_seen_in_training():
    train = np.arange(100)
    grams = ngram_set(train, 8)
    assert len(grams) == 93
    assert memorisation(train[10:30], grams) == 1.0
    assert memorisation(np.arange(200, 220), grams) == 0.0
    mixed = np.concatenate([train[0:12], np.arange(500, 512)])  # 17 n-grams, the first 5 inside
    assert memorisation(mixed, grams) == pytest.approx(5 / 17)
    assert memorisation(train[:7], grams) is None
    assert memorisation(list(train[40:48]), grams) == 1.0


def test_repeated_spans_counts_loops_within_the_window_only():
    assert repeated_spans(np.arange(300)) == 0
    loop = np.tile(np.arange(10), 5)  # a 10-token phrase said 5 times: every span from the 11th on repeats
    assert repeated_spans(loop) == len(loop) - 8 + 1 - 10
    far = np.concatenate([np.arange(8), np.arange(100, 200), np.arange(8)])  # the same 8 tokens 108 apart
    assert repeated_spans(far) == 0 and repeated_spans(far, window=200) == 1
    assert repeated_spans(np.arange(7)) is None  # shorter than one span


def test_the_regenerate_line_names_the_report_folder_and_options_it_was_written_with():
    assert report_command(["experiments/quick.yaml"]) == "decoder report experiments/quick.yaml"
    assert report_command(["research/q/a.yaml"], out="research/q") == \
        "decoder report research/q/a.yaml --out research/q"
    assert report_command(["a.yaml", "b.yaml"], out="results/", name="ab", storage="sqlite:///s.db") == \
        "decoder report a.yaml b.yaml --name ab --storage sqlite:///s.db"
