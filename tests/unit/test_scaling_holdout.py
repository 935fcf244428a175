"""The prediction methods of a scaling study and the holdout that chooses among them, on synthetic
studies drawn from a known law: the optima power laws recover the compute-optimal exponent, the
near-optimum fits (law and parabolas) ignore unstable far shapes, a holdout never sees the budget it predicts, the
method with the smallest holdout error is chosen, and the csv command reads a report's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import decoder.scaling_holdout as holdout
import decoder.scaling_methods as methods
from decoder.errors import UserError
from decoder.scaling_fit import Law, fit_power_law
from decoder.scaling_methods import (LawPredictor, Method, budget_optima, method_named, near_optima, predict_shapes,
                                     resample_seeds)

TRUE = Law(E=1.6, A=40.0, alpha=0.35, B=120.0, beta=0.32)
BUDGETS = [1e13, 4e13, 1.6e14, 6.4e14]


def study(law: Law = TRUE, noise: float = 0.002, seeds: int = 2, seed: int = 0) -> pd.DataFrame:
    """Seven shapes per budget spanning 1.5 decades around the law's optimum, D = C / 6N, bpb =
    law(N, D) times log-normal noise; d_model numbers the shape."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in BUDGETS:
        centre = np.log10(_optimum(law, budget))
        for n in np.logspace(centre - 0.75, centre + 0.75, 7):
            n = float(np.round(n))
            for s in range(seeds):
                d = budget / (6 * n)
                rows.append({"budget": budget, "d_model": int(n), "n_heads": 1, "n_blocks": 1, "seed": s, "N": n,
                             "D": d, "C": budget, "flops_per_token": 6 * n, "bpb": float(law(n, d)) * np.exp(
                                 rng.normal(0.0, noise)), "role": "grid"})
    return pd.DataFrame(rows)


def _optimum(law: Law, budget: float) -> float:
    """Chinchilla's closed form of the compute-optimal N."""
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    return g * (budget / 6) ** (law.beta / (law.alpha + law.beta))


def test_power_law_fit_recovers_the_exponent_of_noisy_optima():
    rng = np.random.default_rng(0)
    c = np.logspace(10, 12, 5)
    fit = fit_power_law(c, 3.0 * c ** 0.47 * np.exp(rng.normal(0.0, 0.01, len(c))))
    assert fit.exponent == pytest.approx(0.47, abs=0.02)
    with pytest.raises(ValueError):
        fit_power_law([1.0, 1.0], [2.0, 3.0])


def test_optima_power_laws_recover_the_compute_optimal_exponent():
    frame = study()
    optima = budget_optima(frame)
    assert len(optima) == len(BUDGETS)
    predictor = method_named("optima power laws").fit(frame, None, None)
    exponent = TRUE.beta / (TRUE.alpha + TRUE.beta)  # N* ~ C^(beta / (alpha + beta)) for this law
    assert predictor.n_star.exponent == pytest.approx(exponent, abs=0.03)
    for budget in (BUDGETS[-1], 4 * BUDGETS[-1]):  # at a fitted budget and extrapolated 4x
        n, bpb = predictor.optimum(budget)
        truth = float(TRUE(_optimum(TRUE, budget), budget / (6 * _optimum(TRUE, budget))))
        assert n == pytest.approx(_optimum(TRUE, budget), rel=0.15)
        if budget in BUDGETS:
            assert bpb == pytest.approx(truth, abs=0.02)
        else:  # a power law in C has no floor E: extrapolated, it promises more than a law with one
            assert 0 < bpb < truth


def test_near_optima_drops_unstable_and_far_shapes_and_its_fit_recovers_the_law():
    frame = study(seeds=3, noise=0.001)
    rng = np.random.default_rng(1)
    largest = frame.groupby("budget")["N"].transform("max")
    unstable = frame["N"] == largest  # the biggest shape of every budget: seeds apart by ~0.2 bpb
    frame.loc[unstable, "bpb"] += rng.normal(0.3, 0.2, int(unstable.sum()))
    far = frame.loc[frame.index[(frame["budget"] == BUDGETS[0])][:3]]  # one more shape, 1.35 decades off, stable
    n = far["N"] / 10 ** 0.6
    far = far.assign(N=n, D=BUDGETS[0] / (6 * n), flops_per_token=6 * n, d_model=1, bpb=TRUE(n, BUDGETS[0] / (6 * n)))
    frame = pd.concat([frame, far], ignore_index=True)
    kept = near_optima(frame)
    assert not kept["N"].isin(largest[unstable]).any() and not (kept["d_model"] == 1).any()
    assert len(kept) == len(frame) - int(unstable.sum()) - 3
    near = method_named("law, near optima").fit(frame, None, None)
    assert near.law.alpha == pytest.approx(TRUE.alpha, rel=0.1) and near.law.beta == pytest.approx(TRUE.beta, rel=0.1)
    everything = method_named("law, all runs").fit(frame, None, None)
    assert abs(everything.law.alpha - TRUE.alpha) > abs(near.law.alpha - TRUE.alpha)
    # The unstable shapes bend every budget's parabola away from the optimum; through the near runs it finds it.
    truth = np.array([float(TRUE(_optimum(TRUE, b), b / (6 * _optimum(TRUE, b)))) for b in BUDGETS])
    biased, recovered = budget_optima(frame)["bpb"].to_numpy(), budget_optima(kept)["bpb"].to_numpy()
    assert np.abs(biased - truth).max() > 0.03 and np.abs(recovered - truth).max() < 0.01
    near_fit = method_named("optima power laws, near optima").fit(frame, None, None).bpb_star(BUDGETS[-1])
    all_fit = method_named("optima power laws").fit(frame, None, None).bpb_star(BUDGETS[-1])
    assert near_fit == pytest.approx(truth[-1], abs=0.02) and abs(all_fit - truth[-1]) > abs(near_fit - truth[-1])


