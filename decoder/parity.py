"""How far an exported model strays from its source: onnxruntime vs PyTorch logits (parity, by
past length and for a left-padded batch of rows of different lengths) and the int8 model vs the
fp32 one on validation text (top-1 agreement, bits per byte). `decoder.export` records these
figures in bundle.json and refuses an export whose parity is off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from decoder.kvcache import left_padded
from decoder.metrics import bits_per_byte
from decoder.model import GPT
from decoder.runtime import Runtime

AGREEMENT_MAX_TOKENS = 32768
"""Validation tokens scored for the int8 agreement figures (the whole split if shorter)."""


@torch.no_grad()
def parity_check(
    model: GPT,
    runtime: Runtime,
    *,
    past_lengths: Sequence[int] | None = None,
    batch: int = 2,
    seed: int = 0,
) -> dict[int, float]:
    """Max abs logits difference PyTorch vs onnxruntime, per past length P.

    For each P: both engines prefill P random tokens (P > 0) and then take one incremental step
    with their own cache; the figure for P is the larger difference of the two calls. Default past
    lengths: 0, 1, a quarter, a half and the last one the context allows (context_length - 1)."""
    ctx = model.config.context_length
    if past_lengths is None:
        past_lengths = sorted({0, 1, ctx // 4, ctx // 2, ctx - 1})
    bad = [p for p in past_lengths if not 0 <= p < ctx]
    if bad:
        raise ValueError(f"past lengths {bad}: must be in [0, {ctx - 1}] (context_length {ctx})")
    model.eval()
    ids = np.random.default_rng(seed).integers(0, model.vocab_size, size=(batch, ctx), dtype=np.int64)
    diffs = {}
    for p in past_lengths:
        torch_past, ort_past, worst = None, None, 0.0
        for chunk in ([ids[:, :p]] if p else []) + [ids[:, p : p + 1]]:
            expected, torch_past = model(torch.from_numpy(chunk), torch_past)
            got, ort_past = runtime.run(chunk, ort_past)
            worst = max(worst, float(np.abs(got - expected.numpy()).max()))
        diffs[p] = worst
    return diffs


@torch.no_grad()
def padded_parity_check(model: GPT, runtime: Runtime, *, batch: int = 3, seed: int = 0) -> float:
    """Max abs logits difference PyTorch vs onnxruntime for rows of different lengths: over the real
    columns of a left-padded prefill (row i: context_length - 1 - i tokens, at least 1) and of one
    step after it, both engines given the same attention mask and position ids."""
    model.eval()
    ctx = model.config.context_length
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, model.vocab_size, size=max(1, ctx - 1 - i)) for i in range(batch)]
    step_ids, mask, positions = left_padded(prompts)
    torch_past, ort_past, worst = None, None, 0.0
    for _ in range(2):
        as_torch = [torch.from_numpy(a) for a in (step_ids, mask, positions)]
        expected, torch_past = model(as_torch[0], torch_past, as_torch[1], as_torch[2])
        got, ort_past = runtime.step(step_ids, mask, positions, ort_past, last_only=False)
        real = mask[:, -step_ids.shape[1]:].astype(bool)
        worst = max(worst, float(np.abs(got - expected.numpy())[real].max()))
        step_ids = expected.numpy()[:, -1].argmax(axis=-1)[:, None]
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones_like(step_ids)], axis=1)
    return worst


def _score_window(runtime: Runtime, window: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(summed cross-entropy in nats of `targets`, argmax per position) for one (T,) window."""
    logits = runtime.run(window[None])[0][0].astype(np.float64)  # (T, V)
    peak = logits.max(axis=-1)
    log_z = np.log(np.exp(logits - peak[:, None]).sum(axis=-1)) + peak
    nats = float((log_z - logits[np.arange(len(targets)), targets]).sum())
    return nats, logits.argmax(axis=-1)


def int8_agreement(
    bundle_dir: str | Path,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    *,
    max_tokens: int | None = AGREEMENT_MAX_TOKENS,
    threads: int | None = None,
) -> dict:
    """How far the bundle's int8 model strays from its fp32 model on `tokens` (validation ids).

    Both score consecutive windows of context_length (every token after the first predicted once,
    as decoder.step.evaluate does), at most max_tokens predictions. Returns the top-1 agreement
    rate (share of positions where both pick the same argmax) and each model's bits per byte."""
    engines = {"fp32": Runtime(bundle_dir, threads=threads),
               "int8": Runtime(bundle_dir, quantized=True, threads=threads)}
    tokens = np.asarray(tokens, dtype=np.int64)[: None if max_tokens is None else max_tokens + 1]
    if len(tokens) < 2:
        raise ValueError(f"int8 agreement needs at least 2 tokens, got {len(tokens)}")
    T, n_pred = engines["fp32"].context_length, len(tokens) - 1
    agree, nats = 0, {name: 0.0 for name in engines}
    for start in range(0, n_pred, T):
        window = tokens[start : min(start + T, n_pred)]
        targets = tokens[start + 1 : start + 1 + len(window)]
        picks = []
        for name, runtime in engines.items():
            window_nats, argmax = _score_window(runtime, window, targets)
            nats[name] += window_nats
            picks.append(argmax)
        agree += int((picks[0] == picks[1]).sum())
    n_bytes = int(byte_lengths[tokens[1:]].sum())
    return {
        "top1_agreement": agree / n_pred,
        "val_bpb_fp32": bits_per_byte(nats["fp32"], n_bytes),
        "val_bpb_int8": bits_per_byte(nats["int8"], n_bytes),
        "tokens": n_pred,
    }
