"""The prediction step of a scaling study (an experiment with a `predict:` section): choose the
method by its holdout on the grid's budgets (`decoder.scaling_holdout`), fit it to the grid's
runs, predict the best shape and its bits per byte at `factor` x the largest budget, write the
prediction down (runs/<name>/prediction.json, before the point is trained, and kept: a later
run reuses it unless --force or the grid's finished runs are no longer the ones it was fitted to),
then train that shape there with the prediction's seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from decoder.config import config_from_dict
from decoder.experiments.grid import SEED_KEY, Experiment, ExperimentError, Point
from decoder.experiments.predict import BUDGET_KEY
from decoder.io import read_json, write_json
from decoder.runs import load_records
from decoder import scaling_study
from decoder.scaling_holdout import choose
from decoder.scaling_methods import bootstrap, predict_shapes, with_main
from decoder.scaling_study import LEVEL, SHAPE, budgets, study_frame, unique_tokens

PREDICTION_FILE = "prediction.json"


def prediction_path(experiment: Experiment, runs_dir: str | Path) -> Path:
    return Path(runs_dir) / experiment.name / PREDICTION_FILE


def grid_runs(experiment: Experiment, runs_dir: str | Path) -> list[str]:
    """The run ids of the grid's finished runs: what a prediction is fitted to (and keyed by)."""
    records, _ = load_records([experiment.path], runs_dir)
    return sorted(study_frame(records)["run"])


def make_prediction(experiment: Experiment, runs_dir: str | Path) -> dict:
    """Choose the method, fit the grid's finished runs and predict at factor x its largest budget,
    with the method's bootstrap interval (the JSON written)."""
    records, _ = load_records([experiment.path], runs_dir)
    frame = with_main(study_frame(records))
    if frame.empty or len(budgets(frame)) < 2:
        raise ExperimentError(f"{experiment.name}: the prediction needs finished runs at two budgets or more")
    unique = unique_tokens(records)
    method, held = choose(frame, unique)
    predictor = method.fit(frame, unique, None)
    boot = bootstrap(method, predictor, frame, unique, rounds=scaling_study.BOOTSTRAP_ROUNDS)
    budget = experiment.predict.factor * max(budgets(frame))
    table = predict_shapes(predictor, frame, budget, boot, LEVEL)
    best = table.iloc[0]
    return {
        "budget": budget, "factor": experiment.predict.factor, "method": method.name, "params": predictor.params(),
        "holdout": [asdict(h) for h in held],
        "shape": {k: int(best[k]) for k in SHAPE}, "N": int(best["N"]), "D": float(best["D"]),
        "predicted_bpb": float(best["predicted_bpb"]), "interval": [float(best["low"]), float(best["high"])],
        "fitted_runs": len(frame), "grid_runs": sorted(frame["run"]), "unique_tokens": unique,
        "candidates": [{**{k: int(r[k]) for k in SHAPE}, "N": int(r["N"]), "predicted_bpb": float(r["predicted_bpb"])}
                       for _, r in table.iterrows()],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def prediction_points(experiment: Experiment, prediction: dict) -> list[Point]:
    """The predicted shape at the prediction budget, one point per seed (built from a grid point
    of that shape, so everything else is the grid's)."""
    shape = prediction["shape"]
    template = next((p.config for p in experiment.points
                     if all(getattr(p.config.model, k) == v for k, v in shape.items())), None)
    if template is None:
        raise ExperimentError(f"{experiment.name}: no grid point has the predicted shape {shape}")
    seeds = experiment.predict.seeds or sorted({p.config.training.seed for p in experiment.points})
    points = []
    for i, seed in enumerate(seeds):
        training = replace(template.training, max_flops=prediction["budget"], seed=seed)
        config = config_from_dict(replace(template, training=training).to_dict(), source="prediction point")
        settings = {BUDGET_KEY: prediction["budget"], **{f"model.{k}": v for k, v in shape.items()}, SEED_KEY: seed}
        points.append(Point(i, settings, config))
    return points


def run_prediction(experiment: Experiment, runs_dir: str | Path, *, force: bool = False, workers: int = 1) -> list:
    """Predict (or read the prediction made before) and train the predicted point; its outcomes."""
    from decoder.experiments.runner import run_experiment

    path = prediction_path(experiment, runs_dir)
    prediction = read_json(path) if path.is_file() and not force else None
    if prediction is not None and prediction.get("grid_runs") != grid_runs(experiment, runs_dir):
        print(f"{experiment.name}: {path} was fitted to other grid runs than the finished ones now: predicting again")
        prediction = None
    if prediction is not None:
        print(f"{experiment.name}: prediction made {prediction['time']} ({path}); --force makes it again")
    else:
        prediction = make_prediction(experiment, runs_dir)
        write_json(path, prediction)
        print(f"{experiment.name}: predicted best shape at {prediction['budget']:.3g} FLOPs: {prediction['shape']} "
              f"(N {prediction['N']:,}), {prediction['predicted_bpb']:.4f} bpb "
              f"[{prediction['interval'][0]:.4f}, {prediction['interval'][1]:.4f}] -> {path}")
    points = prediction_points(experiment, prediction)
    return run_experiment(experiment, runs_dir, force=force, points=points, workers=min(workers, len(points)))


def load_prediction(experiment: Experiment, runs_dir: str | Path) -> dict | None:
    """The prediction written for the grid's finished runs now; None where there is none or it was
    fitted to other runs (a changed grid: `decoder run` predicts again)."""
    path = prediction_path(experiment, runs_dir)
    if not path.is_file():
        return None
    prediction = read_json(path)
    return prediction if prediction.get("grid_runs") == grid_runs(experiment, runs_dir) else None
