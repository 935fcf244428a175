"""The ways an IsoFLOP study can predict a larger budget from its runs, each fitted to a table of
runs (`decoder.scaling_study.study_frame`, or results/<name>/scaling.csv read back) and judged by
how well it predicted a budget it was not fitted to (`decoder.scaling_holdout`).

- law, all runs / data-constrained, all runs: L(N, D) (`decoder.scaling_fit.fit_law`, approach 3
  of Hoffmann et al.) fitted to every run.
- law, near optima / data-constrained, near optima: the same fitted only to the shapes near each
  budget's optimum: within `NEAR_DECADES` of its parabola's N and with a seed spread of at most
  `MAX_SEED_SD` bpb. The large shapes, which see few tokens, are the unstable runs (seeds apart by
  0.1-0.2 bpb), far from any optimum, and carry much of a Huber loss on log L.
- optima power laws: approach 2 to the end: each budget's optimum (the parabola in log10 N through
  its shapes' mean bpb), then N*(C) = k C^a and L*(C) = k' C^-g fitted to those optima (a power
  law in C: positive wherever it is extrapolated). A shape of N at budget C is predicted
  L*(C) + q (log10 N - log10 N*(C))^2, q the fitted budgets' mean parabola curvature.
- optima power laws, near optima: the same with each budget's parabola through its runs near the
  optimum only (as above, centred by the first parabola): a parabola through the unstable far
  shapes can sit well above the best shapes it passes (0.05 bpb at one budget of
  experiments/scaling.yaml, more than ten times the seeds' spread there).

A method's `fit(frame, unique, start)` returns a `Predictor`: the bpb of a shape (N, D) at a budget
and the optimum (N*, bpb*) there. `bootstrap` refits a method on the seeds of each (budget, shape)
drawn with replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from decoder.scaling_fit import Law, PowerLaw, fit_law, fit_power_law, law_theta, optimal_allocation
from decoder.scaling_study import SHAPE, budgets, main_shapes, shapes

NEAR_DECADES = 1.0
"""A run is near its budget's optimum within this many decades of N from the parabola's N."""
MAX_SEED_SD = 0.03
"""... and when its shape's seeds spread by at most this standard deviation (bpb)."""
MAIN = "main"
"""The frame column saying which runs lie on the IsoFLOP curves (`main_shapes`)."""


