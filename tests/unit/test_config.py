import dataclasses

import pytest
import yaml

from decoder.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    config_from_dict,
    dump_config,
    load_config,
    set_dotted,
)
from decoder.validation import choices
from decoder.errors import UserError


def test_defaults_are_valid():
    assert RunConfig().problems() == []


@pytest.mark.parametrize("raw", [None, {}, {"model": {"d_model": 64}}, {"training": {"lr": 0.01}}])
def test_a_config_without_a_budget_is_refused(raw, tmp_path):
    with pytest.raises(ConfigError, match="a budget is required"):
        config_from_dict(raw)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=f"{empty}: training: no budget \\(a budget is required\\)"):
        load_config(empty)


def test_config_error_lists_its_problems_and_is_a_user_error():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"d_modle": 64, "dropout": 2.0}, "training": {"max_steps": 1}}, source="c.yaml")
    problems = err.value.problems
    assert len(problems) == 2 and problems[0].startswith("model.d_modle: unknown key")
    assert problems[1] == "model.dropout=2.0: must be in [0, 1)"
    assert str(err.value) == "c.yaml: " + "; ".join(problems)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


def test_choice_fields_are_literals_checked_in_one_place():
    assert choices(ModelConfig, "positional") == ("learned", "sinusoidal", "rope")
    assert choices(TrainingConfig, "precision") == ("auto", "fp32", "bf16")
    assert choices(TrainingConfig, "device") == ()  # 'cuda:N' is not a fixed set: checked by pattern
    built_in_python = dataclasses.replace(RunConfig().training, optimizer="sgd", schedule="linear")
    assert built_in_python.problems() == ["training.optimizer='sgd': allowed 'adamw', 'adam', 'muon'",
                                          "training.schedule='linear': allowed 'cosine', 'constant'"]
    with pytest.raises(ConfigError, match="model.positional=5: must be one of 'learned', 'sinusoidal', 'rope'"):
        config_from_dict({"model": {"positional": 5}, "training": {"max_steps": 1}})


@pytest.mark.parametrize(
    "raw, field, allowed",
    [
        ({"model": {"d_model": 100, "n_heads": 8}}, "model.d_model=100, model.n_heads=8", "divisible"),
        ({"model": {"context_length": 1}}, "model.context_length=1", ">= 2"),
        ({"model": {"dropout": -0.1}}, "model.dropout=-0.1", "[0, 1)"),
        ({"model": {"positional": "rotary"}}, "model.positional='rotary'", "'learned', 'sinusoidal'"),
        ({"training": {"lr": 0, "max_steps": 1}}, "training.lr=0.0", "> 0"),
        ({"training": {"max_steps": -5}}, "training.max_steps=-5", "> 0"),
        ({"training": {"batch_size": 8, "grad_accum_steps": 3, "max_steps": 1}}, "training.grad_accum_steps=3", "divide"),
        ({"training": {"precision": "fp8", "max_steps": 1}}, "training.precision='fp8'", "'auto', 'fp32', 'bf16'"),
        ({"training": {"batch_size": 4}}, "a budget is required", "max_steps, max_tokens, max_seconds"),
        ({"data": {"windows": "strided"}, "training": {"max_steps": 1}}, "data.windows='strided'", "'random', 'sliding'"),
        ({"data": {"min_count": 0}, "training": {"max_steps": 1}}, "data.min_count=0", ">= 1"),
        ({"sampling": {"repetition_penalty": 0}, "training": {"max_steps": 1}}, "repetition_penalty=0.0", "> 0"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction=1.5", "(0, 1)"),
        ({"sampling": {"top_p": 0}}, "sampling.top_p=0.0", "(0, 1]"),
        ({"sampling": {"temperature": -1}}, "sampling.temperature=-1.0", ">= 0"),
        ({"sampling": {"top_k": -2}}, "sampling.top_k=-2", ">= 0"),
        ({"model": {"d_model": "big"}}, "model.d_model='big'", "must be int"),
        ({"model": {"n_blocks": True}}, "model.n_blocks=True", "must be int"),
        ({"training": {"lr": float("nan"), "max_steps": 1}}, "training.lr=nan", "finite"),
        ({"training": {"device": "cuda:x", "max_steps": 1}}, "training.device='cuda:x'", "'cuda:N'"),
    ],
)
def test_bad_values_name_field_and_allowed(raw, field, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert field in str(err.value)
    assert allowed in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"context_length": 1, "dropout": 2.0}, "training": {"lr": -1, "max_steps": 1}})
    message = str(err.value)
    for field in ("model.context_length", "model.dropout", "training.lr"):
        assert field in message


