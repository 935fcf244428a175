"""Choosing how an IsoFLOP study predicts, from its fitted budgets only: each method of
`decoder.scaling_methods` is fitted to all budgets but the largest and predicts the optimum there
(the bpb at the minimum of that budget's parabola, and its N), which the held-out runs measured;
the method with the smallest bpb error is the one the study predicts with. Leaving each budget out
in turn (interpolating the inner ones) is reported beside it, not used to choose. The prediction
point itself (a budget past every fitted one) is never used to choose: `compare_at` sets each
method's prediction there beside what it measured, after the fact.

From a report's scaling.csv (role grid: fitted; role prediction: the measured point):

    python -m decoder.scaling_holdout results/scaling/scaling.csv [--unique-tokens U] [--rounds R]

U (the training split's tokens) is read from prediction.json beside the csv unless given.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from decoder.errors import UserError
from decoder.scaling_methods import (DEFAULT, Method, bootstrap, budget_optima, interval, method_named,
                                     methods_for, predict_shapes, with_main)
from decoder.scaling_study import LEVEL, SHAPE, budgets

MIN_BUDGETS = 3
"""A holdout needs optima at two fitted budgets and one held out."""


@dataclass(frozen=True)
class Holdout:
    """One method fitted without `budget`, its prediction of that budget's optimum, and the measurement."""

    method: str
    budget: float
    predicted_n: float
    predicted_bpb: float
    measured_n: float
    measured_bpb: float
    shape: str
    """The shape the method picks among those run at `budget` (the self-test made there) ..."""
    shape_error: float
    """... and its predicted - measured bpb (the mean of its seeds)."""

    @property
    def error(self) -> float:
        return self.predicted_bpb - self.measured_bpb


def hold_out(method: Method, frame: pd.DataFrame, unique: float | None, budget: float) -> Holdout | None:
    """`method` fitted to every run but those at `budget`, predicting its optimum; None where that
    budget has no interior minimum to compare with. A method that cannot be fitted without it
    predicts NaN."""
    frame = with_main(frame)
    held = frame[frame["budget"] == budget]
    target = budget_optima(held)
    if target.empty:
        return None
    try:
        predictor = method.fit(frame[frame["budget"] != budget], unique, None)
    except ValueError:
        return Holdout(method.name, budget, math.nan, math.nan, float(target["N"].iloc[0]),
                       float(target["bpb"].iloc[0]), "", math.nan)
    n, bpb = predictor.optimum(budget)
    pick = predict_shapes(predictor, held, budget).iloc[0]
    measured = held[(held[SHAPE] == pick[SHAPE].to_numpy(int)).all(axis=1)]["bpb"].mean()
    return Holdout(method.name, budget, n, bpb, float(target["N"].iloc[0]), float(target["bpb"].iloc[0]),
                   _shape(pick), float(pick["predicted_bpb"]) - float(measured))


def holdout_largest(frame: pd.DataFrame, unique: float | None) -> list[Holdout]:
    """Every applicable method fitted to all budgets but the largest, predicting the largest; empty
    with fewer than `MIN_BUDGETS` budgets with interior minima."""
    if len(budget_optima(frame)) < MIN_BUDGETS:
        return []
    held = [hold_out(m, frame, unique, budgets(frame)[-1]) for m in methods_for(frame, unique)]
    return [h for h in held if h is not None]


def leave_one_out(frame: pd.DataFrame, unique: float | None) -> list[Holdout]:
    """Every applicable method with each budget held out in turn."""
    if len(budget_optima(frame)) < MIN_BUDGETS:
        return []
    held = [hold_out(m, frame, unique, b) for m in methods_for(frame, unique) for b in budgets(frame)]
    return [h for h in held if h is not None]


def choose(frame: pd.DataFrame, unique: float | None) -> tuple[Method, list[Holdout]]:
    """The method with the smallest |error| predicting the largest budget from the others, and the
    holdout; `DEFAULT` (or the plain law where no run repeats data) without a holdout."""
    held = holdout_largest(frame, unique)
    finite = [h for h in held if math.isfinite(h.error)]
    if not finite:
        names = [m.name for m in methods_for(frame, unique)]
        return method_named(DEFAULT if DEFAULT in names else names[0]), held
    return method_named(min(finite, key=lambda h: abs(h.error)).method), held