class Predictor(Protocol):
    def bpb(self, n: float, d: float, budget: float) -> float: ...
    def optimum(self, budget: float) -> tuple[float, float]: ...
    def params(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class LawPredictor:
    """A fitted L(N, D): a shape's bpb is the law's, the optimum the law's minimum at D = C / 6N."""

    law: Law

    def bpb(self, n: float, d: float, budget: float) -> float:
        return float(self.law(n, d))

    def optimum(self, budget: float) -> tuple[float, float]:
        n, d = optimal_allocation(self.law, budget)
        return n, float(self.law(n, d))

    def params(self) -> dict[str, float]:
        return self.law.params()


@dataclass(frozen=True)
class OptimaPredictor:
    """Power laws in C through the budgets' optima, and the IsoFLOP curve's curvature around them."""

    n_star: PowerLaw
    bpb_star: PowerLaw
    curvature: float

    def bpb(self, n: float, d: float, budget: float) -> float:
        offset = math.log10(n) - math.log10(float(self.n_star(budget)))
        return float(self.bpb_star(budget)) + self.curvature * offset ** 2

    def optimum(self, budget: float) -> tuple[float, float]:
        return float(self.n_star(budget)), float(self.bpb_star(budget))

    def params(self) -> dict[str, float]:
        """N* = k C^a, bpb* = k' C^-g, and the curvature q."""
        return {"k": self.n_star.k, "a": self.n_star.exponent, "k'": self.bpb_star.k, "g": -self.bpb_star.exponent,
                "q": self.curvature}


@dataclass(frozen=True)
class Method:
    name: str
    fit: Callable[[pd.DataFrame, float | None, Predictor | None], Predictor]
    constrained: bool = False
    """Needs the unique tokens and runs past one epoch of them."""


def with_main(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the `main` column (on the IsoFLOP curves), decided on the grid's design (which
    shapes ran at which budgets) before any budget is held out; kept where already there."""
    return frame if MAIN in frame else frame.assign(**{MAIN: main_shapes(frame).to_numpy()})


def budget_optima(frame: pd.DataFrame) -> pd.DataFrame:
    """Each budget's optimum: N, bpb and curvature (per decade squared) of the parabola in log10 N
    through its main shapes' mean bpb; budgets without an interior minimum are left out."""
    frame = with_main(frame)
    rows = []
    for budget in budgets(frame):
        means = frame[frame[MAIN] & (frame["budget"] == budget)].groupby("N")["bpb"].mean()
        x, y = np.log10(means.index.to_numpy(float)), means.to_numpy(float)
        if len(x) < 3:
            continue
        a, b, c = np.polyfit(x, y, 2)
        if a > 0 and x.min() <= -b / (2 * a) <= x.max():
            rows.append({"budget": budget, "N": float(10 ** (-b / (2 * a))), "bpb": float(c - b * b / (4 * a)),
                         "curvature": float(a)})
    return pd.DataFrame(rows, columns=["budget", "N", "bpb", "curvature"])


def near_optima(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs near their budget's optimum (see the module docstring); a budget without an
    interior minimum is centred on its best shape."""
    frame = with_main(frame)
    optima = budget_optima(frame).set_index("budget")["N"]
    keep = pd.Series(False, index=frame.index)
    for budget in budgets(frame):
        runs = frame[frame["budget"] == budget]
        if budget in optima:
            centre = optima[budget]
        else:
            means = runs[runs[MAIN]].groupby("N")["bpb"].mean()
            centre = float(means.idxmin())
        sd = runs.groupby(SHAPE)["bpb"].transform("std").fillna(0.0)
        keep[runs.index] = (sd <= MAX_SEED_SD) & (np.abs(np.log10(runs["N"] / centre)) <= NEAR_DECADES)
    return frame[keep]


def _law_fit(near: bool, constrained: bool):
    def fit(frame: pd.DataFrame, unique: float | None, start: Predictor | None) -> Predictor:
        runs = near_optima(frame) if near else frame
        starts = [law_theta(start.law)] if isinstance(start, LawPredictor) else None
        return LawPredictor(fit_law(runs["N"], runs["D"], runs["bpb"], unique=unique if constrained else None,
                                    starts=starts))
    return fit


def _optima_fit(near: bool):
    def fit(frame: pd.DataFrame, unique: float | None, start: Predictor | None) -> Predictor:
        optima = budget_optima(near_optima(frame) if near else frame)
        if len(optima) < 2:
            raise ValueError("the optima power laws need interior minima at two budgets or more")
        return OptimaPredictor(fit_power_law(optima["budget"], optima["N"]),
                               fit_power_law(optima["budget"], optima["bpb"]), float(optima["curvature"].mean()))
    return fit


METHODS = [
    Method("law, all runs", _law_fit(near=False, constrained=False)),
    Method("data-constrained, all runs", _law_fit(near=False, constrained=True), constrained=True),
    Method("law, near optima", _law_fit(near=True, constrained=False)),
    Method("data-constrained, near optima", _law_fit(near=True, constrained=True), constrained=True),
    Method("optima power laws", _optima_fit(near=False)),
    Method("optima power laws, near optima", _optima_fit(near=True)),
]
DEFAULT = "data-constrained, all runs"
"""The method used when the budgets are too few for a holdout (and runs repeat data)."""


def methods_for(frame: pd.DataFrame, unique: float | None) -> list[Method]:
    """The methods that apply: the data-constrained ones only where some run saw more than one
    epoch of `unique` tokens."""
    repeats = unique is not None and bool((frame["D"] > unique).any())
    return [m for m in METHODS if repeats or not m.constrained]


def method_named(name: str) -> Method:
    return next(m for m in METHODS if m.name == name)


def predict_shapes(predictor: Predictor, frame: pd.DataFrame, budget: float, boot: list[Predictor] | None = None,
                   level: float = 0.9) -> pd.DataFrame:
    """Every main shape's predicted bpb at `budget` (D = budget / its FLOPs per token), lowest
    first; with `boot` (refits) its `level` interval too (low, high)."""
    frame = with_main(frame)
    out = shapes(frame[frame[MAIN]])
    out["D"] = budget / out["flops_per_token"]
    out["predicted_bpb"] = [predictor.bpb(n, d, budget) for n, d in zip(out["N"], out["D"])]
    if boot is not None:
        bounds = [interval([p.bpb(n, d, budget) for p in boot], level) for n, d in zip(out["N"], out["D"])]
        out["low"], out["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out.sort_values("predicted_bpb").reset_index(drop=True)


def resample_seeds(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The runs of each (budget, shape) drawn with replacement, as many as it has."""
    picks = [rng.choice(index.to_numpy(), len(index)) for index in frame.groupby(["budget", *SHAPE]).groups.values()]
    return frame.loc[np.concatenate(picks)].reset_index(drop=True)


def bootstrap(method: Method, fitted: Predictor, frame: pd.DataFrame, unique: float | None, *, rounds: int,
              seed: int = 0) -> list[Predictor]:
    """`rounds` refits of `method` (from the full fit `fitted`) on the seeds resampled; a refit
    that fails (a resample without interior minima) is left out."""
    frame = with_main(frame)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        try:
            out.append(method.fit(resample_seeds(frame, rng), unique, fitted))
        except ValueError:
            continue
    return out


def interval(values, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of the finite values (NaN without any)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)
