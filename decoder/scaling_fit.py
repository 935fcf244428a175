"""Fitting scaling laws to an IsoFLOP study: each budget's optimum, L(N, D), its data-constrained
variant, bootstrap intervals and the compute-optimal N and D. Numbers only (numpy, scipy): the
report (`decoder.report.scaling`) reads the runs and draws.

- `parabola_optimum`: a budget's optimum, a parabola in log10 N through its (N, loss) points
  (Chinchilla's approach 2); None without an interior minimum.
- `fit_law`: L(N, D) = E + A / N^alpha + B / D^beta (approach 3), fitted as Hoffmann et al. do:
  a Huber loss (delta 1e-3) on log L (scipy's least_squares), from a grid of starting points. With `unique`
  (the training split's tokens) the data-constrained form of Muennighoff et al. (2023) replaces D
  by the effective data D' = U + U R* (1 - exp(-(D/U - 1) / R*)) once D > U (repeated epochs are
  worth less, R* the repetitions at which they are worth 1 - 1/e of fresh data), fitting R* too.
- `bootstrap`: refits on runs resampled with replacement; percentile intervals of every parameter
  and of any function of the fit (a prediction).
- `optimal_allocation`: the N (and D = C / 6N) minimising the fitted law at a budget C.
- `fit_power_law`: y = k x^a by least squares in log-log (approaches 1 and 2 fit N*(C) and L*(C)
  so, to each budget's optimum); positive wherever it is extrapolated, as a loss must be.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

HUBER_DELTA = 1e-3


@dataclass(frozen=True)
class Law:
    """A fitted L(N, D); `r_star` is None for the plain (unconstrained) law."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    r_star: float | None = None
    unique: float | None = None
    huber: float = math.nan

    def effective_data(self, d):
        """D' (Muennighoff et al.): D itself up to one epoch of `unique` tokens, less after."""
        d = np.asarray(d, dtype=float)
        if self.r_star is None or self.unique is None:
            return d
        repeats = np.maximum(d / self.unique - 1.0, 0.0)
        return np.minimum(d, self.unique) + self.unique * self.r_star * (1.0 - np.exp(-repeats / self.r_star))

    def __call__(self, n, d):
        n = np.asarray(n, dtype=float)
        return self.E + self.A / n ** self.alpha + self.B / self.effective_data(d) ** self.beta

    def params(self) -> dict[str, float]:
        out = {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta}
        if self.r_star is not None:
            out["R*"] = self.r_star
        return out


def parabola_optimum(n, loss) -> tuple[float, float] | None:
    """(N, loss) at the minimum of a parabola fitted in log10 N; None without an interior minimum
    (fewer than 3 distinct N, a parabola opening downward, or its minimum outside the N tried)."""
    x, y = np.log10(np.asarray(n, dtype=float)), np.asarray(loss, dtype=float)
    if len(np.unique(x)) < 3:
        return None
    a, b, c = np.polyfit(x, y, 2)
    if a <= 0:
        return None
    x_min = -b / (2 * a)
    if not x.min() <= x_min <= x.max():
        return None  # the minimum lies beyond the shapes tried: the curve has not turned
    return float(10 ** x_min), float(c - b * b / (4 * a))


def _law(theta: np.ndarray, unique: float | None) -> Law:
    e, a, alpha, b, beta = theta[:5]
    r_star = float(np.exp(theta[5])) if len(theta) > 5 else None
    return Law(float(np.exp(e)), float(np.exp(a)), float(alpha), float(np.exp(b)), float(beta), r_star,
               unique if r_star is not None else None)


def _residuals(theta, log_n, d, log_loss, unique):
    law = _law(theta, unique)
    log_d = np.log(law.effective_data(d))
    terms = np.stack([np.full_like(log_n, theta[0]), theta[1] - theta[2] * log_n, theta[3] - theta[4] * log_d])
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0)) - log_loss  # log(E + A/N^a + B/D^b) - log L


