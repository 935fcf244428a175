"""The scaling study's report (an experiment whose grid varies training.max_flops), written beside
the usual summary by `decoder report`: results/<name>/scaling.md, scaling.csv (one row per run),
isoflop.png, fit.png and prediction.json (the prediction as it was made, when there is one).

scaling.md: each budget's shapes (mean ± sd over seeds) and its optimum (a parabola in log N), the
heads-only axis, L(N, D) = E + A/N^alpha + B/D^beta and its data-constrained variant with 90%
bootstrap intervals (runs resampled), the compute-optimal N and D per budget by each law, the
holdout that chooses the prediction method (`decoder.scaling_holdout`) with every method's
prediction at the measured point, and the prediction made before the prediction point was
trained, beside what it measured.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from decoder.experiments.grid import Experiment
from decoder.io import atomic_write, write_json
from decoder.report.markdown import number, table
from decoder.report.scaling_plots import per_shape, plot_fit, plot_isoflop
from decoder.runs import DONE, load_records, read_run
from decoder.scaling_fit import optimal_allocation, parabola_optimum
from decoder.scaling_study import (LEVEL, SHAPE, StudyFit, budgets, fit_study, heads_axis, main_shapes, study_frame,
                                   unique_tokens)


def _shape(row) -> str:
    return f"d{int(row['d_model'])} h{int(row['n_heads'])} b{int(row['n_blocks'])}"


def _interval(low: float, high: float, kind: str = "float") -> str:
    return f"[{number(low, kind)}, {number(high, kind)}]"


def _budget_tables(frame: pd.DataFrame) -> list[str]:
    main = frame[main_shapes(frame)]
    rows, optima = [], []
    for budget in budgets(main):
        shapes = per_shape(main[main["budget"] == budget])
        best = shapes["mean"].idxmin()
        for i, r in shapes.iterrows():
            rows.append([f"{budget:.3g}", _shape(r), number(r["N"], "count"), number(r["D"], "count"),
                         f"{number(r['mean'])} ± {number(r['sd'])}" + (" **best**" if i == best else ""),
                         str(int(r["seeds"]))])
        optimum = parabola_optimum(shapes["N"], shapes["mean"])
        optima.append([f"{budget:.3g}", number(optimum[0], "count") if optimum else "no interior minimum",
                       number(budget / (6 * optimum[0]), "count") if optimum else "",
                       number(optimum[1]) if optimum else ""])
    return ["## IsoFLOP curves", "", "![IsoFLOP curves](isoflop.png)", "",
            table(["FLOPs", "shape", "N", "tokens D", "val bpb (mean ± sd)", "seeds"], rows), "",
            "Each budget's optimum: a parabola in log10 N through its shapes' mean bpb (D = C / 6N).", "",
            table(["FLOPs", "N at the minimum", "D = C / 6N", "bpb at the minimum"], optima), ""]


def _heads_table(frame: pd.DataFrame) -> list[str]:
    heads = heads_axis(frame)
    if heads.empty:
        return []
    stats = per_shape(heads).sort_values(["budget", "d_model", "n_blocks", "n_heads"])
    rows = [[f"{r['budget']:.3g}", _shape(r), str(int(r["d_model"] // r["n_heads"])), number(r["N"], "count"),
             f"{number(r['mean'])} ± {number(r['sd'])}", str(int(r["seeds"]))] for _, r in stats.iterrows()]
    return ["## Heads at fixed N", "", "Same width, depth, N and tokens; only the number of heads differs.", "",
            table(["FLOPs", "shape", "head dim", "N", "val bpb (mean ± sd)", "seeds"], rows), ""]


def _law_tables(fit: StudyFit, frame: pd.DataFrame) -> list[str]:
    laws = [("L(N, D)", fit.law, fit.boot)]
    if fit.constrained is not None:
        laws.append(("data-constrained", fit.constrained, fit.constrained_boot))
    keys = list(laws[-1][1].params())
    rows = []
    for name, law, boot in laws:
        intervals = boot.param_intervals(LEVEL)
        rows.append([name] + [f"{law.params()[k]:.4g} {_interval(*intervals[k], 'sig')}" if k in intervals else ""
                              for k in keys] + [f"{law.huber:.3g}"])
    alloc = []
    for budget in budgets(frame):
        cells = [f"{budget:.3g}"]
        for _, law, boot in laws:
            n_opt, d_opt = optimal_allocation(law, budget)
            low, high = boot.interval(lambda lw, b=budget: optimal_allocation(lw, b)[0], LEVEL)
            cells += [f"{number(n_opt, 'count')} {_interval(low, high, 'count')}", number(d_opt, "count")]
        alloc.append(cells)
    header = ["FLOPs"] + [h for name, _, _ in laws for h in (f"N* ({name})", f"D* ({name})")]
    epochs = frame["D"].max() / fit.unique
    return ["## Fitted laws", "",
            "L(N, D) = E + A / N^alpha + B / D^beta, fitted to every run's final bpb (Huber loss on log L, "
            f"delta 1e-3); 90% intervals from {len(fit.boot.laws)} refits on runs resampled with replacement. "
            "The data-constrained variant (Muennighoff et al. 2023) replaces D by D' = U + U R* (1 - exp(-(D/U - 1) / R*)) "
            f"past one epoch of the U = {number(fit.unique, 'count')} training tokens (the runs go up to "
            f"{epochs:.1f} epochs of the book).", "",
            table(["law"] + keys + ["Huber loss"], rows), "", "![fit](fit.png)", "",
            "Compute-optimal allocation by each law: N* minimising L(N, C / 6N) (attention FLOPs left out), "
            "its 90% interval, and D* = C / 6N*.", "", table(header, alloc), ""]


def _prediction_section(prediction: dict | None, measured: pd.DataFrame) -> list[str]:
    if prediction is None:
        return []
    shape = prediction["shape"]
    method = prediction.get("method") or prediction["law"]  # "law": a prediction made before methods were compared
    lines = ["## Prediction", "",
             f"Made from {prediction['fitted_runs']} runs ({prediction['time']}), before the point was trained, by "
             f"`{method}`: at {prediction['budget']:.3g} FLOPs ({prediction['factor']:g}x the largest "
             f"fitted budget) the best shape is d{shape['d_model']} h{shape['n_heads']} b{shape['n_blocks']} "
             f"(N {number(prediction['N'], 'count')}, D {number(prediction['D'], 'count')}).", ""]
    if measured.empty:
        return lines + ["Not trained yet: `decoder run` trains it after the grid.", ""]
    mean, sd = measured["bpb"].mean(), measured["bpb"].std()
    low, high = prediction["interval"]
    inside = "inside" if low <= mean <= high else "outside"
    gap = mean - prediction["predicted_bpb"]
    lines += [table(["", "val bpb"], [
                  ["predicted (90% interval)", f"{number(prediction['predicted_bpb'])} {_interval(low, high)}"],
                  [f"measured (mean ± sd of {len(measured)} seeds)", f"{number(mean)} ± {number(sd)}"],
                  ["measured − predicted", f"{gap:+.4f} ({inside} the interval)"]]),
              "", "Every shape's prediction there (lowest first):", "",
              table(["shape", "N", "predicted bpb"],
                    [[_shape(c), number(c["N"], "count"), number(c["predicted_bpb"])] for c in prediction["candidates"]]), ""]
    return lines


def _method_section(frame: pd.DataFrame, unique: float, measured: pd.DataFrame, rounds: int) -> list[str]:
    """The holdout that chooses the prediction method and, once the point is measured, every
    method's prediction there (fitted to the grid only)."""
    from decoder.scaling_holdout import report

    return ["## Choosing the prediction method", "", *report(frame, measured, unique, rounds)]


