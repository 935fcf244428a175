"""A request's sequences and the inbox of what they produce: `Job`, filled by the engine's delivery
in the event loop (`decoder.serve.engine`) and read by the response (`decoder.serve.answer`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import AsyncIterator

from decoder.serve.scheduler import Sequence


class Job:
    """One request's sequences (in choice order) and the inbox their (index, text, finish) arrive in.

    stream_interval: a waiting reader is woken by a choice's first piece, its last, and then every
    `stream_interval` pieces (tokens) of a choice, so a stream sends a choice's tokens that many at
    a time (`ServeConfig.stream_interval`)."""

    def __init__(self, sequences: list[Sequence], prompt_tokens: int, stream_interval: int = 1) -> None:
        self.sequences = sequences
        self.prompt_tokens = prompt_tokens
        self.stream_interval = stream_interval
        self.started = False
        self.open = len(sequences)
        self.arrived = min((s.arrived for s in sequences), default=time.perf_counter())
        self._inbox: deque[tuple[int, str, str | None]] = deque()
        self._waiter: asyncio.Future | None = None
        self._unread = [-1] * len(sequences)
        """Per choice, pieces put since the reader last took the inbox (-1: the choice has had none)."""

    def put(self, index: int, text: str, finish: str | None) -> None:
        """Deliver a piece of a choice (in the event loop), waking the reader if it waits and the
        piece is the choice's first, its last, or its stream_interval-th since the last wake."""
        self._inbox.append((index, text, finish))
        self._unread[index] += 1
        if self._waiter is not None and not self._waiter.done() and (
                finish is not None or self._unread[index] <= 0 or self._unread[index] >= self.stream_interval):
            self._waiter.set_result(None)

    def cancel(self) -> None:
        """Stop generating (idempotent): each sequence leaves the batch at the next step."""
        for seq in self.sequences:
            seq.cancelled = True

    @property
    def completion_tokens(self) -> int:
        return sum(s.generated for s in self.sequences)

    async def batches(self) -> AsyncIterator[list[tuple[int, str, str | None]]]:
        """Every (choice index, text, finish reason or None) delivered since the last batch, in
        order, until every sequence has finished: one wake-up per delivery, however many steps
        it carries (a busy event loop takes several at once)."""
        remaining = len(self.sequences)
        while remaining:
            if not self._inbox:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            batch = list(self._inbox)
            self._inbox.clear()
            self._unread = [min(n, 0) for n in self._unread]
            remaining -= sum(finish is not None for _, _, finish in batch)
            yield batch

    async def events(self) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice index, text, finish reason or None) until every sequence has finished."""
        async for batch in self.batches():
            for event in batch:
                yield event
