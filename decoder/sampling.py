"""Next-token selection on numpy logits: greedy, temperature, top-k, top-p.

Shared by the PyTorch generator and the onnxruntime runtime, so that both pick the same token
from the same logits with the same seed. Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. temperature 0 (or greedy=True) means argmax."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature={self.temperature}: must be a number >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 keeps all tokens)")
        if not 0.0 < self.top_p <= 1.0:  # also rejects NaN
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """(B, V) logits -> (B, V) float64 probabilities after temperature, top-k and top-p."""
    z = np.asarray(logits, dtype=np.float64) / params.temperature
    V = z.shape[-1]
    if 0 < params.top_k < V:
        kth = np.partition(z, V - params.top_k, axis=-1)[:, V - params.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        # Keep a token if the mass strictly before it is below top_p (so the top token always stays).
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < params.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def next_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """Pick one token per row of (B, V) logits; returns int64 (B,).

    Sampling draws one uniform number per row and inverts the cumulative distribution, so the
    choice depends only on the logits and the generator's state.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, vocab), got shape {logits.shape}")
    if params.is_greedy:
        return logits.argmax(axis=-1).astype(np.int64)
    p = probabilities(logits, params)
    u = rng.random(p.shape[0])[:, None]
    cdf = np.cumsum(p, axis=-1)
    choice = (cdf < u * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(choice, p.shape[-1] - 1).astype(np.int64)


Forward = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]
"""An engine step: (B, T) int64 ids and the cache from the previous call (None at first) ->
((B, V) logits of the last position, the new cache)."""


def check_generation_args(prompt_ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    if prompt_ids.ndim == 1:
        prompt_ids = prompt_ids[None, :]
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] == 0:
        raise ValueError("prompt is empty: give at least one character of text")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    return prompt_ids


def decode_loop(
    forward: Forward,
    prompt_ids: np.ndarray,
    *,
    context_length: int,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int | None = 0,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> Iterator[np.ndarray]:
    """Yield (B,) new token ids, one step at a time, for equal-length prompts (B, T).

    With the cache: the prompt (its last context_length tokens) is run once, then one token per
    step. When the cache is full, the window slides: the last context_length // 2 tokens are run
    again as a fresh prompt (positions are absolute, so cached keys cannot simply be shifted), and
    decoding continues from there. Without the cache (the reference notebook's way) every step
    re-runs the last context_length tokens. Rows stop at <|endoftext|> (later tokens of a finished
    row are reported as eot_id); the loop ends when every row has stopped or after max_new_tokens.
    """
    ids = check_generation_args(prompt_ids, max_new_tokens)[:, -context_length:]
    rng = np.random.default_rng(seed)
    done = np.zeros(ids.shape[0], dtype=bool)
    logits, past = forward(ids, None)
    cached = ids.shape[1]
    for step in range(max_new_tokens):
        token = next_tokens(logits, params, rng)
        if eot_id is not None:
            token = np.where(done, eot_id, token)
            done |= token == eot_id
        yield token
        if done.all() or step == max_new_tokens - 1:
            return
        ids = np.concatenate([ids, token[:, None]], axis=1)
        if not use_cache:
            logits, past = forward(ids[:, -context_length:], None)
        elif cached + 1 > context_length:
            ids = ids[:, -max(1, context_length // 2):]
            logits, past = forward(ids, None)
            cached = ids.shape[1]
        else:
            logits, past = forward(token[:, None], past)
            cached += 1
