"""The batch cache's one-copy operations against the plain numpy they replace: every real column
lands where the padding rule puts it, padding is zero, and an in-place overwrite touches only its rows."""

from __future__ import annotations

import numpy as np
import pytest

from decoder.kvcache import BatchCache


def random_cache(rng: np.random.Generator, lengths: list[int], width: int) -> BatchCache:
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, n in enumerate(lengths):
        mask[row, width - n:] = 1
    past = [rng.normal(size=(len(lengths), 2, width, 3)).astype(np.float32) * mask[:, None, :, None] for _ in range(2)]
    return BatchCache(past, mask)


def real_columns(cache: BatchCache) -> list[list[np.ndarray]]:
    """Each row's real columns of each array: what a model can see."""
    return [[a[row][:, cache.mask[row].astype(bool)] for a in cache.past] for row in range(cache.batch)]


def assert_same_rows(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for a, b in zip(g, e):
            np.testing.assert_array_equal(a, b)


def test_concat_and_select_keep_every_rows_real_columns_right_aligned():
    rng = np.random.default_rng(0)
    a, b = random_cache(rng, [3, 5], 6), random_cache(rng, [2], 2)
    joined = BatchCache.concat([a, b])
    assert joined.width == 6 and joined.lengths.tolist() == [3, 5, 2]
    assert_same_rows(real_columns(joined), real_columns(a) + real_columns(b))
    naive = [np.concatenate([x, np.pad(y, ((0, 0), (0, 0), (4, 0), (0, 0)))]) for x, y in zip(a.past, b.past)]
    for got, want in zip(joined.past, naive):
        np.testing.assert_array_equal(got, want)
    kept = joined.select([2, 0])
    assert kept.width == 3 and kept.lengths.tolist() == [2, 3], "trimmed to the longest row kept"
    assert_same_rows(real_columns(kept), [real_columns(joined)[2], real_columns(joined)[0]])
    assert all(arr.flags.c_contiguous for arr in kept.past)
    assert BatchCache.concat([b], 4).padded_to(4).width == 4
    with pytest.raises(ValueError, match="cannot pad"):
        BatchCache.concat([a], 3)


def test_overwrite_replaces_only_its_rows_and_zeroes_their_padding():
    rng = np.random.default_rng(1)
    cache, new = random_cache(rng, [6, 4, 5], 6), random_cache(rng, [2], 3)
    before = real_columns(cache)
    out = cache.overwrite([1], new)
    assert out.lengths.tolist() == [6, 2, 5] and out.width == 6
    assert_same_rows(real_columns(out), [before[0], real_columns(new)[0], before[2]])
    assert all((a[1][:, :3] == 0).all() for a in out.past)
    trimmed = out.select([1, 2]).trim()
    assert trimmed.width == 5
    assert out.trim(min_columns=1) is out, "no leading column is padding in every row"
    with pytest.raises(ValueError, match="cannot write"):
        new.overwrite([0], cache.select([0]))
