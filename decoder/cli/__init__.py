"""The `decoder` command: one table of sub-commands, each in its own module of this package.

A command's module has `add_arguments(parser)` and `run(args) -> int`. It imports only argparse and
torch-free decoder modules at its top and everything heavy inside `run`, so `decoder --help` lists
every command on any install and `decoder generate --onnx` runs where torch is absent. Adding a
command is a row in COMMANDS and its module.

A `UserError` (bad config value, missing file, corrupt checkpoint or bundle, bad sampling parameter,
missing extra) prints one line on stderr and exits 2 (`DECODER_DEBUG=1` shows its traceback instead);
any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple

from decoder.cli.extras import MissingExtra, is_missing_package, require
from decoder.errors import UserError


class Command(NamedTuple):
    module: str
    """The module with the command's add_arguments(parser) and run(args)."""
    help: str
    extra: str | None
    """The pip extra (pyproject.toml) the command needs; None: the base install runs it, or its
    `run` asks for the extra its options need (generate: [runtime] with --onnx, else [train])."""


COMMANDS: dict[str, Command] = {
    "train": Command("decoder.cli.train", "train one config (YAML with model/data/training/sampling, "
                                          "or an experiment file of a single point)", "train"),
    "generate": Command("decoder.cli.generate", "generate text from a run folder, a checkpoint or an ONNX bundle",
                        None),
    "data": Command("decoder.cli.data", "fetch and inspect a corpus: tokens, vocabulary, bytes/token", "train"),
    "run": Command("decoder.cli.run", "train every point of an experiment grid (YAML), then report", "train"),
    "sweep": Command("decoder.cli.sweep", "search hyperparameters with Optuna (a search: experiment file; "
                                          "many workers share one study, SQLite or PostgreSQL)", "sweep"),
    "report": Command("decoder.cli.report", "tables, plots and samples from experiment files or run folders",
                      "train"),
    "eval": Command("decoder.cli.eval", "score a text with a run, checkpoint or ONNX bundle: bits per byte, "
                                        "perplexities; static, sliding-window, dynamic or n-gram-mixed evaluation", None),
    "export": Command("decoder.cli.export", "export a run or checkpoint to an ONNX bundle (the torch-free "
                                            "runtime, onnxruntime-genai) or a Hugging Face folder", "export"),
    "serve": Command("decoder.cli.serve", "serve an ONNX bundle over HTTP (OpenAI-style completions, streaming, "
                                          "continuous batching; no torch)", "serve"),
    "bench": Command("decoder.cli.bench", "throughput table (CPU vs CUDA) from pytest-benchmark JSON files, "
                                          "or run the suite", "bench"),
}


class UsageError(UserError):
    """A user mistake found by the command line itself (options that do not fit together)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decoder", description="A from-scratch GPT-2-style language model: "
                                     "training, experiment grids, reports, ONNX export and benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        importlib.import_module(command.module).add_arguments(sub.add_parser(name, help=command.help))
    return parser


def _run(name: str, args: argparse.Namespace) -> int:
    command = COMMANDS[name]
    if command.extra:
        require(name, command.extra)
    try:
        return importlib.import_module(command.module).run(args)
    except ModuleNotFoundError as exc:  # an extra's package the metadata did not know was missing
        if not is_missing_package(exc):
            raise
        raise MissingExtra(name, command.extra, exc.name) from exc


def _one_line(name: str, exc: UserError) -> str:
    if isinstance(exc, MissingExtra):
        return str(exc)
    message = str(exc).strip()
    return f"decoder {name}: error: {message.splitlines()[0] if message else type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args.command, args)
    except KeyboardInterrupt:
        print("decoder: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        if os.environ.get("DECODER_DEBUG"):
            raise
        print(_one_line(args.command, exc), file=sys.stderr)
        return 2
