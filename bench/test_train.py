"""Training step throughput: forward + backward + optimizer step, tokens per second.

Ours (decoder.model.GPT with the step decoder.train runs, built by decoder.step.build_training:
the fused output-layer loss, AdamW, gradient clipping, fp32 or bf16 autocast, the attention kernel
the trainer picks, the book's compact vocabulary) at three sizes; at the default shape ("small")
also ours before the fused loss (full logits, then F.cross_entropy) and nanoGPT's model and step
(bench/nanogpt.py); and the reference notebook's formulation (bench/reference.py: post-LN
nn.MultiheadAttention blocks, full 100,277-row output layer, Adam, fp32) at its own configuration,
all measured in the same process on the same device and threads.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch.nn.attention import sdpa_kernel

from bench.common import DEVICES, PRECISIONS, SIZES, measure, skip_unless_supported
from bench.nanogpt import NanoGPT, nanogpt_optimizer, nanogpt_step
from bench.reference import ReferenceModel, reference_optimizer, reference_step
from decoder.config import RunConfig, TrainingConfig
from decoder.hardware import training_attention_backend
from decoder.model import GPT
from decoder.step import build_training


def _batch(vocab_size: int, batch: int, context: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, vocab_size, (batch, context + 1), generator=g)
    return xy[:, :-1].contiguous().to(device), xy[:, 1:].contiguous().to(device)


def _with_kernel(backend, fn, *args):
    with sdpa_kernel(backend) if backend is not None else nullcontext():
        return fn(*args)


def _measure_decoder(benchmark, timing, tokenizer, device: str, size: str, precision: str, fused: bool) -> None:
    skip_unless_supported(device, precision)
    spec = SIZES[size]
    config = RunConfig(model=spec.model, training=TrainingConfig(max_steps=1, batch_size=spec.batch))
    training = build_training(config, tokenizer.vocab_size, device, precision, fused=fused)
    model = training.model
    x, y = _batch(tokenizer.vocab_size, spec.batch, spec.model.context_length, device)
    loss = measure(
        benchmark, lambda: training.step([(x, y)]),
        device=device, timing=timing, workload="train", model=size,
        engine="decoder" if fused else "decoder, logits loss", precision=precision,
        batch=spec.batch, tokens=x.numel(), flops=model.flops_per_token() * x.numel(),
        params=model.num_params(), vocab_size=tokenizer.vocab_size,
    )
    assert loss.shape == () and torch.isfinite(loss)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("device", DEVICES)
def test_train_decoder(benchmark, timing, tokenizer, device: str, size: str, precision: str) -> None:
    _measure_decoder(benchmark, timing, tokenizer, device, size, precision, fused=True)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_train_decoder_logits_loss(benchmark, timing, tokenizer, device: str, precision: str) -> None:
    """The step before the fused loss (full logits, then F.cross_entropy), at the default shape."""
    _measure_decoder(benchmark, timing, tokenizer, device, "small", precision, fused=False)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_train_nanogpt(benchmark, timing, tokenizer, device: str, precision: str) -> None:
    """nanoGPT's model and step (bench/nanogpt.py) at the default shape, the same vocabulary and threads."""
    skip_unless_supported(device, precision)
    spec = SIZES["small"]
    torch.manual_seed(0)
    model = NanoGPT(spec.model, tokenizer.vocab_size).to(device)
    optimizer = nanogpt_optimizer(model, device)
    backend = training_attention_backend(device, spec.model.context_length, precision)
    x, y = _batch(tokenizer.vocab_size, spec.batch, spec.model.context_length, device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    ours = GPT(spec.model, tokenizer.vocab_size)  # the same FLOPs per token, counted one way
    loss = measure(
        benchmark, lambda: _with_kernel(backend, nanogpt_step, model, optimizer, x, y, dtype),
        device=device, timing=timing, workload="train", model="small", engine="nanoGPT", precision=precision,
        batch=spec.batch, tokens=x.numel(), flops=ours.flops_per_token() * x.numel(),
        params=sum(p.numel() for p in model.parameters()), vocab_size=tokenizer.vocab_size,
    )
    assert loss.shape == () and torch.isfinite(loss)


@pytest.mark.parametrize("device", DEVICES)
def test_train_reference(benchmark, timing, full_vocab_size, device: str) -> None:
    spec = SIZES["reference"]
    c = spec.model
    torch.manual_seed(0)
    model = ReferenceModel(full_vocab_size, c.d_model, c.n_heads, c.n_blocks, c.ff_width, c.context_length).to(device)
    optimizer = reference_optimizer(model)
    # The same attention kernel rule as ours, for its precision (fp32), so the baseline gets the
    # kernel that is fastest for it.
    backend = training_attention_backend(device, c.context_length, "fp32")
    x, y = _batch(full_vocab_size, spec.batch, c.context_length, device)
    loss = measure(
        benchmark, lambda: _with_kernel(backend, reference_step, model, optimizer, x, y),
        device=device, timing=timing, workload="train", model="reference", engine="reference notebook",
        precision="fp32", batch=spec.batch, tokens=x.numel(), flops=model.flops_per_token() * x.numel(),
        params=sum(p.numel() for p in model.parameters()), vocab_size=full_vocab_size,
    )
    assert loss.shape == () and torch.isfinite(loss)
