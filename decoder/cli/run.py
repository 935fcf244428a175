"""`decoder run EXPERIMENT`: train every point of an experiment grid (skipping finished points,
resuming interrupted ones; --workers N at a time), then, for a scaling study with a `predict:`
section, its prediction point (`decoder.scaling_predict`), then write its report."""

from __future__ import annotations

import argparse

from decoder.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML file (name, base, grid, zip, seeds, exclude)")
    p.add_argument("--runs-dir", default="runs", help="run folders go to RUNS_DIR/<name>/<run id> (default runs)")
    p.add_argument("--out", default="results", help="report folder parent (default results)")
    p.add_argument("--force", action="store_true", help="re-run points that already completed")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run only points whose index is I modulo N (0 <= I < N)")
    p.add_argument("--storage", metavar="URL",
                   help="pull points from a shared study instead of --shard: run the same command on each machine "
                        "(any SQLAlchemy URL, e.g. postgresql://user@host/db); killed workers' points are resumed")
    p.add_argument("--workers", default="1", metavar="N",
                   help="train N points at once on this machine (processes; cores // N threads each unless the "
                        "config sets training.num_threads; 'auto': min(points, cores), on a GPU at most 4)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded points and exit")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")


def _shard(text: str) -> tuple[int, int]:
    from decoder.experiments.runner import parse_shard

    try:
        return parse_shard(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--shard {exc}") from None


def _train_points(experiment, args: argparse.Namespace, shard: tuple[int, int]) -> list:
    from decoder.experiments.parallel import resolve_workers
    from decoder.experiments.runner import run_experiment

    if not args.storage:
        mine = [p for p in experiment.points if p.index % shard[1] == shard[0]]
        workers = resolve_workers(args.workers, len(mine))
        outcomes = run_experiment(experiment, args.runs_dir, force=args.force, shard=shard, quiet=args.quiet,
                                  workers=workers)
        if experiment.predict is not None and shard == (0, 1) and not any(o.status == "interrupted" for o in outcomes):
            from decoder.scaling_predict import run_prediction

            outcomes += run_prediction(experiment, args.runs_dir, force=args.force, workers=workers)
        return outcomes
    if args.force or shard != (0, 1) or args.workers != "1":
        raise UsageError("--storage hands points out itself: it cannot be combined with --shard, --force or --workers")
    from decoder.sweep.worker import pull_grid

    return pull_grid(experiment, args.runs_dir, args.storage, quiet=args.quiet)


def run(args: argparse.Namespace) -> int:
    from decoder.distributed import is_rank0, shutdown
    from decoder.experiments import load_experiment
    from decoder.experiments.runner import check_data, dry_run_table
    from decoder.report import write_report

    shard = _shard(args.shard)
    experiment = load_experiment(args.experiment)
    if args.dry_run:
        check_data(experiment)
        print(dry_run_table(experiment, args.runs_dir, shard))
        return 0
    try:
        outcomes = _train_points(experiment, args, shard)
    finally:
        shutdown()
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    if not is_rank0():  # under torchrun rank 0 reports
        return 1 if counts.get("failed") else 0
    print(f"{experiment.name}: {len(outcomes)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    folder = write_report([args.experiment], runs_dir=args.runs_dir, out=args.out)
    print(f"report: {folder}/summary.md")
    if counts.get("interrupted"):
        return 130
    return 1 if counts.get("failed") else 0
