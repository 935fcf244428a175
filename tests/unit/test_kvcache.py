"""The batch cache's one-copy operations against the plain numpy they replace: every real column
lands where the padding rule puts it, padding is zero, an in-place overwrite touches only its rows, and
a freed row (a free slot) sees nothing of its past."""

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


def test_grown_appends_free_rows_and_left_pads_in_one_copy():
    rng = np.random.default_rng(2)
    cache = random_cache(rng, [3, 1], 3)
    grown = cache.grown(4, 5)
    assert (grown.batch, grown.width) == (4, 5) and grown.lengths.tolist() == [3, 1, 0, 0]
    assert_same_rows(real_columns(grown)[:2], real_columns(cache))
    assert all((a[:, :, :2] == 0).all() and (a[2:] == 0).all() for a in grown.past)
    assert cache.grown(2, 3) is cache and cache.padded_to(3) is cache
    with pytest.raises(ValueError, match="cannot grow"):
        cache.grown(1, 5)


def test_freed_rows_see_only_the_next_token_and_the_others_keep_theirs():
    rng = np.random.default_rng(3)
    cache = random_cache(rng, [4, 2, 3], 4)
    before = real_columns(cache)
    out = cache.freed([1])
    assert out is cache, "in place"
    assert out.lengths.tolist() == [4, 0, 3]
    assert_same_rows([before[0], before[2]], [real_columns(out)[0], real_columns(out)[2]])
    mask, positions = out.next_inputs(1)
    assert mask[1].tolist() == [0, 0, 0, 0, 1] and positions[:, 0].tolist() == [4, 0, 3]
    assert cache.freed([0]).trim().width == 3, "free rows hold no width: the last row's 3 columns are left"
    readonly = random_cache(rng, [2], 2)
    readonly.mask.flags.writeable = False
    assert readonly.freed([0]).lengths.tolist() == [0] and readonly.mask.tolist() == [[1, 1]]
