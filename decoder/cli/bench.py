"""`decoder bench`: run the benchmark suite and/or merge saved pytest-benchmark JSON files into the
CPU-vs-CUDA throughput table and plot."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from decoder.cli import UsageError

DESCRIPTION = ("Write OUT/throughput.{csv,md,png} from the bench/ suites' pytest-benchmark JSON. Each device "
               "column comes from one machine: the first file given that measured the device, plus later files "
               "from the same machine.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("--json", nargs="+", metavar="FILE", help="saved pytest-benchmark JSON files (--benchmark-json)")
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.add_argument("--run", action="store_true",
                   help="first run the suite (pytest bench/ --benchmark-only) into OUT/throughput.<cpu|cuda>.json; "
                        "its file comes before any --json files")
    p.add_argument("--pytest-args", default="",
                   help="extra pytest arguments for --run, e.g. \"-k generate --bench-seconds 2\"")


def run(args: argparse.Namespace) -> int:
    from decoder.report.throughput import run_suite, write_report

    json_paths = [Path(p) for p in args.json or []]
    if args.run:
        json_paths.insert(0, run_suite(Path("bench"), args.out, shlex.split(args.pytest_args)))
    if not json_paths:
        raise UsageError("nothing to report: give --json FILE [FILE ...] or --run")
    command = f"decoder bench --json {' '.join(map(str, json_paths))} --out {args.out}"
    for path in write_report(json_paths, args.out, command=command).values():
        print(path)
    return 0
