"""Files written whole or not at all: the package's only temp-file-and-rename, and JSON reading.

A reader (another process, a resumed run, a crash) sees either the old file or the new one, never a
half-written one: data goes to a temporary file in the same folder, is flushed, then renamed over
the target (atomic on POSIX and Windows for files on one filesystem). Torch-free.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from decoder.errors import UserError


class FileFormatError(UserError):
    """A file exists but cannot be read as what it should be."""


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """`obj` as JSON (UTF-8, trailing newline), written atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is one `FileFormatError` line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: not readable JSON ({exc})") from None


def read_utf8(path: str | Path, error: type[Exception] = UserError) -> str:
    """A UTF-8 text file's contents as given, or `error` with one line naming the file and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); "
                    "convert it, e.g. iconv -t UTF-8") from None