def compare_at(frame: pd.DataFrame, unique: float | None, measured: pd.DataFrame) -> pd.DataFrame:
    """Each method fitted to all of `frame`, at the budget and shape of the `measured` runs: its
    best shape there, its bpb, and its bpb for the measured shape (N, mean D of its seeds); NaN
    for a method that cannot be fitted."""
    budget, n, d = float(measured["budget"].iloc[0]), float(measured["N"].iloc[0]), float(measured["D"].mean())
    rows = []
    for method in methods_for(frame, unique):
        try:
            predictor = method.fit(frame, unique, None)
        except ValueError:  # a method these budgets cannot fit (optima power laws without two minima)
            rows.append({"method": method.name, "best_shape": "—", "best_bpb": math.nan, "optimum_n": math.nan,
                         "shape_bpb": math.nan})
            continue
        best = predict_shapes(predictor, frame, budget).iloc[0]
        rows.append({"method": method.name, "best_shape": _shape(best), "best_bpb": float(best["predicted_bpb"]),
                     "optimum_n": predictor.optimum(budget)[0], "shape_bpb": predictor.bpb(n, d, budget)})
    return pd.DataFrame(rows)


def _shape(row) -> str:
    return f"d{int(row['d_model'])} h{int(row['n_heads'])} b{int(row['n_blocks'])}"


def _bpb(value: float, sign: str = "") -> str:
    return f"{value:{sign}.4f}" if math.isfinite(value) else "—"


def _count(value: float) -> str:
    from decoder.report.markdown import number
    return number(value, "count") if math.isfinite(value) else "—"


def holdout_lines(largest: list[Holdout], loo: list[Holdout], chosen: str) -> list[str]:
    """Markdown: the holdout table (and the leave-one-budget-out errors) and the method chosen."""
    from decoder.report.markdown import table

    if not largest:
        return [f"Too few budgets with an interior minimum for a holdout: the prediction uses {chosen}.", ""]
    loo_errors = {m: [abs(h.error) for h in loo if h.method == m] for m in {h.method for h in loo}}
    rows = [[h.method + (" **chosen**" if h.method == chosen else ""), _bpb(h.predicted_bpb), _bpb(h.measured_bpb),
             _bpb(h.error, "+"), _count(h.predicted_n), _count(h.measured_n), h.shape or "—",
             _bpb(h.shape_error, "+"), _bpb(float(np.mean(loo_errors[h.method]))) if loo_errors.get(h.method) else ""]
            for h in largest]
    budget = largest[0].budget
    return [f"Holdout: fitted on the budgets below {budget:.3g} FLOPs, predicted the optimum at {budget:.3g} (the "
            "minimum of its parabola in log10 N, as measured by its runs). The method with the smallest |error| "
            "predicts the study's next budget. \"Its shape there\": the shape it predicts best among those run "
            "at that budget (the self-test made there), and predicted − measured bpb of it. Last column: the mean "
            "|error| of bpb* when each budget is left out in turn (inner ones interpolated; not used to choose).", "",
            table(["method", "predicted bpb*", "measured bpb*", "error", "predicted N*", "measured N*",
                   "its shape there", "its error", "leave-one-out mean |error|"], rows), "", *_loo_lines(loo)]


def _loo_lines(loo: list[Holdout]) -> list[str]:
    """Markdown: each method's bpb* error with each budget left out."""
    from decoder.report.markdown import table

    if not loo:
        return []
    held = sorted({h.budget for h in loo})
    names = list(dict.fromkeys(h.method for h in loo))
    errors = {(h.method, h.budget): h.error for h in loo}
    rows = [[m] + [_bpb(errors.get((m, b), math.nan), "+") for b in held] for m in names]
    return ["Leave one budget out: predicted − measured bpb* with that budget held out.", "",
            table(["method"] + [f"{b:.3g} left out" for b in held], rows), ""]