def _starts(log_loss_min: float, constrained: bool) -> list[np.ndarray]:
    grid = itertools.product([log_loss_min - 0.5], [1.0, 5.0, 9.0], [0.2, 0.6], [1.0, 5.0, 9.0], [0.2, 0.6])
    starts = [np.array(g) for g in grid]
    if constrained:
        starts = [np.append(s, r) for s in starts for r in (np.log(2.0), np.log(15.0))]
    return starts


def fit_law(n, d, loss, *, unique: float | None = None, starts: list[np.ndarray] | None = None) -> Law:
    """L(N, D) fitted to runs of N parameters, D training tokens and final loss `loss`; with
    `unique` the data-constrained form (see the module docstring). `starts` replaces the grid of
    starting points (a bootstrap starts from the full fit)."""
    from scipy.optimize import least_squares

    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    log_n, log_loss = np.log(n), np.log(loss)
    low, high = [-30.0, -30.0, 0.0, -30.0, 0.0], [30.0, 30.0, 2.0, 30.0, 2.0]  # log E, log A, alpha, log B, beta
    if unique is not None:
        low, high = low + [np.log(0.05)], high + [np.log(1e3)]
    def solve(start: np.ndarray, max_nfev: int | None):
        start = np.clip(start, np.array(low) + 1e-9, np.array(high) - 1e-9)
        return least_squares(_residuals, start, args=(log_n, d, log_loss, unique), bounds=(low, high),
                             loss="huber", f_scale=HUBER_DELTA, max_nfev=max_nfev)

    # A short run from every start, then the best one to convergence.
    tried = [solve(s, 60) for s in starts or _starts(float(log_loss.min()), unique is not None)]
    best = solve(min(tried, key=lambda r: r.cost).x, None)
    return replace(_law(best.x, unique), huber=float(best.cost))


def law_theta(law: Law) -> np.ndarray:
    """The fit's parameters in the optimiser's coordinates (a starting point)."""
    theta = [math.log(law.E), math.log(law.A), law.alpha, math.log(law.B), law.beta]
    if law.r_star is not None:
        theta.append(math.log(law.r_star))
    return np.array(theta)


@dataclass(frozen=True)
class Bootstrap:
    """Refits on resampled runs: the fits, and percentile intervals."""

    laws: list[Law]

    def interval(self, fn: Callable[[Law], float], level: float = 0.9) -> tuple[float, float]:
        values = np.array([fn(law) for law in self.laws], dtype=float)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
        return float(low), float(high)

    def param_intervals(self, level: float = 0.9) -> dict[str, tuple[float, float]]:
        keys = self.laws[0].params()
        return {k: self.interval(lambda law, k=k: law.params()[k], level) for k in keys}


def bootstrap(law: Law, n, d, loss, *, rounds: int = 200, seed: int = 0) -> Bootstrap:
    """Refit `rounds` times on the runs drawn with replacement (each run a seed of a point)."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    rng = np.random.default_rng(seed)
    start = law_theta(law)
    laws = []
    for _ in range(rounds):
        pick = rng.integers(0, len(n), len(n))
        laws.append(fit_law(n[pick], d[pick], loss[pick], unique=law.unique, starts=[start]))
    return Bootstrap(laws)


def optimal_allocation(law: Law, compute: float, flops_per_param_token: float = 6.0) -> tuple[float, float]:
    """(N, D) minimising law(N, D) under N * D * 6 = compute (attention FLOPs left out), found
    on a fine log grid of N."""
    grid = np.logspace(2, 12, 4001)
    d = compute / (flops_per_param_token * grid)
    i = int(np.argmin(law(grid, d)))
    return float(grid[i]), float(d[i])


@dataclass(frozen=True)
class PowerLaw:
    """y = k x^exponent."""

    k: float
    exponent: float

    def __call__(self, x):
        return self.k * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x, y) -> PowerLaw:
    """y = k x^a fitted by least squares on log y against log x (two points or more, all positive)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x)) < 2 or (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power law needs two distinct positive x or more and positive y")
    exponent, log_k = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(np.exp(log_k)), float(exponent))
