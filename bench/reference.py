"""The reference notebook's model and training step, kept only to measure our speed against it.

The notebook trained a post-LayerNorm transformer built on `nn.MultiheadAttention`, with a
feed-forward width of 20, sinusoidal positions, an output layer over the whole tiktoken
vocabulary (cl100k_base: 100,277 rows), fp32, `Adam(lr=1e-4, betas=(0.9, 0.98), eps=1e-9)` and
`CrossEntropyLoss`. This is that formulation written honestly for a speed comparison:

- with the causal mask the notebook lacked, passed the way that keeps `nn.MultiheadAttention` on
  its fast path (`is_causal=True`, `need_weights=False`: scaled-dot-product attention inside);
- no handicap: no dropout (ours runs without it too), no `ignore_index`, the same threads and the
  same process as the model it is compared with.

It is not part of the package: nothing here is used for training real models.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from decoder.model import sinusoidal_table


class ReferenceBlock(nn.Module):
    """Post-LN: x = norm1(x + attn(x)); x = norm2(x + ff(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_out, _ = self.attn(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)
        x = self.norm1(x + attn_out)
        return self.norm2(x + self.ff(x))


class ReferenceModel(nn.Module):
    """Token embedding + sinusoidal positions -> post-LN blocks -> full-vocabulary output layer."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_blocks: int, d_ff: int,
                 context_length: int) -> None:
        super().__init__()
        self.d_model, self.n_blocks, self.context_length = d_model, n_blocks, context_length
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.register_buffer("positions", sinusoidal_table(context_length, d_model), persistent=False)
        self.blocks = nn.ModuleList([ReferenceBlock(d_model, n_heads, d_ff) for _ in range(n_blocks)])
        self.fc_out = nn.Linear(d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab)."""
        T = idx.shape[1]
        x = self.embedding(idx) + self.positions[:T]  # (B, T, C)
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)  # (T, T), -inf above
        for block in self.blocks:
            x = block(x, mask)
        return self.fc_out(x)

    def flops_per_token(self) -> int:
        """Training FLOPs per token, counted as decoder.model.GPT.flops_per_token counts ours:
        6 * (matmul parameters) + causal attention."""
        matmul_params = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("embedding"))
        attention = 6 * self.n_blocks * self.context_length * self.d_model
        return 6 * matmul_params + attention


def reference_optimizer(model: ReferenceModel) -> torch.optim.Adam:
    """The notebook's optimizer."""
    return torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)


def reference_step(model: ReferenceModel, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """One training step as the notebook wrote it (fp32, no clipping); returns the loss."""
    optimizer.zero_grad()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    optimizer.step()
    return loss.detach()
