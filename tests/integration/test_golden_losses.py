"""Golden losses: the first 20 training losses of a fixed tiny CPU fp32 run on the excerpt, checked
against tests/assets/golden_losses.json so a change that silently alters training is noticed."""

import json
from pathlib import Path

import torch
from tinyconf import tiny_config, train_losses

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_losses.json"


def test_golden_losses(small_corpus, tmp_path):
    """The first losses of a fixed tiny CPU fp32 run. A change that alters training numerics fails
    here; if it is deliberate, regenerate with `python tests/integration/make_golden.py` and say why in
    the commit."""
    config = tiny_config(small_corpus, training={"max_steps": 20})
    losses = train_losses(config, tmp_path / "run")
    golden = json.loads(GOLDEN.read_text())
    assert golden["config"] == config.to_dict()["model"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(golden["losses"]), rtol=2e-4, atol=2e-4)
