"""Experiment grids: a YAML file -> validated points (`grid`) -> run folders (`runner`).

The report made from the run folders is `decoder.report`; the `run` and `report` sub-commands
are `decoder.cli.run` and `decoder.cli.report`.
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
from decoder.experiments.runner import (
    PointOutcome,
    RunRecord,
    check_data,
    dry_run_table,
    load_records,
    parse_shard,
    point_state,
    read_run,
    run_experiment,
)

__all__ = [
    "SEED_KEY", "Experiment", "ExperimentError", "Point", "PointOutcome", "RunRecord", "check_data", "dry_run_table",
    "experiment_from_dict", "load_experiment", "load_records", "parse_shard", "point_state", "read_run",
    "run_experiment",
]
