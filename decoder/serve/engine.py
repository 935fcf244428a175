"""The engine: a FIFO queue of requests in front of the `Scheduler`, driven by one asyncio task.

The task admits waiting sequences into free batch slots, runs `Scheduler.step` in a single worker
thread (onnxruntime releases the GIL, so the event loop keeps serving HTTP meanwhile) and hands
each step's text to the requests' queues. Only the task touches the scheduler; request handlers
only submit jobs and cancel them (a flag the next step reads), so nothing needs a lock.

A job is one HTTP request: one sequence per prompt and choice. It waits (counted in
`decoder_requests_waiting`) until its first sequence is admitted, then runs until its last one
ends. Beyond the jobs the free slots will take at the next step, the queue holds at most
`max_queue` waiting jobs; past that `submit` answers 429 with a Retry-After header. `drain(grace)` (on SIGTERM) refuses new jobs with 503 and, `grace` seconds
later, cancels whatever still runs, so every response ends cleanly (finish reason "cancelled").
A step that raises (a bug, or onnxruntime failing) is logged, every sequence
in flight ends with finish reason "error", and the engine carries on with an empty batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from decoder.serve.metrics import ServerMetrics
from decoder.serve.protocol import APIError
from decoder.serve.scheduler import Event, Scheduler, Sequence

log = logging.getLogger("decoder.serve")
RETRY_AFTER_S = 1


class Job:
    """One request's sequences (in choice order) and the queue their (index, text, finish) arrive on."""

    def __init__(self, sequences: list[Sequence], prompt_tokens: int) -> None:
        self.sequences = sequences
        self.prompt_tokens = prompt_tokens
        self.started = False
        self.open = len(sequences)
        self.queue: asyncio.Queue[tuple[int, str, str | None]] = asyncio.Queue()

    def cancel(self) -> None:
        """Stop generating (idempotent): each sequence leaves the batch at the next step."""
        for seq in self.sequences:
            seq.cancelled = True

    @property
    def completion_tokens(self) -> int:
        return sum(s.generated for s in self.sequences)

    async def events(self) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice index, text, finish reason or None) until every sequence has finished."""
        remaining = len(self.sequences)
        while remaining:
            index, text, finish = await self.queue.get()
            remaining -= finish is not None
            yield index, text, finish


class Engine:
    """Owns the scheduler and its worker thread; see the module docstring."""

    def __init__(self, scheduler: Scheduler, metrics: ServerMetrics, *, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}: must be >= 0")
        self.scheduler = scheduler
        self.metrics = metrics
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.jobs_waiting = 0
        self.jobs_running = 0
        self._jobs: dict[Sequence, tuple[Job, int]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_deadline: float | None = None
        self._executor: ThreadPoolExecutor | None = None
        scheduler.observe = lambda seq, now: metrics.observe_token(seq.arrived, seq.last_token_at, now)

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._task.done() and self._drain_deadline is None

    def drain(self, grace: float) -> None:
        """Refuse new jobs from now on; cancel those still running `grace` seconds from now.
        Safe to call from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain, grace)

    def _begin_drain(self, grace: float) -> None:
        if self._drain_deadline is None:
            self._drain_deadline = self._loop.time() + grace
            self.wake()

    def _cancel_all_after_deadline(self) -> None:
        if self._drain_deadline is not None and self._loop.time() >= self._drain_deadline:
            for seq in [*self.scheduler.rows, *self.scheduler.sliding, *self.waiting]:
                seq.cancelled = True

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()  # of the running loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder-engine")
        self._task = self._loop.create_task(self._run(), name="decoder-engine")

    async def stop(self) -> None:
        """Cancel everything in flight and stop the task and its thread."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        self._executor.shutdown(wait=True)  # a step still running in the thread ends first
        leftovers = [*self.scheduler.rows, *self.scheduler.sliding, *self.waiting]
        self._dispatch([(seq, "", "cancelled") for seq in leftovers])
        self.waiting.clear()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise APIError 503 (not running) / 429 (queue full)."""
        if not self.accepting:
            raise APIError(503, "The server is shutting down", type="server_error", code="unavailable",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        startable = max(0, self.scheduler.free_slots - len(self.waiting))  # would start at the next step
        if self.jobs_waiting >= self.max_queue + startable:
            raise APIError(429, f"The server is busy ({self.jobs_waiting} requests queued); retry shortly",
                           type="server_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        for index, seq in enumerate(job.sequences):
            self._jobs[seq] = (job, index)
            self.waiting.append(seq)
        self.jobs_waiting += 1
        self._update_gauges()
        self.wake()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.scheduler.busy and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._cancel_all_after_deadline()
            admitted = self._admit()
            try:
                events = await loop.run_in_executor(self._executor, self.scheduler.step, admitted)
            except Exception:
                log.exception("engine step failed; ending every sequence in flight with finish_reason 'error'")
                in_flight = dict.fromkeys([*self.scheduler.rows, *self.scheduler.sliding, *admitted])
                events = self._fail(list(in_flight))
            sampled = sum(finish != "cancelled" for _, _, finish in events)
            if sampled:
                self.metrics.batch_size.observe(sampled)
            self._dispatch(events)

    def _admit(self) -> list[Sequence]:
        """Sequences for the free slots, first come first served; cancelled waiting ones leave now."""
        cancelled: list[Event] = [(seq, "", "cancelled") for seq in self.waiting if seq.cancelled]
        if cancelled:
            self.waiting = deque(seq for seq in self.waiting if not seq.cancelled)
        admitted: list[Sequence] = []
        while self.waiting and len(admitted) < self.scheduler.free_slots:
            seq = self.waiting.popleft()
            job, _ = self._jobs[seq]
            if not job.started:
                job.started = True
                self.jobs_waiting -= 1
                self.jobs_running += 1
            self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
            admitted.append(seq)
        self._dispatch(cancelled)
        return admitted

    def _fail(self, sequences: list[Sequence]) -> list[Event]:
        self.scheduler.rows, self.scheduler.sliding, self.scheduler.cache = [], [], None
        return [(seq, "", "error") for seq in sequences]

    def _dispatch(self, events: list[Event]) -> None:
        for seq, text, finish in events:
            job, index = self._jobs[seq]
            if finish is not None:
                self._finish(seq, job, finish)
            job.queue.put_nowait((index, text, finish))
        if events:
            self._update_gauges()

    def _finish(self, seq: Sequence, job: Job, reason: str) -> None:
        del self._jobs[seq]
        self.metrics.finished.labels(reason).inc()
        job.open -= 1
        if job.open:
            return
        if job.started:
            self.jobs_running -= 1
        else:
            self.jobs_waiting -= 1

    def _update_gauges(self) -> None:
        self.metrics.running.set(self.jobs_running)
        self.metrics.waiting.set(self.jobs_waiting)
