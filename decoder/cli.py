"""The `decoder` command: train, generate, data, and the commands other modules register
(run/report from experiments, export from export, bench from benchreport).

User mistakes (bad config, missing file, corrupt checkpoint) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# Modules that add their own sub-commands through `add_commands(subparsers)`.
COMMAND_MODULES = ("decoder.experiments", "decoder.export", "decoder.report.throughput")


class UsageError(Exception):
    """A user mistake found by the CLI itself."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean a user mistake, from whichever modules this install can import
    (a deployment install has no torch: its `generate --onnx` must still report errors cleanly)."""
    errors: list[type[BaseException]] = [UsageError, FileNotFoundError, ValueError]
    sources = {"decoder.config": ("ConfigError",), "decoder.data": ("DataError",),
               "decoder.tokenizer": ("TokenizerError",), "decoder.train": ("TrainingError",),
               "decoder.runtime": ("BundleError",)}
    for name in (*sources, *COMMAND_MODULES):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.extend(getattr(module, attr) for attr in sources.get(name, ()) if hasattr(module, attr))
        errors.extend(getattr(module, "USER_ERRORS", ()))
    return tuple(errors)


def _single_config(path: Path):
    """A run config from a plain config file, or from an experiment file of exactly one point
    (then the run folder is the one `decoder run` would use)."""
    from decoder.config import config_from_dict, read_yaml

    raw = read_yaml(path)
    if isinstance(raw, dict) and "base" in raw:
        from decoder.experiments import experiment_from_dict

        experiment = experiment_from_dict(raw, source=str(path), path=path)
        if len(experiment.points) != 1:
            raise UsageError(f"{path}: an experiment of {len(experiment.points)} points; run it with `decoder run {path}`")
        point = experiment.points[0]
        return point.config, Path("runs") / experiment.name / point.run_id
    return config_from_dict(raw, source=str(path)), Path("runs") / path.stem


def cmd_train(args: argparse.Namespace) -> int:
    from decoder.distributed import shutdown
    from decoder.train import train

    config, default_dir = _single_config(Path(args.config))
    run_dir = Path(args.run_dir) if args.run_dir else default_dir
    try:
        summary = train(config, run_dir, resume=args.resume, quiet=args.quiet)
    finally:
        shutdown()
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:
        bpb = summary.get("best_val_bpb")
        print(f"{summary['status']}: {summary['step']} steps, {summary['tokens_seen']:,} tokens in "
              f"{summary['elapsed_s']:.0f} s, best val bpb {bpb:.4f} -> {run_dir}" if bpb is not None else
              f"{summary['status']}: {summary['step']} steps -> {run_dir}")
    if summary["status"] == "interrupted":
        return 130
    return 0 if summary["status"] in ("completed", "early_stopped") else 1


def _sampling_params(args: argparse.Namespace):
    from decoder.sampling import SamplingParams

    if args.greedy:
        return SamplingParams(greedy=True)
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def cmd_generate(args: argparse.Namespace) -> int:
    params = _sampling_params(args)
    if args.max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens={args.max_new_tokens}: must be >= 1")
    if not args.prompt:
        raise UsageError("--prompt is empty: give at least one character of text")
    if args.onnx and args.run:
        raise UsageError("give either a run folder/checkpoint or --onnx BUNDLE_DIR, not both")
    if args.onnx:
        from decoder.runtime import Runtime

        runtime = Runtime(args.onnx)
        pieces = runtime.stream(args.prompt, max_new_tokens=args.max_new_tokens, params=params, seed=args.seed)
    else:
        if not args.run:
            raise UsageError("give a run folder or checkpoint (RUN_DIR_OR_CKPT), or an ONNX bundle (--onnx DIR)")
        from decoder.generate import stream_text
        from decoder.train import load_model

        model, tokenizer, _, _ = load_model(args.run)
        pieces = stream_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, params=params,
                             seed=args.seed)
    sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from decoder.config import DataConfig
    from decoder.data import CORPORA, corpus_path, prepare

    if args.list:
        for name, url in CORPORA.items():
            print(f"{name}\t{url}")
        return 0
    config = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, compact_vocab=not args.full_vocab,
                        val_fraction=args.val_fraction)
    problems = config.problems()
    if problems:
        raise UsageError("; ".join(problems))
    dataset = prepare(config)
    n_tokens = len(dataset.train) + len(dataset.val)
    distinct = len(set(dataset.train.tolist()) | set(dataset.val.tolist()))
    info = {
        "corpus": args.corpus,
        "file": str(corpus_path(args.corpus)),
        "text_bytes": dataset.text_bytes,
        "tokenizer": args.tokenizer,
        "vocab_size": dataset.tokenizer.vocab_size,
        "tokens": n_tokens,
        "train_tokens": len(dataset.train),
        "val_tokens": len(dataset.val),
        "distinct_tokens": distinct,
        "bytes_per_token": round(dataset.text_bytes / n_tokens, 3),
    }
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one config (YAML with model/data/training/sampling, "
                                      "or an experiment file of a single point)")
    p.add_argument("config", help="YAML config or single-point experiment file")
    p.add_argument("--run-dir", help="run folder (default runs/<config name>, or runs/<experiment>/<run id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate text from a run folder, a checkpoint or an ONNX bundle")
    p.add_argument("run", nargs="?", help="run folder or checkpoint file")
    p.add_argument("--onnx", metavar="BUNDLE_DIR", help="use onnxruntime on an exported bundle instead of torch")
    p.add_argument("--prompt", default="Harding wondered")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (default: multinomial sampling)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 keeps all tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="1 keeps all tokens")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("data", help="fetch and inspect a corpus: tokens, distinct tokens, bytes/token")
    p.add_argument("corpus", nargs="?", default="mysterious-island", help="registered name or text file")
    p.add_argument("--tokenizer", default="cl100k_base")
    p.add_argument("--full-vocab", action="store_true", help="do not compact the vocabulary")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--list", action="store_true", help="list registered corpora")
    p.set_defaults(func=cmd_data)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            # A module whose own imports are missing (e.g. export without torch/onnx) is left out;
            # `generate --onnx` needs none of them.
            continue
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("decoder: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        if os.environ.get("DECODER_DEBUG"):
            raise
        print(f"decoder {args.command}: error: needs {exc.name or 'a missing package'}, which is not installed; "
              f"install the extras: pip install \"decoder[train,export]\" (deployment: decoder[runtime])",
              file=sys.stderr)
        return 2
    except _user_errors() as exc:
        if os.environ.get("DECODER_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"decoder {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
