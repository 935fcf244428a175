"""The training loss: next-token cross-entropy of the output layer, fused with the output layer.

A small model's output layer is most of its step: at the default shape (d_model 192, a 7.9k-row
compact vocabulary, 2,048 tokens a step) the logits are a 2,048 x 7,898 float32 matrix, 65 MB, and
the plain formulation (`F.cross_entropy(F.linear(h, W).float(), y)`) streams it through memory
about eight times (the matmul writes it, log-softmax reads and writes it, the backward fills a
zero matrix of its size, scatters, reads both again, and two matmuls read the result).
`linear_cross_entropy` instead walks the rows in chunks of `CHUNK_ROWS`: each chunk's logits are
computed, turned into probabilities in place and, when gradients are wanted, into the chunk's
gradient (softmax - one-hot) at once, which two matmuls fold into the gradients of the hidden
states and of the weight. The whole logit matrix is never allocated (16 MB at a time instead of
65 MB), no zero matrix is filled, log-softmax never runs, and the backward pass only scales the
gradients the forward pass already holds. `python -m bench.loss_ab` measures the two formulations
side by side (chunks of 256 to 1,024 rows measured fastest of 32..2,048 at the default shape, fp32,
2 threads, AMD EPYC with AVX2).

The arithmetic is the plain formulation's: logits in the autocast dtype (bf16 under bf16 autocast)
and the softmax in float32, as `logits.float()` does; results agree with it to the rounding of the
precision used (tests/unit/test_loss.py). Under bf16 the weight gradient is summed over chunks in
float32, where autocast's backward rounds one bf16 matmul: slightly more exact, not identical.

`NextTokenLoss` is the module the trainer differentiates (and DDP wraps): `(idx, targets) -> mean
loss`, fused or not, so the exported model keeps its one signature (`GPT.forward` -> logits).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from decoder.model import GPT

CHUNK_ROWS = 512
IGNORE_INDEX = -100  # F.cross_entropy's default: a target that is not scored (evaluation's padding)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: autocast's for a float32 input where autocast is
    on (autocast leaves other dtypes alone), else the input's."""
    device = t.device.type
    if t.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, want_grad: bool):
    """Sum of the row losses over rows whose target is not IGNORE_INDEX, and, with want_grad, the
    gradients of that sum with respect to hidden (N, C) and weight (V, C)."""
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
        any_ignored = bool((targets == IGNORE_INDEX).any())  # one device sync, not one per chunk
        for s in range(0, hidden.shape[0], CHUNK_ROWS):
            h = hidden[s : s + CHUNK_ROWS].to(dtype)
            y = targets[s : s + CHUNK_ROWS]
            valid = (y != IGNORE_INDEX)[None, :]  # (1, n)
            y = torch.where(valid, y, 0) if any_ignored else y[None, :]
            # Transposed, (V, n): w @ h.T ran ~25% faster than h @ w.T here (MKL, AVX2), and the
            # weight gradient becomes a plain (V, n) @ (n, C).
            logits = (w @ h.t()).float()  # float32, as logits.float()
            peak = logits.amax(dim=0, keepdim=True)
            target_logit = logits.gather(0, y)
            probs = logits.sub_(peak).exp_()  # in place: the chunk's logits are not needed again
            norm = probs.sum(dim=0, keepdim=True)
            position_loss = norm.log() + peak - target_logit  # logsumexp - target logit, (1, n)
            total += torch.where(valid, position_loss, 0.0).sum() if any_ignored else position_loss.sum()
            if not want_grad:
                continue
            probs.div_(norm).scatter_add_(0, y, torch.full_like(target_logit, -1.0))  # softmax - one-hot
            if any_ignored:
                probs.mul_(valid)
            if dtype == torch.float32:
                torch.mm(probs.t(), w, out=grad_h[s : s + CHUNK_ROWS])
                grad_w.addmm_(probs, h)
            else:  # the bf16 matmuls autocast's backward would run, accumulated in float32
                g = probs.to(dtype)
                grad_h[s : s + CHUNK_ROWS] = g.t() @ w
                grad_w += (g @ h).float()
    return total, grad_h, grad_w


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total, grad_h, grad_w = _chunked(hidden, weight, targets, want_grad=True)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_total.to(grad_h.dtype), grad_w * grad_total.to(grad_w.dtype), None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets` without materialising the logits:
    hidden (..., C), weight (V, C), targets (...) of ids, IGNORE_INDEX for positions not scored.
    "mean" averages over the scored positions (nan when there is none, as F.cross_entropy)."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} positions but targets has {targets.shape[0]}: they must match")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        total = _FusedLinearCrossEntropy.apply(hidden, weight, targets)
    else:
        total, _, _ = _chunked(hidden, weight, targets, want_grad=False)
    if reduction == "sum":
        return total
    return total / (targets != IGNORE_INDEX).sum()


class NextTokenLoss(nn.Module):
    """The model under its training loss: `(idx, targets) -> mean cross-entropy` (float32).

    fused=False is the plain formulation (full logits, then F.cross_entropy), kept as the baseline
    the fused one is measured and tested against."""

    def __init__(self, model: GPT, fused: bool = True) -> None:
        super().__init__()
        self.model = model
        self.fused = fused

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.model.hidden(idx)
        if self.fused:
            return linear_cross_entropy(hidden, self.model.lm_head.weight, targets)
        logits = self.model.lm_head(hidden)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
