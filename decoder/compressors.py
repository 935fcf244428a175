"""Real compressors as baselines: the cost of the validation text *given* the training text.

A language model is a compressor: its validation bits per byte is the code length it would give
the text. So beside the n-gram floor stand xz (-9e, Python's lzma), bzip2 (-9, Python's bz2) and
zpaq's context mixing (-m5, the `zpaq` program: Debian package zpaq; skipped with a note where it is
not installed). Each is scored as

    bits per byte = 8 * (size(context + scored) - size(context)) / len(scored)

on exactly the bytes the model is scored on (`scored_bytes`): `scored` is the UTF-8 of the
validation tokens the model predicts (tokens 1..N-1 of the split, so len(scored) is
`decoder.data.Dataset.val_bytes`), and `context` is everything the model conditions on before them:
the training split decoded, then the first validation token (which the model sees but does not
predict). <|endoftext|> counts no bytes, as in `decoder.metrics`. A compressor's container headers
cancel in the difference. bzip2 works in independent 900 kB blocks, so for a training text longer
than that its figure is close to compressing the validation text on its own.

Results are cached on disk per (compressor, tool version, sha256 of both byte strings), so a report
does not rerun zpaq (~20 s per MB) each time. Torch-free apart from `compressor_baselines`, which
builds the splits through `decoder.data`.
"""

from __future__ import annotations

import bz2
import ctypes
import ctypes.util
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from decoder.config import DataConfig
from decoder.io import FileFormatError, read_json, write_json
from decoder.metrics import LN2, perplexity
from decoder.tokenizer import Tokenizer

CACHE_VERSION = 1


class CompressorUnavailable(RuntimeError):
    """The compressor's program is not installed here (its baseline is skipped, with this message)."""


def _library_version(name: str, symbol: str) -> str:
    """The version string a C library reports (the one Python's module is linked against)."""
    path = ctypes.util.find_library(name)
    try:
        function = getattr(ctypes.CDLL(path), symbol)
    except (OSError, AttributeError, TypeError):
        return f"lib{name} (version unknown)"
    function.restype = ctypes.c_char_p
    return f"lib{name} {function().decode()}"


def _xz_size(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))


def _bzip2_size(data: bytes) -> int:
    return len(bz2.compress(data, compresslevel=9))


def _zpaq_version() -> str:
    if shutil.which("zpaq") is None:
        raise CompressorUnavailable("zpaq is not installed (Debian/Ubuntu: apt-get install zpaq)")
    banner = subprocess.run(["zpaq"], capture_output=True, text=True).stdout.splitlines()
    return banner[0].split(" journaling")[0] if banner else "zpaq (version unknown)"


def _zpaq_size(data: bytes) -> int:
    """Size of a zpaq -m5 archive holding `data` as one file (same name and date every time)."""
    _zpaq_version()
    with tempfile.TemporaryDirectory(prefix="decoder-zpaq-") as tmp:
        text = Path(tmp) / "text"
        text.write_bytes(data)
        os.utime(text, (0, 0))
        done = subprocess.run(["zpaq", "add", "archive.zpaq", "text", "-m5"], cwd=tmp, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"zpaq failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return (Path(tmp) / "archive.zpaq").stat().st_size


@dataclass(frozen=True)
class Compressor:
    """One compressor: its row name, a file-name-safe key, and how to size and version it."""

    name: str
    key: str
    size: Callable[[bytes], int]
    version: Callable[[], str]


COMPRESSORS: tuple[Compressor, ...] = (
    Compressor("xz -9e", "xz", _xz_size, lambda: _library_version("lzma", "lzma_version_string")),
    Compressor("bzip2 -9", "bzip2", _bzip2_size, lambda: _library_version("bz2", "BZ2_bzlibVersion")),
    Compressor("zpaq -m5", "zpaq", _zpaq_size, _zpaq_version),
)
"""Every compressor baseline, in the order the tables list them."""


def scored_bytes(tokenizer: Tokenizer, train: np.ndarray, val: np.ndarray) -> tuple[bytes, bytes]:
    """(context, scored): what the model conditions on and the bytes whose code length it is scored
    on when it predicts `val` (model ids) after training on `train` (see the module docstring)."""
    context = tokenizer.decode_bytes(train) + tokenizer.decode_bytes(val[:1])
    return context, tokenizer.decode_bytes(val[1:])


def conditional_cost(compressor: Compressor, context: bytes, scored: bytes) -> dict:
    """bits per byte of `scored` given `context` under `compressor`, with the sizes behind it.

    Raises CompressorUnavailable where the compressor's program is not installed."""
    if not scored:
        raise ValueError("no scored bytes: the validation text is empty")
    tool = compressor.version()
    started = time.perf_counter()
    alone, both = compressor.size(context), compressor.size(context + scored)
    return {
        "name": compressor.name,
        "tool": tool,
        "val_bpb": 8 * (both - alone) / len(scored),
        "scored_bytes": len(scored),
        "context_bytes": len(context),
        "size_context": alone,
        "size_context_and_scored": both,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _cache_path(compressor: Compressor, tool: str, context: bytes, scored: bytes) -> Path:
    from decoder.baseline import cache_file

    return cache_file(compressor.key, {
        "compressor": compressor.name, "tool": tool, "version": CACHE_VERSION,
        "context_sha256": hashlib.sha256(context).hexdigest(), "scored_sha256": hashlib.sha256(scored).hexdigest(),
    })


def cached_cost(compressor: Compressor, context: bytes, scored: bytes) -> dict:
    """`conditional_cost`, read from the on-disk cache when these bytes were compressed before."""
    path = _cache_path(compressor, compressor.version(), context, scored)
    if path.is_file():
        try:
            return read_json(path)
        except FileFormatError:
            pass  # a damaged cache file is recomputed
    result = conditional_cost(compressor, context, scored)
    write_json(path, result, indent=None)
    return result


def per_token(result: dict, n_tokens: int) -> dict:
    """The compressor's code length as the model's columns: val_loss (nats per scored token,
    the same total spread over the model's tokens), val_ppl and val_tokens beside val_bpb."""
    total_nats = result["val_bpb"] * result["scored_bytes"] * LN2
    loss = total_nats / max(n_tokens, 1)
    return {**result, "val_loss": loss, "val_ppl": perplexity(loss), "val_tokens": n_tokens}


def compressor_baselines(data: DataConfig, names: tuple[str, ...] | None = None) -> list[dict]:
    """One row per compressor (all by default) on the splits of `data`: a result (`per_token`) or,
    where the compressor is not installed, {"name", "error"}."""
    from decoder.data import prepare

    dataset = prepare(data)
    context, scored = scored_bytes(dataset.tokenizer, dataset.train, dataset.val)
    rows = []
    for compressor in COMPRESSORS:
        if names is not None and compressor.key not in names:
            continue
        try:
            rows.append(per_token(cached_cost(compressor, context, scored), len(dataset.val) - 1))
        except CompressorUnavailable as exc:
            rows.append({"name": compressor.name, "error": str(exc)})
    return rows

