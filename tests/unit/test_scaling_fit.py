"""Scaling-law fits on synthetic runs drawn from a known law: the fit recovers it, the parabola
finds a known optimum, the bootstrap interval holds the truth, the allocation is the closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoder.scaling_fit import Law, bootstrap, fit_law, optimal_allocation, parabola_optimum

TRUE = Law(E=1.6, A=40.0, alpha=0.35, B=120.0, beta=0.32)
BUDGETS = [5e10, 1.6e11, 5e11, 1.6e12]


def synthetic(law: Law, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six shapes per budget, D = C / 6N, loss = law(N, D) times log-normal noise."""
    rng = np.random.default_rng(seed)
    n = np.array([x for _ in BUDGETS for x in np.logspace(4, 6, 6)])
    d = np.array([c / (6 * x) for c in BUDGETS for x in np.logspace(4, 6, 6)])
    return n, d, law(n, d) * np.exp(rng.normal(0.0, noise, len(n)))


def test_parabola_finds_the_minimum_of_a_parabola_in_log_n():
    n = np.logspace(3, 6, 7)
    loss = 2.0 + 0.3 * (np.log10(n) - math.log10(4e4)) ** 2
    n_opt, loss_opt = parabola_optimum(n, loss)
    assert n_opt == pytest.approx(4e4, rel=1e-6) and loss_opt == pytest.approx(2.0, abs=1e-9)


def test_parabola_without_an_interior_minimum_is_none():
    assert parabola_optimum([1e3, 1e4, 1e5], [3.0, 1.5, 1.0]) is None  # still falling: minimum past 1e5
    assert parabola_optimum([1e3, 1e4, 1e5], [1.0, 2.0, 1.5]) is None  # opens downward
    assert parabola_optimum([1e3, 1e4], [1.0, 2.0]) is None  # two points


def test_fit_recovers_the_law_it_was_drawn_from():
    n, d, loss = synthetic(TRUE, noise=0.001)
    fit = fit_law(n, d, loss)
    for key, value in TRUE.params().items():
        assert fit.params()[key] == pytest.approx(value, rel=0.08), key


def test_bootstrap_interval_holds_the_true_exponents():
    n, d, loss = synthetic(TRUE, noise=0.005, seed=1)
    fit = fit_law(n, d, loss)
    intervals = bootstrap(fit, n, d, loss, rounds=60, seed=2).param_intervals(0.95)
    for key in ("alpha", "beta"):
        low, high = intervals[key]
        assert low <= TRUE.params()[key] <= high, (key, low, high)
        assert high - low < 0.3


def test_data_constrained_fit_recovers_r_star():
    unique = 2e5
    law = Law(E=1.6, A=40.0, alpha=0.35, B=120.0, beta=0.32, r_star=4.0, unique=unique)
    n, d, loss = synthetic(law, noise=0.0005, seed=3)
    assert (d > 5 * unique).any()  # many runs repeat the data
    fit = fit_law(n, d, loss, unique=unique)
    assert fit.r_star == pytest.approx(4.0, rel=0.25)
    assert fit.beta == pytest.approx(0.32, rel=0.1)
    assert fit.huber < fit_law(n, d, loss).huber  # the plain law cannot describe repeated data as well


def test_effective_data_is_d_up_to_one_epoch_and_saturates_after():
    law = Law(E=1.0, A=1.0, alpha=0.5, B=1.0, beta=0.5, r_star=2.0, unique=100.0)
    assert law.effective_data(50.0) == 50.0
    assert law.effective_data(100.0) == 100.0
    assert 100.0 < law.effective_data(300.0) < 300.0
    assert law.effective_data(1e9) == pytest.approx(100.0 + 100.0 * 2.0)  # U + U R*


def test_optimal_allocation_is_chinchillas_closed_form():
    compute = 1e15
    n_opt, d_opt = optimal_allocation(TRUE, compute)
    a, b = TRUE.alpha, TRUE.beta
    g = (a * TRUE.A / (b * TRUE.B)) ** (1 / (a + b))
    expected = g * (compute / 6) ** (b / (a + b))
    assert n_opt == pytest.approx(expected, rel=0.01)
    assert n_opt * d_opt * 6 == pytest.approx(compute)