def _machine(records) -> str:
    """Where the runs ran, from their summaries: CPU or device, precision, threads."""
    seen = {(r.summary.get("cpu"), r.summary.get("device"), r.summary.get("precision"),
             r.config.training.num_threads if r.config else None) for r in records if r.summary}
    return "; ".join(f"{cpu}, {device}, {precision}, {threads or 'default'} thread(s) per run"
                     for cpu, device, precision, threads in sorted(seen, key=str))


def _training_time(records) -> str:
    """The runs' training seconds (each run's own `elapsed_s`), summed: what a rerun from scratch costs."""
    seconds = [r.summary["elapsed_s"] for r in records if r.status in DONE and r.summary.get("elapsed_s") is not None]
    if not seconds:
        return ""
    return (f"Training time: {sum(seconds):,.0f} s summed over {len(seconds)} runs (longest {max(seconds):,.0f} s), "
            f"as each run measured it on that machine, which other work may have shared; with --workers W a rerun "
            f"from scratch takes about that sum / W.")


def write_scaling_report(experiment: Experiment, folder: Path, *, runs_dir: str | Path, command: str) -> Path:
    """Write scaling.md, scaling.csv, isoflop.png and fit.png for `experiment` into `folder`."""
    from decoder.scaling_predict import load_prediction, prediction_points

    records, _ = load_records([experiment.path], runs_dir)
    frame = study_frame(records)
    prediction = load_prediction(experiment, runs_dir)
    measured, predicted_runs = pd.DataFrame(columns=frame.columns), []
    if prediction is not None:
        run_folder = Path(runs_dir) / experiment.name
        points = prediction_points(experiment, prediction)
        predicted_runs = [read_run(p.run_dir(run_folder), experiment.name, p.config) for p in points]
        measured = study_frame(predicted_runs)
    unique = unique_tokens(records)
    fit = fit_study(frame, unique)
    both = pd.concat([frame.assign(role="grid"), measured.assign(role="prediction")], ignore_index=True)
    atomic_write(folder / "scaling.csv", both.to_csv(index=False))
    if prediction is not None:
        write_json(folder / "prediction.json", prediction)
    plot_isoflop(frame, folder / "isoflop.png", title=f"{experiment.name}: IsoFLOP curves", prediction=prediction,
                 measured=measured)
    plot_fit(frame, fit.primary[1], folder / "fit.png", title=f"{experiment.name}: {fit.primary[0]} law vs runs",
             measured=measured)
    head = [f"# {experiment.name}: scaling study", "", experiment.description, "",
            f"{len(frame)} runs at {len(budgets(frame))} budgets ({budgets(frame)[0]:.3g} to {budgets(frame)[-1]:.3g} "
            f"FLOPs); FLOPs per token = 6 N + 6 n_blocks context d_model, N = the blocks' matrices + the output head "
            f"(`decoder/flops.py`). Validation bits per byte at the end of each budget."
            f" Ran on: {_machine(records)}. {_training_time(records + predicted_runs)}", "",
            f"Regenerate: `{command}`", ""]
    text = "\n".join(head + _budget_tables(frame) + _heads_table(frame) + _law_tables(fit, frame)
                     + _method_section(frame, unique, measured, len(fit.boot.laws))
                     + _prediction_section(prediction, measured))
    atomic_write(folder / "scaling.md", text + "\n")
    return folder


def is_scaling_experiment(experiment: Experiment) -> bool:
    return "training.max_flops" in experiment.varied_keys


__all__ = ["SHAPE", "is_scaling_experiment", "write_scaling_report"]
