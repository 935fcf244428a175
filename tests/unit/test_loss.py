"""The fused, chunked output-layer cross-entropy (decoder.loss) against the plain formulation:
the same loss and the same gradients, in float32 and under bf16 autocast, across chunk edges and
with positions that are not scored."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoder import loss as loss_module
from decoder.config import ModelConfig
from decoder.loss import IGNORE_INDEX, NextTokenLoss, linear_cross_entropy
from decoder.model import GPT
from decoder.step import evaluate
from tinyconf import DEVICES


def _inputs(n=37, c=16, v=53, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g).to(device).requires_grad_()
    weight = (torch.randn(v, c, generator=g) * 0.5).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, targets


def _plain(hidden, weight, targets, reduction="mean"):
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def _loss_and_grads(fn, hidden, weight, targets, **kwargs):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, **kwargs)
    (loss * 3.0).backward()  # a non-unit upstream gradient must be applied too
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 512])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_equals_plain_in_float32(monkeypatch, chunk_rows, reduction, device):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", chunk_rows)  # 8 leaves a partial last chunk of 37 rows
    hidden, weight, targets = _inputs(device=device)
    expected = _loss_and_grads(_plain, hidden, weight, targets, reduction=reduction)
    got = _loss_and_grads(linear_cross_entropy, hidden, weight, targets, reduction=reduction)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ignored_positions_score_nothing_and_get_no_gradient(monkeypatch, device):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 8)
    hidden, weight, targets = _inputs(device=device)
    targets[[0, 9, 10, 36]] = IGNORE_INDEX
    expected = _loss_and_grads(_plain, hidden, weight, targets)
    got = _loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(got[1][[0, 9, 10, 36]]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_matches_plain_within_bf16_rounding(monkeypatch, device):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 8)
    hidden, weight, targets = _inputs(c=64, v=300, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        expected = _loss_and_grads(_plain, hidden, weight, targets)
        got = _loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    torch.testing.assert_close(got[0], expected[0], rtol=1e-3, atol=1e-3)
    for e, g in zip(expected[1:], got[1:]):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)
    # and it really computed in bf16: loss and gradients differ from float32's by more than its rounding
    fp32 = _loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    assert (got[0] - fp32[0]).abs() > 1e-6
    for b, f in zip(got[1:], fp32[1:]):
        assert (b - f).abs().max() > 1e-3 * f.abs().max()


def test_all_positions_ignored():
    hidden, weight, targets = _inputs()
    targets[:] = IGNORE_INDEX
    assert linear_cross_entropy(hidden, weight, targets, reduction="sum").item() == 0.0
    assert torch.isnan(linear_cross_entropy(hidden, weight, targets))


def test_without_gradients_the_value_is_the_same_and_nothing_is_recorded():
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, targets)
    assert not value.requires_grad
    torch.testing.assert_close(value, _plain(hidden, weight, targets).detach(), rtol=1e-6, atol=1e-6)


def test_mismatched_positions_are_refused():
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="hidden has 37 positions but targets has 36"):
        linear_cross_entropy(hidden, weight, targets[:-1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tie", [True, False])
def test_next_token_loss_fused_and_plain_give_the_same_parameter_gradients(monkeypatch, tie, device):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 5)
    config = ModelConfig(d_model=32, n_heads=2, n_blocks=2, context_length=16, tie_embeddings=tie)
    torch.manual_seed(0)
    model = GPT(config, vocab_size=61).to(device)
    idx = torch.randint(0, 61, (3, 16)).to(device)
    targets = torch.randint(0, 61, (3, 16)).to(device)
    grads = {}
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        loss = NextTokenLoss(model, fused=fused)(idx, targets)
        loss.backward()
        grads[fused] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-5, atol=1e-6)
    assert grads[True][1].keys() == grads[False][1].keys()
    for name, g in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_scores_every_window_as_the_plain_loss_does(monkeypatch, precision):
    """The validation loss (chunked, no gradients, a padded last window) equals the plain
    cross-entropy summed window by window."""
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 7)
    config = ModelConfig(d_model=32, n_heads=2, n_blocks=2, context_length=16)
    torch.manual_seed(0)
    model = GPT(config, vocab_size=61)
    tokens = np.random.default_rng(0).integers(0, 61, size=16 * 5 + 6)  # the last window is short: padded
    got = evaluate(model, tokens, np.ones(61, dtype=np.int64), torch.device("cpu"), precision)
    total = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for s in range(0, len(tokens) - 1, 16):
            x = torch.from_numpy(tokens[s : s + 16][: len(tokens) - 1 - s])[None]
            y = torch.from_numpy(tokens[s + 1 : s + 17])
            logits, _ = model(x)
            total += F.cross_entropy(logits[0].float(), y, reduction="sum").item()
    assert got["val_tokens"] == len(tokens) - 1
    assert got["val_loss"] == pytest.approx(total / (len(tokens) - 1), rel=1e-5)
