"""nanoGPT's model and training step (karpathy/nanoGPT, `model.py` and `train.py`), written out
here only to measure our training step against it at the same shape.

The formulation, as nanoGPT has it with `bias=True` (GPT-2's) and `dropout=0.0`:
- token + *learned* position embeddings, the token embedding tied to the output layer;
- pre-LayerNorm blocks; attention through `F.scaled_dot_product_attention(..., is_causal=True)`;
  an MLP of width 4 * d_model with the exact (erf) GELU;
- GPT-2 initialisation (normal 0.02, residual projections scaled by 1/sqrt(2 * n_layer));
- the loss `F.cross_entropy` over the full logits, computed inside `forward(idx, targets)`;
- AdamW with weight decay on every parameter of two or more dimensions (embeddings included),
  `fused=True` only on CUDA (nanoGPT's `configure_optimizers`), betas (0.9, 0.95);
- the step: forward under the precision context, backward, `clip_grad_norm_(1.0)`, `step`,
  `zero_grad(set_to_none=True)`.

Given every advantage ours gets: the same vocabulary (the book's compact one, not padded: nanoGPT
takes the vocabulary size from the data), the same threads and process, and the same attention
kernel rule (`decoder.hardware.training_attention_backend`). nanoGPT runs CPU training in fp32
only (its precision context is a no-op on CPU); for the bf16 rows it gets the same bf16 autocast
as ours. On CUDA, nanoGPT's defaults would also turn on TF32 and `torch.compile`; these rows use
neither (as ours), so a CUDA row here is "nanoGPT, compile off, no TF32".

The one difference in the arithmetic: nanoGPT's GELU is the exact (erf) one, ours GPT-2's tanh
approximation; the matmul FLOPs per token are the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from decoder.config import ModelConfig


class NanoBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); attention and MLP as in nanoGPT."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.attn_proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.c_fc = nn.Linear(d_model, 4 * d_model)
        self.mlp_proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        # nanoGPT's architecture has no switch for these: refuse a shape it would not train the same way.
        if not (config.ff_width == 4 * config.d_model and config.bias and config.positional == "learned"
                and config.tie_embeddings and config.dropout == 0):
            raise ValueError("nanoGPT's formulation needs d_ff = 4 * d_model, biases, learned positions, "
                             "a tied head and dropout 0")
        self.wte = nn.Embedding(vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context_length, config.d_model)
        self.blocks = nn.ModuleList([NanoBlock(config.d_model, config.n_heads) for _ in range(config.n_blocks)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_blocks))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """idx, targets (B, T) -> the mean cross-entropy (nanoGPT returns the logits too)."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def nanogpt_optimizer(model: NanoGPT, device: str, lr: float = 2e-3, weight_decay: float = 0.1) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True if device == "cuda" else None)


def nanogpt_step(model: NanoGPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """One step of nanoGPT's loop with one micro-batch; returns the loss."""
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
