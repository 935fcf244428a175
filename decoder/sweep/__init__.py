"""Hyperparameter searches with Optuna: the `[sweep]` extra in one folder.

    space.py    a search's space: one `Param` per searched dotted key, parsed and checked
    search.py   the `search:` experiment format and its validation before anything runs
    study.py    Optuna studies as a work queue shared by processes and machines (heartbeats, slots)
    worker.py   running a search (`decoder sweep`) and pulling a grid point by point (`decoder run --storage`)
    report.py   what `decoder report` adds for a search: trials, best.yaml, the study's plots

Every trial is an ordinary run folder (`decoder.runs`), trained by `decoder.experiments.runner`.
Only study.py, worker.py and report.py import Optuna (inside functions), so reading a search file
(space, search) works on any install.
"""
