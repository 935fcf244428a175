"""The search: experiment format: what a valid file gives, and every problem reported at once."""

from __future__ import annotations

import pytest

from decoder.config import ConfigError
from decoder.experiments import experiment_from_dict
from decoder.sweep.search import search_from_dict

BASE = {"model": {"d_model": 32, "n_heads": 2}, "training": {"max_steps": 10}}


def _search(space: dict, **section) -> dict:
    return {"name": "s", "base": BASE, "search": {"space": space, "n_trials": 4, **section}}


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        search_from_dict(raw)
    return caught.value.problems


def test_a_valid_search_and_its_defaults():
    search = search_from_dict(_search({
        "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "model.n_blocks": {"type": "int", "low": 1, "high": 3},
        "model.d_model": {"type": "categorical", "choices": [32, 64]},
    }))
    assert [p.key for p in search.params] == ["training.lr", "model.n_blocks", "model.d_model"]
    assert (search.sampler, search.pruner, search.objectives, search.seed) == (
        {"type": "tpe"}, {"type": "none"}, ("val_bpb",), 0)
    assert search.directions == ["minimize"]
    config = search.config_of({"training.lr": 3e-3, "model.n_blocks": 2, "model.d_model": 64})
    assert (config.training.lr, config.model.n_blocks, config.model.d_model) == (3e-3, 2, 64)


def test_every_problem_is_reported_at_once():
    problems = _problems({"name": "s", "base": BASE, "search": {
        "space": {
            "training.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True},
            "model.d_modle": {"type": "categorical", "choices": [32]},
            "model.dropout": {"type": "float", "low": 0.5, "high": 0.1},
            "model.n_blocks": {"type": "int", "low": 1.5, "high": 4},
            "training.batch_size": {"type": "categorical", "choices": []},
            "training.seed": {"type": "normal"},
            "model.n_heads": {"type": "int", "low": 1, "high": 2, "bins": 3},
        },
        "sampler": "bayes", "pruner": {"type": "median", "patience": 2}, "n_trials": 0,
        "objectives": ["val_loss"], "extra": 1}})
    text = "\n".join(problems)
    for needle in ("log=true needs low > 0", "did you mean 'model.d_model'", "low=0.5 > high=0.1",
                   "low and high must be integers", "choices must be a non-empty list", "type int, float or categorical",
                   "bins: unknown for type int", "search.sampler: 'bayes'", "patience: unknown option of median",
                   "search.n_trials=0", "search.objectives", "search.extra: unknown key"):
        assert needle in text, needle
    assert len(problems) == 12


def test_pruning_needs_a_single_objective():
    problems = _problems(_search({"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                                 objectives=["val_bpb", "tokens_per_s"], pruner="hyperband"))
    assert problems == ["search.pruner: hyperband: pruning needs a single objective (val_bpb); "
                        "with two objectives set pruner: none"]
    search = search_from_dict(_search({"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                                      objectives=["val_bpb", "tokens_per_s"]))
    assert search.directions == ["minimize", "maximize"]


def test_configs_the_space_cannot_build_are_named():
    problems = _problems(_search({"model.d_model": {"type": "categorical", "choices": [32, 40]},
                                  "model.n_heads": {"type": "int", "low": 2, "high": 4}}))
    assert len(problems) == 2  # d_model 32 with 3 heads, d_model 40 with 3 heads
    assert all("d_model must be divisible by n_heads" in p for p in problems)
    assert "model.d_model=32, model.n_heads=3" in problems[0]


def test_a_broken_base_is_reported_once_for_every_trial():
    raw = _search({"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    raw["base"] = {"model": {"d_model": 30, "n_heads": 4}, "training": {"max_steps": 10}}
    (problem,) = _problems(raw)
    assert problem.startswith("every trial: model.d_model=30, model.n_heads=4")


def test_grid_sampler_needs_a_finite_space_and_defaults_to_all_points():
    problems = _problems(_search({"model.dropout": {"type": "float", "low": 0.0, "high": 0.2}}, sampler="grid"))
    assert "grid needs a finite space: give model.dropout a step" in problems[0]
    space = {"model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
             "model.n_blocks": {"type": "int", "low": 1, "high": 2}}
    raw = _search(space, sampler="grid")
    del raw["search"]["n_trials"]
    search = search_from_dict(raw)
    assert search.n_trials == 6
    assert search.params[0].grid_values() == [0.0, 0.1, 0.2]
    assert "the grid has only 6 points" in _problems(_search(space, sampler="grid", n_trials=7))[0]


def test_grids_and_searches_do_not_mix():
    raw = _search({"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError, match="run it with decoder sweep"):
        experiment_from_dict(raw)
    raw["grid"] = {"model.n_blocks": [1, 2]}
    assert any("grid: unknown key" in p for p in _problems(raw))


def test_start_from_base_takes_the_bases_values_and_refuses_one_outside_the_space():
    space = {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "model.d_model": {"type": "categorical", "choices": [32, 64]}}
    search = search_from_dict(_search(space, start_from_base=True))
    assert search.start_from_base and search.base_settings() == {"training.lr": 1e-3, "model.d_model": 32}
    assert not search_from_dict(_search(space)).start_from_base
    outside = {**space, "model.d_model": {"type": "categorical", "choices": [64, 128]},
               "training.lr": {"type": "float", "low": 2e-3, "high": 1e-2}}
    problems = _problems(_search(outside, start_from_base=True))
    assert any("model.d_model=32 is outside the space ([64, 128])" in p for p in problems)
    assert any("training.lr=0.001 is outside the space (float in [0.002, 0.01])" in p for p in problems)
    assert any("must be true or false" in p for p in _problems(_search(space, start_from_base="yes")))
    unset = {"training.warmup_fraction": {"type": "float", "low": 0.0, "high": 0.2}}  # the base leaves it null
    assert any("warmup_fraction=None is outside" in p for p in _problems(_search(unset, start_from_base=True)))
    off_grid = {"training.lr": {"type": "float", "low": 4e-4, "high": 9.4e-3, "step": 3e-3}}  # 4e-4, 3.4e-3, ...
    assert any("by 0.003" in p for p in _problems(_search(off_grid, start_from_base=True)))
    as_float = {"model.d_model": {"type": "categorical", "choices": [32.0, 64.0]}}  # 32 is an int in the base
    assert any("d_model=32 is outside" in p for p in _problems(_search(as_float, start_from_base=True)))
    grid = _problems(_search({"model.d_model": {"type": "categorical", "choices": [32, 64]}}, sampler="grid",
                             n_trials=2, start_from_base=True))
    assert any("use start_from_base with tpe or random" in p for p in grid)
