"""The engine in a process of its own (`decoder serve --engine process`): the scheduler's steps,
sampling and detokenizing run in a child process, so they and the HTTP event loop no longer take
turns holding one GIL (vLLM moved its engine out of the HTTP process for the same reason).

`ProcessEngine` answers the server as `decoder.serve.engine.Engine` does (submit, capacity,
accepting, start, stop, drain, wake, the job gauges and the metrics), and keeps each request's
`Sequence` objects in the server, mirrored from the child: generated counts, token ids, logprobs
entries and, for a sequence that ended at the end of text with logprobs, the logits it was sampled
from (what the responses read after the fact). The child (multiprocessing's "spawn", daemonic)
loads its own copy of the model with `load` (for `decoder serve`: the same bundle, model file and
onnxruntime options as the server's, `decoder.serve.config.load_runtime`), holds the queue of
waiting sequences and runs `Scheduler.step` back to back while there is work. One duplex pipe
joins them, one message per step each way at most:

- server -> child: ("add", [(id, the sequence's fields)]) at submit, the tokenizer pickled by
  reference (the child uses its own); ("cancel", [id, ...]) for sequences whose `cancelled` flag
  the server found set (at `wake`, after each delivery, and at the drain deadline); ("stop",);
- child -> server: "ready" once the model is loaded (`start` waits for it), then per step
  (admitted ids, events, the time the step took its sequences), each event (id, text, finish
  reason, generated count, new token ids, new logprobs entries, final logits or None, the time
  its token was sampled), from which the server updates the metrics as the thread engine does.

The server reads the pipe in its event loop (`loop.add_reader` on the pipe's descriptor: no
thread), every message waiting at once. The queue limit (429) counts the sequences sent and not
yet admitted, as the server last heard. If the child dies, every sequence in flight ends with
finish reason "error" and the engine stops accepting (503); `stop` asks the child to stop after
its step, kills it if it does not within STOP_S, and joins it. The child ignores SIGINT and
SIGTERM (its life follows the server's: it exits on "stop" or when the pipe closes). The server
keeps its own runtime (the tokenizer, prompt scoring for echo), so the model is loaded twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from typing import Callable

from decoder.serve.engine import EngineBase, queue_full, unavailable
from decoder.serve.job import Job
from decoder.serve.engine_child import SPEC_FIELDS, dumps, run_child
from decoder.serve.metrics import ServerMetrics
from decoder.serve.scheduler import Event, Model, Sequence

log = logging.getLogger("decoder.serve")
STARTUP_S = 300.0
"""How long `start` waits for the child to load the model."""
STOP_S = 10.0
"""How long `stop` waits for the child to end its step and exit before it is killed."""


class ProcessEngine(EngineBase):
    """The server's side of an engine in a child process; see the module docstring."""

    def __init__(self, load: Callable[[], Model], metrics: ServerMetrics, *, max_batch: int, max_queue: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        super().__init__(metrics, max_queue=max_queue)
        self.max_batch = max_batch
        self.process: multiprocessing.process.BaseProcess | None = None
        """The child while the engine runs (None before start and after stop)."""
        self._load = load
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count()
        self._live: dict[int, Sequence] = {}
        """Every sequence sent to the child and not ended, by id."""
        self._admitted: set[int] = set()
        self._cancel_sent: set[int] = set()
        self._exited: asyncio.Future | None = None
        self._stopping = self._failed = False
        self._drain_timer: asyncio.TimerHandle | None = None

    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue

    @property
    def accepting(self) -> bool:
        alive = self.process is not None and self.process.is_alive() and not self._failed
        return alive and not self._stopping and self._drain_timer is None

    def start(self) -> None:
        """Start the child and wait (blocking: the server is not serving yet) until its model is loaded."""
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self.process = context.Process(target=run_child, args=(self._load, self.max_batch, child_end),
                                       name="decoder-engine", daemon=True)
        self.process.start()
        child_end.close()  # so the child's exit reads as end of file here
        self._stopping = self._failed = False
        self._drain_timer = None
        try:
            self._await_ready()
        except BaseException:
            self._kill()
            self._conn.close()
            self.process = self._conn = None
            raise
        self._exited = self._loop.create_future()
        self._loop.add_reader(self._conn.fileno(), self._readable)

    def _await_ready(self) -> None:
        if not self._conn.poll(STARTUP_S):
            raise RuntimeError(f"the engine process did not load the model within {STARTUP_S:.0f} s")
        try:
            message = self._conn.recv()
        except EOFError:
            self.process.join(STOP_S)
            raise RuntimeError(f"the engine process exited (code {self.process.exitcode}) while loading the model")
        if message != "ready":
            raise RuntimeError(f"the engine process could not load the model: {message[1]}")

    async def stop(self) -> None:
        """Stop the child (after its current step), join it, then cancel everything still in flight."""
        if self.process is None:
            return
        self._stopping = True
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self._send(("stop",))
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), STOP_S)
        except asyncio.TimeoutError:
            log.warning("the engine process did not stop within %.0f s; killing it", STOP_S)
        await self._loop.run_in_executor(None, self._kill)
        self._closed()
        self._conn.close()
        self.process = self._conn = None
        self._end_all("cancelled")
        self._update_gauges()

    def _kill(self) -> None:
        """Join the child, killing it first if it has not exited within STOP_S."""
        self.process.join(STOP_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def drain(self, grace: float) -> None:
        """Refuse new jobs from now on; cancel those still running `grace` seconds from now.
        Safe to call from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain, grace)

    def _begin_drain(self, grace: float) -> None:
        if self._drain_timer is None and self.process is not None:
            self._drain_timer = self._loop.call_later(grace, self._cancel_everything)

    def _cancel_everything(self) -> None:
        for seq in self._live.values():
            seq.cancelled = True
        self.wake()

    def submit(self, job: Job) -> None:
        """Send a job's sequences to the child, or raise APIError 503 (not running) / 429 (queue full)."""
        if not self.accepting:
            raise unavailable()
        queued = len(self._live) - len(self._admitted)
        if queued + len(job.sequences) - (self.max_batch - len(self._admitted)) > self.max_queue:
            raise queue_full(queued)
        ids = [next(self._ids) for _ in job.sequences]
        specs = [(i, {name: getattr(seq, name) for name in SPEC_FIELDS}) for i, seq in zip(ids, job.sequences)]
        if not self._send(("add", specs)):
            raise unavailable()
        for index, (i, seq) in enumerate(zip(ids, job.sequences)):
            seq.tokens = list(seq.prompt_ids)  # mirrored from here on (`decoder.serve.logprobs.eot_entry` reads it)
            self._jobs[seq] = (job, index)
            self._live[i] = seq
        self.jobs_waiting += 1
        self._update_gauges()

    def wake(self) -> None:
        """Send the child the cancellations not sent yet."""
        cancelled = [i for i, seq in self._live.items() if seq.cancelled and i not in self._cancel_sent]
        if cancelled and self._send(("cancel", cancelled)):
            self._cancel_sent.update(cancelled)

    def _send(self, message: tuple) -> bool:
        """Whether the message went to the child (False once it is gone)."""
        if self._conn is None or self._exited is None or self._exited.done():
            return False
        try:
            self._conn.send_bytes(dumps(message))
        except OSError:
            return False
        return True

    # --- the child's messages, in the event loop --------------------------------------------

    def _readable(self) -> None:
        """Every message waiting in the pipe, in order (the end of file: the child exited)."""
        try:
            while self._conn.poll():
                self._deliver(*self._conn.recv())
        except (EOFError, OSError):
            self._closed()
        else:
            self.wake()
        self._update_gauges()

    def _deliver(self, admitted: list[int], events: list[tuple], taken_at: float) -> None:
        """One step's admissions and events, mirrored onto the server's sequences, to the jobs."""
        joined = [self._live[i] for i in admitted]
        self._admitted.update(admitted)
        mirrored: list[Event] = []
        sampled = 0
        for i, text, finish, generated, tokens, entries, final_logits, sampled_at in events:
            seq = self._live[i]
            if generated > seq.generated:
                sampled += 1
                self.metrics.observe_token(seq.arrived, seq.last_token_at, sampled_at)
                seq.generated, seq.last_token_at = generated, sampled_at
            seq.tokens += tokens
            seq.logprobs += entries
            seq.final_logits = final_logits
            if finish is not None:
                self._forget(i)
            mirrored.append((seq, text, finish))
        if sampled:
            self.metrics.batch_size.observe(sampled)
        self._dispatch(joined, mirrored, taken_at)

    def _forget(self, i: int) -> None:
        self._live.pop(i)
        self._admitted.discard(i)
        self._cancel_sent.discard(i)

    def _closed(self) -> None:
        """The child's end of the pipe closed: it stopped (after `stop`) or died (then every
        sequence in flight ends with "error")."""
        if self._exited is None or self._exited.done():
            return
        self._loop.remove_reader(self._conn.fileno())
        self._exited.set_result(None)
        if not self._stopping:
            self.process.join(1)
            log.error("the engine process exited (code %s); ending every sequence in flight with finish_reason "
                      "'error'", self.process.exitcode)
            self._failed = True
            self._end_all("error")

    def _end_all(self, reason: str) -> None:
        events = [(seq, "", reason) for seq in self._live.values()]
        self._live.clear()
        self._admitted.clear()
        self._cancel_sent.clear()
        self._dispatch([], events, time.perf_counter())