def test_unknown_keys_rejected_with_suggestion_and_valid_list():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"d_modle": 64}})
    assert "model.d_modle: unknown key (did you mean 'd_model'?)" in str(err.value)
    assert "valid keys: d_model, n_heads" in str(err.value)
    with pytest.raises(ConfigError, match="unknown key.*'training'"):
        config_from_dict({"trainng": {}})


def test_ints_accepted_for_floats_and_yaml_round_trip(tmp_path):
    config = config_from_dict({"training": {"lr": 1, "max_seconds": 60}})
    assert isinstance(config.training.lr, float) and config.training.lr == 1.0
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_set_dotted_rejects_bad_paths():
    raw: dict = {}
    set_dotted(raw, "model.d_model", 64)
    assert raw == {"model": {"d_model": 64}}
    with pytest.raises(ConfigError, match="section.key"):
        set_dotted(raw, "d_model", 64)


def test_the_configuration_reference_is_generated_from_every_field_and_its_docstring():
    """The docs' configuration page is generated (docs/hooks.py) from the dataclasses: every key of
    every section appears with its default and the docstring written under it (docs cannot rot)."""
    import dataclasses
    from pathlib import Path

    from decoder.config import SECTIONS
    from decoder.reference import field_docs, reference_markdown

    text = reference_markdown()
    for section, cls in SECTIONS.items():
        table = text.split(f"### `{section}`", 1)[1].split("### ", 1)[0]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            row = next(line for line in table.splitlines() if line.startswith(f"| `{f.name}` |"))
            assert docs.get(f.name), f"{section}.{f.name} has no docstring under it in decoder/config.py"
            assert docs[f.name].replace("|", "\\|") in row
    assert field_docs(SECTIONS["training"])["lr"] == "Peak learning rate."
    page = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert "<!-- config-reference -->" in page


def test_a_saved_config_without_a_later_key_means_what_the_run_used(tmp_path):
    # Run folders and checkpoints written before data.fallback existed spelled dropped tokens in
    # bytes; reading them must say so (their baselines, reports and exports depend on it), while a
    # new experiment file without the key gets today's default.
    from decoder.run_ids import load_saved_config, saved_config_from_dict

    raw = config_from_dict({"training": {"max_steps": 1}}).to_dict()
    del raw["data"]["fallback"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_saved_config(path).data.fallback == "bytes"
    assert saved_config_from_dict(raw, "checkpoint").data.fallback == "bytes"
    assert "fallback" not in raw["data"]  # the caller's dict is left alone
    assert load_config(path).data.fallback == DataConfig().fallback
    saved = config_from_dict({"data": {"fallback": "pieces"}, "training": {"max_steps": 1}}).to_dict()
    assert saved_config_from_dict(saved, "checkpoint").data.fallback == "pieces"


def test_run_ids_outlive_keys_added_later():
    from decoder.run_ids import run_id

    def config(**data):
        return config_from_dict({"model": {"d_model": 64}, "data": data, "training": {"max_steps": 10, "lr": 1e-3}})

    # The id this config had before training.muon_momentum and data.fallback existed (computed
    # with decoder/config.py of d161869): holding the values runs had then, it keeps it.
    assert run_id(config(fallback="bytes")) == "52d828e9b9"
    assert run_id(config(fallback="pieces")) != "52d828e9b9"
    moved = config_from_dict({"model": {"d_model": 64}, "data": {"fallback": "bytes"},
                              "training": {"max_steps": 10, "lr": 1e-3, "muon_momentum": 0.9}})
    assert run_id(moved) != "52d828e9b9"
