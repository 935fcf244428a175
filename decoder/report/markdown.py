"""The one Markdown table and number formatter of the reports (experiment summaries, throughput).

`number(value, kind)` renders a figure the way every table of the project shows it; `table`
renders a GitHub Markdown table. A missing value (None or NaN) is `missing` ("" unless given).
"""

from __future__ import annotations

import math
from typing import Any

COUNT_UNITS = (("B", 1e9), ("M", 1e6), ("k", 1e3))


def number(value: Any, kind: str = "float", missing: str = "") -> str:
    """`value` formatted as one of these kinds:

    float    4 decimals (0.1235); anything not a float as str()
    count    parameters and tokens: 1.23M, 45.60k, 999
    int      thousands separators, no decimals: 12,345
    seconds  12,345 from 100 s up, else 1 decimal: 12.3
    ppl      1 decimal with thousands separators: 1,234.5
    sig      throughput: 12,345 from 100 up, else 3 significant digits: 12.3
    percent  a share as a percentage, 1 decimal: 45.6%
    times    a ratio, 2 decimals: 3.14×
    """
    value = value.item() if hasattr(value, "item") else value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if kind == "count":
        for unit, scale in COUNT_UNITS:
            if abs(value) >= scale:
                return f"{value / scale:.2f}{unit}"
        return str(int(value))
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "seconds":
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if kind == "ppl":
        return f"{value:,.1f}"
    if kind == "sig":
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "times":
        return f"{value:.2f}×"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; '|' inside a cell is escaped and a newline becomes a space."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows])
