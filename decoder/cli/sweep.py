"""`decoder sweep EXPERIMENT`: run (or join) the Optuna study of a search file, then report.

Several `decoder sweep` processes on the same --storage cooperate on one study; each trial is an
ordinary run folder (see `decoder.sweep.worker`)."""

from __future__ import annotations

import argparse

from decoder.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="search YAML file (name, base, search: space, sampler, n_trials, ...)")
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the study, e.g. postgresql://user@host/db for many machines "
                        "(default: sqlite file RUNS_DIR/<name>/study.db)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes on this machine (default 1; torch threads are split between them)")
    p.add_argument("--heartbeat", type=int, default=None, metavar="S",
                   help="seconds between a trial's heartbeats; a worker silent for 3x this loses its trial "
                        "to another worker, which resumes it from its checkpoint (default 10)")
    p.add_argument("--runs-dir", default="runs", help="run folders go to RUNS_DIR/<name>/<run id> (default runs)")
    p.add_argument("--out", default="results", help="report folder parent (default results)")
    p.add_argument("--dry-run", action="store_true", help="validate the file and the data, print the space, exit")
    p.add_argument("--no-report", action="store_true", help="do not write the report when this worker ends")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")


def _space_table(search) -> str:
    lines = [f"{search.name}: {search.n_trials} trials, sampler {search.sampler['type']}, pruner "
             f"{search.pruner['type']}, objectives {', '.join(search.objectives)}"]
    for p in search.params:
        what = (f"one of {list(p.choices)}" if p.type == "categorical" else
                f"{p.type} in [{p.low}, {p.high}]" + (" (log)" if p.log else "") + (f" step {p.step}" if p.step else ""))
        lines.append(f"  {p.key}: {what}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from decoder.sweep.search import load_search
    from decoder.sweep.study import HEARTBEAT_S
    from decoder.sweep.worker import check_search_data, run_sweep

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    if args.heartbeat is not None and args.heartbeat < 1:
        raise UsageError(f"--heartbeat {args.heartbeat}: must be at least 1 second")
    search = load_search(args.experiment)
    if args.dry_run:
        check_search_data(search)
        print(_space_table(search))
        return 0
    status = run_sweep(search, args.runs_dir, storage=args.storage, workers=args.workers, quiet=args.quiet,
                       heartbeat_s=args.heartbeat or HEARTBEAT_S)
    if status == 130:
        print(f"{search.name}: interrupted; run the same command again to resume (the trial resumes from its "
              "checkpoint)")
        return status
    if not args.no_report:
        from decoder.report import write_report

        folder = write_report([args.experiment], runs_dir=args.runs_dir, out=args.out, storage=args.storage)
        print(f"report: {folder}/summary.md")
    return status
