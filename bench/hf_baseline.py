"""Hugging Face transformers' GPT-2 of our shape: the tool a user would otherwise pick for generation.

`GPT2LMHeadModel.generate` with its own KV cache, greedy, fp32, random weights (speed does not
depend on them), no end-of-text stop so every call makes exactly the asked number of tokens.
transformers is an optional, benchmark-only dependency (`pip install -e ".[hf]"`).
"""

from __future__ import annotations

import torch

from decoder.config import ModelConfig


def gpt2_like(config: ModelConfig, vocab_size: int):
    """A GPT2LMHeadModel with our model's shape (blocks, heads, width, MLP width, context, vocab), in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=vocab_size, n_positions=config.context_length, n_embd=config.d_model, n_layer=config.n_blocks,
        n_head=config.n_heads, n_inner=config.ff_width, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=0, tie_word_embeddings=config.tie_embeddings,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(hf_config).eval()


def generate(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy generate with the KV cache: (B, T) prompt -> (B, T + new_tokens) ids."""
    with torch.inference_mode():
        return model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None,
        )
