"""`decoder export RUN --out BUNDLE`: an ONNX bundle with KV-cache inputs and outputs, parity-checked
against PyTorch, for the torch-free runtime (and onnxruntime-genai); `--format hf`: a Hugging Face
folder instead (GPT2LMHeadModel, or GPTNeoXForCausalLM for rotary positions)."""

from __future__ import annotations

import argparse
import json

from decoder.cli.extras import require

FORMATS = ("onnx", "hf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("--out", required=True, metavar="OUT_DIR",
                   help="folder to write (built aside, then renamed into place)")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx: a bundle for decoder's runtime and onnxruntime-genai (default); hf: a folder "
                        "transformers' AutoModelForCausalLM loads (needs the [hf] extra)")
    p.add_argument("--quantize", metavar="int8", help="also write model.int8.onnx (dynamic int8; onnx only)")


def run(args: argparse.Namespace) -> int:
    if args.format == "hf":
        return _run_hf(args)
    from decoder.bundle import BUNDLE_JSON
    from decoder.export import export_bundle

    bundle = export_bundle(args.source, args.out, quantize=args.quantize)
    meta = json.loads((bundle / BUNDLE_JSON).read_text())
    diffs = meta["parity"]["max_abs_logits_diff"]
    print(f"exported {args.source} -> {bundle}")
    for name, record in meta["files"].items():
        size = f"{record['bytes'] / 1e6:.1f} MB" if name.endswith(".onnx") else f"{record['bytes']} bytes"
        print(f"  {name}: {size}, sha256 {record['sha256'][:16]}...")
    print("  parity, max abs logits diff vs PyTorch by past length: "
          + ", ".join(f"{p}: {d:.2e}" for p, d in diffs.items())
          + f"; rows of different lengths (padded): {meta['parity']['padded_max_abs_logits_diff']:.2e}")
    if "int8" in meta:
        q = meta["int8"]
        print(f"  int8: top-1 agreement {q['top1_agreement']:.2%} over {q['tokens']} validation tokens, "
              f"val bpb {q['val_bpb_int8']:.4f} (fp32 {q['val_bpb_fp32']:.4f})")
    return 0


def _run_hf(args: argparse.Namespace) -> int:
    from decoder.cli import UsageError

    if args.quantize:
        raise UsageError("--quantize applies to the ONNX bundle; --format hf writes fp32 weights")
    require("export", "hf")
    from decoder.hf import export_hf_folder

    folder, diff = export_hf_folder(args.source, args.out)
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    print(f"exported {args.source} -> {folder} (Hugging Face {architecture})")
    print(f"  parity, max abs logits diff vs PyTorch: {diff:.2e}; ids: decoder.tokenizer.Tokenizer.load"
          f"('{folder}/tokenizer.json').encode(text) (see {folder}/README.md)")
    return 0
