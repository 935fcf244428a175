"""`decoder train CONFIG`: train one config (or a single-point experiment file) into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from decoder.cli import UsageError
from decoder.config import RunConfig, config_from_dict, read_yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config or single-point experiment file")
    p.add_argument("--run-dir", help="run folder (default runs/<config name>, or runs/<experiment>/<run id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def single_config(path: Path) -> tuple[RunConfig, Path]:
    """A run config from a plain config file, or from an experiment file of exactly one point,
    and the run folder `decoder run` would use for it."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and "base" in raw:
        from decoder.experiments import experiment_from_dict

        experiment = experiment_from_dict(raw, source=str(path), path=path)
        if len(experiment.points) != 1:
            raise UsageError(f"{path}: an experiment of {len(experiment.points)} points; run it with `decoder run {path}`")
        point = experiment.points[0]
        return point.config, Path("runs") / experiment.name / point.run_id
    return config_from_dict(raw, source=str(path)), Path("runs") / path.stem


def _report(summary: dict, run_dir: Path) -> None:
    bpb = summary.get("best_val_bpb")
    if bpb is None:
        print(f"{summary['status']}: {summary['step']} steps -> {run_dir}")
        return
    print(f"{summary['status']}: {summary['step']} steps, {summary['tokens_seen']:,} tokens in "
          f"{summary['elapsed_s']:.0f} s, best val bpb {bpb:.4f} -> {run_dir}")


def run(args: argparse.Namespace) -> int:
    from decoder.distributed import is_rank0, shutdown
    from decoder.train import train

    config, default_dir = single_config(Path(args.config))
    run_dir = Path(args.run_dir) if args.run_dir else default_dir
    try:
        summary = train(config, run_dir, resume=args.resume, quiet=args.quiet)
    finally:
        shutdown()
    if summary is not None and is_rank0():
        _report(summary, run_dir)
    if summary["status"] == "interrupted":
        return 130
    return 0 if summary["status"] in ("completed", "early_stopped") else 1
