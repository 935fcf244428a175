"""What `decoder report` adds for a search (its Optuna study), next to the grid report's files.

trials.csv and trials.md (every trial: state, values, parameters, run folder; the best, the
importances), best.yaml (the best trial's resolved config as a ready-to-run experiment file),
history.png (Optuna's optimisation history), importances.png (Optuna's parameter importances,
PED-ANOVA), intermediate.png (each trial's evaluations, the pruner's view) and, for two
objectives, pareto.png (val_bpb against tokens/s, the front highlighted).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from decoder.sweep.search import Search
from decoder.sweep.study import import_optuna, default_storage, open_storage
from decoder.io import atomic_write
from decoder.report.markdown import number, table


def _trial_rows(study, search: Search) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue  # a worker's extra ask past n_trials: never ran
        row = {"trial": t.number, "state": t.state.name.lower(), "run_id": t.user_attrs.get("run_id", ""),
               "reused": bool(t.user_attrs.get("reused")),
               "retry_of": t.system_attrs.get("failed_trial"),
               "duration_s": t.duration.total_seconds() if t.duration else None}
        for name, value in zip(search.objectives, t.values or [None] * len(search.objectives)):
            row[name] = value
        row.update({key: t.params.get(key) for key in search.varied_keys})
        rows.append(row)
    return rows


def _best(study, search: Search) -> list:
    """The best trial (single objective) or the Pareto front sorted by val_bpb."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return []
    front = study.best_trials if len(search.objectives) > 1 else [study.best_trial]
    return sorted(front, key=lambda t: t.values[0])


def best_yaml(search: Search, trial) -> str:
    """A single-point experiment file of the trial's resolved config."""
    config = search.config_of(trial.params)
    header = (f"# Best trial #{trial.number} of the search {search.name} (val_bpb {trial.values[0]:.4f}), run folder "
              f"{search.name}/{trial.user_attrs.get('run_id')}.\n# Train it again: decoder run best.yaml "
              "(or decoder train best.yaml)\n")
    return header + yaml.safe_dump({"name": f"{search.name}-best", "base": config.to_dict()}, sort_keys=False)


def _importances(study, search: Search) -> dict[str, float]:
    optuna = import_optuna()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA's reminder that lower targets count as better
            return optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
    except (RuntimeError, ValueError, ZeroDivisionError):  # too few completed trials to tell
        return {}


def _markdown(search: Search, rows: list[dict], best: list, importances: dict, command: str) -> str:
    keys, objectives = search.varied_keys, list(search.objectives)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines = [f"# {search.name}: trials", "", f"Regenerate: `{command}`", "",
             f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
             f"; sampler {search.sampler['type']}, pruner {search.pruner['type']}.", ""]
    if best:
        what = "Pareto front (val_bpb ↓, tokens/s ↑)" if len(objectives) > 1 else "Best trial"
        lines += [f"{what}: " + "; ".join(f"#{t.number} " + ", ".join(
            f"{o} {number(v)}" for o, v in zip(objectives, t.values)) for t in best) +
            ". Its config: [best.yaml](best.yaml).", ""]
    if importances:
        lines += ["Parameter importances (Optuna, PED-ANOVA, for val_bpb): " +
                  ", ".join(f"{k} {v:.2f}" for k, v in importances.items()), ""]
    header = ["trial", "state", *objectives, *keys, "run id", "reused", "retry of", "seconds"]
    body = [[str(r["trial"]), r["state"], *(number(r.get(o)) for o in objectives),
             *(number(r.get(k), "sig") if isinstance(r.get(k), float) else str(r.get(k)) for k in keys),
             r["run_id"], "yes" if r["reused"] else "", "" if r["retry_of"] is None else f"#{r['retry_of']}",
             number(r["duration_s"], "int")] for r in rows]
    return "\n".join(lines + [table(header, body), ""])


def _save(ax, path: Path) -> None:
    import io

    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())
    import matplotlib.pyplot as plt

    plt.close(figure)


def _plots(study, search: Search, folder: Path, importances: dict) -> None:
    vis = import_optuna().visualization.matplotlib
    target = {"target": lambda t: t.values[0], "target_name": "val_bpb"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
            _save(vis.plot_optimization_history(study, **target), folder / "history.png")
        if importances:
            _save(vis.plot_param_importances(study, **target), folder / "importances.png")
        if len(search.objectives) > 1:
            _save(vis.plot_pareto_front(study, target_names=list(search.objectives)), folder / "pareto.png")
        elif any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            _save(vis.plot_intermediate_values(study), folder / "intermediate.png")


def write_sweep_report(search: Search, folder: Path, *, runs_dir: str | Path, storage: str | None,
                       command: str) -> None:
    """trials.csv/.md, best.yaml and the study's plots under `folder` (the grid report's folder)."""
    import pandas as pd

    optuna = import_optuna()
    url = storage or default_storage(runs_dir, search.name)
    study = optuna.load_study(study_name=search.name, storage=open_storage(url))
    rows = _trial_rows(study, search)
    atomic_write(folder / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
    best = _best(study, search)
    if best:
        atomic_write(folder / "best.yaml", best_yaml(search, best[0]))
    importances = _importances(study, search) if len(best) else {}
    importances = {k: v for k, v in importances.items() if math.isfinite(v)}
    atomic_write(folder / "trials.md", _markdown(search, rows, best, importances, command))
    _plots(study, search, folder, importances)
