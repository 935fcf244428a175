"""tiktoken encodings with an optional compact vocabulary (byte or piece fallback), saved as JSON.

The compact vocabulary keeps the 256 single-byte tokens, every token seen at least `min_count`
times in the training split and `<|endoftext|>`, renumbered densely. A token outside it is spelled
with tokens inside it, so any text still round-trips losslessly: with `fallback="bytes"` by its
bytes' single-byte tokens, with `fallback="pieces"` by the fewest vocabulary tokens whose bytes join
to it (" volcanic" -> " vol" "canic" rather than nine bytes; bytes only where no longer piece fits),
the way a trimmed BPE vocabulary re-segments the tokens it dropped. With `min_count` > 1 rare
training words are spelled that way too, so the model learns the fallback that unseen validation
words need. Imports numpy and tiktoken only (the torch-free runtime uses this module).
"""

from __future__ import annotations

import codecs
import functools
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import tiktoken

from decoder.errors import UserError

EOT = "<|endoftext|>"
FALLBACKS = ("bytes", "pieces")


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be built or loaded."""


def get_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken.get_encoding with an error that says how to work offline."""
    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:  # unknown name
        raise TokenizerError(
            f"unknown tiktoken encoding {name!r}; allowed: {', '.join(tiktoken.list_encoding_names())}"
        ) from exc
    except Exception as exc:  # download failed (offline) or corrupt cache
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "(TIKTOKEN_CACHE_DIR is not set)")
        raise TokenizerError(
            f"cannot load tiktoken encoding {name!r}: it is downloaded on first use and this machine "
            f"could not fetch it ({type(exc).__name__}); on an offline machine put tiktoken's cache "
            f"files in a folder and point TIKTOKEN_CACHE_DIR at it (now: {cache})"
        ) from None


