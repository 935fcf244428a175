"""Experiment grids: a YAML file -> validated points (`grid`) -> run folders (`runner`).

Only the file format is imported here; running points is `decoder.experiments.runner`, reading
their run folders back is `decoder.runs`, the report is `decoder.report`, searches (Optuna) are
`decoder.sweep`; the `run` and `report` sub-commands are `decoder.cli.run` and `decoder.cli.report`.
"""

from __future__ import annotations

from decoder.experiments.grid import (
    SEED_KEY,
    Experiment,
    ExperimentError,
    Point,
    experiment_from_dict,
    load_experiment,
)

__all__ = ["SEED_KEY", "Experiment", "ExperimentError", "Point", "experiment_from_dict", "load_experiment"]
