"""The `decoder run` and `decoder report` sub-commands: argument parsing and what they print."""

from __future__ import annotations

import argparse
import os
from typing import Any

from decoder.experiments.grid import load_experiment
from decoder.experiments.runner import check_data, dry_run_table, parse_shard, run_experiment


def cmd_run(args: argparse.Namespace) -> int:
    """`decoder run`: train the points of this shard, then write the experiment's report."""
    experiment = load_experiment(args.experiment)
    if args.dry_run:
        check_data(experiment)
        print(dry_run_table(experiment, args.runs_dir, args.shard))
        return 0
    from decoder.distributed import shutdown
    from decoder.report import write_report

    try:
        outcomes = run_experiment(experiment, args.runs_dir, force=args.force, shard=args.shard, quiet=args.quiet)
    finally:
        shutdown()
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return 1 if counts.get("failed") else 0
    print(f"{experiment.name}: {len(outcomes)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    folder = write_report([args.experiment], runs_dir=args.runs_dir, out=args.out,
                          command=f"decoder report {args.experiment}")
    print(f"report: {folder}/summary.md")
    if counts.get("interrupted"):
        return 130
    return 1 if counts.get("failed") else 0


def cmd_report(args: argparse.Namespace) -> int:
    """`decoder report`: tables, plots and samples from experiment files or run folders."""
    from decoder.report import write_report

    folder = write_report(args.sources, runs_dir=args.runs_dir, out=args.out, name=args.name)
    print(f"report: {folder}/summary.md")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `run` and `report` on the `decoder` command's sub-parsers."""
    p = subparsers.add_parser("run", help="train every point of an experiment grid (YAML), then report")
    p.add_argument("experiment", help="experiment YAML file (name, base, grid, zip, seeds, exclude)")
    p.add_argument("--runs-dir", default="runs", help="run folders go to RUNS_DIR/<name>/<run id> (default runs)")
    p.add_argument("--out", default="results", help="report folder parent (default results)")
    p.add_argument("--force", action="store_true", help="re-run points that already completed")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N",
                   help="run only points whose index is I modulo N (0 <= I < N)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded points and exit")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("report", help="tables, plots and samples from experiment files or run folders")
    p.add_argument("sources", nargs="+", help="experiment YAML files, run folders, or folders of run folders")
    p.add_argument("--runs-dir", default="runs", help="where experiment files' runs are (default runs)")
    p.add_argument("--out", default="results", help="writes OUT/<name>/ (default results)")
    p.add_argument("--name", help="report folder name (default: the experiment names joined by -vs-)")
    p.set_defaults(func=cmd_report)
