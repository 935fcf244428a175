"""What an engine worker admits and how it steps, shared by the thread engine
(`decoder.serve.engine`) and the engine process (`decoder.serve.engine_child`): `take` the first
waiting sequences (dropping cancelled ones), `shares` of the sequences in flight and waiting among
several workers, and `run_step` (one scheduler step that, if it raises, ends every sequence in
flight with finish reason "error")."""

from __future__ import annotations

import logging
from collections import deque

from decoder.serve.scheduler import Event, Scheduler, Sequence

log = logging.getLogger("decoder.serve")


def take(waiting: deque[Sequence], free: int) -> tuple[list[Sequence], list[Event]]:
    """(the first `free` waiting sequences, first come first served; the cancelled waiting ones,
    ended now), both taken out of `waiting`."""
    dropped: list[Event] = [(seq, "", "cancelled") for seq in waiting if seq.cancelled]
    if dropped:
        kept = [seq for seq in waiting if not seq.cancelled]
        waiting.clear()
        waiting.extend(kept)
    return [waiting.popleft() for _ in range(min(free, len(waiting)))], dropped


MIN_ROWS_PER_WORKER = 4
"""A second worker starts decoding only once each would hold this many rows: a small model's step
costs nearly as much at 2 rows as at 4, so two batches of 2 cost about twice the CPU of one of 4
(seen at 4 streaming clients on the larger benchmark shape when every load was split evenly), while
16 rows decode faster as two batches of 8 than as one of 16."""


def shares(running: list[int], waiting: int, capacity: list[int]) -> list[int]:
    """How many sequences each worker should hold, given the rows each holds (`running`), the
    sequences waiting and each worker's slots: the fewest workers that give each at least
    MIN_ROWS_PER_WORKER rows and hold them all (those holding the most rows first, then the
    first ones), the sequences split evenly among them, rounded up; the other workers keep what they
    hold. A worker admits up to its share."""
    total = sum(running) + waiting
    active = max(1, min(len(running), total // MIN_ROWS_PER_WORKER))
    order = sorted(range(len(running)), key=lambda k: (-running[k], k))
    while active < len(running) and sum(capacity[k] for k in order[:active]) < total:
        active += 1
    even = -(-total // active)
    chosen = set(order[:active])
    return [max(even, running[k]) if k in chosen else running[k] for k in range(len(running))]


def run_step(scheduler: Scheduler, admitted: list[Sequence]) -> list[Event]:
    """One scheduler step; if it raises, the error is logged and every sequence in flight ends
    with finish reason "error" (the scheduler carries on with an empty batch)."""
    try:
        return scheduler.step(admitted)
    except Exception:
        log.exception("engine step failed; ending every sequence in flight with finish_reason 'error'")
        failed = list(dict.fromkeys([*scheduler.rows, *scheduler.sliding, *admitted]))
        scheduler.clear()
        return [(seq, "", "error") for seq in failed]
