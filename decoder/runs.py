"""The run folder: every file a training run (or the experiment runner) writes, named here only,
and reading folders back as `RunRecord`s (`read_run`, `load_records`): what reports are made from.

    <run>/
      config.yaml                 the resolved RunConfig (`decoder.config.dump_config`)
      tokenizer.json              the tokenizer (`Tokenizer.to_dict` as JSON)
      metrics.jsonl               one JSON object per evaluation, appended as training goes
      summary.json                how the run ended, written when it stops (any status)
      samples.json                continuations of the configured prompt from the best weights
      failure.json                written by the experiment runner when a point raised
      tensorboard/                TensorBoard event files (`decoder.tensorboard`; training.tensorboard)
      checkpoints/latest.pt       everything needed to resume (format: `decoder.checkpoint`)
      checkpoints/latest.prev.pt  the latest before it: what `--resume` falls back to
      checkpoints/best.pt         the same state as it was at the best evaluation
      checkpoints/model.safetensors  the best evaluation's model weights alone, with the config as
                                  metadata (`decoder.checkpoint.BEST_WEIGHTS_FILE`)

metrics.jsonl, one row per evaluation (a resumed run first drops the rows written after the
checkpoint it resumes from, so every step appears once):
    step            optimizer steps taken
    tokens_seen     training tokens consumed, all ranks together
    flops           training FLOPs so far: tokens_seen x flops_per_token (`decoder.flops`)
    train_loss      mean training loss (nats/token) over the steps since the previous log line
    val_loss        mean loss (nats/token) over the whole validation split
    val_ppl         exp(val_loss)
    val_bpb         validation bits per UTF-8 byte (`decoder.metrics`)
    val_tokens      validation tokens scored
    lr              learning rate of the step just taken
    tokens_per_s    training tokens per second since the previous log line (evaluation excluded)
    elapsed_s       training seconds so far (evaluation and checkpointing excluded)

summary.json:
    run_id, status     the config's id (`decoder.run_ids.run_id`); completed, early_stopped,
                       interrupted or diverged; a sweep rewrites a trial it prunes as pruned
                       (with pruned_at_eval, the evaluation it stopped at)
    error              why a diverged run stopped, else null
    step, tokens_seen, elapsed_s, tokens_per_s    at the end (tokens_per_s over all training time)
    best_val_loss, best_step, best_val_bpb        the best evaluation (null when none)
    train_loss_at_best                            train_loss of the metrics row at that evaluation
    final_val_loss, final_val_ppl, final_val_bpb  the last evaluation
    final_train_loss                              the last logged train_loss
    params_total, params_non_embedding, vocab_size, flops_per_token   the model
    flops              training FLOPs at the end (tokens_seen x flops_per_token, `decoder.flops`)
    device, precision, world_size, cpu, torch     what it ran on (device and precision resolved)
    best_checkpoint    "checkpoints/best.pt" relative to the run folder, or null
    samples            the samples.json list (absent when interrupted or diverged)
    protocols          {protocol: `decoder eval`'s figures and seconds} of the best checkpoint for each
                       of training.final_protocols (absent when none, interrupted or diverged)

samples.json: a list of {strategy ("greedy" or "sampled"), prompt, text, seed, temperature, top_k,
top_p, repetition_penalty, no_repeat_ngram_size}.
failure.json: {status: "failed", error (one line), settings, run_id, time, traceback}.

Torch-free: reports read run folders without importing torch. A source given to `load_records`
may be an experiment or search file; only its points' run folders are taken from it
(`decoder.experiments.grid`, `decoder.sweep.search`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from decoder.config import ConfigError, RunConfig, dump_config
from decoder.run_ids import load_saved_config
from decoder.experiments.grid import SEED_KEY, ExperimentError, load_experiment
from decoder.io import FileFormatError, atomic_write, read_json, write_json
from decoder.sweep.search import is_search_file, load_search

if TYPE_CHECKING:
    from decoder.tokenizer import Tokenizer

DONE = ("completed", "early_stopped", "pruned")
"""Statuses of a run that has nothing left to do (a pruned sweep trial is not resumed either)."""


class _File:
    """A path inside the run folder, read as an attribute of a RunDir (`run.summary_file`)."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, run: "RunDir", owner: type | None = None) -> Path:
        return run.path.joinpath(*self.parts)


