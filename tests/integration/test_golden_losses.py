"""Golden losses: the first 20 training losses of a fixed tiny CPU fp32 run on the excerpt, and of
the same run with each architecture option (rotary positions, RMSNorm, squared ReLU, SwiGLU,
qk-norm, the weights' moving average), checked against tests/assets/golden_losses.json so a change
that silently alters training is noticed."""

import json
from pathlib import Path

import pytest
import torch
from make_golden import VARIANTS, golden_run

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_losses.json"


def test_golden_losses(small_corpus, tmp_path):
    """The first losses of a fixed tiny CPU fp32 run. A change that alters training numerics fails
    here; if it is deliberate, regenerate with `python tests/integration/make_golden.py` and say why in
    the commit."""
    config, losses, _ = golden_run(small_corpus, tmp_path / "run", {})
    golden = json.loads(GOLDEN.read_text())
    assert golden["config"] == config.to_dict()["model"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(golden["losses"]), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", VARIANTS)
def test_golden_losses_of_each_architecture_option(small_corpus, tmp_path, name):
    golden = json.loads(GOLDEN.read_text())["variants"][name]
    assert golden["sections"] == VARIANTS[name]
    _, losses, val_losses = golden_run(small_corpus, tmp_path / "run", VARIANTS[name])
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(golden["losses"]), rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(torch.tensor(val_losses), torch.tensor(golden["val_losses"]), rtol=2e-4, atol=2e-4)
