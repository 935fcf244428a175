"""The cached decoding loop of `decoder.runtime`: `decoder.sampling.decode_loop`'s steps, token
for token, with less Python work between the model calls. Imports numpy only (and torch-free
`decoder` modules).

What a step costs outside onnxruntime here: no concatenation of the ids or of the history (one
(B, prompt + max_new_tokens) buffer is written in place and read through views), no attention
mask or position arrays built per step (views of preallocated ones and of one position column),
no argument checks after the first step, and greedy rows take one argmax over the last logits row
(`next_tokens` runs only where a sampler or a logits adjustment needs it, with the same arguments
`decode_loop` gives it, so sampled ids are the same too).

The model call is `Run`: (ids (B, T), attention_mask (B, P + T), position_ids (B, T), past or
None) -> ((B, V) logits of the last column, presents). The cache stays the graph's own `present_*`
outputs: onnxruntime returns them as numpy arrays without a copy and takes them back as the next
`past_*` inputs without one (binding preallocated buffers or OrtValues through I/O binding measured
slower here, see docs/deployment.md).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from decoder.sampling import SamplingParams, next_tokens

Run = Callable[[np.ndarray, np.ndarray, np.ndarray, Any], tuple[np.ndarray, Any]]


class Inputs:
    """Attention masks and position ids of unpadded rows, as views of buffers made once per batch size."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length
        self._ones: dict[int, np.ndarray] = {}
        self._columns: dict[int, np.ndarray] = {}  # batch -> (context_length, batch): row p is all p
        self._positions = np.arange(context_length, dtype=np.int64)

    def mask(self, batch: int, width: int) -> np.ndarray:
        """(batch, width) int64 ones, C-contiguous (width <= context_length)."""
        ones = self._ones.get(batch)
        if ones is None:
            ones = self._ones[batch] = np.ones(batch * self.context_length, dtype=np.int64)
        return ones[: batch * width].reshape(batch, width)

    def positions(self, batch: int, start: int, T: int) -> np.ndarray:
        """(batch, T) int64 positions start..start+T-1 in every row."""
        if batch == 1:
            return self._positions[None, start : start + T]
        if T > 1:
            return np.tile(self._positions[start : start + T], (batch, 1))
        columns = self._columns.get(batch)
        if columns is None:
            columns = self._columns[batch] = np.repeat(self._positions[:, None], batch, axis=1)
        return columns[start].reshape(batch, 1)


def cached_loop(
    run: Run,
    inputs: Inputs,
    history: np.ndarray,
    *,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int | None,
    eot_id: int | None,
) -> Iterator[np.ndarray]:
    """Yield (B,) new token ids for (B, T) checked prompt ids `history`, exactly as
    `decode_loop(..., use_cache=True)` does: the prompt's last context_length tokens first, one
    token per step after, the window sliding to its last context_length // 2 tokens when full."""
    context_length = inputs.context_length
    B, prompt_length = history.shape
    tokens = np.empty((B, prompt_length + max_new_tokens), dtype=np.int64)
    tokens[:, :prompt_length] = history
    n = prompt_length  # tokens[:, :n] is the sequence so far
    plain = params.is_greedy and not params.adjusts_logits
    rngs = [np.random.default_rng(seed) for _ in range(B)]
    done = np.zeros(B, dtype=bool)

    def prefill(start: int) -> tuple[np.ndarray, Any, int]:
        T = n - start
        logits, past = run(tokens[:, start:n], inputs.mask(B, T), inputs.positions(B, 0, T), None)
        return logits, past, T

    logits, past, cached = prefill(max(0, n - context_length))
    for step in range(max_new_tokens):
        if plain:
            token = logits.argmax(axis=-1).astype(np.int64, copy=False)
        else:
            token = next_tokens(logits, params, rngs, tokens[:, :n], tokens[:, prompt_length:n])
        if eot_id is not None:
            token = np.where(done, eot_id, token)
            done |= token == eot_id
        yield token
        if done.all() or step == max_new_tokens - 1:
            return
        tokens[:, n] = token
        n += 1
        if cached + 1 > context_length:
            logits, past, cached = prefill(n - max(1, context_length // 2))
        else:
            logits, past = run(tokens[:, n - 1 : n], inputs.mask(B, cached + 1), inputs.positions(B, cached, 1), past)
            cached += 1
