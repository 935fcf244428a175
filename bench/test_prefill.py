"""Prefill throughput: one full-context forward pass (no cache in, logits for every position out)."""

from __future__ import annotations

import pytest
import torch

from bench.common import DEVICES, GENERATION_SIZE, PRECISIONS, autocast, measure, skip_unless_supported
from decoder.model import GPT


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_prefill(benchmark, timing, tokenizer, device: str, precision: str, batch: int) -> None:
    skip_unless_supported(device, precision)
    config = GENERATION_SIZE.model
    torch.manual_seed(0)
    model = GPT(config, tokenizer.vocab_size).to(device).eval()
    idx = torch.randint(0, tokenizer.vocab_size, (batch, config.context_length),
                        generator=torch.Generator().manual_seed(0)).to(device)

    @torch.inference_mode()
    def run() -> torch.Tensor:
        with autocast(device, precision):
            logits, _ = model(idx)
        return logits

    # Inference is the forward third of the training count (2N + attention per token).
    logits = measure(
        benchmark, run, device=device, timing=timing, workload="prefill", model=GENERATION_SIZE.name,
        engine="decoder", precision=precision, batch=batch, tokens=idx.numel(),
        flops=model.flops_per_token() * idx.numel() // 3,
    )
    assert logits.shape == (batch, config.context_length, tokenizer.vocab_size)
    assert torch.isfinite(logits.float()).all()