class RunDir:
    """One run folder: its file paths, and reading and writing each file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- paths: every file name of a run folder, here only ---------------------------------

    config_file = _File("config.yaml")
    tokenizer_file = _File("tokenizer.json")
    metrics_file = _File("metrics.jsonl")
    summary_file = _File("summary.json")
    samples_file = _File("samples.json")
    failure_file = _File("failure.json")
    tensorboard_dir = _File("tensorboard")
    checkpoints = _File("checkpoints")
    latest = _File("checkpoints", "latest.pt")
    previous = _File("checkpoints", "latest.prev.pt")  # the latest before it, for a resume when latest.pt is damaged
    best = _File("checkpoints", "best.pt")

    def relative(self, path: Path) -> str:
        """`path` as the run folder's files name each other (relative, '/'-separated)."""
        return path.relative_to(self.path).as_posix()

    # --- what the folder holds -------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder looks like a run folder (a config, a summary or a failure record)."""
        return any(p.is_file() for p in (self.config_file, self.summary_file, self.failure_file))

    def has_checkpoint(self) -> bool:
        """Whether there is something to resume from (latest.pt or the one before it)."""
        return self.latest.is_file() or self.previous.is_file()

    def model_checkpoint(self) -> Path | None:
        """The checkpoint to load a model from: best.pt, else latest.pt; None when neither exists."""
        return next((p for p in (self.best, self.latest) if p.is_file()), None)

    def state(self) -> str:
        """'done', 'failed', 'resumable' (a checkpoint without a finished summary) or 'new'."""
        status = (self.read_summary() or {}).get("status")
        if status in DONE:
            return "done"
        if self.failure_file.is_file() or status == "diverged":
            return "failed"
        return "resumable" if self.has_checkpoint() else "new"

    # --- config and tokenizer --------------------------------------------------------------

    def write_config(self, config: RunConfig) -> None:
        atomic_write(self.config_file, dump_config(config))

    def read_config(self) -> RunConfig | None:
        """The saved config; None when there is none (a ConfigError when it does not load)."""
        return load_saved_config(self.config_file) if self.config_file.is_file() else None

    def write_tokenizer(self, tokenizer: "Tokenizer") -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tokenizer.save(self.tokenizer_file)

    # --- metrics.jsonl ---------------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one evaluation's row (fields in the module docstring)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> tuple[list[dict], bool]:
        """Rows in step order (the last row of a step wins) and whether the file ended in a damaged
        line (a crash mid-write); no file is no rows."""
        try:
            lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            return [], False
        rows: dict[int, dict] = {}
        for line in filter(str.strip, lines):
            try:
                row = json.loads(line)
            except ValueError:
                return sorted(rows.values(), key=lambda r: r["step"]), True
            if isinstance(row, dict) and "step" in row:
                rows[row["step"]] = row
        return sorted(rows.values(), key=lambda r: r["step"]), False

    def restart_metrics(self, keep_through_step: int = 0) -> None:
        """Empty metrics.jsonl, or keep only the rows up to a resumed checkpoint's step (a killed
        run may have written later rows; the resumed run writes them again)."""
        kept = [r for r in self.read_metrics()[0] if r["step"] <= keep_through_step]
        atomic_write(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    # --- summary, samples, failure ---------------------------------------------------------

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def read_summary(self) -> dict | None:
        return _read_optional(self.summary_file)

    def clear_summary(self) -> None:
        """A run that starts or resumes has no summary until it stops."""
        self.summary_file.unlink(missing_ok=True)

    def write_samples(self, samples: list[dict]) -> None:
        write_json(self.samples_file, samples)

    def read_samples(self) -> list[dict] | None:
        return _read_optional(self.samples_file)

    def write_failure(self, record: dict[str, Any]) -> None:
        atomic_write(self.failure_file, json.dumps(record, indent=2, default=str) + "\n")

    def read_failure(self) -> dict | None:
        return _read_optional(self.failure_file)


def _read_optional(path: Path) -> Any:
    """A JSON file's content; None when it is missing or damaged (reports show what they can)."""
    try:
        return read_json(path)
    except FileFormatError:
        return None


# --- reading runs back ---------------------------------------------------------------------


@dataclass
class RunRecord:
    """What a run folder says about one run (or that it has not run)."""

    experiment: str
    run_dir: Path
    config: RunConfig | None
    status: str  # completed, early_stopped, interrupted, diverged, failed, incomplete, not run
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    error: str | None = None


def read_run(run_dir: Path, experiment: str, config: RunConfig | None = None) -> RunRecord:
    """A RunRecord from a run folder; `config` (the point's) is used when the folder has none."""
    if not run_dir.is_dir():
        return RunRecord(experiment, run_dir, config, "not run")
    run = RunDir(run_dir)
    try:
        config = run.read_config() or config
    except ConfigError:
        pass
    summary = run.read_summary() or {}
    failure = run.read_failure() or {}
    metrics, truncated = run.read_metrics()
    samples = run.read_samples() or []
    if failure:
        status, error = "failed", failure.get("error")
    elif summary.get("status"):
        status, error = summary["status"], summary.get("error")
    else:
        status, error = "incomplete", f"{run.metrics_file.name} ends in a damaged line" if truncated else None
    return RunRecord(experiment, run_dir, config, status, summary, metrics, samples, error)


def load_records(sources: Iterable[str | Path], runs_dir: str | Path = "runs") -> tuple[list[RunRecord], list[str]]:
    """Records of every source (experiment files: all their points; run folders; folders of run
    folders) and the names of the sources."""
    records, names = [], []
    for source in sources:
        path = Path(source)
        if path.is_file() and is_search_file(path):  # a sweep: every trial's run folder
            name = load_search(path).name
            folder = Path(runs_dir) / name
            runs = sorted(p for p in folder.iterdir() if RunDir(p).is_run()) if folder.is_dir() else []
            records += [read_run(p, name) for p in runs]
            names.append(name)
        elif path.is_file():
            experiment = load_experiment(path)
            folder = Path(runs_dir) / experiment.name
            records += [read_run(p.run_dir(folder), experiment.name, p.config) for p in experiment.points]
            names.append(experiment.name)
        elif path.is_dir() and RunDir(path).is_run():
            records.append(read_run(path, path.resolve().parent.name))
            names.append(path.resolve().parent.name)
        elif path.is_dir() and any(RunDir(p).is_run() for p in path.iterdir()):
            records += [read_run(p, path.resolve().name) for p in sorted(path.iterdir()) if RunDir(p).is_run()]
            names.append(path.resolve().name)
        else:
            raise ExperimentError(f"{source}: neither an experiment file nor a run folder (or a folder of them)")
    return records, list(dict.fromkeys(names))


def flat_settings(config: RunConfig | None) -> dict[str, Any]:
    """The config as dotted key -> value (`model.d_model`: 192); empty without a config."""
    if config is None:
        return {}
    return {f"{s}.{k}": v for s, section in config.to_dict().items() for k, v in section.items()}


def seeds_vary(records: list[RunRecord]) -> bool:
    """Whether the runs differ in training.seed (then rows are averaged over seeds)."""
    return len({flat_settings(r.config).get(SEED_KEY) for r in records}) > 1


def varied_keys(records: list[RunRecord]) -> list[str]:
    """Dotted keys (training.seed aside) whose value differs between runs of the same experiment."""
    keys: dict[str, None] = {}
    for name in dict.fromkeys(r.experiment for r in records):
        flats = [flat_settings(r.config) for r in records if r.experiment == name and r.config is not None]
        for key in flats[0] if flats else []:
            if key != SEED_KEY and len({repr(f.get(key)) for f in flats}) > 1:
                keys[key] = None
    return list(keys)
