"""Checkpoints open without running code: weights_only loading, refusal of pickled code, the numpy
values older files may hold, and the best weights as safetensors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from decoder.checkpoint import (
    BEST_WEIGHTS_FILE,
    CheckpointError,
    best_weights_path,
    load_checkpoint,
    load_model,
    plain,
    read_weights,
    resave_trusted,
)
from decoder.cli import main as cli_main
from decoder.runs import RunDir


class RunsAShellCommand:
    """What an attacker pickles: unpickling it calls os.system."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, excerpt_text):
    from tinyconf import tiny_config

    from decoder.train import train

    root = tmp_path_factory.mktemp("safety")
    corpus = root / "small.txt"
    corpus.write_text(excerpt_text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECODER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decoder-cache"))
        train(tiny_config(corpus, training={"max_steps": 4, "eval_interval": 2}), root / "run", quiet=True)
    return RunDir(root / "run")


def _valid_state(run: RunDir) -> dict:
    return torch.load(run.best, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", ["latest.pt", "best.pt", "latest.prev.pt"])
def test_checkpoints_load_with_plain_weights_only(tiny_run, name):
    state = torch.load(tiny_run.checkpoints / name, map_location="cpu", weights_only=True)
    assert state["format"] == 1 and isinstance(state["rng"]["torch"][0], torch.Tensor)


def test_best_weights_are_also_written_as_safetensors(tiny_run):
    path = best_weights_path(tiny_run)
    assert path == tiny_run.checkpoints / BEST_WEIGHTS_FILE and path.is_file()
    tensors, description = read_weights(path)
    state = load_checkpoint(tiny_run.best)
    assert "lm_head.weight" not in tensors  # tied: stored once, as the embedding
    assert sorted(tensors) == sorted(k for k in state["model"] if k != "lm_head.weight")
    for name, tensor in tensors.items():
        assert torch.equal(tensor, state["model"][name])
    assert description["run_id"] == state["run_id"] and description["config"] == state["config"]
    assert description["train_state"]["step"] == state["train_state"]["step"]
    assert description["vocab_size"] == state["vocab_size"] and description["format"] == "pt"


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy-format"])
def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(tmp_path, tiny_run, zipped):
    marker = tmp_path / "pwned"
    state = _valid_state(tiny_run)
    state["val"] = RunsAShellCommand(marker)
    path = tmp_path / "evil.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and "refused" in message and "resave_trusted" in message
    if zipped:
        assert "system" in message  # names the global it asked for
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


def test_the_command_line_refuses_it_in_one_line(tmp_path, tiny_run, capsys):
    marker = tmp_path / "pwned"
    state = _valid_state(tiny_run)
    state["train_state"] = {"step": RunsAShellCommand(marker)}
    torch.save(state, tmp_path / "evil.pt")
    assert cli_main(["export", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decoder export: error:") and err.count("\n") == 1 and "refused" in err
    assert not marker.exists() and not (tmp_path / "bundle").exists()


def test_numpy_values_of_older_files_still_load(tmp_path, tiny_run):
    """numpy scalars, arrays and a numpy RNG state tuple: data the allowlist rebuilds, no code."""
    state = _valid_state(tiny_run)
    state["val"] = {k: np.float64(v) if isinstance(v, float) else np.int64(v) for k, v in state["val"].items()}
    state["numpy_rng"] = np.random.RandomState(3).get_state()
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(Exception, match="numpy"):  # a plain weights_only load refuses it
        torch.load(tmp_path / "old.pt", weights_only=True)
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["val"] == pytest.approx(_valid_state(tiny_run)["val"])
    assert np.array_equal(loaded["numpy_rng"][1], np.random.RandomState(3).get_state()[1])
    allowed_now = [g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()]
    assert not [g for g in allowed_now if getattr(g, "__module__", "").startswith("numpy")]  # that load only


def test_resave_trusted_makes_an_old_file_plain(tmp_path, tiny_run):
    state = _valid_state(tiny_run)
    state["val"] = {"val_loss": np.float32(1.5), "hist": np.arange(3)}
    torch.save(state, tmp_path / "old.pt")
    resave_trusted(tmp_path / "old.pt", tmp_path / "new.pt")
    again = torch.load(tmp_path / "new.pt", weights_only=True)
    assert again["val"] == {"val_loss": 1.5, "hist": [0, 1, 2]}
    assert torch.equal(again["model"]["transformer.wte.weight"], state["model"]["transformer.wte.weight"])


def test_plain_converts_numpy_and_rejects_objects():
    out = plain({"a": (np.int64(2), [np.float64(0.5)]), "t": torch.ones(2), "s": "x", "n": None})
    assert out["a"] == (2, [0.5]) and type(out["a"][0]) is int and type(out["a"][1][0]) is float
    assert torch.equal(out["t"], torch.ones(2)) and out["s"] == "x" and out["n"] is None
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]\[1\] is a RunsAShellCommand"):
        plain({"x": [1, RunsAShellCommand("m")]})


def test_a_truncated_checkpoint_is_one_line(tmp_path, tiny_run):
    data = tiny_run.best.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable") as caught:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(caught.value)
