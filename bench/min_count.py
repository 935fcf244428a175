"""The compact vocabulary's min_count against the n-gram baselines: for each value, the vocabulary
size, the tokens of each split, bytes per token and the interpolated Kneser-Ney bigram and trigram
validation bits per byte, all on the same ids the model would train on. Prints a Markdown table.

Run:  python -m bench.min_count [--corpus mysterious-island] [--values 1 2 3 4 8] [--fallback bytes pieces]
"""

from __future__ import annotations

import argparse

from decoder.baseline import kn_baseline
from decoder.config import DataConfig
from decoder.data import prepare


def rows(corpus: str, values: list[int], fallbacks: list[str]) -> list[list[str]]:
    out = []
    for fallback, min_count in ((f, m) for f in fallbacks for m in values):
        data = DataConfig(corpus=corpus, min_count=min_count, fallback=fallback)
        ds = prepare(data)
        lengths = ds.tokenizer.byte_lengths()
        bytes_per_token = lengths[ds.val].sum() / len(ds.val)
        bigram, trigram = (kn_baseline(data, order)["val_bpb"] for order in (2, 3))
        out.append([fallback, str(min_count), f"{ds.tokenizer.vocab_size:,}", f"{len(ds.train):,}", f"{len(ds.val):,}",
                    f"{bytes_per_token:.2f}", f"{bigram:.4f}", f"{trigram:.4f}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DataConfig.corpus)
    parser.add_argument("--values", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--fallback", nargs="+", choices=["bytes", "pieces"], default=["bytes", "pieces"])
    args = parser.parse_args()
    header = ["fallback", "min_count", "vocabulary", "train tokens", "val tokens", "val bytes/token", "KN bigram bpb",
              "KN trigram bpb"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(args.corpus, args.values, args.fallback):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
