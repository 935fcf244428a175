"""Muon (momentum orthogonalised by Newton-Schulz) for the blocks' weight matrices, with the
Newton-Schulz iterations in the run's precision.

The algorithm is `torch.optim.Muon`'s, step for step (same coefficients, Nesterov momentum by
lerp, decoupled weight decay, the "match_rms_adamw" scale 0.2 * sqrt(max(rows, cols)) that lets
Muon reuse AdamW's learning rate and weight decay); tests/unit/test_muon.py checks that the two
give the same parameters in bf16. The one difference is the dtype of the iterations: torch's always
runs them in bf16, which a CPU without bf16 units emulates at a fraction of its fp32 speed (on the
2-core EPYC without AVX512-BF16, a run with torch's class had not reached its first evaluation when
the AdamW run beside it had reached its second; observed once, not timed). Here they run in fp32
unless the run itself trains in bf16.
"""

from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (Keller Jordan's quintic)
NS_STEPS = 5
EPS = 1e-7


def orthogonalise(update: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz's approximate U V^T of `update` (U S V^T): singular values pushed to ~[0.7, 1.2]."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=EPS)  # spectral norm <= 1
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. `ns_dtype`: torch.float32, or torch.bfloat16 where bf16 is fast."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 ns_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_dtype=ns_dtype))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = orthogonalise(p.grad.lerp(buf, momentum), group["ns_dtype"])  # Nesterov
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * 0.2 * max(p.shape) ** 0.5)
