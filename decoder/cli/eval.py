"""`decoder eval SOURCE`: score a text with a run folder, a checkpoint or an ONNX bundle and print
bits per byte, nats per token, token, byte and word perplexity (lm-evaluation-harness's
definitions), the counts behind them, the protocol and the seconds taken.

The text is the run's validation split unless --text names a UTF-8 file (scored as given). The
protocols (`decoder.protocols`): static, the training loop's own evaluation (so it reproduces the
run's val_bpb); sliding windows of --stride; dynamic evaluation (--segment, --lr, --rule: a
gradient step after each scored segment, normalised by the run's training-split gradient
statistics with rms, plain SGD with sgd; PyTorch only); mix (PyTorch only): each token's
probability under dynamic evaluation (--dynamic-lr, 0: sliding windows; --segment) mixed with an online Kneser-Ney n-gram of
--order whose counts start from the run's training split and grow with each token once scored,
under a weight learnt online (`decoder.online_ngram`); knn-mix (PyTorch only): the mix plus a
kNN-LM over the model's hidden states of the training split and the text already scored
(--neighbours, --knn-temperature; `decoder.knn`), the three mixed under weights learnt online. A
bundle runs static and sliding with onnxruntime, no torch needed when --text is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from decoder.cli import UsageError
from decoder.cli.extras import require
from decoder.protocols import (BUNDLE_PROTOCOLS, DEFAULT_KNN_TEMPERATURE, DEFAULT_LRS, DEFAULT_NEIGHBOURS,
                               DEFAULT_ORDER, DYNAMIC_RULES, MAX_ORDER, MIXES, PROTOCOLS)

if TYPE_CHECKING:
    import numpy as np

    from decoder.tokenizer import Tokenizer

_LRS = ", ".join(f"{rule} {lr:g}" for rule, lr in DEFAULT_LRS.items())
LINES = (("bits per byte", "bits_per_byte", ".6f"), ("nats per token", "nats_per_token", ".6f"),
         ("token perplexity", "token_perplexity", ".4f"), ("byte perplexity", "byte_perplexity", ".6f"),
         ("word perplexity", "word_perplexity", ".4f"), ("tokens", "tokens", ","), ("bytes", "bytes", ","),
         ("words", "words", ","), ("seconds", "seconds", ".2f"))
MIX_LINES = (("model alone bpb", "model_bits_per_byte", ".6f"), ("n-gram alone bpb", "ngram_bits_per_byte", ".6f"),
             ("model weight", "mean_model_weight", ".4f"), ("model seconds", "model_seconds", ".2f"),
             ("n-gram seconds", "ngram_seconds", ".2f"))
KNN_LINES = (("model alone bpb", "model_bits_per_byte", ".6f"), ("n-gram alone bpb", "ngram_bits_per_byte", ".6f"),
             ("kNN alone bpb", "knn_bits_per_byte", ".6f"), ("mix bpb", "mix_bits_per_byte", ".6f"),
             ("model weight", "mean_model_weight", ".4f"), ("n-gram weight", "mean_ngram_weight", ".4f"),
             ("kNN weight", "mean_knn_weight", ".4f"), ("model seconds", "model_seconds", ".2f"),
             ("n-gram seconds", "ngram_seconds", ".2f"), ("datastore seconds", "datastore_seconds", ".2f"),
             ("search seconds", "search_seconds", ".2f"), ("mixing seconds", "mixing_seconds", ".2f"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_OR_BUNDLE", help="run folder, checkpoint file (.pt) or ONNX bundle folder")
    p.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default: the run's validation split)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="static",
                   help="static: consecutive context-length windows, as training evaluates; sliding: windows "
                        "advanced by --stride; dynamic: a gradient step on each segment after scoring it; mix: "
                        "dynamic evaluation mixed with an online n-gram; knn-mix: the mix plus a kNN-LM over the model's "
                        "hidden states (default static)")
    p.add_argument("--stride", type=int, help="sliding: tokens each window advances (default half the context)")
    p.add_argument("--segment", type=int, help="dynamic, mix, knn-mix: tokens scored between updates, each window's "
                                               "advance (default half the context)")
    p.add_argument("--rule", choices=DYNAMIC_RULES,
                   help="dynamic, mix, knn-mix: the update after each segment: rms, each parameter's gradient "
                        "divided by its root mean square over training windows (Krause et al. 2018; needs the "
                        "run's training split); sgd, plain SGD (default rms)")
    p.add_argument("--lr", type=float, help=f"dynamic: the update's learning rate (default: {_LRS})")
    p.add_argument("--dynamic-lr", type=float, help="mix, knn-mix: the model's dynamic-evaluation learning rate, 0: no "
                                                    f"updates (sliding windows of --segment) (default: {_LRS})")
    p.add_argument("--order", type=int, help=f"mix, knn-mix: the online n-gram's order, 1..{MAX_ORDER} (default "
                                             f"{DEFAULT_ORDER})")
    p.add_argument("--neighbours", type=int, help=f"knn-mix: the kNN expert's k (default {DEFAULT_NEIGHBOURS})")
    p.add_argument("--knn-temperature", type=float, help="knn-mix: the softmax temperature of the neighbours' "
                                                         f"squared distances (default {DEFAULT_KNN_TEMPERATURE:g})")
    p.add_argument("--device", default="auto", help="torch device for a run or checkpoint (default auto)")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="torch precision (default: the one the run trained in)")
    p.add_argument("--threads", type=int, help="bundle: onnxruntime intra-op threads (default all usable cores)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def _bundle_split(meta: dict, tokenizer: Tokenizer) -> np.ndarray:
    """The validation split of the run a bundle was exported from (its folder must still exist)."""
    source = (meta.get("run") or {}).get("source")
    checkpoint = Path(source) if source else None
    if checkpoint is None or not checkpoint.is_file():
        raise UsageError("the bundle's run folder is not here to rebuild its validation split; "
                         "give the text to score with --text FILE")
    from decoder.runs import RunDir

    try:
        from decoder.evaluate import validation_tokens
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise UsageError("rebuilding the run's validation split needs torch (the [train] extra); "
                         "without it give the text to score with --text FILE") from None

    config = RunDir(checkpoint.parent.parent).read_config()
    if config is None:
        raise UsageError(f"{checkpoint.parent.parent}: no config.yaml to rebuild the validation split; "
                         "give the text to score with --text FILE")
    return validation_tokens(config.data, tokenizer)


def _eval_bundle(args: argparse.Namespace) -> dict:
    require("eval", "runtime")
    from decoder.bundle import read_bundle_json
    from decoder.protocols import protocol_settings, read_text, score_bundle, text_tokens
    from decoder.tokenizer import Tokenizer

    if args.protocol not in BUNDLE_PROTOCOLS:
        raise UsageError(f"--protocol {args.protocol} learns as it scores and needs PyTorch: give the run folder "
                         "or checkpoint, not an ONNX bundle")
    meta = read_bundle_json(args.source)
    settings = protocol_settings(args.protocol, int(meta["context_length"]), stride=args.stride,
                                 segment=args.segment, lr=args.lr, dynamic_lr=args.dynamic_lr, order=args.order,
                                 neighbours=args.neighbours, knn_temperature=args.knn_temperature, rule=args.rule)
    tokenizer = Tokenizer.from_dict(meta["tokenizer"])
    tokens = text_tokens(tokenizer, read_text(args.text), args.text) if args.text else _bundle_split(meta, tokenizer)
    return score_bundle(args.source, tokens, settings, threads=args.threads)


def _eval_model(args: argparse.Namespace) -> dict:
    require("eval", "train")
    from decoder.evaluate import load_scorer, score, splits
    from decoder.protocols import protocol_settings, read_text, text_tokens

    model, tokenizer, config, device, precision = load_scorer(args.source, args.device, args.precision)
    settings = protocol_settings(args.protocol, config.model.context_length, stride=args.stride,
                                 segment=args.segment, lr=args.lr, dynamic_lr=args.dynamic_lr, order=args.order,
                                 neighbours=args.neighbours, knn_temperature=args.knn_temperature, rule=args.rule)
    needs_train = args.protocol in MIXES or (args.protocol == "dynamic" and settings["rule"] == "rms")
    train, tokens = splits(config.data, tokenizer) if needs_train or not args.text else (None, None)
    if args.text:
        tokens = text_tokens(tokenizer, read_text(args.text), args.text)
    return score(model, tokenizer, tokens, settings, device, precision, train=train)


def _print(result: dict, text: str) -> None:
    settings = {k.replace("_", " "): result[k] for k in ("stride", "segment", "rule", "lr", "dynamic_lr", "order",
                                                         "neighbours", "knn_temperature") if k in result}
    where = result.get("device", "CPU") + (f", {result['precision']}" if "precision" in result else "")
    print(f"{result['protocol']} protocol ({', '.join(f'{k} {v}' for k, v in settings.items())}; context "
          f"{result['context_length']}) on {text}, {result['engine']} ({where})")
    extra = {"mix": MIX_LINES, "knn-mix": KNN_LINES}.get(result["protocol"], ())
    for label, key, spec in LINES + extra:
        print(f"{label:<18} {format(result[key], spec)}")


def run(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if not source.exists():
        raise UsageError(f"{source}: no such run folder, checkpoint or bundle")
    if args.text and not Path(args.text).is_file():
        raise UsageError(f"--text {args.text}: no such file")
    from decoder.bundle import BUNDLE_JSON

    is_bundle = source.is_dir() and (source / BUNDLE_JSON).is_file()
    result = _eval_bundle(args) if is_bundle else _eval_model(args)
    result["text"] = args.text or "validation split"
    if args.json:
        print(json.dumps(result))
    else:
        _print(result, result["text"])
    return 0