def test_a_holdout_never_fits_the_budget_it_predicts():
    frame = study()
    seen = []

    def spy(runs, unique, start):
        seen.append(set(runs["budget"]))
        return method_named("optima power laws").fit(runs, unique, start)

    result = holdout.hold_out(Method("spy", spy), frame, None, BUDGETS[-1])
    assert seen == [set(BUDGETS[:-1])]
    # Its prediction does not move when the held-out runs do; what they measured does.
    shifted = frame.assign(bpb=np.where(frame["budget"] == BUDGETS[-1], frame["bpb"] + 0.5, frame["bpb"]))
    again = holdout.hold_out(Method("spy", spy), shifted, None, BUDGETS[-1])
    assert (again.predicted_bpb, again.predicted_n) == (result.predicted_bpb, result.predicted_n)
    assert again.measured_bpb == pytest.approx(result.measured_bpb + 0.5, abs=1e-9)
    assert again.shape_error == pytest.approx(result.shape_error - 0.5, abs=1e-9)


def test_the_method_with_the_smallest_holdout_error_is_chosen(monkeypatch):
    frame = study()

    def offset(by: float):
        def fit(runs, unique, start):
            return LawPredictor(Law(TRUE.E + by, TRUE.A, TRUE.alpha, TRUE.B, TRUE.beta))
        return fit

    fakes = [Method("high", offset(0.2)), Method("true", offset(0.0)), Method("low", offset(-0.1))]
    monkeypatch.setattr(methods, "METHODS", fakes)
    chosen, held = holdout.choose(frame, None)
    assert chosen.name == "true"
    errors = {h.method: h.error for h in held}
    assert errors["high"] == pytest.approx(0.2, abs=0.01) and abs(errors["true"]) < 0.01
    assert {h.budget for h in held} == {BUDGETS[-1]}
    # Fewer than three budgets with an optimum: no holdout, the default (here the only) method.
    chosen, held = holdout.choose(frame[frame["budget"] <= BUDGETS[1]], None)
    assert (chosen.name, held) == ("high", [])


def test_predicted_shapes_and_the_seed_bootstrap():
    frame = study()
    method = method_named("optima power laws")
    fitted = method.fit(frame, None, None)
    resampled = resample_seeds(frame, np.random.default_rng(0))
    assert len(resampled) == len(frame)
    assert (resampled.groupby("budget")["N"].nunique() == frame.groupby("budget")["N"].nunique()).all()
    boot = methods.bootstrap(method, fitted, frame, None, rounds=20)
    table = predict_shapes(fitted, frame, 4 * BUDGETS[-1], boot, 0.9)
    assert (table["low"] <= table["predicted_bpb"]).all() and (table["predicted_bpb"] <= table["high"]).all()
    assert table["predicted_bpb"].is_monotonic_increasing


def test_the_csv_command_prints_the_holdout_and_the_comparison(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(methods, "METHODS", [method_named("optima power laws")])
    frame = study()
    n = float(frame["N"].max())
    point = frame.iloc[:2].assign(budget=4 * BUDGETS[-1], N=n, D=4 * BUDGETS[-1] / (6 * n), bpb=[2.0, 2.002],
                                  role="prediction")
    path = tmp_path / "scaling.csv"
    pd.concat([frame, point]).to_csv(path, index=False)
    assert holdout.main([str(path), "--rounds", "10"]) == 0
    out = capsys.readouterr().out
    assert "Holdout: fitted on the budgets below 6.4e+14" in out and "optima power laws **chosen**" in out
    assert "which 2 seed(s) measured at 2.0010 ± 0.0014" in out
    assert "Leave one budget out" in out and "1e+13 left out" in out

    frame.drop(columns="bpb").to_csv(path, index=False)
    assert holdout.main([str(path)]) == 2
    assert "missing column(s) bpb" in capsys.readouterr().err
    with pytest.raises(UserError):
        holdout.read_csv(tmp_path / "absent.csv")
