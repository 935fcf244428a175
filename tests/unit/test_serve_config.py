"""How `decoder serve` splits its batch among engine workers, and the options it refuses."""

from __future__ import annotations

import pytest

from decoder.serve.config import ServeConfig, batch_shares, engine_workers, session_options
from decoder.serve.admission import MIN_ROWS_PER_WORKER, shares


@pytest.mark.parametrize("max_batch,workers,shares", [(16, 2, [8, 8]), (5, 2, [3, 2]), (7, 3, [3, 2, 2]), (1, 1, [1])])
def test_batch_shares_split_the_slots_evenly(max_batch, workers, shares):
    assert batch_shares(max_batch, workers) == shares


@pytest.mark.parametrize("running,waiting,capacity,expected", [
    ([0, 0], 1, [8, 8], [1, 0]),        # a lone request: one worker
    ([3, 0], 1, [8, 8], [4, 0]),        # 4 rows stay in one batch
    ([0, 3], 1, [8, 8], [0, 4]),        # ... the one that holds them
    ([4, 0], 4, [8, 8], [4, 4]),        # 8 rows: two batches of 4
    ([0, 0], 16, [8, 8], [8, 8]),
    ([5, 0], 11, [8, 8], [8, 8]),
    ([2, 0], 2, [2, 2], [2, 2]),        # 4 rows that one worker's slots cannot hold
    ([0, 0], 0, [8, 8], [0, 0]),
    ([6, 1], 0, [8, 8], [7, 1]),        # the second keeps what it holds; the first may take one more
    ([0, 0, 0], 9, [4, 4, 4], [3, 3, 3]),
])
def test_a_light_load_stays_in_one_batch_and_a_heavy_one_is_split_evenly(running, waiting, capacity, expected):
    assert MIN_ROWS_PER_WORKER == 4
    assert shares(running, waiting, capacity) == expected


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


@pytest.mark.parametrize("spinning,entry", [(False, "0"), (True, "1")])
def test_onnxruntime_threads_sleep_between_ops_unless_spinning_is_allowed(spinning, entry):
    options = session_options(2, spinning=spinning)
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
