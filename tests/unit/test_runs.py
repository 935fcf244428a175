"""decoder.runs: the run folder's files, read and written in one place, and read back as records
(no torch, no corpus)."""

import json
import subprocess
import sys

from decoder.runs import RunDir


def test_metrics_are_appended_read_in_step_order_and_cut_back_on_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.read_metrics() == ([], False)
    for step in (2, 4, 6):
        run.append_metrics({"step": step, "val_loss": 1.0 / step})
    run.append_metrics({"step": 4, "val_loss": 0.1})  # a resumed run repeating a step: the last row wins
    rows, damaged = run.read_metrics()
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[1]["val_loss"] == 0.1 and not damaged
    run.restart_metrics(keep_through_step=4)
    assert [r["step"] for r in run.read_metrics()[0]] == [2, 4]
    with open(run.metrics_file, "a") as f:
        f.write('{"step": 6, "val_lo')  # a crash mid-write
    rows, damaged = run.read_metrics()
    assert [r["step"] for r in rows] == [2, 4] and damaged
    run.restart_metrics()
    assert run.metrics_file.read_text() == ""


def test_state_follows_the_folder_through_a_run(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.state() == "new" and not run.is_run() and run.model_checkpoint() is None
    run.checkpoints.mkdir(parents=True)
    run.previous.write_bytes(b"x")  # only the checkpoint before latest: still resumable
    assert run.state() == "resumable" and run.model_checkpoint() is None
    run.latest.write_bytes(b"x")
    assert run.model_checkpoint() == run.latest
    run.best.write_bytes(b"x")
    assert run.model_checkpoint() == run.best
    run.write_summary({"status": "interrupted"})
    assert run.state() == "resumable" and run.is_run()
    run.write_summary({"status": "early_stopped"})
    assert run.state() == "done" and run.read_summary() == {"status": "early_stopped"}
    run.clear_summary()
    run.write_failure({"status": "failed", "error": "boom"})
    assert run.state() == "failed" and run.read_failure()["error"] == "boom"
    run.summary_file.write_text("{not json")
    assert run.read_summary() is None
    assert run.relative(run.best) == "checkpoints/best.pt"


def test_samples_and_config_round_trip(tmp_path):
    from decoder.config import RunConfig

    run = RunDir(tmp_path / "run")
    assert run.read_config() is None and run.read_samples() is None
    run.write_config(RunConfig())
    assert run.read_config() == RunConfig()
    run.write_samples([{"strategy": "greedy", "text": "Harding wondered — whether"}])
    assert json.loads(run.samples_file.read_text(encoding="utf-8"))[0]["text"].endswith("whether")


def test_a_pruned_run_is_finished_not_resumable(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.latest.write_bytes(b"x")
    run.write_summary({"status": "pruned", "pruned_at_eval": 2})  # what a sweep writes when it prunes a trial
    assert run.state() == "done"


def test_a_folder_of_runs_reads_back_as_records_with_their_status(tmp_path):
    from decoder.config import RunConfig
    from decoder.runs import load_records, varied_keys

    done, failed, partial = (RunDir(tmp_path / "grid" / name) for name in ("a", "b", "c"))
    done.write_config(RunConfig())
    done.write_summary({"status": "completed", "best_val_bpb": 2.0})
    failed.write_config(RunConfig())
    failed.write_failure({"status": "failed", "error": "boom"})
    partial.write_config(RunConfig())
    partial.append_metrics({"step": 2, "val_loss": 1.0})
    with open(partial.metrics_file, "a") as f:
        f.write('{"step": 4')  # killed mid-write
    records, names = load_records([tmp_path / "grid"])
    assert names == ["grid"] and [r.experiment for r in records] == ["grid"] * 3
    assert [(r.status, r.error) for r in records] == [
        ("completed", None), ("failed", "boom"), ("incomplete", "metrics.jsonl ends in a damaged line")]
    assert records[2].metrics == [{"step": 2, "val_loss": 1.0}] and varied_keys(records) == []


def test_reading_runs_back_needs_neither_the_runner_nor_torch():
    """Reports read run folders through decoder.runs alone: no experiment runner, no torch, no Optuna."""
    code = ("import sys, decoder.report; "
            "print([m for m in ('decoder.experiments.runner', 'torch', 'optuna') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
