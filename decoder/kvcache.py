"""The key/value cache of a batch of rows of different lengths, as numpy arrays: the layout a
continuous-batching scheduler keeps between `Runtime.step` calls. Imports numpy only.

Layout (the bundle's, see `decoder.bundle` and `decoder.model`): every row has the same number of
cached columns, `width`; a row with fewer real tokens has padding columns on its LEFT, marked 0 in
`mask`. A row's next position is its count of real tokens, so padding never shifts positions.

The operations a scheduler needs, none of which runs the model:

- `left_padded(prompts)`: ids, attention mask and position ids of a prefill of prompts of
  different lengths (padding on the left, so every row's last column is a real token);
- `BatchCache.concat([a, b])`: rows of both (a new request joins a running batch): each is first
  left-padded with zero columns to the wider width;
- `cache.select(rows)`: keep these rows, in this order (finished requests leave), then `trim()`;
- `cache.trim()`: cut the leading columns that are padding in every row (after the longest row
  leaves, its extra width would otherwise be carried and attended over for nothing);
- `cache.next_inputs(T)`: attention mask and position ids of T new tokens in every row;
- `cache.extended(presents, T)`: the cache after such a step.

Context limit: a row can take a step while its position (`lengths`) is below the model's
context_length; `Runtime.step` refuses a position at or past it. At the limit the scheduler either
finishes the row (OpenAI's finish_reason "length") or slides it as `decoder.sampling.decode_loop`
does: prefill the row's last context_length // 2 tokens alone and swap it in with `select` +
`concat`. The width itself has no limit of its own: after `trim` it is the longest row's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Cache = list[np.ndarray]
"""Keys and values of every block in graph-input order, each (B, n_heads, P, head_dim) float32."""


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, position_ids), each (B, longest prompt), for a prefill of
    `prompts` (lists of token ids, none empty) padded on the left with `pad_id`."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask, positions_of(mask)


def positions_of(mask: np.ndarray) -> np.ndarray:
    """Position of each column of a (B, S) mask: the count of real columns before it (0 for padding)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


@dataclass(frozen=True)
class BatchCache:
    """A left-padded batch cache: `past` (each (B, n_heads, width, head_dim)) and `mask` (B, width)."""

    past: Cache
    mask: np.ndarray

    def __post_init__(self) -> None:
        B, width = self.mask.shape
        if any(a.shape[0] != B or a.shape[2] != width for a in self.past):
            shapes = sorted({a.shape for a in self.past})
            raise ValueError(f"cache arrays {shapes} do not match the mask's (batch, width) = {(B, width)}")

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        """Cached columns of every row, padding included."""
        return self.mask.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        """(B,) real tokens of each row: the position its next token takes."""
        return self.mask.sum(axis=1)

    def next_inputs(self, T: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(attention_mask (B, width + T), position_ids (B, T)) for T new real tokens in every row."""
        mask = np.concatenate([self.mask, np.ones((self.batch, T), dtype=np.int64)], axis=1)
        return mask, self.lengths[:, None] + np.arange(T, dtype=np.int64)[None, :]

    def extended(self, presents: Cache, T: int = 1) -> BatchCache:
        """The cache after a step of T real tokens per row whose outputs were `presents`."""
        return BatchCache(list(presents), self.next_inputs(T)[0])

    def padded_to(self, width: int) -> BatchCache:
        """The same rows with zero (padding) columns prepended up to `width`."""
        extra = width - self.width
        if extra < 0:
            raise ValueError(f"cannot pad a cache of width {self.width} to {width}")
        if extra == 0:
            return self
        past = [np.pad(a, ((0, 0), (0, 0), (extra, 0), (0, 0))) for a in self.past]
        return BatchCache(past, np.pad(self.mask, ((0, 0), (extra, 0))))

    def trim(self) -> BatchCache:
        """Without the leading columns that are padding in every row."""
        real_columns = np.flatnonzero(self.mask.any(axis=0))
        start = int(real_columns[0]) if real_columns.size else self.width
        if start == 0:
            return self
        return BatchCache([np.ascontiguousarray(a[:, :, start:]) for a in self.past], self.mask[:, start:])

    def select(self, rows: Sequence[int]) -> BatchCache:
        """These rows (indices into this batch), in this order, trimmed: how rows leave a batch."""
        rows = np.asarray(rows, dtype=np.int64)
        return BatchCache([a[rows] for a in self.past], self.mask[rows]).trim()

    @staticmethod
    def concat(caches: Sequence[BatchCache]) -> BatchCache:
        """The rows of every cache in order, each left-padded to the widest: how rows join a batch."""
        if not caches:
            raise ValueError("concat needs at least one cache")
        width = max(c.width for c in caches)
        padded = [c.padded_to(width) for c in caches]
        past = [np.concatenate(arrays, axis=0) for arrays in zip(*(c.past for c in padded))]
        return BatchCache(past, np.concatenate([c.mask for c in padded], axis=0))
