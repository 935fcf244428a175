"""The GPT: a GPT-2-style decoder-only transformer in one readable file.

`GPT.forward(idx, past=None)` always returns `(logits, presents)`: logits for every position and
the key/value cache including the new positions, so the same signature serves training (which
ignores `presents`), incremental generation and the exported ONNX graph. The loss lives in the
trainer, not here.

Rows of different lengths in one batch (the serving case) use a left-padded cache: every row's
cache has the same number of columns P, a row shorter than the longest has padding columns on its
left, and `attention_mask` (B, P+T) marks each column of the cache and of the T new tokens as real
(1) or padding (0). `position_ids` (B, T) gives each new token its position in its own row (the
number of real tokens before it), so a row's positions never count padding. Why left padding:
every row's next token goes into the same column P, so one (B, 1) step serves the whole batch and
the new keys are a plain concatenation; a row joining a running batch only needs zero columns
prepended to its cache (or to the batch's), and columns that are padding in every row (after a
long row leaves) can be cut from the left. Padding columns are never attended to, so a padded row
computes what it would compute alone (up to float rounding). Without attention_mask and
position_ids (training, single-row generation) nothing changes: no mask without a cache lets SDPA
use its causal kernel.

Architecture options (`ModelConfig`): positions learned, sinusoidal or rotary ('rope': q and k
rotated by `position_ids` before they enter the cache, so cached and padded rows stay right);
LayerNorm or RMSNorm; a GELU, squared-ReLU or SwiGLU MLP; RMSNorm on each head's q and k
(qk_norm). Every combination keeps `forward`'s signature, so the exported graph's stays the same.

Dropout is `decoder.dropout`'s: on CPU it draws its mask four elements to one random number.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from decoder.config import ModelConfig
from decoder.dropout import Dropout, dropout, uses_cpu_dropout

# One (keys, values) pair per block, each (B, nh, P, hs).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]
NORM_EPS = 1e-5
"""Epsilon of every LayerNorm and RMSNorm (torch's LayerNorm default, which GPT-2 uses)."""


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        # Per-head RMSNorm of queries and keys (model.qk_norm): bounds the attention logits.
        self.q_norm = nn.RMSNorm(config.head_dim, eps=NORM_EPS) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_dim, eps=NORM_EPS) if config.qk_norm else None
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = Dropout(config.dropout)
        # SDPA kernel for the uncached (training) path; None lets SDPA choose (see GPT.set_attention_backend).
        self.backend: SDPBackend | None = None

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """mask: None for the plain causal case (no cache, no padding), else the boolean mask of
        `attention_mask_for` (True: the query may see the key). rotary: the (cos, sin) of the new
        positions (`rotary_angles`) with rope positions, else None."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = head_norm(self.q_norm, q), head_norm(self.k_norm, k)
        if rotary is not None:
            # The cache keeps keys already rotated by their own positions: only the new ones turn.
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([past[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if mask is None and dropout_p > 0 and uses_cpu_dropout(x):
            # SDPA's CPU kernels fall back to its math kernel under dropout anyway; written out, the
            # attention weights take the cheaper CPU dropout.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril_()
            att = dropout(F.softmax(att.masked_fill(~causal, float("-inf")), dim=-1), dropout_p, True)
            y = att.to(v.dtype) @ v
        elif mask is None:
            # No cache, no padding: the plain causal mask, which lets SDPA pick its fastest (flash) kernel.
            with sdpa_kernel(self.backend) if self.backend is not None else nullcontext():
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


def head_norm(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` with its scale cast to x's dtype: under bf16 autocast the queries and keys are
    bf16 and an fp32 scale would keep torch off its fused kernel (and warn on every call)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


class MLP(nn.Module):
    """c_proj(act(c_fc(x))) with GPT-2's tanh GELU or the squared ReLU (model.mlp 'gelu' / 'relu2');
    for 'swiglu' c_fc holds the gate and the value projections side by side (one matmul) and
    act(gate, value) = silu(gate) * value."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        fan_out = 2 * config.ff_width if config.mlp == "swiglu" else config.ff_width
        self.c_fc = nn.Linear(config.d_model, fan_out, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh") if config.mlp == "gelu" else None  # GPT-2's GELU
        self.c_proj = nn.Linear(config.ff_width, config.d_model, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


def make_norm(config: ModelConfig) -> nn.Module:
    """The normalisation of model.norm over the residual stream: LayerNorm (with a bias when
    model.bias) or RMSNorm (never a bias)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=NORM_EPS)
    return nn.LayerNorm(config.d_model, eps=NORM_EPS, bias=config.bias)


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln_1(x), past, mask, rotary)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


def attention_mask_for(P: int, T: int, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean attention mask for T new queries after P cached positions: (T, P+T) without padding,
    (B, 1, T, P+T) with an attention_mask (B, P+T).

    Query i sits in column P+i and may see columns 0..P+i (is_causal=True would align the mask to
    the top-left corner instead and hide the last T-1-i cached columns), minus padding columns. A
    padding query would then see no column at all: its softmax would be NaN, and a NaN value
    poisons every row that later weighs it by zero. So every query also sees its own column, which
    changes nothing for real queries and keeps padding rows finite (their outputs are never used)."""
    q_col = torch.arange(T, device=device)[:, None] + P
    k_col = torch.arange(P + T, device=device)[None, :]
    causal = k_col <= q_col  # (T, P+T)
    if attention_mask is None:
        return causal
    real = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, P+T)
    return (causal & real) | (k_col == q_col)


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of 'Attention is all you need' (the reference's choice)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def rotary_table(n_positions: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotary angles (RoFormer): (n_positions, head_dim / 2), position p and pair i turn by p * base^(-2i/hs)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return torch.arange(n_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, hs) with each pair (x[i], x[i + hs/2]) turned by its angle (the "rotate half"
    layout of GPT-NeoX and Llama); cos and sin (T, hs/2) or (B, 1, T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        if vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size}: must be >= 1")
        self.config = config
        self.vocab_size = vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, config.d_model),
                drop=Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_blocks)]),
                ln_f=make_norm(config),
            )
        )
        if config.positional == "learned":
            self.transformer["wpe"] = nn.Embedding(config.context_length, config.d_model)
        elif config.positional == "sinusoidal":
            self.register_buffer("wpe_table", sinusoidal_table(config.context_length, config.d_model), persistent=False)
        else:
            self.register_buffer("rope_angles", rotary_table(config.context_length, config.head_dim), persistent=False)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_blocks) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_blocks))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_attention_backend(self, backend: SDPBackend | None) -> None:
        """Pin the SDPA kernel of the uncached path (None: SDPA's own choice). On CPU its default,
        the flash kernel, is several times slower than the math kernel at short contexts; the
        trainer pins decoder.hardware.training_attention_backend's choice."""
        for block in self.transformer.h:
            block.attn.backend = backend

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (a tied head is not double counted); non_embedding drops wte/wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 * (matmul parameters) + attention (the formula: `decoder.flops`)."""
        from decoder.flops import flops_per_token

        return flops_per_token(self.config, self.vocab_size, seq_len)

    def forward(
        self,
        idx: torch.Tensor,
        past: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """idx (B, T) token ids -> logits (B, T, vocab) and the cache with the T new positions appended.

        attention_mask (B, P+T): 1 for a real token, 0 for padding, over the cached columns and the
        new ones (see the module docstring for the layout); position_ids (B, T): each new token's
        position (default P..P+T-1 for every row). Without both the model is the plain causal
        decoder that training uses."""
        x, presents = self.hidden(idx, past, attention_mask, position_ids)
        return self.lm_head(x), presents  # (B, T, vocab)

    def hidden(
        self,
        idx: torch.Tensor,
        past: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """`forward` without the output layer: the final (normalised) hidden states (B, T, C) and
        the cache. The training loss (decoder.loss) applies the output layer itself, in chunks."""
        B, T = idx.shape
        P = 0 if past is None else past[0][0].shape[2]
        if attention_mask is not None and attention_mask.shape != (B, P + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}: "
                             f"must be (batch, past + seq) = {(B, P + T)}")
        if position_ids is not None and position_ids.shape != (B, T):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}: must be (batch, seq) = {(B, T)}")
        pos = torch.arange(P, P + T, device=idx.device) if position_ids is None else position_ids  # (T,) or (B, T)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(pos)  # (T, C) or (B, T, C)
        elif self.config.positional == "sinusoidal":
            x = x + self.wpe_table[pos]
        else:
            angles = self.rope_angles[pos]  # (T, hs/2) or (B, T, hs/2)
            angles = angles if angles.dim() == 2 else angles[:, None]  # (B, 1, T, hs/2): one per head
            rotary = (angles.cos(), angles.sin())
        x = self.transformer.drop(x)
        mask = None if past is None and attention_mask is None else attention_mask_for(P, T, attention_mask, idx.device)
        presents: KVCache = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, None if past is None else past[i], mask, rotary)
            presents.append(present)
        return self.transformer.ln_f(x), presents
