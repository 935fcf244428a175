"""Real compressors beside the n-gram baselines on one data config: xz -9e, bzip2 -9 and zpaq -m5
(where installed), each the cost of the validation bytes given the training bytes
(`decoder.compressors`), next to the interpolated Kneser-Ney bigram and trigram on the model's ids.
All figures are bits per byte of the same validation bytes. Prints a Markdown table with the tool
versions.

Run:  python -m bench.compressors [--corpus mysterious-island] [--min-count 2] [--fallback pieces]
"""

from __future__ import annotations

import argparse

from decoder.baseline import kn_baseline
from decoder.compressors import compressor_baselines
from decoder.config import DataConfig


def rows(data: DataConfig) -> list[list[str]]:
    """[baseline, bits per byte, nats per model token, seconds, tool] for every baseline of `data`."""
    out = []
    for order in (2, 3):
        result = kn_baseline(data, order)
        out.append([f"KN {'bigram' if order == 2 else 'trigram'}", f"{result['val_bpb']:.4f}",
                    f"{result['val_loss']:.4f}", "", "decoder.baseline"])
    for result in compressor_baselines(data):
        if "error" in result:
            out.append([result["name"], "skipped", "", "", result["error"]])
            continue
        out.append([result["name"], f"{result['val_bpb']:.4f}", f"{result['val_loss']:.4f}",
                    f"{result['seconds']:.1f}", result["tool"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = DataConfig()
    parser.add_argument("--corpus", default=defaults.corpus)
    parser.add_argument("--tokenizer", default=defaults.tokenizer)
    parser.add_argument("--min-count", type=int, default=defaults.min_count)
    parser.add_argument("--fallback", choices=["bytes", "pieces"], default=defaults.fallback)
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    args = parser.parse_args()
    data = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, min_count=args.min_count,
                      fallback=args.fallback, val_fraction=args.val_fraction)
    print(f"{data.corpus}, {data.tokenizer}, compact vocabulary min_count {data.min_count} ({data.fallback}), "
          f"val_fraction {data.val_fraction}; seconds: compressing both texts when first computed (later runs "
          "read the cache)")
    print()
    header = ["baseline", "val bpb", "nats/token", "seconds", "tool"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(data):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