def comparison_lines(compared: pd.DataFrame, measured: pd.DataFrame, chosen: str,
                     chosen_interval: tuple[float, float] | None) -> list[str]:
    """Markdown: each method's prediction at the measured point beside the measurement."""
    from decoder.report.markdown import table

    mean = measured["bpb"].mean()
    spread = f" ± {measured['bpb'].std():.4f}" if len(measured) > 1 else ""
    shape = _shape(measured.iloc[0])
    rows = []
    for _, r in compared.iterrows():
        cell = _bpb(r["shape_bpb"])
        if r["method"] == chosen and chosen_interval is not None:
            cell += f" [{chosen_interval[0]:.4f}, {chosen_interval[1]:.4f}]"
        rows.append([r["method"] + (" **chosen**" if r["method"] == chosen else ""), r["best_shape"],
                     _bpb(r["best_bpb"]), _count(r["optimum_n"]), cell, _bpb(r["shape_bpb"] - mean, "+")])
    brackets = (f" (in brackets the chosen method's {LEVEL:.0%} bootstrap interval: each shape's seeds resampled)"
                if chosen_interval else "")
    return [f"Each method fitted to every grid run, at {measured['budget'].iloc[0]:.3g} FLOPs: the shape it predicts "
            f"best, its bpb, its N*, and its bpb for {shape}, which {len(measured)} seed(s) measured at "
            f"{mean:.4f}{spread}{brackets}.", "",
            table(["method", "best shape", "its bpb", "N*", f"bpb of {shape}", "predicted − measured"], rows), ""]


def read_csv(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The grid runs and the prediction point's runs of a report's scaling.csv."""
    if not path.is_file():
        raise UserError(f"{path}: no such file (a scaling report's scaling.csv)")
    table = pd.read_csv(path)
    missing = [c for c in ["budget", *SHAPE, "seed", "N", "D", "flops_per_token", "bpb", "role"] if c not in table]
    if missing:
        raise UserError(f"{path}: not a scaling.csv, missing column(s) {', '.join(missing)}")
    measured = table[table["role"] == "prediction"].reset_index(drop=True)
    if len(measured.drop_duplicates(["budget", *SHAPE])) > 1:
        raise UserError(f"{path}: the prediction rows hold more than one budget and shape; expected one point")
    return table[table["role"] == "grid"].reset_index(drop=True), measured


def _unique_tokens(path: Path, given: int | None) -> int | None:
    if given is not None:
        return given
    beside = path.parent / "prediction.json"
    if beside.is_file():
        from decoder.io import read_json
        return read_json(beside).get("unique_tokens")
    return None


def report(grid: pd.DataFrame, measured: pd.DataFrame, unique: float | None, rounds: int) -> list[str]:
    """The holdout, the method chosen, and (with measured runs) each method at the measured point."""
    grid = with_main(grid)
    method, largest = choose(grid, unique)
    lines = holdout_lines(largest, leave_one_out(grid, unique), method.name)
    if measured.empty:
        return lines
    fitted = method.fit(grid, unique, None)
    boot = bootstrap(method, fitted, grid, unique, rounds=rounds) if rounds else []
    n, d, budget = float(measured["N"].iloc[0]), float(measured["D"].mean()), float(measured["budget"].iloc[0])
    bounds = interval([p.bpb(n, d, budget) for p in boot], LEVEL) if boot else None
    return lines + comparison_lines(compare_at(grid, unique, measured), measured, method.name, bounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoder.scaling_holdout", description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="a scaling report's scaling.csv")
    parser.add_argument("--unique-tokens", type=int, help="the training split's tokens (default: prediction.json's)")
    parser.add_argument("--rounds", type=int, default=200, help="bootstrap refits of the chosen method (0: none)")
    args = parser.parse_args(argv)
    try:
        grid, measured = read_csv(args.csv)
        if grid.empty:
            raise UserError(f"{args.csv}: no grid runs")
        print("\n".join(report(grid, measured, _unique_tokens(args.csv, args.unique_tokens), args.rounds)))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
