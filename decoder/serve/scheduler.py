"""Continuous batching: the sequences being decoded share one model call per step.

`Scheduler.step(admitted)` is one iteration; the engine (`decoder.serve.engine`) calls it in its
worker thread (each worker has a scheduler of its own), again and again while there is work:

1. slide: each row whose cache filled last iteration starts again from its window's last
   context_length // 2 tokens, as `decoder.sampling.decode_loop` slides it: all but the last run
   in one prefill (every such row together) and are written into the rows' own slots of the
   batch's cache, no other row copied; the last is the row's token to decode, at the position the
   slid window gives it (the logits are those of the slid window's prefill, up to float rounding);
2. decode: every row that sampled a token last iteration runs it through ONE
   `model.decode(cache, tokens)` call over the whole batch (rows of different lengths share the
   left-padded cache of `decoder.kvcache`; each row has its own position), free slots included;
3. prefill: the sequences admitted this iteration run their prompts in one call (left-padded to
   the longest) and are written into free slots in place; only when there are too few free
   slots, or a prompt is longer than the batch is wide, does the batch grow (one copy);
4. sample: every row picks its next token from its own logits with its own parameters and its own
   generator (greedy rows: argmax), records the token's log probabilities if it asks for them,
   and its text is decoded and matched against its stop strings;
5. prune: finished and cancelled rows leave, their row kept as a free slot for the next
   admission (`decoder.kvcache`: its mask all padding, its logits ignored); a row whose cache is
   full (its next position would be context_length) slides at the next step; when no other row
   stays (or the window is one token, context_length < 4) the sliding rows leave the batch
   instead and come back at the next prefill, which gives their logits in one call.

A copy of the whole batch's cache costs about what the graph's own step costs in copying it, so
rows leave and join without one, as vLLM reuses its slots: a free slot costs a row of every
decode step until a sequence takes it, so the batch compacts (one copy of the rows that stay)
only when more than a quarter of its rows are free, or when IDLE_STEPS steps in a row ended with
a free slot and admitted nothing (no one is waiting: the load is falling). Rows slide at
different steps (every ~context_length // 2 tokens each), so a slide copies only its own row;
and a trim, after a slide or a leave, waits for at least width // 8 all-padding columns.

So a request joins at the next step and leaves when it is done, each with its own length, and the
greedy text of a request is the text `decoder generate --onnx` gives for it alone: its logits
come from calls in which padding columns are masked out (equal up to float rounding), and
sampling uses one generator per sequence seeded as `decode_loop` seeds its one, so a seeded
sampled request's text does not depend on its neighbours.

The scheduler itself is synchronous and single-threaded: its worker never runs two of its steps at
once, and other threads only read its rows (the engine's drain and stop) or set
`Sequence.cancelled`. Workers with schedulers of their own share the model, whose onnxruntime
session runs their calls concurrently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence as Seq

import numpy as np

from decoder.kvcache import BatchCache
from decoder.sampling import SamplingParams, next_tokens
from decoder.serve.logprobs import Entry, sampled_entry
from decoder.serve.text import TextStream
from decoder.tokenizer import Tokenizer


IDLE_STEPS = 8
"""Steps in a row with a free slot and no admission after which the batch compacts anyway."""


class Model(Protocol):
    """What the scheduler needs of `decoder.runtime.Runtime`."""

    context_length: int
    eot_id: int
    tokenizer: Tokenizer

    def prefill(self, prompts: Seq[Seq[int]]) -> tuple[np.ndarray, BatchCache]:
        """Token lists -> (B, V) logits of each row's last token and the rows' cache."""

    def decode(self, cache: BatchCache, tokens: np.ndarray) -> tuple[np.ndarray, BatchCache]:
        """One new token per row -> (B, V) logits and the cache with it appended."""


Event = tuple["Sequence", str, "str | None"]
"""(sequence, new text, finish reason or None): what a step reports for each row it sampled."""


@dataclass(eq=False)
class Sequence:
    """One completion being generated: a prompt, how to sample it, and its progress."""

    prompt_ids: list[int]
    params: SamplingParams
    rng: np.random.Generator | None
    """The sequence's own generator; None for greedy decoding, which draws nothing (creating one
    seeds it from the OS's entropy: tens of microseconds on the event loop per request)."""
    max_tokens: int
    text: TextStream
    on_event: Callable[[str, str | None], None] = lambda text, finish: None
    """Called by the engine (in its event loop) with each piece of text and the finish reason."""
    cancelled: bool = False
    generated: int = 0
    window: list[int] = field(default_factory=list)
    """The tokens the next prefill runs (the prompt's last context_length, then each slid window)."""
    tokens: list[int] = field(default_factory=list)
    """The whole sequence so far, prompt and generated: slid windows and the repetition controls' history."""
    top_logprobs: int | None = None
    """Record each sampled token's log probability and the k most likely (None: record nothing)."""
    logprobs: list[Entry] = field(default_factory=list)
    """The recorded entries (`decoder.serve.logprobs`), one per sampled token but the end of text."""
    next_token: int = -1
    final_logits: np.ndarray | None = None
    """With top_logprobs: the raw logits of the last token picked (the end of text's, if it ended there)."""
    arrived: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None
    plain: bool = field(init=False)
    """Plain greedy decoding (no logit adjustment): an argmax shared with the batch's other such rows."""

    def __post_init__(self) -> None:
        self.plain = self.params.is_greedy and not self.params.adjusts_logits

    def start(self, context_length: int) -> None:
        self.tokens = list(self.prompt_ids)
        self.window = self.tokens[-context_length:]

    def accept(self, token: int, eot_id: int) -> tuple[str, str | None]:
        """Take the sampled token: (new text, finish reason or None)."""
        self.generated += 1
        if token == eot_id:
            return self.text.finish(), "stop"
        self.next_token = token
        self.tokens.append(token)
        piece, stopped = self.text.push(token)
        if stopped:
            return piece, "stop"
        if self.generated >= self.max_tokens:
            return piece + self.text.finish(), "length"
        return piece, None