class Tokenizer:
    """Text <-> model ids. `ids` maps model id -> tiktoken id (None: the full encoding, identity)."""

    def __init__(self, encoding: tiktoken.Encoding, ids: Sequence[int] | None = None, min_count: int = 1,
                 fallback: str = "bytes") -> None:
        if fallback not in FALLBACKS:
            raise TokenizerError(f"fallback={fallback!r}: allowed {', '.join(map(repr, FALLBACKS))}")
        self.encoding = encoding
        self.min_count = min_count
        self.fallback = fallback
        self._spellings: dict[int, np.ndarray] = {}
        self._piece_ids: dict[bytes, int] | None = None
        self.eot_token = encoding.eot_token
        self.compact = ids is not None
        if ids is None:
            self._to_model: np.ndarray | None = None
            self._to_tiktoken: np.ndarray | None = None
            self.vocab_size = encoding.n_vocab
            self._byte_ids = np.array([encoding.encode_single_token(bytes([b])) for b in range(256)])
        else:
            to_tiktoken = np.asarray(ids, dtype=np.int64)
            if to_tiktoken.size and (to_tiktoken.min() < 0 or to_tiktoken.max() >= encoding.n_vocab):
                raise TokenizerError(f"compact vocabulary ids must be in [0, {encoding.n_vocab}) for {encoding.name}")
            if len(set(to_tiktoken.tolist())) != len(to_tiktoken):
                raise TokenizerError("compact vocabulary has duplicate ids")
            to_model = np.full(encoding.n_vocab, -1, dtype=np.int64)
            to_model[to_tiktoken] = np.arange(len(to_tiktoken))
            self._to_model, self._to_tiktoken = to_model, to_tiktoken
            self.vocab_size = len(to_tiktoken)
            byte_tt = [encoding.encode_single_token(bytes([b])) for b in range(256)]
            self._byte_ids = to_model[byte_tt]
            if (self._byte_ids < 0).any() or to_model[self.eot_token] < 0:
                raise TokenizerError("compact vocabulary must contain all 256 byte tokens and <|endoftext|>")
        self._token_bytes: list[bytes] | None = None

    @classmethod
    def build(cls, encoding_name: str, compact: bool, training_tiktoken_ids: np.ndarray | None = None,
              min_count: int = 1, fallback: str = "bytes") -> "Tokenizer":
        """Make a tokenizer; a compact one from the tiktoken ids of the training split."""
        return cls.from_encoding(get_encoding(encoding_name), compact, training_tiktoken_ids, min_count, fallback)

    @classmethod
    def from_encoding(
        cls, encoding: tiktoken.Encoding, compact: bool, training_tiktoken_ids: np.ndarray | None = None,
        min_count: int = 1, fallback: str = "bytes",
    ) -> "Tokenizer":
        if not compact:
            return cls(encoding)
        if training_tiktoken_ids is None:
            raise TokenizerError("a compact vocabulary needs the training split's token ids")
        if min_count < 1:
            raise TokenizerError(f"min_count={min_count}: must be >= 1")
        byte_tt = [encoding.encode_single_token(bytes([b])) for b in range(256)]
        seen, counts = np.unique(np.asarray(training_tiktoken_ids, dtype=np.int64), return_counts=True)
        kept = seen[counts >= min_count]
        extra = sorted(set(kept.tolist()) - set(byte_tt) - {encoding.eot_token})
        return cls(encoding, byte_tt + extra + [encoding.eot_token], min_count, fallback)

    @functools.cached_property
    def eot_id(self) -> int:
        """The model id of <|endoftext|> (computed once: the server's stream decoder asks for it
        for every token of every stream)."""
        return int(self.to_model_ids(np.array([self.eot_token]))[0])

    @property
    def encoding_name(self) -> str:
        return self.encoding.name

    def raw_encode(self, text: str) -> np.ndarray:
        """tiktoken ids of `text` (special tokens are treated as plain text)."""
        return np.asarray(self.encoding.encode_ordinary(text), dtype=np.int64)

    def to_model_ids(self, tiktoken_ids: np.ndarray) -> np.ndarray:
        """Map tiktoken ids to model ids, replacing tokens outside the vocabulary by their bytes."""
        tiktoken_ids = np.asarray(tiktoken_ids, dtype=np.int64)
        if self._to_model is None:
            return tiktoken_ids
        mapped = self._to_model[tiktoken_ids]
        missing = np.flatnonzero(mapped < 0)
        if missing.size == 0:
            return mapped
        pieces, start = [], 0
        for i in missing:
            pieces.append(mapped[start:i])
            pieces.append(self._spelling(int(tiktoken_ids[i])))
            start = i + 1
        pieces.append(mapped[start:])
        return np.concatenate(pieces)

    def _spelling(self, tiktoken_id: int) -> np.ndarray:
        """Model ids that spell a token outside the compact vocabulary (see the module docstring)."""
        if tiktoken_id not in self._spellings:
            raw = self.encoding.decode_single_token_bytes(tiktoken_id)
            if self.fallback == "bytes":
                self._spellings[tiktoken_id] = self._byte_ids[np.frombuffer(raw, dtype=np.uint8)]
            else:
                self._spellings[tiktoken_id] = np.array(self._fewest_pieces(raw), dtype=np.int64)
        return self._spellings[tiktoken_id]

    def _fewest_pieces(self, raw: bytes) -> list[int]:
        """The fewest vocabulary tokens whose bytes join to `raw` (dynamic programming over end
        positions; among equally short spellings, the one whose last piece is longest)."""
        if self._piece_ids is None:
            self._piece_ids = {b: m for m in range(self.vocab_size) if m != self.eot_id and (b := self.token_bytes(m))}
            self._longest_piece = max(map(len, self._piece_ids))
        longest = self._longest_piece
        n = len(raw)
        cost, cut = [0] + [n + 1] * n, [0] * (n + 1)
        for end in range(1, n + 1):
            for start in range(max(0, end - longest), end):
                if cost[start] + 1 < cost[end] and raw[start:end] in self._piece_ids:
                    cost[end], cut[end] = cost[start] + 1, start
        out, end = [], n
        while end:
            out.append(self._piece_ids[raw[cut[end]:end]])
            end = cut[end]
        return out[::-1]

    def encode(self, text: str) -> list[int]:
        return self.to_model_ids(self.raw_encode(text)).tolist()

    def token_bytes(self, model_id: int) -> bytes:
        if self._token_bytes is None:
            tt = self._to_tiktoken if self._to_tiktoken is not None else range(self.vocab_size)
            self._token_bytes = [self._bytes_of(int(t)) for t in tt]
        return self._token_bytes[model_id]

    def _bytes_of(self, tiktoken_id: int) -> bytes:
        try:
            return self.encoding.decode_single_token_bytes(tiktoken_id)
        except KeyError:  # holes in some encodings' id space
            return b""

    def byte_lengths(self) -> np.ndarray:
        """Bytes of text per model id (for bits per byte); <|endoftext|> counts 0."""
        lengths = np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64)
        lengths[self.eot_id] = 0
        return lengths

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        eot = self.eot_id
        return b"".join(self.token_bytes(int(i)) for i in ids if int(i) != eot)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {
            "encoding": self.encoding.name,
            "compact": self.compact,
            "ids": None if self._to_tiktoken is None else self._to_tiktoken.tolist(),
            "min_count": self.min_count,
            "fallback": self.fallback,
        }

    @classmethod
    def from_dict(cls, data: dict, encoding: tiktoken.Encoding | None = None) -> "Tokenizer":
        try:
            enc = encoding if encoding is not None else get_encoding(data["encoding"])
            return cls(enc, data["ids"] if data.get("compact") else None, int(data.get("min_count", 1)),
                       data.get("fallback", "bytes"))
        except (KeyError, TypeError) as exc:
            raise TokenizerError(f"tokenizer description is missing {exc}") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, encoding: tiktoken.Encoding | None = None) -> "Tokenizer":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), encoding)
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"{path}: cannot read tokenizer ({exc})") from None


class StreamDecoder:
    """Turns model ids into text pieces as they arrive, holding back incomplete UTF-8 sequences
    (invalid bytes come out as U+FFFD at once, so one bad byte never stalls the stream)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._eot = tokenizer.eot_id
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, model_id: int) -> str:
        if model_id == self._eot:
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(model_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def text_pieces(tokenizer: Tokenizer, steps: Iterable) -> Iterator[str]:
    """Text pieces of a single-row generation, step by step ((1,) arrays or ints), ending at
    <|endoftext|>; incomplete UTF-8 sequences are held back until their last byte arrives."""
    decoder = StreamDecoder(tokenizer)
    eot = tokenizer.eot_id
    for step in steps:
        token = int(np.asarray(step).reshape(-1)[0])
        if token == eot:
            break
        piece = decoder.push(token)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
