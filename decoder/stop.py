"""Stop strings: end a generation at the first occurrence of any of them, at the text level.

A stop string can span several tokens and a token can hold the end of one text and the start of a
stop string, so matching happens on text, not ids. While streaming, `StopMatcher.push` holds back
any tail of the text that could still become a stop string and releases it once it cannot; the
stop string itself and everything after it are never returned. Used by the `decoder generate`
command and the HTTP server alike. Torch-free.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from decoder.sampling import GenerationError


class StopMatcher:
    """Feed text pieces in order; get back the text that is safe to show.

    `push(piece)` returns the releasable text (possibly ""); once a stop string has been seen,
    `stopped` is True, the text before it has been returned and later pushes return "".
    `flush()` returns the held-back tail when the generation ends without a stop."""

    def __init__(self, stops: Sequence[str]) -> None:
        stops = list(stops)
        if any(not isinstance(s, str) or not s for s in stops):
            raise GenerationError(f"stop strings {stops!r}: each must be non-empty text")
        self.stops = stops
        self.stopped = False
        self._held = ""

    def push(self, piece: str) -> str:
        if not self.stops:
            return piece
        if self.stopped:
            return ""
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return text[: min(hits)]
        keep = self._partial_stop_length(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is the start of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def until_stop(pieces: Iterable[str], matcher: StopMatcher) -> Iterator[str]:
    """The text of `pieces` up to (not including) the first of `matcher`'s stop strings; stops
    consuming `pieces` there."""
    for piece in pieces:
        released = matcher.push(piece)
        if released:
            yield released
        if matcher.stopped:
            return
    tail = matcher.flush()
    if tail:
        yield tail
