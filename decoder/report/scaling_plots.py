"""The scaling study's plots: IsoFLOP curves (validation bpb against N, one curve per budget, the
seeds' spread and each budget's parabola), and the fitted law against the measured runs with the
prediction point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from decoder.report.plots import _figure, _save
from decoder.scaling_fit import parabola_optimum
from decoder.scaling_study import SHAPE, budgets, main_shapes


def per_shape(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, min, max and sd of bpb over seeds for each (budget, shape)."""
    grouped = frame.groupby(["budget", *SHAPE, "N", "D"], as_index=False)["bpb"]
    return grouped.agg(mean="mean", low="min", high="max", sd="std", seeds="count").sort_values(["budget", "N"])


def plot_isoflop(frame: pd.DataFrame, path: Path, *, title: str, prediction: dict | None = None,
                 measured: pd.DataFrame | None = None) -> None:
    """bpb vs N (log x): per budget the seeds' mean with a bar from the lowest to the highest seed,
    the parabola in log N (dashed) and its minimum (a star); the heads-only variants as crosses;
    the prediction point's runs when there are some."""
    fig = _figure(8.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    main = frame[main_shapes(frame)]
    for i, budget in enumerate(budgets(main)):
        colour = f"C{i}"
        shapes = per_shape(main[main["budget"] == budget])
        ax.errorbar(shapes["N"], shapes["mean"], yerr=[shapes["mean"] - shapes["low"], shapes["high"] - shapes["mean"]],
                    fmt="o-", color=colour, capsize=3, label=f"{budget:.3g} FLOPs")
        optimum = parabola_optimum(shapes["N"], shapes["mean"])
        if optimum is not None:
            x = np.logspace(np.log10(shapes["N"].min()), np.log10(shapes["N"].max()), 100)
            a, b, c = np.polyfit(np.log10(shapes["N"]), shapes["mean"], 2)
            ax.plot(x, a * np.log10(x) ** 2 + b * np.log10(x) + c, "--", color=colour, linewidth=1)
            ax.plot(*optimum, "*", color=colour, markersize=14, markeredgecolor="black")
    variants = frame[~main_shapes(frame)]
    if not variants.empty:
        ax.plot(variants["N"], variants["bpb"], "x", color="grey", label="heads-only variants (each seed)")
    if prediction is not None:
        ax.errorbar([prediction["N"]], [prediction["predicted_bpb"]],
                    yerr=[[prediction["predicted_bpb"] - prediction["interval"][0]],
                          [prediction["interval"][1] - prediction["predicted_bpb"]]],
                    fmt="D", color="black", mfc="white", capsize=4,
                    label=f"predicted at {prediction['budget']:.3g} FLOPs (90% interval)")
    if measured is not None and not measured.empty:
        ax.plot(measured["N"], measured["bpb"], "D", color="black", label="measured there (each seed)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (blocks' matrices + output head)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_fit(frame: pd.DataFrame, law, path: Path, *, title: str, measured: pd.DataFrame | None = None) -> None:
    """Every run's measured bpb against the fitted law's, with the diagonal; the prediction
    point's runs (not fitted) in black."""
    fig = _figure(6.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    for i, budget in enumerate(budgets(frame)):
        runs = frame[frame["budget"] == budget]
        ax.plot(law(runs["N"], runs["D"]), runs["bpb"], "o", color=f"C{i}", label=f"{budget:.3g} FLOPs", alpha=0.8)
    if measured is not None and not measured.empty:
        ax.plot(law(measured["N"], measured["D"]), measured["bpb"], "D", color="black", label="prediction point")
    values = np.concatenate([frame["bpb"], law(frame["N"], frame["D"])])
    lo, hi = float(values.min()) - 0.05, float(values.max()) + 0.05
    ax.plot([lo, hi], [lo, hi], "-", color="grey", linewidth=1)
    ax.set_xlabel("fitted bits per byte")
    ax.set_ylabel("measured bits per byte")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
