"""The engine: a FIFO queue of requests in front of one `Scheduler` per worker thread.

Each worker thread runs its scheduler's `step` back to back while there is work, admitting waiting
sequences into its free batch slots, and appends each step's text to an outbox that the event loop
empties into the requests' inboxes. With several workers (`ServeConfig.engine_workers`) each has
its own batch (the server's `max_batch` split among them) over the one shared model, whose
onnxruntime session runs concurrent calls, each on its caller's thread: the workers decode side by
side on their own cores. A worker admits only its share of the sequences in flight and waiting
(`admission.shares`): a light load stays in one batch, a heavier one is split evenly among as many
workers as give each at least `decoder.serve.admission.MIN_ROWS_PER_WORKER` rows. A sequence stays
with the worker that admitted it until it ends.

A worker does not wake the loop itself: it drops a token in a C queue (`queue.SimpleQueue`, no
Python-level lock to fight over) and one more thread, the waker, wakes the loop
(`call_soon_threadsafe`, a write to its self-pipe) unless a delivery is pending already, so a busy
loop takes several steps in one delivery. With a stream interval N > 1 a worker raises that alarm
every N of its steps, and at once for a step in which a sequence joined, sampled its first token or
ended (`_post`): the streams would not send the tokens in between any sooner. The write is a
system call that releases the GIL: made from a worker, the loop would wake there and run its burst
of sends before the worker got the GIL back to start its next step (measured: a quarter of the wall
time between steps at one client);
made from the waker, the burst overlaps onnxruntime's next call, which releases the GIL. A worker
never waits for the event loop: while onnxruntime runs a step the loop streams the previous step's
tokens, and a slow loop delays delivery, not decoding. Only its worker touches a scheduler; the
loop touches the jobs, gauges and counters; the queue of waiting sequences is shared under a lock,
and a request is cancelled by a flag the next step reads.

A job is one HTTP request: one sequence per prompt and choice. It waits (counted in
`decoder_requests_waiting`) until its first sequence is admitted, then runs until its last one
ends (its time in the queue and its end-to-end latency go to `decoder_request_queue_time_seconds`
and `decoder_request_latency_seconds`). Beyond the sequences the free slots will take at the next
step, the queue holds at most `max_queue` waiting sequences (requests, when each has one prompt
and n = 1); past that `submit` answers 429 with a Retry-After header. A job with more sequences than slots and places together
(`capacity`) could never be admitted: the completions route refuses it with 400 first.
`drain(grace)` (on SIGTERM) refuses new jobs with 503 and, `grace` seconds later, cancels
whatever still runs, so every response ends cleanly (finish reason "cancelled"). A step that
raises (a bug, or onnxruntime failing) is logged, every sequence in flight ends with finish reason
"error", and the engine carries on with an empty batch. The event loop's side (`EngineBase`) and
what a worker admits and how it steps (`decoder.serve.admission`) are shared with the engine in a
process of its own (`decoder.serve.engine_process`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque

from decoder.serve.admission import run_step, shares, take
from decoder.serve.job import Job
from decoder.serve.metrics import ServerMetrics
from decoder.serve.protocol import APIError
from decoder.serve.scheduler import Event, Scheduler, Sequence

RETRY_AFTER_S = 1


def unavailable() -> APIError:
    return APIError(503, "The server is shutting down", type="server_error", code="unavailable",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def queue_full(queued: int) -> APIError:
    return APIError(429, f"The server is busy ({queued} sequences queued); retry shortly", type="server_error",
                    code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})


class EngineBase:
    """What the engines share, on the event loop's side: each in-flight sequence's job, the request
    gauges, and the metrics of admissions and ends (`_dispatch`)."""

    def __init__(self, metrics: ServerMetrics, *, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}: must be >= 0")
        self.metrics = metrics
        self.max_queue = max_queue
        self.jobs_waiting = 0
        self.jobs_running = 0
        self._jobs: dict[Sequence, tuple[Job, int]] = {}

    def _dispatch(self, admitted: list[Sequence], events: list[Event], taken_at: float) -> None:
        for seq in admitted:
            job, _ = self._jobs[seq]
            self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
            if not job.started:
                job.started = True
                self.metrics.queue_time.observe(taken_at - job.arrived)
                self.jobs_waiting -= 1
                self.jobs_running += 1
        for seq, text, finish in events:
            job, index = self._jobs[seq]
            if finish is not None:
                self._finish(seq, job, finish)
            job.put(index, text, finish)

    def _finish(self, seq: Sequence, job: Job, reason: str) -> None:
        del self._jobs[seq]
        self.metrics.finished.labels(reason).inc()
        job.open -= 1
        if job.open:
            return
        self.metrics.request_latency.observe(time.perf_counter() - job.arrived)
        if job.started:
            self.jobs_running -= 1
        else:
            self.jobs_waiting -= 1

    def _update_gauges(self) -> None:
        self.metrics.running.set(self.jobs_running)
        self.metrics.waiting.set(self.jobs_waiting)


class Engine(EngineBase):
    """Owns the schedulers and their worker threads; see the module docstring."""

    def __init__(self, schedulers: Scheduler | list[Scheduler], metrics: ServerMetrics, *, max_queue: int,
                 stream_interval: int = 1) -> None:
        super().__init__(metrics, max_queue=max_queue)
        self.schedulers = [schedulers] if isinstance(schedulers, Scheduler) else list(schedulers)
        if not self.schedulers:
            raise ValueError("an engine needs at least one scheduler")
        self.stream_interval = stream_interval
        self._unposted = [0] * len(self.schedulers)  # each worker's steps in the outbox since it last alerted the waker
        self._waiting: deque[Sequence] = deque()
        self._lock = threading.Lock()  # guards _waiting, and admissions into the schedulers
        self._wakes = [threading.Event() for _ in self.schedulers]
        self._held = [0] * len(self.schedulers)  # guarded by _lock: the sequences each worker holds or took
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._drain_deadline: float | None = None
        self._outbox: deque[tuple[list[Sequence], list[Event], float]] = deque()  # threads -> loop
        self._posted = False  # a delivery is scheduled on the loop and has not begun emptying the outbox
        self._filled: queue.SimpleQueue[None] = queue.SimpleQueue()  # one item per step posted: the waker's alarm
        self._waker: threading.Thread | None = None
        for scheduler in self.schedulers:
            scheduler.observe = lambda seq, now: metrics.observe_token(seq.arrived, seq.last_token_at, now)

    @property
    def scheduler(self) -> Scheduler:
        """The first worker's scheduler (the only one with one worker)."""
        return self.schedulers[0]

    @property
    def max_batch(self) -> int:
        return sum(s.max_batch for s in self.schedulers)

    @property
    def capacity(self) -> int:
        """The most sequences one job may have: the batch's slots plus the queue's places (more
        could never be admitted, however long the job waited)."""
        return self.max_batch + self.max_queue

    @property
    def accepting(self) -> bool:
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads) and not self._stopping
        return alive and self._drain_deadline is None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping, self._drain_deadline = False, None
        self._threads = [threading.Thread(target=self._work, args=(k,), name=f"decoder-engine-{k}", daemon=True)
                         for k in range(len(self.schedulers))]
        for thread in self._threads:
            thread.start()
        self._waker = threading.Thread(target=self._wake_loop, name="decoder-engine-waker", daemon=True)
        self._waker.start()

    async def stop(self) -> None:
        """Stop the threads (each after its current step), then cancel everything still in flight."""
        if not self._threads:
            return
        self._stopping = True
        self._wake_all()
        for thread in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._filled.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._waker.join)
        self._threads, self._waker = [], None
        self._deliver()
        with self._lock:
            leftovers = [*self._in_flight(), *self._waiting]
            self._waiting.clear()
        self._dispatch([], [(seq, "", "cancelled") for seq in leftovers], time.perf_counter())
        self._update_gauges()

    def drain(self, grace: float) -> None:
        """Refuse new jobs from now on; cancel those still running `grace` seconds from now.
        Safe to call from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain, grace)

    def _begin_drain(self, grace: float) -> None:
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + grace
            self._wake_all()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise APIError 503 (not running) / 429 (queue full)."""
        if not self.accepting:
            raise unavailable()
        with self._lock:
            free = sum(s.free_slots for s in self.schedulers)
            queued = len(self._waiting) + len(job.sequences) - free
            if queued > self.max_queue:
                raise queue_full(len(self._waiting))
            for index, seq in enumerate(job.sequences):
                self._jobs[seq] = (job, index)
                self._waiting.append(seq)
        self.jobs_waiting += 1
        self._update_gauges()
        self._wake_all()

    def wake(self) -> None:
        """Have the threads look at the queue now (after a cancellation)."""
        self._wake_all()

    def _wake_all(self) -> None:
        for event in self._wakes:
            event.set()

    def _in_flight(self) -> list[Sequence]:
        return [seq for s in self.schedulers for seq in (*s.rows, *s.sliding)]

    # --- the worker threads -----------------------------------------------------------------

    def _work(self, k: int) -> None:
        scheduler, wake = self.schedulers[k], self._wakes[k]
        while not self._stopping:
            wake.clear()
            with self._lock:
                idle = not scheduler.busy and not self._waiting
                if idle:
                    self._held[k] = 0
            if idle:
                wake.wait()
                continue
            self._cancel_all_after_deadline()
            admitted, dropped = self._take(k)
            if not admitted and not dropped and not scheduler.busy:
                wake.wait()  # what waits is another worker's to take: sleep until the next submit
                continue
            taken_at = time.perf_counter()
            events = run_step(scheduler, admitted)
            sampled = sum(finish != "cancelled" for _, _, finish in events)
            if sampled:
                self.metrics.batch_size.observe(sampled)
            self._post(k, admitted, dropped + events, taken_at)

    def _post(self, k: int, admitted: list[Sequence], events: list[Event], taken_at: float) -> None:
        """Hand a step to the loop (through the waker: see the module docstring): at once when a
        sequence joined, sampled its first token or ended, else every stream_interval steps of the
        worker (the streams would not send the tokens in between sooner)."""
        self._outbox.append((admitted, events, taken_at))
        self._unposted[k] += 1
        if self._unposted[k] >= self.stream_interval or admitted or any(
                finish is not None or seq.generated == 1 for seq, _, finish in events):
            self._unposted[k] = 0
            self._filled.put(None)  # a C queue: no Python-level lock for the threads to fight over

    def _wake_loop(self) -> None:
        """The waker thread: schedule a delivery for steps in the outbox unless one is pending. The
        loop clears `_posted` before it empties the outbox, so a step it might miss finds the flag
        clear here and gets a delivery of its own."""
        while not self._stopping:
            self._filled.get()
            if self._outbox and not self._posted:
                self._posted = True
                self._loop.call_soon_threadsafe(self._deliver)

    def _take(self, k: int) -> tuple[list[Sequence], list[Event]]:
        """The waiting sequences worker k admits now, first come first served: up to its share of
        all the sequences in flight and waiting (`shares`), counting what each worker holds or has
        just taken. If some are left waiting, the other workers are woken to take theirs."""
        scheduler = self.schedulers[k]
        with self._lock:
            if len(self.schedulers) == 1:
                return take(self._waiting, scheduler.free_slots)
            self._held[k] = len(scheduler.rows) + len(scheduler.sliding)
            share = shares(self._held, len(self._waiting), [s.max_batch for s in self.schedulers])[k]
            admitted, dropped = take(self._waiting, min(scheduler.free_slots, share - self._held[k]))
            self._held[k] += len(admitted)
            if self._waiting:
                for j, other in enumerate(self._wakes):
                    if j != k:
                        other.set()
            return admitted, dropped

    def _cancel_all_after_deadline(self) -> None:
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            with self._lock:
                for seq in [*self._in_flight(), *self._waiting]:
                    seq.cancelled = True

    # --- the event loop ---------------------------------------------------------------------

    def _deliver(self) -> None:
        """Every step in the outbox, in order, to the jobs' queues."""
        self._posted = False
        while self._outbox:
            self._dispatch(*self._outbox.popleft())
        self._update_gauges()
