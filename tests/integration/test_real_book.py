"""What needs the whole book (DECODER_DATA_DIR): Gutenberg's header and footer stripped, the
Kneser-Ney orders and memorisation on it, every shipped experiment finding its data and building its
models, and the shipped quick grid end to end. Tests that only need English text use the excerpt in
tests/assets (tests/unit)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tinyconf import ROOT, shipped_experiments

from decoder.baseline import kn_baseline
from decoder.cli import main
from decoder.config import DataConfig
from decoder.data import prepare
from decoder.experiments import load_experiment
from decoder.experiments.runner import check_data
from decoder.model import GPT
from decoder.report.table import memorisation, ngram_set


def test_real_book_is_stripped(book_text):
    assert "Project Gutenberg" not in book_text[:5000] and "Project Gutenberg" not in book_text[-5000:]
    assert "Harding" in book_text


def test_higher_orders_win_on_the_book_and_results_are_cached(book_text, monkeypatch, tmp_path):
    monkeypatch.setenv("DECODER_CACHE_DIR", str(tmp_path))
    data = DataConfig(corpus="mysterious-island", tokenizer="cl100k_base")
    bpb = {order: kn_baseline(data, order)["val_bpb"] for order in (1, 2, 3)}
    assert bpb[3] < bpb[2] < bpb[1]
    assert 1.0 < bpb[3] < 4.0  # an English book at a few bits per byte, not a degenerate value
    (cached,) = (tmp_path / "baselines").glob("kn3-*.json")
    cached.write_text(json.dumps({**json.loads(cached.read_text()), "val_bpb": 123.0}))
    assert kn_baseline(data, 3)["val_bpb"] == 123.0  # read back, not refitted
    assert kn_baseline(DataConfig(corpus="mysterious-island", tokenizer="gpt2"), 3)["val_bpb"] != 123.0


def test_memorisation_on_the_book(book_text):
    dataset = prepare(DataConfig(corpus="mysterious-island", tokenizer="cl100k_base"))
    grams = ngram_set(dataset.train)
    passage = dataset.tokenizer.decode(dataset.train[5000:5200])
    assert memorisation(dataset.tokenizer.encode(passage), grams) > 0.95
    shuffled = np.random.default_rng(0).permutation(dataset.train[5000:5200])
    assert memorisation(shuffled, grams) < 0.05


@pytest.mark.parametrize("path", shipped_experiments(), ids=lambda p: p.stem)
def test_shipped_experiment_parses_and_builds(path, book_text):
    header = path.read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in header), "a header comment says what the grid asks"
    assert "2 CPU cores" in path.read_text().split("\nname:")[0], "the header says how long it takes and where"
    experiment = load_experiment(path)
    assert experiment.name == path.stem
    assert experiment.points
    datasets = check_data(experiment)  # corpus found, tokenizer loads, splits long enough
    for point in experiment.points:
        vocab = datasets[point.config.data].tokenizer.vocab_size
        with torch.device("meta"):  # shapes and parameter counts without allocating weights
            model = GPT(point.config.model, vocab)
        assert model.num_params() > 0


# ---------------------------------------------------------------------------------------------
# The shipped smoke-test grid on the real book


@pytest.mark.slow
def test_quick_experiment_end_to_end_on_the_book(book_text, tmp_path, capsys):
    code = main(["run", str(ROOT / "experiments" / "quick.yaml"), "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "results"), "--quiet"])
    assert code == 0
    folder = tmp_path / "results" / "quick"
    table = pd.read_csv(folder / "summary.csv")
    assert len(table) == len(load_experiment(ROOT / "experiments" / "quick.yaml").points)
    assert set(table["status"]) == {"completed"}
    summary = (folder / "summary.md").read_text()
    assert "baseline: KN trigram" in summary and "**best**" in summary
    for name in ("loss_vs_tokens.png", "loss_vs_seconds.png", "bpb_vs_params.png", "heatmap.png", "samples.md"):
        assert (folder / name).stat().st_size > 0
