"""`decoder report SOURCE ...`: tables, plots and samples from experiment files or run folders."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", help="experiment YAML files, run folders, or folders of run folders")
    p.add_argument("--runs-dir", default="runs", help="where experiment files' runs are (default runs)")
    p.add_argument("--out", default="results", help="writes OUT/<name>/ (default results)")
    p.add_argument("--name", help="report folder name (default: the experiment names joined by -vs-)")
    p.add_argument("--storage", metavar="URL", help="a search's study (default: sqlite file RUNS_DIR/<name>/study.db)")


def run(args: argparse.Namespace) -> int:
    from decoder.report import write_report

    folder = write_report(args.sources, runs_dir=args.runs_dir, out=args.out, name=args.name,
                          storage=args.storage)
    print(f"report: {folder}/summary.md")
    return 0
