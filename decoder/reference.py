"""The configuration reference, generated from the config dataclasses: each field's name, default
and the docstring written under it in `decoder/config.py`. The documentation site renders it
(docs/hooks.py), so the reference is never copied by hand and cannot fall behind the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any

from decoder.config import SECTIONS


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (an attribute docstring), by field name."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """One Markdown table per config section: key, default (as YAML writes it) and meaning."""
    import yaml

    out: list[str] = []
    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        out += [f"### `{section}`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            default = yaml.safe_dump(_default(f), default_flow_style=True).strip().removesuffix("...").strip()
            out.append(f"| `{f.name}` | `{_cell(default)}` | {_cell(docs.get(f.name, ''))} |")
        out.append("")
    return "\n".join(out)