class Scheduler:
    """The running batch, the sequences waiting to slide back in, and one `step` of decoding."""

    def __init__(self, model: Model, *, max_batch: int, observe: Callable[[Sequence, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.slots: list[Sequence | None] = []
        """The sequence in each row of `cache`, None in a free slot (`cache` is None when there are no rows)."""
        self.cache: BatchCache | None = None
        self.sliding: list[Sequence] = []
        """Rows out of the batch until the next prefill, their slid window in `window`."""
        self._full: list[Sequence] = []
        """Rows (still in `slots`) whose window slides at the next step."""
        self._unclaimed = 0
        """Steps in a row that ended with a free slot and admitted no sequence."""
        self._logits: np.ndarray | None = None
        """This step's (len(slots), V) logits, row i slot i's: the decode's output array, the rows
        that joined written into it (no stack of per-row copies, a copy that releases the GIL)."""
        self.observe = observe or (lambda seq, now: None)
        """Called with each row as it samples a token (the engine's latency metrics)."""

    @property
    def rows(self) -> list[Sequence]:
        """The sequences in the batch, in slot order."""
        return [s for s in self.slots if s is not None]

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self.rows) - len(self.sliding)

    @property
    def busy(self) -> bool:
        return bool(self.sliding) or any(s is not None for s in self.slots)

    def clear(self) -> None:
        """Forget every sequence (after a failed step)."""
        self.slots, self.sliding, self._full, self.cache, self._logits = [], [], [], None, None

    def step(self, admitted: list[Sequence]) -> list[Event]:
        """One iteration (decode, prefill, sample, prune); returns what each sampled row produced."""
        if len(admitted) > self.free_slots:
            raise ValueError(f"admitted {len(admitted)} sequences into {self.free_slots} free slots")
        events = self._drop_cancelled()
        self._logits = None
        self._slide()
        self._decode()
        slid, self.sliding = self.sliding, []
        groups = []
        for group in (slid, admitted):
            cancelled = [s.cancelled for s in group]  # read once: another thread may set it meanwhile
            events += [(s, "", "cancelled") for s, c in zip(group, cancelled) if c]
            groups.append([s for s, c in zip(group, cancelled) if not c])
        for seq in groups[1]:
            seq.start(self.model.context_length)
        self._prefill(*groups)
        events += self._sample()
        self._unclaimed = self._unclaimed + 1 if None in self.slots and not admitted else 0
        if self._unclaimed >= IDLE_STEPS:
            self._compact()
        return events

    def _drop_cancelled(self) -> list[Event]:
        events: list[Event] = [(s, "", "cancelled") for s in self.sliding if s.cancelled]
        self.sliding = [s for s in self.sliding if not s.cancelled]
        gone = [i for i, s in enumerate(self.slots) if s is not None and s.cancelled]
        events += [(self.slots[i], "", "cancelled") for i in gone]
        self._free(gone)
        return events

    def _free(self, slots: list[int]) -> None:
        """These slots' sequences leave; the batch compacts if more than a quarter of it is free."""
        if not slots:
            return
        for i in slots:
            self.slots[i] = None
        if self.slots.count(None) > len(self.slots) // 4:  # (so always when every slot is free)
            self._compact()
        else:
            self.cache = self.cache.freed(slots).trim(min_columns=max(1, self.cache.width // 8))

    def _compact(self) -> None:
        """Only the rows that hold a sequence, in order (one copy; no cache when none does)."""
        live = [i for i, s in enumerate(self.slots) if s is not None]
        self.slots, self.cache = [self.slots[i] for i in live], self.cache.select(live) if live else None
        self._unclaimed = 0

    def _slide(self) -> None:
        """Rows whose cache is full restart from all but the last token of their slid window, in
        one prefill written into their own slots; the last token (`next_token`) decodes next."""
        full, self._full = self._full, []
        if not full:
            return
        slots = {id(s): i for i, s in enumerate(self.slots) if s is not None}
        full = [s for s in full if id(s) in slots]  # not cancelled meanwhile
        if not full:
            return
        _, cache = self.model.prefill([s.window[:-1] for s in full])
        self.cache = self.cache.overwrite([slots[id(s)] for s in full], cache)
        self.cache = self.cache.trim(min_columns=max(1, self.cache.width // 8))

    def _decode(self) -> None:
        """One token for every row; a free slot is given token 0 at position 0 (`freed` again)."""
        if self.cache is None:
            return
        free = [i for i, s in enumerate(self.slots) if s is None]
        if free:
            self.cache = self.cache.freed(free)
        tokens = np.array([0 if s is None else s.next_token for s in self.slots], dtype=np.int64)
        self._logits, self.cache = self.model.decode(self.cache, tokens)

    def _prefill(self, slid: list[Sequence], admitted: list[Sequence]) -> None:
        """Run the slid windows (all context_length // 2 long) in one call and the new prompts in
        another (left-padded to the longest), then write both into free slots, growing the batch
        (one copy) only for rows beyond its free slots or columns beyond its width."""
        groups = [g for g in (slid, admitted) if g]
        if not groups:
            return
        outputs = [self.model.prefill([s.window for s in group]) for group in groups]
        new = [s for g in groups for s in g]
        logits = np.concatenate([out[0] for out in outputs]) if len(outputs) > 1 else outputs[0][0]
        cache = BatchCache.concat([out[1] for out in outputs]) if len(outputs) > 1 else outputs[0][1]
        if self.cache is None:
            self.slots, self.cache, self._logits = new, cache, logits
            return
        free = [i for i, s in enumerate(self.slots) if s is None][: len(new)]
        targets = free + list(range(len(self.slots), len(self.slots) + len(new) - len(free)))
        self.slots += [None] * (len(new) - len(free))
        grown = self.cache.grown(len(self.slots), max(self.cache.width, cache.width))
        self.cache = grown.overwrite(targets, cache)
        for i, seq in zip(targets, new):
            self.slots[i] = seq
        if self._logits.shape[0] < len(self.slots) or not self._logits.flags.writeable:
            decoded, self._logits = self._logits, np.zeros((len(self.slots), logits.shape[1]), dtype=logits.dtype)
            self._logits[: len(decoded)] = decoded
        self._logits[targets] = logits

    def _sample(self) -> list[Event]:
        live = [i for i, s in enumerate(self.slots) if s is not None]
        if not live:
            return []
        logits = self._logits
        tokens = choose_tokens(logits, self.slots)
        now = time.perf_counter()
        events: list[Event] = []
        leaving: list[int] = []
        stays = False
        full = self.cache.lengths >= self.model.context_length
        for i in live:
            seq, token = self.slots[i], tokens[i]
            if seq.top_logprobs is not None and token != self.model.eot_id:
                seq.logprobs.append(sampled_entry(logits[i], int(token), seq.top_logprobs))
            self.observe(seq, now)
            seq.last_token_at = now
            text, finish = seq.accept(int(token), self.model.eot_id)
            events.append((seq, text, finish))
            if finish is not None:
                leaving.append(i)
            elif full[i]:
                seq.window = seq.tokens[-max(1, self.model.context_length // 2):]
                self._full.append(seq)
            else:
                stays = True
        if self._full and (not stays or len(self._full[0].window) == 1):
            self.sliding, self._full = self._full, []  # no other row to spare a copy of: one prefill each
            leaving += [self.slots.index(s) for s in self.sliding]
        self._free(sorted(leaving))
        return events


def choose_tokens(logits: np.ndarray, rows: list[Sequence | None]) -> list[int]:
    """The B next tokens (Python ints): one argmax over the plain greedy rows (and free slots, None,
    whose token is ignored); every other row picks alone, with its own parameters, generator,
    history and generated tokens (as `decoder.sampling.decode_loop` does for it)."""
    alone = [i for i, s in enumerate(rows) if s is not None and not s.plain]
    if not alone:
        tokens = logits.argmax(axis=-1)  # no boolean-indexed copy of the logits
    else:
        plain = np.ones(len(rows), dtype=bool)
        plain[alone] = False
        tokens = np.empty(len(rows), dtype=np.int64)
        if plain.any():
            tokens[plain] = logits[plain].argmax(axis=-1)
    for i in alone:
        seq = rows[i]
        generated = seq.tokens[len(seq.prompt_ids):]
        tokens[i] = next_tokens(logits[i : i + 1], seq.params, seq.rng, [seq.tokens], [generated])[0]
    for i, seq in enumerate(rows):
        if seq is not None and seq.top_logprobs is not None:
            seq.final_logits = logits[i]
    return tokens.tolist()
