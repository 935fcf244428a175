"""Which of the package's extras (pyproject.toml's optional dependencies) this install has.

Read from the installed package's metadata, so pyproject.toml stays the one list of what each extra
needs. A source tree run without installing has no metadata: every extra then counts as present,
and a package that turns out to be missing is reported when its import fails.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re

from decoder.errors import UserError

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?[^;]*(?:;(.*))?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class MissingExtra(UserError):
    """A command needs packages of an extra this install lacks; the message says what to install."""

    def __init__(self, command: str, extra: str | None, package: str | None = None) -> None:
        if extra:
            message = f'decoder {command} needs the [{extra}] extra: pip install "decoder[{extra}]"'
        else:
            message = f"decoder {command} needs {package}, which is not installed"
        super().__init__(message)


def _requirements_by_extra() -> dict[str, list[tuple[str, list[str]]]]:
    """extra -> [(distribution, its extras)], from the installed metadata ({} when not installed)."""
    try:
        lines = metadata.requires("decoder") or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for line in lines:
        match = _REQUIREMENT.match(line)
        marker = _EXTRA_MARKER.search(match[3] or "") if match else None
        if marker:
            extras = [e.strip() for e in (match[2] or "").split(",") if e.strip()]
            out.setdefault(marker[1], []).append((match[1], extras))
    return out


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing(extra: str) -> list[str]:
    """The distributions of `extra` (through nested `decoder[...]` extras) that are not installed."""
    by_extra, seen, out = _requirements_by_extra(), set(), []
    todo = [extra]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for distribution, extras in by_extra.get(name, []):
            if distribution == "decoder":
                todo.extend(extras)
            elif not _installed(distribution):
                out.append(distribution)
    return out


def require(command: str, extra: str) -> None:
    """Raise MissingExtra unless every package of `extra` is installed."""
    if missing(extra):
        raise MissingExtra(command, extra)


def is_missing_package(exc: ModuleNotFoundError) -> bool:
    """Whether a failed import is a third-party package that is not installed (a decoder module
    that cannot be found is a bug, not a missing extra)."""
    return bool(exc.name) and exc.name.partition(".")[0] != "decoder"
