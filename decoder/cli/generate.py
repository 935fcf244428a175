"""`decoder generate`: stream a continuation from a run folder or checkpoint (PyTorch and its KV
cache) or from an ONNX bundle (`--onnx`: onnxruntime, no torch imported)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Iterator

from decoder.cli import UsageError
from decoder.cli.extras import require
from decoder.config import SamplingConfig

if TYPE_CHECKING:
    from decoder.sampling import SamplingParams

DEFAULTS = SamplingConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run folder or checkpoint file")
    p.add_argument("--onnx", metavar="BUNDLE_DIR", help="use onnxruntime on an exported bundle instead of torch")
    p.add_argument("--quantized", action="store_true", help="with --onnx: the bundle's int8 model (model.int8.onnx)")
    p.add_argument("--prompt", default=DEFAULTS.prompt)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (default: multinomial sampling)")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="0 keeps all tokens")
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help="1 keeps all tokens")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty,
                   help="CTRL's penalty on tokens already in the text (1 is off)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=DEFAULTS.no_repeat_ngram_size,
                   help="never complete an n-gram of this many tokens already in the text (0 is off)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before the first occurrence of TEXT (repeatable)")


def _as_option(problem: str) -> str:
    """'sampling.top_p=2.0: must be ...' -> '--top-p=2.0: must be ...' (what the user typed)."""
    name, rest = problem.removeprefix("sampling.").split("=", 1)
    return f"--{name.replace('_', '-')}={rest}"


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The sampling options, checked by the sampling config's rules (and the prompt's), as params."""
    from decoder.sampling import SamplingParams, check_prompt

    config = SamplingConfig(prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    problems = config.problems()
    if problems:
        raise UsageError("; ".join(map(_as_option, problems)))
    check_prompt(config.prompt, "--prompt")
    repetition = dict(repetition_penalty=config.repetition_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size)
    if args.greedy:
        return SamplingParams(greedy=True, **repetition)
    return SamplingParams(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, **repetition)


def _pieces(args: argparse.Namespace, params: SamplingParams) -> Iterator[str]:
    if args.onnx:
        from decoder.runtime import Runtime

        runtime = Runtime(args.onnx, quantized=args.quantized)
        return runtime.stream(args.prompt, max_new_tokens=args.max_new_tokens, params=params, seed=args.seed)
    from decoder.generate import stream_text
    from decoder.checkpoint import load_model

    model, tokenizer, _, _ = load_model(args.run)
    return stream_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, params=params,
                       seed=args.seed)


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    if args.onnx and args.run:
        raise UsageError("give either a run folder/checkpoint or --onnx BUNDLE_DIR, not both")
    if not args.onnx and not args.run:
        raise UsageError("give a run folder or checkpoint (RUN_DIR_OR_CKPT), or an ONNX bundle (--onnx DIR)")
    if args.quantized and not args.onnx:
        raise UsageError("--quantized picks a bundle's int8 model: give it with --onnx BUNDLE_DIR")
    require("generate", "runtime" if args.onnx else "train")
    from decoder.stop import StopMatcher, until_stop

    stops = StopMatcher(args.stop)  # an empty stop string is refused before a model loads
    pieces = until_stop(_pieces(args, params), stops)
    sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
