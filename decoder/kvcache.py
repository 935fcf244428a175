"""The key/value cache of a batch of rows of different lengths, as numpy arrays: the layout a
continuous-batching scheduler keeps between `Runtime.step` calls. Imports numpy only.

Layout (the bundle's, see `decoder.bundle` and `decoder.model`): every row has the same number of
cached columns, `width`; a row with fewer real tokens has padding columns on its LEFT, marked 0 in
`mask`. A row's next position is its count of real tokens, so padding never shifts positions.

The operations a scheduler needs, none of which runs the model:

- `left_padded(prompts)`: ids, attention mask and position ids of a prefill of prompts of
  different lengths (padding on the left, so every row's last column is a real token);
- `BatchCache.concat([a, b])`: rows of both (a new request joins a running batch), each
  left-padded with zero columns to the wider width, in one copy;
- `cache.select(rows)`: keep these rows, in this order (finished requests leave), trimmed, in one copy;
- `cache.overwrite(rows, other)`: write `other`'s rows into these rows in place (a row's window
  slides, or a new sequence takes a free slot): no other row is copied;
- `cache.grown(batch, width)`: free rows appended and padding columns prepended, in one copy (when
  a joining row finds no free slot, or is longer than the batch is wide);
- `cache.freed(rows)`: these rows' mask zeroed in place: a free slot (see below);
- `cache.trim(min_columns)`: cut the leading columns that are padding in every row (after the
  longest row leaves, its extra width would otherwise be carried and attended over for nothing);
- `cache.next_inputs(T)`: attention mask and position ids of T new tokens in every row;
- `cache.extended(presents, T)`: the cache after such a step.

Context limit: a row can take a step while its position (`lengths`) is below the model's
context_length; `Runtime.step` refuses a position at or past it. At the limit the scheduler either
finishes the row (OpenAI's finish_reason "length") or slides it as `decoder.sampling.decode_loop`
does, to its last context_length // 2 tokens: `decoder.serve.scheduler` prefills all but the last
of them and `overwrite`s the row's slot (the last is the row's next decode token). The width itself
has no limit of its own: after `trim` it is the longest row's length.

A free slot is a row whose sequence has left but whose cache stays until a new sequence is
written over it: its mask is all padding, so at a decode step it attends to nothing but the token
it is given, at position 0 (its logits are ignored), and it never holds the width that `trim` cuts.
`freed` must be called again before each step, since a step appends a real column to every row.

Every whole-batch copy costs about what the graph's own step costs in copying the cache, so each
operation makes at most one, and `overwrite` none.
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


def _leading_padding(mask: np.ndarray) -> int:
    """How many leading columns of a (B, width) mask are padding in every row."""
    real_columns = np.flatnonzero(mask.any(axis=0))
    return int(real_columns[0]) if real_columns.size else mask.shape[1]


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
        if width < self.width:
            raise ValueError(f"cannot pad a cache of width {self.width} to {width}")
        return self.grown(self.batch, width)

    def grown(self, batch: int, width: int) -> BatchCache:
        """These rows, then free rows (all padding) up to `batch`, each with zero (padding) columns
        prepended up to `width`, in one copy; this cache itself when neither grows."""
        if batch < self.batch or width < self.width:
            raise ValueError(f"cannot grow a cache of (batch, width) {(self.batch, self.width)} to {(batch, width)}")
        if (batch, width) == (self.batch, self.width):
            return self
        return BatchCache._stacked([self], batch, width)

    def freed(self, rows: Sequence[int]) -> BatchCache:
        """These rows (indices into this batch) as free slots: their mask zeroed in place (their keys
        and values stay, masked out, until `overwrite` replaces them). Returns the cache."""
        mask = self.mask if self.mask.flags.writeable else self.mask.copy()
        mask[np.asarray(rows, dtype=np.int64)] = 0
        return self if mask is self.mask else BatchCache(self.past, mask)

    def trim(self, min_columns: int = 1) -> BatchCache:
        """Without the leading columns that are padding in every row, if there are at least
        `min_columns` of them (a trim copies the batch: a column or two is not worth it)."""
        start = _leading_padding(self.mask)
        if start == 0 or start < min_columns:
            return self
        return BatchCache([np.ascontiguousarray(a[:, :, start:]) for a in self.past], self.mask[:, start:])

    def select(self, rows: Sequence[int]) -> BatchCache:
        """These rows (indices into this batch), in this order, trimmed: how rows leave a batch."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == self.batch and (rows == np.arange(self.batch)).all():
            return self.trim()
        mask = self.mask[rows]
        start = _leading_padding(mask)
        return BatchCache([a[rows, :, start:] for a in self.past], mask[:, start:])  # one gather each

    def overwrite(self, rows: Sequence[int], other: BatchCache) -> BatchCache:
        """These rows (indices into this batch) replaced, in place, by `other`'s rows in order
        (right-aligned, zero padding on their left; `other` no wider than this cache). Returns the
        cache, its arrays changed: the caller must own them (a step's presents are its own)."""
        if other.batch != len(rows) or other.width > self.width:
            raise ValueError(f"cannot write {other.batch} rows of width {other.width} into {len(rows)} rows "
                             f"of a cache of width {self.width}")
        past = [a if a.flags.writeable else a.copy() for a in self.past]
        mask = self.mask if self.mask.flags.writeable else self.mask.copy()
        start = self.width - other.width
        for a, new in zip(past, other.past):
            a[rows, :, :start] = 0
            a[rows, :, start:] = new
        mask[rows, :start] = 0
        mask[rows, start:] = other.mask
        return BatchCache(past, mask)

    @staticmethod
    def concat(caches: Sequence[BatchCache], width: int | None = None) -> BatchCache:
        """The rows of every cache in order, each left-padded to the widest (or to `width`), in
        one copy: how rows join a batch."""
        if not caches:
            raise ValueError("concat needs at least one cache")
        widest = max(c.width for c in caches)
        width = widest if width is None else width
        if width < widest:
            raise ValueError(f"cannot pad a cache of width {widest} to {width}")
        return BatchCache._stacked(caches, sum(c.batch for c in caches), width)

    @staticmethod
    def _stacked(caches: Sequence[BatchCache], batch: int, width: int) -> BatchCache:
        """The rows of every cache in order, right-aligned in `width` columns, then free rows up to `batch`."""
        past = [np.zeros((batch, a.shape[1], width, a.shape[3]), dtype=a.dtype) for a in caches[0].past]
        mask = np.zeros((batch, width), dtype=np.int64)
        row = 0
        for c in caches:
            rows, start = slice(row, row + c.batch), width - c.width
            for out, a in zip(past, c.past):
                out[rows, :, start:] = a
            mask[rows, start:] = c.mask
            row += c.batch
        return BatchCache(past, mask)
