"""The child side of `decoder serve --engine process` (`decoder.serve.engine_process` has the
server's side and the protocol between them): load the model, then run `Scheduler.step` back to
back while there is work, reading the server's messages between steps and sending one message per
step back."""

from __future__ import annotations

import io
import pickle
import signal
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Callable

from decoder.serve.admission import run_step, take
from decoder.serve.scheduler import Event, Model, Scheduler, Sequence
from decoder.tokenizer import Tokenizer

SPEC_FIELDS = ("prompt_ids", "params", "rng", "max_tokens", "text", "top_logprobs")
"""The fields of a `Sequence` the child needs (the rest is progress, rebuilt there)."""


def dumps(message: tuple) -> bytes:
    """A message to the child, the tokenizer pickled by reference (the child has its own: `loads`)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.persistent_id = lambda obj: "tokenizer" if isinstance(obj, Tokenizer) else None
    pickler.dump(message)
    return buffer.getvalue()


def loads(data: bytes, tokenizer: Tokenizer) -> tuple:
    unpickler = pickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = lambda pid: tokenizer
    return unpickler.load()


def run_child(load: Callable[[], Model], max_batch: int, conn: Connection) -> None:
    """The engine process: load the model, say "ready" (or why not), then serve steps until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model = load()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send("ready")
    _Child(Scheduler(model, max_batch=max_batch), conn).run()


class _Child:
    """The child's queue, its sequences by id, and its loop: read messages, step, send the step."""

    def __init__(self, scheduler: Scheduler, conn: Connection) -> None:
        self.scheduler, self.conn = scheduler, conn
        self.waiting: deque[Sequence] = deque()
        self.ids: dict[Sequence, int] = {}
        self.live: dict[int, Sequence] = {}
        self.sent: dict[int, tuple[int, int]] = {}
        """Per sequence, the generated tokens and logprobs entries the server has been sent."""

    @property
    def busy(self) -> bool:
        return self.scheduler.busy or bool(self.waiting)

    def run(self) -> None:
        while self._read(block=not self.busy):
            if self.busy:
                self._step()

    def _read(self, block: bool) -> bool:
        """Apply every message waiting (first waiting for one if `block`); False on "stop" or when
        the server's end of the pipe has closed."""
        try:
            if block:
                self.conn.poll(None)
            while self.conn.poll():
                kind, *args = loads(self.conn.recv_bytes(), self.scheduler.model.tokenizer)
                if kind == "stop":
                    return False
                if kind == "add":
                    self._add(*args)
                elif kind == "cancel":
                    for i in args[0]:
                        if i in self.live:
                            self.live[i].cancelled = True
        except (EOFError, OSError):
            return False
        return True

    def _add(self, specs: list[tuple[int, dict]]) -> None:
        for i, fields in specs:
            seq = Sequence(**fields)
            self.ids[seq], self.live[i] = i, seq
            self.waiting.append(seq)

    def _step(self) -> None:
        admitted, dropped = take(self.waiting, self.scheduler.free_slots)
        taken_at = time.perf_counter()
        events = dropped + run_step(self.scheduler, admitted)
        try:
            self.conn.send(([self.ids[seq] for seq in admitted], [self._wire(e) for e in events], taken_at))
        except OSError:
            pass  # the server is gone: the next read ends the loop

    def _wire(self, event: Event) -> tuple:
        """An event as the server mirrors it (`decoder.serve.engine_process`'s docstring lists the fields)."""
        seq, text, finish = event
        i = self.ids[seq]
        tokens_sent, entries_sent = self.sent.get(i, (0, 0))
        tokens = seq.tokens[len(seq.prompt_ids) + tokens_sent:]
        entries = seq.logprobs[entries_sent:]
        final = seq.final_logits if finish is not None and seq.top_logprobs is not None else None
        if finish is None:
            self.sent[i] = (tokens_sent + len(tokens), entries_sent + len(entries))
        else:
            del self.ids[seq], self.live[i]
            self.sent.pop(i, None)
        return i, text, finish, seq.generated, tokens, entries, final, seq.last_token_at
