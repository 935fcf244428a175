"""Corpora, token caches, the train/validation split and training batches.

A corpus is a registered name (downloaded once, or read from `DECODER_DATA_DIR/<name>.txt`) or a
path to a UTF-8 text file. Project Gutenberg's header and footer are stripped. tiktoken ids are
cached on disk keyed by the text's and the encoding's hash. The split is by token position: the
last `val_fraction` of the stream is validation, contiguous, so no validation text leaks into
training; the compact vocabulary is built from the training part only.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from decoder.config import DataConfig
from decoder.errors import UserError
from decoder.io import read_utf8
from decoder.tokenizer import Tokenizer, get_encoding

CORPORA = {
    "mysterious-island": "https://www.gutenberg.org/cache/epub/1268/pg1268.txt",
}

_START = re.compile(r"^[ \t]*\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^[ \t]*\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


class DataError(UserError, ValueError):
    """A corpus that cannot be found, fetched or read."""


def cache_dir() -> Path:
    """Where downloads and token caches go: $DECODER_CACHE_DIR, else ~/.cache/decoder."""
    return Path(os.environ.get("DECODER_CACHE_DIR", Path.home() / ".cache" / "decoder"))


def strip_gutenberg(text: str) -> str:
    """Drop a leading BOM and everything outside the *** START / *** END markers (if present)."""
    text = text.lstrip("\ufeff")
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def read_text_file(path: Path) -> str:
    return read_utf8(path, DataError)


def corpus_path(name: str) -> Path:
    """Local file of a corpus: a path as given, or a registered name found or downloaded."""
    if name not in CORPORA:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(
                f"corpus {name!r}: not a registered name ({', '.join(CORPORA)}) nor an existing file"
            )
        return path
    data_dir = os.environ.get("DECODER_DATA_DIR")
    if data_dir and (Path(data_dir) / f"{name}.txt").is_file():
        return Path(data_dir) / f"{name}.txt"
    target = cache_dir() / "corpora" / f"{name}.txt"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(CORPORA[name], timeout=60) as response:
            tmp.write_bytes(response.read())
    except OSError as exc:
        where = f"{data_dir}/{name}.txt" if data_dir else f"$DECODER_DATA_DIR/{name}.txt or {target}"
        raise DataError(
            f"corpus {name!r}: download from {CORPORA[name]} failed ({exc}); "
            f"on an offline machine put the file at {where}"
        ) from None
    os.replace(tmp, target)
    return target


def load_corpus(name: str) -> str:
    return strip_gutenberg(read_text_file(corpus_path(name)))


def cached_tiktoken_ids(text: str, encoding_name: str) -> np.ndarray:
    """tiktoken ids of `text`, from a cache keyed by the text's and the encoding's hash."""
    encoding = get_encoding(encoding_name)
    key = hashlib.sha256(f"{encoding_name}\0{encoding._pat_str}\0".encode() + text.encode()).hexdigest()[:24]
    path = cache_dir() / "tokens" / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    ids = np.asarray(encoding.encode_ordinary(text), dtype=np.uint32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, ids)
    os.replace(tmp, path)
    return ids


@dataclass
class Dataset:
    """Model-id token streams of both splits, and the tokenizer that made them."""

    tokenizer: Tokenizer
    train: np.ndarray  # int64 model ids
    val: np.ndarray
    text_bytes: int

    @property
    def val_bytes(self) -> int:
        """UTF-8 bytes of the validation tokens that are predicted (all but the first)."""
        return int(self.tokenizer.byte_lengths()[self.val[1:]].sum())


def _split_document(name: str, raw: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(head, tail) of one document's tiktoken ids: the tail (val_fraction of it) is validation."""
    n_val = int(len(raw) * val_fraction)
    if n_val < 2 or len(raw) - n_val < 2:
        raise DataError(f"corpus {name!r}: {len(raw)} tokens are too few for val_fraction={val_fraction}")
    return raw[:-n_val], raw[-n_val:]


def _join_documents(parts: list[np.ndarray], eot: int) -> np.ndarray:
    """Documents' ids joined with <|endoftext|> between them (none for a single document)."""
    out = [parts[0]]
    for part in parts[1:]:
        out += [np.array([eot], dtype=np.int64), part]
    return np.concatenate(out)


def prepare(config: DataConfig) -> Dataset:
    """Read, tokenize and split the corpora named by `config`, building the tokenizer.

    Each document is split on its own (its tail is validation), so no training window ever holds
    validation text; the documents of each split are joined with <|endoftext|>, which the model then
    learns to predict where one text ends and the next begins."""
    encoding = get_encoding(config.tokenizer)
    heads, tails, text_bytes = [], [], 0
    for name in config.corpora:
        text = load_corpus(name)
        text_bytes += len(text.encode("utf-8"))
        head, tail = _split_document(name, cached_tiktoken_ids(text, config.tokenizer).astype(np.int64),
                                     config.val_fraction)
        heads.append(head)
        tails.append(tail)
    raw_train = _join_documents(heads, encoding.eot_token)
    raw_val = _join_documents(tails, encoding.eot_token)
    tokenizer = Tokenizer.from_encoding(encoding, config.compact_vocab, raw_train, config.min_count, config.fallback)
    return Dataset(
        tokenizer=tokenizer,
        train=tokenizer.to_model_ids(raw_train),
        val=tokenizer.to_model_ids(raw_val),
        text_bytes=text_bytes,
    )


class BatchSampler:
    """Training windows of context_length + 1 tokens (input and shifted target).

    'random': offsets drawn uniformly. 'sliding': every stride-1 window once per epoch in shuffled
    order (the reference notebook's scheme). With `input_noise` > 0, each input token (never a
    target) is replaced with that probability by the token at a uniformly drawn position of the
    split: a draw from its unigram distribution (`TrainingConfig.input_noise`). Its state
    (generator, epoch, position) is saved in checkpoints so a resumed run draws exactly the batches
    an uninterrupted one would.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, batch_size: int, mode: str, seed: int,
                 input_noise: float = 0.0) -> None:
        if len(tokens) < context_length + 1:
            raise DataError(
                f"training split has {len(tokens)} tokens, fewer than context_length + 1 = {context_length + 1}"
            )
        self.tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        self.T, self.B, self.mode, self.input_noise = context_length, batch_size, mode, input_noise
        self.n_windows = len(tokens) - context_length
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.position = 0, 0
        self._order: torch.Tensor | None = None

    def _offsets(self) -> torch.Tensor:
        if self.mode == "random":
            return torch.randint(self.n_windows, (self.B,), generator=self.generator)
        out = []
        while len(out) < self.B:
            if self._order is None or self.position >= self.n_windows:
                if self._order is not None:
                    self.epoch += 1
                self._order = torch.randperm(self.n_windows, generator=self.generator)
                self.position = 0
            take = self._order[self.position : self.position + self.B - len(out)]
            out.extend(take.tolist())
            self.position += len(take)
        return torch.tensor(out)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T) int64 on the CPU."""
        offsets = self._offsets()
        windows = torch.stack([self.tokens[o : o + self.T + 1] for o in offsets.tolist()])
        x, y = windows[:, :-1], windows[:, 1:]
        if self.input_noise > 0:
            noised = torch.rand(x.shape, generator=self.generator) < self.input_noise
            draws = torch.randint(len(self.tokens), x.shape, generator=self.generator)
            x = torch.where(noised, self.tokens[draws], x)
        return x, y

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "position": self.position,
            "order": self._order,  # the current epoch's permutation ('sliding'); None for 'random'
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position, self._order = state["epoch"], state["position"], state["order"]
