"""A sweep worker's SIGTERM (decoder.sweep.study.stop_now): Ctrl-C at once inside the
objective, held while Optuna records a trial, so it never lands inside Optuna's bookkeeping (where
it surfaced as another error and the worker exited 1 instead of 130)."""

import pytest

from decoder.sweep.study import _hold_stop, _run_one, import_optuna, stop_now


def test_stop_is_immediate_unheld_and_deferred_to_the_end_of_a_hold():
    with pytest.raises(KeyboardInterrupt):
        stop_now()
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with _hold_stop(True):
            stop_now()  # held: recorded, not raised
            reached.append("after the signal")
            with pytest.raises(KeyboardInterrupt):  # released inside (the objective): raised on entry
                with _hold_stop(False):
                    reached.append("never")
            stop_now()
            reached.append("end of hold")
    assert reached == ["after the signal", "end of hold"]
    with _hold_stop(True):  # nothing pending any more
        pass


def _study():
    optuna = import_optuna()
    return optuna, optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_a_stop_while_optuna_records_a_completed_trial_stops_the_worker_without_requeueing_it(monkeypatch):
    optuna, study = _study()
    tell = study._storage.set_trial_state_values

    def tell_interrupted(*args, **kwargs):  # the signal arrives while Optuna records the result
        stop_now()
        return tell(*args, **kwargs)

    monkeypatch.setattr(study._storage, "set_trial_state_values", tell_interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run_one(study, lambda trial: 1.5)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE"]  # recorded whole, and no WAITING copy queued to run it again


def test_a_stop_inside_the_objective_fails_and_requeues_the_trial():
    optuna, study = _study()

    def objective(trial):
        trial.suggest_float("lr", 1e-3, 1e-2)
        stop_now()
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        _run_one(study, objective)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params  # the copy resumes the same point
