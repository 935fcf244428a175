"""The report's PNG plots: an experiment's loss curves, bpb against parameters and the two-key
heatmap (with the n-gram baselines drawn as lines), and the throughput bars of `decoder bench`.
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from decoder.experiments.grid import SEED_KEY, setting_text
from decoder.io import atomic_write
from decoder.report import markdown
from decoder.report.table import group_runs, many_data
from decoder.runs import RunRecord, flat_settings, seeds_vary, varied_keys


def _figure(width: float = 8.0, height: float = 5.0, dpi: int = 120):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _save(fig, path: Path) -> None:
    atomic_write(path, _png(fig))


def _run_label(record: RunRecord, keys: list[str], many: bool, seeds: bool) -> str:
    flat = flat_settings(record.config)
    parts = ([record.experiment] if many else []) + [f"{k.split('.')[-1]}={setting_text(flat.get(k))}" for k in keys]
    if seeds:
        parts.append(f"seed={flat.get(SEED_KEY)}")
    return ", ".join(parts) or record.experiment


def _baseline_lines(ax, bases: list[dict], column: str) -> None:
    styles = {"KN bigram": ":", "KN trigram": "--"}
    for b in bases:
        if column in b:
            label = b["name"] + (f" ({b['data'].tokenizer})" if many_data(bases) else "")
            ax.axhline(b[column], color="black", linestyle=styles.get(b["name"], "-."), linewidth=1, label=label)


def plot_curves(name: str, records: list[RunRecord], bases: list[dict], x: str, path: Path) -> bool:
    """Validation loss of every run against tokens seen or training seconds; False if no data."""
    keys = varied_keys(records)
    many = len({r.experiment for r in records}) > 1
    seeds = seeds_vary(records)
    runs = [r for r in records if r.metrics]
    if not runs:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    for record in runs:
        ax.plot([row[x] for row in record.metrics], [row["val_loss"] for row in record.metrics], marker=".",
                label=_run_label(record, keys, many, seeds))
    _baseline_lines(ax, bases, "val_loss")
    ax.set_xlabel("tokens seen (training tokens)" if x == "tokens_seen" else "training time (s, evaluation excluded)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{name}: validation loss vs {'tokens seen' if x == 'tokens_seen' else 'wall-clock training time'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def plot_bpb_vs_params(name: str, frame, keys: list[str], bases: list[dict], path: Path) -> bool:
    """Best validation bpb against total parameters (mean ± std over seeds)."""
    groups = [g for g in group_runs(frame, keys) if g.scored and g.mean_std("params_total")[0]]
    if not groups:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    many = len({g.experiment for g in groups}) > 1
    for g in groups:
        mean, std = g.mean_std("best_val_bpb")
        parts = [f"{k.split('.')[-1]}={setting_text(v)}" for k, v in g.settings.items()]
        label = ", ".join(([g.experiment] if many else []) + parts)
        ax.errorbar([g.mean_std("params_total")[0]], [mean], yerr=[std or 0.0], marker="o", capsize=3,
                    linestyle="none", label=label or g.experiment)
    _baseline_lines(ax, bases, "val_bpb")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (total, log scale)")
    ax.set_ylabel("best validation bits per byte")
    ax.set_title(f"{name}: validation bpb vs parameter count")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return True


def plot_heatmap(name: str, frame, keys: list[str], path: Path) -> bool:
    """Mean best val bpb over the two varied keys; False unless one experiment with exactly two."""
    if len(keys) != 2 or frame["experiment"].nunique() != 1:
        return False
    groups = group_runs(frame, keys)
    rows = sorted({g.settings[keys[0]] for g in groups}, key=_sort_key)
    cols = sorted({g.settings[keys[1]] for g in groups}, key=_sort_key)
    grid = [[math.nan] * len(cols) for _ in rows]
    for g in groups:
        mean = g.mean_std("best_val_bpb")[0]
        if mean is not None:
            grid[rows.index(g.settings[keys[0]])][cols.index(g.settings[keys[1]])] = mean
    fig = _figure(1.2 * len(cols) + 3, 0.8 * len(rows) + 2.5)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, "failed / not run" if math.isnan(value) else f"{value:.3f}", ha="center", va="center",
                    fontsize="small", bbox=dict(facecolor="white", alpha=0.6, linewidth=0))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    seeds = frame["seed"].nunique() > 1
    ax.set_title(f"{name}: best validation bpb" + (" (mean over seeds)" if seeds else ""))
    fig.colorbar(image, ax=ax, label="validation bits per byte (lower is better)")
    _save(fig, path)
    return True


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


DEVICE_COLOURS = {"cpu": "tab:blue", "cuda": "tab:green"}


def throughput_png(labels: list[str], tokens_per_s: dict[str, list[float | None]]) -> bytes:
    """Horizontal bars of tokens/s, one row per label with a bar per device side by side, log scale."""
    fig = _figure(10, 1.5 + 0.32 * len(labels), dpi=110)
    ax = fig.add_subplot()
    measured = [device for device, values in tokens_per_s.items() if any(values)]
    height = 0.8 / len(measured)
    for i, device in enumerate(measured):
        offset = (i - (len(measured) - 1) / 2) * height
        shown = [(n, value) for n, value in enumerate(tokens_per_s[device]) if value]
        bars = ax.barh([n + offset for n, _ in shown], [v for _, v in shown], height=height,
                       color=DEVICE_COLOURS.get(device), label=device.upper())
        ax.bar_label(bars, labels=[markdown.number(v, "sig") for _, v in shown], fontsize=7, padding=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    values = [v for device in measured for v in tokens_per_s[device] if v]
    ax.set_xlim(min(values) / 2, max(values) * 4)  # room for the value labels
    ax.set_xlabel("tokens per second (log scale)")
    ax.set_title("Throughput by workload, model, engine, precision and batch")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)
