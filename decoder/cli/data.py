"""`decoder data [CORPUS]`: fetch a corpus and report what the data section's settings make of it:
vocabulary size, training and validation tokens, bytes per token."""

from __future__ import annotations

import argparse
import json

from decoder.config import DataConfig, check

DEFAULTS = DataConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", nargs="?", default=DEFAULTS.corpus, help="registered name or text file")
    p.add_argument("--tokenizer", default=DEFAULTS.tokenizer)
    p.add_argument("--full-vocab", action="store_true", help="do not compact the vocabulary")
    p.add_argument("--min-count", type=int, default=DEFAULTS.min_count,
                   help="keep a token in the compact vocabulary only if it occurs this often in the training "
                        f"split; rarer ones are spelled with the tokens kept (default {DEFAULTS.min_count})")
    p.add_argument("--fallback", choices=["bytes", "pieces"], default=DEFAULTS.fallback,
                   help="how a token outside the compact vocabulary is spelled: its bytes, or the fewest "
                        f"vocabulary tokens that join to it (default {DEFAULTS.fallback})")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction)
    p.add_argument("--list", action="store_true", help="list registered corpora")


def run(args: argparse.Namespace) -> int:
    from decoder.data import CORPORA, corpus_path, prepare

    if args.list:
        for name, url in CORPORA.items():
            print(f"{name}\t{url}")
        return 0
    config = check(DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, compact_vocab=not args.full_vocab,
                              min_count=args.min_count, fallback=args.fallback,
                              val_fraction=args.val_fraction))
    dataset = prepare(config)
    n_tokens = len(dataset.train) + len(dataset.val)
    info = {
        "corpus": args.corpus,
        "file": str(corpus_path(args.corpus)),
        "text_bytes": dataset.text_bytes,
        "tokenizer": args.tokenizer,
        "min_count": args.min_count,
        "fallback": args.fallback,
        "vocab_size": dataset.tokenizer.vocab_size,
        "tokens": n_tokens,
        "train_tokens": len(dataset.train),
        "val_tokens": len(dataset.val),
        "distinct_tokens": len(set(dataset.train.tolist()) | set(dataset.val.tolist())),
        "bytes_per_token": round(dataset.text_bytes / n_tokens, 3),
    }
    print(json.dumps(info, indent=2))
    return 0
