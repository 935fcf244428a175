"""How `decoder serve` splits its batch among engine workers, and the options it refuses."""

from __future__ import annotations

import pytest

from decoder.serve.config import ServeConfig, batch_shares, engine_workers
from decoder.serve.engine import balanced_share


@pytest.mark.parametrize("max_batch,workers,shares", [(16, 2, [8, 8]), (5, 2, [3, 2]), (7, 3, [3, 2, 2]), (1, 1, [1])])
def test_batch_shares_split_the_slots_evenly(max_batch, workers, shares):
    assert batch_shares(max_batch, workers) == shares


@pytest.mark.parametrize("sequences,workers,share", [(1, 2, 1), (2, 2, 1), (3, 2, 2), (16, 2, 8), (0, 2, 0), (5, 1, 5)])
def test_a_worker_takes_an_even_share_rounded_up(sequences, workers, share):
    assert balanced_share(sequences, workers) == share


def test_workers_never_outnumber_the_batch_slots_and_the_process_engine_has_one():
    assert engine_workers(ServeConfig(max_batch=1, engine_workers=4)) == 1
    assert engine_workers(ServeConfig(max_batch=16, engine_workers=3)) == 3
    assert engine_workers(ServeConfig(engine="process")) == 1


@pytest.mark.parametrize("fields,message", [
    ({"engine_workers": 0}, "engine_workers=0: must be >= 1"),
    ({"engine": "process", "engine_workers": 2}, "the process engine has one worker"),
])
def test_bad_worker_counts_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**fields)
