"""The `predict:` section of a scaling study: after its grid over training.max_flops has run, fit
the scaling law to it and train the shape it predicts best at `factor` x the largest budget.

    predict:
      factor: 4          # the prediction budget over the largest fitted one (> 1)
      seeds: [0, 1, 2]   # optional: the prediction point's seeds (default: the grid's, else [0])

The candidate shapes are the grid's (each distinct model section); the one with the lowest
predicted bits per byte at the new budget is run into the same runs/<name>/ folder
(`decoder.scaling_predict`), after its prediction is written down (prediction.json there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUDGET_KEY = "training.max_flops"
PREDICT_KEYS = ("factor", "seeds")


@dataclass(frozen=True)
class Prediction:
    factor: float
    seeds: tuple[int, ...] | None = None


def parse_prediction(raw: Any, varied: list[str], problems: list[str]) -> Prediction | None:
    """The `predict:` mapping as a Prediction; problems are appended (None when it is invalid)."""
    if not isinstance(raw, dict):
        problems.append("predict: must be a mapping with keys factor (> 1) and optionally seeds")
        return None
    unknown = [k for k in raw if k not in PREDICT_KEYS]
    if unknown:
        problems.append(f"predict: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(PREDICT_KEYS)}")
    factor, seeds = raw.get("factor"), raw.get("seeds")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        problems.append(f"predict.factor: must be a number > 1 (the budget over the largest fitted one), got {factor!r}")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        problems.append(f"predict.seeds: must be a non-empty list of distinct integers, got {seeds!r}")
    if BUDGET_KEY not in varied:
        problems.append(f"predict: needs a grid over {BUDGET_KEY} (the compute budgets to fit)")
    if problems:
        return None
    return Prediction(float(factor), tuple(seeds) if seeds is not None else None)
