"""Dropout, with a cheaper mask on CPU.

torch's CPU dropout draws one mt19937 number per element, serially: at the main job's shape (ten
masks a training step: the embeddings, and each block's attention weights, attention output and MLP
output) that was an eighth of the step in fp32. `dropout` draws four elements from each 64-bit
random number instead (`_CPUDropout`), from torch's generator, so a seed gives the same masks and a
resumed run stays exact. On other devices, and with `CPU_DROPOUT = False`, it is torch's own
(`python -m bench.dropout_ab` times both: research/cpu-dropout/).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CPU_DROPOUT = True
"""Use `_CPUDropout` for dropout on CPU."""


class _CPUDropout(torch.autograd.Function):
    """x * keep / (1 - p'): keep drawn in 16-bit lanes of 64-bit random numbers, four elements a
    draw, and dropped where a lane falls below round(p * 65536): a probability p' within 1 / 131072
    of p, and the kept values scaled by exactly 1 / (1 - p'), so the expectation is kept exactly."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        threshold = round(p * 65536)
        n = x.numel()
        lanes = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = lanes.view(torch.int16)[:n].view(x.shape) >= threshold - 32768  # bool: a byte an element kept
        ctx.scale = 65536 / (65536 - threshold)
        ctx.save_for_backward(keep)
        return torch.where(keep, x, 0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout(x, p, training), with the mask drawn by `_CPUDropout` on CPU (about four times
    cheaper to draw than torch's there; the training step: `python -m bench.dropout_ab`); elsewhere
    torch's own."""
    if not training or p == 0.0:
        return x
    if not uses_cpu_dropout(x) or round(p * 65536) >= 65536:  # p within 1/131072 of 1: no lane is kept
        return F.dropout(x, p, training=True)
    return _CPUDropout.apply(x, p)


def uses_cpu_dropout(x: torch.Tensor) -> bool:
    return CPU_DROPOUT and x.device.type == "cpu"


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
