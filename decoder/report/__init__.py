"""Reports from run folders and benchmark files.

`write_report` (`decoder report`) writes, under results/<name>/: summary.csv (one row per run, the
columns in REPORT_COLUMNS plus the varied keys; summary.parquet too when pyarrow is importable),
summary.md (ranked by validation bits per byte, mean ± std over seeds, the best row marked, the
Kneser-Ney bigram and trigram baselines on the same split), loss_vs_tokens.png,
loss_vs_seconds.png, bpb_vs_params.png, heatmap.png (when exactly two keys vary) and samples.md;
for a search also trials.csv/.md, best.yaml and the study's plots (`decoder.sweep.report`); for a
grid over training.max_flops also the scaling study (`decoder.report.scaling`).

The rooms: `table` (the rows, baselines, memorisation), `markdown` (the one number and table
formatter), `plots`, and `throughput` (`decoder bench`: pytest-benchmark JSON -> throughput table).
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from decoder.experiments.grid import NAME, ExperimentError, load_experiment
from decoder.io import atomic_write
from decoder.report.plots import plot_bpb_vs_params, plot_curves, plot_heatmap
from decoder.report.table import REPORT_COLUMNS, baselines, samples_markdown, summary_frame, summary_markdown
from decoder.runs import load_records, varied_keys
from decoder.sweep.search import is_search_file, load_search

__all__ = ["REPORT_COLUMNS", "write_report"]


def report_command(sources: list[str | Path], *, out: str | Path = "results", name: str | None = None,
                   storage: str | None = None) -> str:
    """The `decoder report` command that rebuilds this report (the Regenerate line of its files)."""
    parts = ["decoder report", *map(str, sources)]
    if name:
        parts += ["--name", name]
    if Path(out) != Path("results"):
        parts += ["--out", str(out)]
    if storage:
        parts += ["--storage", storage]
    return " ".join(parts)


def write_report(sources: list[str | Path], *, runs_dir: str | Path = "runs", out: str | Path = "results",
                 name: str | None = None, storage: str | None = None) -> Path:
    """Write summary.csv/.md, the plots and samples.md for `sources` under out/<name>/; for a
    search file also its study's trials, best config and plots (`decoder.sweep.report`), read from
    `storage` (default: the SQLite file under runs_dir)."""
    command = report_command(sources, out=out, name=name, storage=storage)
    records, names = load_records(sources, runs_dir)
    if not records:
        raise ExperimentError(f"{', '.join(map(str, sources))}: no runs to report")
    name = name or "-vs-".join(names)
    if not NAME.fullmatch(name):
        raise ExperimentError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    frame = summary_frame(records)
    keys = varied_keys(records)
    bases = baselines(records)
    atomic_write(folder / "summary.csv", frame.to_csv(index=False))
    _write_parquet(frame, folder / "summary.parquet")
    description = _description(sources) if len(names) == 1 else ""
    atomic_write(folder / "summary.md", summary_markdown(name, frame, keys, bases, command=command,
                                                         description=description))
    plot_curves(name, records, bases, "tokens_seen", folder / "loss_vs_tokens.png")
    plot_curves(name, records, bases, "elapsed_s", folder / "loss_vs_seconds.png")
    plot_bpb_vs_params(name, frame, keys, bases, folder / "bpb_vs_params.png")
    plot_heatmap(name, frame, keys, folder / "heatmap.png")
    atomic_write(folder / "samples.md", samples_markdown(name, records, command=command))
    for source in sources:
        if Path(source).is_file() and not is_search_file(source):
            from decoder.report.scaling import is_scaling_experiment, write_scaling_report

            experiment = load_experiment(source)
            if is_scaling_experiment(experiment):
                write_scaling_report(experiment, folder, runs_dir=runs_dir, command=command)
        if Path(source).is_file() and is_search_file(source):
            from decoder.sweep.report import write_sweep_report

            write_sweep_report(load_search(source), folder, runs_dir=runs_dir, storage=storage, command=command)
    return folder


def _description(sources: list[str | Path]) -> str:
    files = [Path(s) for s in sources if Path(s).is_file()]
    if not files:
        return ""
    return (load_search if is_search_file(files[0]) else load_experiment)(files[0]).description


def _write_parquet(frame, path: Path) -> None:
    if importlib.util.find_spec("pyarrow") is None:
        return
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write(path, buffer.getvalue())
