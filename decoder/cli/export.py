"""`decoder export RUN --out BUNDLE`: an ONNX bundle with KV-cache inputs and outputs, parity-checked
against PyTorch, for the torch-free runtime."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR",
                   help="bundle folder to write (built aside, then renamed into place)")
    p.add_argument("--quantize", metavar="int8", help="also write model.int8.onnx (dynamic int8)")


def run(args: argparse.Namespace) -> int:
    from decoder.bundle import BUNDLE_JSON
    from decoder.export import export_bundle

    bundle = export_bundle(args.source, args.out, quantize=args.quantize)
    meta = json.loads((bundle / BUNDLE_JSON).read_text())
    diffs = meta["parity"]["max_abs_logits_diff"]
    print(f"exported {args.source} -> {bundle}")
    for name, record in meta["files"].items():
        print(f"  {name}: {record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256'][:16]}...")
    print("  parity, max abs logits diff vs PyTorch by past length: "
          + ", ".join(f"{p}: {d:.2e}" for p, d in diffs.items())
          + f"; rows of different lengths (padded): {meta['parity']['padded_max_abs_logits_diff']:.2e}")
    if "int8" in meta:
        q = meta["int8"]
        print(f"  int8: top-1 agreement {q['top1_agreement']:.2%} over {q['tokens']} validation tokens, "
              f"val bpb {q['val_bpb_int8']:.4f} (fp32 {q['val_bpb_fp32']:.4f})")
    return 0
