"""A sequence's text as its tokens arrive: incremental UTF-8 decoding, then stop strings
(`decoder.stop`: text that could still become a stop string is held back until it cannot, and the
stop string and what follows it are never returned)."""

from __future__ import annotations

from typing import Sequence

from decoder.stop import StopMatcher
from decoder.tokenizer import StreamDecoder, Tokenizer


class TextStream:
    """Token ids in, text pieces out, ending at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()) -> None:
        self._decoder = StreamDecoder(tokenizer)
        self._stops = StopMatcher(stops)

    def push(self, token: int) -> tuple[str, bool]:
        """(new text to emit, whether a stop string ended the sequence)."""
        text = self._stops.push(self._decoder.push(token))
        return text, self._stops.stopped

    def finish(self) -> str:
        """The text still held back when the sequence ends without a stop string."""
        return self._stops.push(self._decoder.flush()) + self._stops.flush()
