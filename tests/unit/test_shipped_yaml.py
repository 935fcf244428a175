"""The experiments shipped in experiments/ are there and say what the project documents about them
(that each one finds its data and builds its models: tests/integration/test_real_book.py)."""

from __future__ import annotations

import pytest
from tinyconf import ROOT, shipped_experiments

from decoder.config import RunConfig, read_yaml
from decoder.run_ids import ADDED_KEYS
from decoder.experiments import load_experiment

EXPERIMENTS = shipped_experiments()


def test_the_experiments_the_project_documents_are_shipped():
    # experiments/ holds the examples a user copies; the studies behind the defaults are in research/.
    names = {path.stem for path in (ROOT / "experiments").glob("*.yaml")}
    assert names == {"quick", "default", "fast", "reference", "shape", "search", "scaling"}


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_an_example_uses_todays_data_defaults_and_says_what_it_costs_and_found(path):
    raw = read_yaml(path)
    for (section, key), old in ADDED_KEYS.items():
        if getattr(getattr(RunConfig(), section), key) == old:
            continue  # the key's old behaviour is still the default
        value = (raw["base"].get(section) or {}).get(key)
        assert value != old, f"{path.name} pins {section}.{key}: {old!r}, a value superseded by today's default"
    header = path.read_text().split("\nname:")[0]
    for part in ("Cost", "GPU", "Finding"):
        assert part in header, f"{path.name}'s header does not say its {part}"


def _only(name: str):
    (path,) = [p for p in EXPERIMENTS if p.stem == name]
    (point,) = load_experiment(path).points
    return point.config


def test_reference_is_the_notebook_configuration():
    c = _only("reference")
    assert (c.model.context_length, c.model.d_model, c.model.n_heads, c.model.n_blocks, c.model.d_ff) == (
        40, 500, 10, 10, 20)
    assert (c.model.positional, c.model.tie_embeddings) == ("sinusoidal", False)
    assert c.data.tokenizer == "cl100k_base"  # compact vocabulary as everywhere: lossless, see the header
    t = c.training
    assert (t.optimizer, t.batch_size, t.lr, t.beta1, t.beta2, t.eps) == ("adam", 50, 1e-4, 0.9, 0.98, 1e-9)
    assert t.max_seconds == 600


def test_default_is_one_point_with_a_ten_minute_budget():
    c = _only("default")
    assert c.training.max_seconds == 600
    assert c.data.corpus == "mysterious-island"


def test_quick_is_small_enough_for_ci():
    (path,) = [p for p in EXPERIMENTS if p.stem == "quick"]
    points = load_experiment(path).points
    assert 2 <= len(points) <= 6
    for point in points:
        assert point.config.training.max_steps is not None and point.config.training.max_steps <= 100
        assert point.config.model.d_model <= 64 and point.config.data.corpus == "mysterious-island"
