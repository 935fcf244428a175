"""Training compute: the one formula for FLOPs per token, and a shape's parameter count N.

Convention (Chinchilla's: the output head counts, the embedding lookups do not)::

    N = n_blocks * (4 * d_model**2 + m * d_model * d_ff) + d_model * vocab_size
        # per block: attention c_attn (3 d^2) and c_proj (d^2), the MLP's m = 2 projections of
        # d * d_ff (m = 3 for swiglu, with its hidden width `ModelConfig.ff_width`);
        # plus the output head (d * V), tied to the token embedding or not. Biases, LayerNorms and
        # the token / position embeddings (lookups, no multiply) are left out.
    forward FLOPs per token  = 2 * N + 2 * n_blocks * T * d_model
        # 2 per multiply-add; attention's QK^T and AV are 2 * T * d_model each per token and layer,
        # halved by the causal mask (position t attends t + 1 keys: T / 2 on average)
    training FLOPs per token = 3 * forward (backward = 2 x forward) = 6 * N + 6 * n_blocks * T * d_model

with T the context length (every training window is full). A run's compute after D training
tokens is D times that (`run_flops`): `training.max_flops` stops a run there, and every
evaluation row logs it as `flops`. Torch-free: the scaling study sizes shapes and budgets with it.
"""

from __future__ import annotations

from decoder.config import ModelConfig


def matmul_params(model: ModelConfig, vocab_size: int) -> int:
    """N: the weights of the blocks' matrix multiplies plus the output head (see the module docstring)."""
    d, projections = model.d_model, 3 if model.mlp == "swiglu" else 2
    return model.n_blocks * (4 * d * d + projections * d * model.ff_width) + d * vocab_size


def attention_flops_per_token(model: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token of attention's QK^T and AV (causal, forward + backward)."""
    return 6 * model.n_blocks * (seq_len or model.context_length) * model.d_model


def flops_per_token(model: ModelConfig, vocab_size: int, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 * N + 6 * n_blocks * T * d_model."""
    return 6 * matmul_params(model, vocab_size) + attention_flops_per_token(model, seq_len)


def run_flops(model: ModelConfig, vocab_size: int, tokens: int) -> int:
    """Training FLOPs of a run after `tokens` training tokens (all processes together)."""
    return tokens * flops_per_token(model, vocab_size)
