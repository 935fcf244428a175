"""ONNX export of a GPT with its KV cache, written as a self-contained bundle for `decoder.runtime`.

`decoder export RUN_DIR_OR_CHECKPOINT --out BUNDLE_DIR [--quantize int8]` writes:

- `model.onnx`: the graph of `decoder.bundle`'s contract (format 2): inputs `input_ids`,
  `attention_mask`, `position_ids`, the left-padded cache `past_key_{i}` / `past_value_{i}` and
  (added after export and int8 quantization: `decoder.logits_start`) the optional `logits_start`;
  outputs `logits` and `present_key_{i}` / `present_value_{i}`. batch, seq and past are dynamic,
  past may be 0: one graph serves prefills and steps, for rows of equal or different lengths.
  Exported by `torch.onnx.export(..., dynamo=True, dynamic_shapes=...)` at opset 23, checked by `onnx.checker`.
- `model.int8.onnx` (with --quantize int8): onnxruntime dynamic int8 quantization of the matmuls.
- `genai_config.json`: the graph described for onnxruntime-genai (`decoder.genai`; the int8 model
  through the same file, its filename overlaid).
- `bundle.json`: format version, model config, tokenizer (encoding + compact id map), <|endoftext|>
  id, context length, opset, the training run's id and validation figures, the sha256 and size of
  each model file and of genai_config.json, the PyTorch-vs-onnxruntime parity figures (by past
  length, and for a padded batch of rows of different lengths) and, for int8, its agreement figures.

The bundle is built in a temporary folder next to BUNDLE_DIR and renamed into place at the end, so
a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import numpy_helper
import torch.nn as nn

from decoder import __version__
from decoder.bundle import (ATTENTION_MASK, BUNDLE_FORMAT, BUNDLE_JSON, GENAI_CONFIG_FILE, INT8_MODEL_FILE, LOGITS_START,
                            MODEL_FILE, file_record, input_names, output_names)
from decoder.config import RunConfig
from decoder.errors import UserError
from decoder.genai import genai_config_text
from decoder.io import atomic_write, write_json
from decoder.logits_start import add_logits_start
from decoder.model import GPT
from decoder.parity import int8_agreement, padded_parity_check, parity_check
from decoder.runtime import Runtime
from decoder.tokenizer import Tokenizer

QUANTIZATIONS = ("int8",)
OPSET = 23
"""ONNX opset of the exported graph. From 23 each scaled-dot-product attention is one ONNX `Attention`
node instead of ~15 small ops (171 nodes instead of 268 for 6 blocks); per-node overhead is a large
share of a batch-1 step, and onnxruntime (>= 1.23 has the CPU kernel) decoded the benchmark model
1.1x (fp32) and 1.3x (int8) faster than with the default opset 20."""
PARITY_TOLERANCE = 1e-3
"""An export whose logits differ from PyTorch's by more than this (max abs) is refused."""


class ExportError(UserError, RuntimeError):
    """An export that cannot be done or whose result does not reproduce the model."""


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from these loggers ("" is the root logger) while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class CachedGPT(nn.Module):
    """The GPT with a flat signature for export:
    (input_ids, attention_mask, position_ids, [k_0, v_0, k_1, ...]) -> (logits, k_0', v_0', ...)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, presents = self.model(input_ids, pairs, attention_mask, position_ids)
        return (logits, *[t for kv in presents for t in kv])


def _example_inputs(model: GPT) -> tuple[tuple, dict]:
    """Example inputs for the exporter and their dynamic dimensions (the sizes are >= 2 and
    distinct, so torch.export keeps each dimension symbolic instead of specialising it)."""
    c = model.config
    batch, seq, past_len = 2, 3, 4
    ids = torch.zeros(batch, seq, dtype=torch.int64)
    mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    positions = torch.arange(past_len, past_len + seq).repeat(batch, 1)
    past = [torch.zeros(batch, c.n_heads, past_len, c.head_dim) for _ in range(2 * c.n_blocks)]
    dims = {
        "batch": torch.export.Dim("batch", min=1),
        "seq": torch.export.Dim("seq", min=1, max=c.context_length),
        "past": torch.export.Dim("past", min=0, max=c.context_length),
    }
    dynamic_shapes = {
        "input_ids": {0: dims["batch"], 1: dims["seq"]},
        "attention_mask": {0: dims["batch"], 1: torch.export.Dim.AUTO},  # past + seq: torch.export infers it
        "position_ids": {0: dims["batch"], 1: dims["seq"]},
        "past": [{0: dims["batch"], 2: dims["past"]} for _ in range(2 * c.n_blocks)],
    }
    return (ids, mask, positions, past), dynamic_shapes


def export_onnx(model: GPT, path: Path) -> int:
    """Write `model` (in eval mode, on the CPU) as ONNX with the dynamic KV-cache signature to
    `path`; returns the opset."""
    n_blocks = model.config.n_blocks
    args, dynamic_shapes = _example_inputs(model)
    try:
        with warnings.catch_warnings(), _quiet_loggers("torch.onnx"), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter chatter (unused axis names, deprecations)
            program = torch.onnx.export(
                CachedGPT(model), args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
                opset_version=OPSET, input_names=input_names(n_blocks), output_names=output_names(n_blocks),
            )
            program.save(str(path), external_data=False)
    except Exception as exc:  # the exporter wraps torch.export's and its own failures in many types
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[0]
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line}") from exc
    proto = onnx.load(str(path))
    _name_mask_length(proto)
    onnx.save(proto, str(path))
    _check_graph(proto, path)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _name_mask_length(proto: onnx.ModelProto) -> None:
    """Call attention_mask's second dimension "past + seq" (as the present outputs' is) instead of
    the symbol torch.export made up for it."""
    mask = next(i for i in proto.graph.input if i.name == ATTENTION_MASK)
    symbol = mask.type.tensor_type.shape.dim[1].dim_param
    if not symbol:
        return
    for value in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "past + seq"


def _check_graph(proto: onnx.ModelProto, path: Path) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name}: onnx.checker rejects the graph: {str(exc).splitlines()[0]}") from exc


def fold_weight_transposes(proto: onnx.ModelProto) -> int:
    """Replace each Transpose of an initializer by a transposed initializer; returns how many.

    With tied embeddings the exporter writes the output layer as MatMul(x, Transpose(wte)), since
    wte is also the Gather table. onnxruntime folds that at load for fp32, but the quantizer only
    quantizes a MatMul whose weight is an initializer: without this the largest matmul (the
    vocabulary projection) would stay fp32 in the int8 model."""
    initializers = {i.name: i for i in proto.graph.initializer}
    kept, folded = [], 0
    for node in proto.graph.node:
        if node.op_type == "Transpose" and node.input[0] in initializers:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            weight = numpy_helper.to_array(initializers[node.input[0]])
            transposed = np.ascontiguousarray(weight.transpose(perm))
            proto.graph.initializer.append(numpy_helper.from_array(transposed, node.output[0]))
            folded += 1
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return folded


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization: int8 weights (one scale per tensor), activations quantized at
    run time, for every MatMul with a constant weight and the embedding tables. (Attention is left
    out: the quantizer would mistake ONNX's Attention for onnxruntime's contrib op of that name.)"""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    fold_weight_transposes(proto)
    with _quiet_loggers(""):  # it logs advice on the root logger meant for static quantization
        quantize_dynamic(proto, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])
    _check_graph(onnx.load(str(dst)), dst)


def _bundle_json(model: GPT, tokenizer: Tokenizer, config: RunConfig, opset: int, run_meta: dict | None) -> dict:
    run_meta = run_meta or {}
    train_state = run_meta.get("train_state") or {}
    return {
        "format": BUNDLE_FORMAT,
        "created_by": f"decoder {__version__}, torch {torch.__version__}, onnx {onnx.__version__}",
        "model": {**dataclasses.asdict(config.model), "vocab_size": model.vocab_size},
        "tokenizer": tokenizer.to_dict(),
        "eot_id": tokenizer.eot_id,
        "context_length": config.model.context_length,
        "opset": opset,
        "inputs": input_names(config.model.n_blocks),
        "outputs": output_names(config.model.n_blocks),
        "run": {
            "id": run_meta.get("run_id"),
            "step": train_state.get("step"),
            "tokens_seen": train_state.get("tokens_seen"),
            "val": run_meta.get("val"),
            "source": run_meta.get("path"),
        },
        "files": {},
    }


def _validation_tokens(config: RunConfig, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    from decoder.data import prepare

    dataset = prepare(config.data)
    if dataset.tokenizer.to_dict() != tokenizer.to_dict():
        raise ExportError(
            f"the tokenizer rebuilt from corpus {config.data.corpus!r} differs from the model's; "
            "pass val_tokens to score int8 agreement"
        )
    return dataset.val, tokenizer.byte_lengths()


def check_out_dir(out_dir: Path, marker: str = BUNDLE_JSON) -> None:
    """Refuse to replace anything but an empty folder or an earlier export (a folder with `marker`:
    bundle.json for a bundle)."""
    if not out_dir.exists():
        return
    replaceable = out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / marker).is_file())
    if not replaceable:
        kind = "a bundle folder" if marker == BUNDLE_JSON else f"an earlier export (no {marker})"
        raise ExportError(f"{out_dir}: exists and is not {kind} (or an empty folder); choose another --out")


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp folder to out_dir, replacing an older bundle there."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def export_model(
    model: GPT,
    tokenizer: Tokenizer,
    config: RunConfig,
    out_dir: str | Path,
    *,
    quantize: str | None = None,
    run_meta: dict | None = None,
    val_tokens: np.ndarray | None = None,
) -> Path:
    """Write the bundle of `model` to `out_dir` (atomically) and return its path.

    run_meta: the training run's metadata (decoder.checkpoint.load_model's meta: run_id, train_state,
    val, path) recorded in bundle.json. quantize='int8' adds model.int8.onnx and its agreement
    figures on `val_tokens` (model ids; default: the validation split of config.data)."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"quantize={quantize!r}: allowed {', '.join(QUANTIZATIONS)} or none")
    if model.vocab_size != tokenizer.vocab_size:
        raise ExportError(f"model vocab_size {model.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    was_training = model.training
    try:
        cpu_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
        _build_bundle(cpu_model.eval(), tokenizer, config, tmp, quantize, run_meta, val_tokens)
        move_into_place(tmp, out_dir)
    finally:
        model.train(was_training)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _build_bundle(
    model: GPT,
    tokenizer: Tokenizer,
    config: RunConfig,
    tmp: Path,
    quantize: str | None,
    run_meta: dict | None,
    val_tokens: np.ndarray | None,
) -> None:
    """Write model.onnx (+ int8) and bundle.json into `tmp`, checking parity before the figures."""
    opset = export_onnx(model, tmp / MODEL_FILE)
    meta = _bundle_json(model, tokenizer, config, opset, run_meta)
    files = [MODEL_FILE, *([INT8_MODEL_FILE] if quantize == "int8" else [])]
    if quantize == "int8":  # from the graph without logits_start: its slice goes after the quantization
        quantize_int8(tmp / MODEL_FILE, tmp / INT8_MODEL_FILE)
    if all([add_logits_start(tmp / name) for name in files]):
        meta["optional_inputs"] = [LOGITS_START]
    for name in files:
        meta["files"][name] = file_record(tmp / name)
    atomic_write(tmp / GENAI_CONFIG_FILE, genai_config_text(meta, dataclasses.asdict(config.sampling)))
    meta["files"][GENAI_CONFIG_FILE] = file_record(tmp / GENAI_CONFIG_FILE)
    write_json(tmp / BUNDLE_JSON, meta)
    runtime = Runtime(tmp)
    diffs = parity_check(model, runtime)
    padded = padded_parity_check(model, runtime)
    meta["parity"] = {"max_abs_logits_diff": {str(p): d for p, d in diffs.items()},
                      "padded_max_abs_logits_diff": padded}
    worst = max(*diffs.values(), padded)
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"onnxruntime logits differ from PyTorch by {worst:.3g} (> {PARITY_TOLERANCE}); not exported")
    if quantize == "int8":
        if val_tokens is None:
            val_tokens, byte_lengths = _validation_tokens(config, tokenizer)
        else:
            byte_lengths = tokenizer.byte_lengths()
        meta["int8"] = int8_agreement(tmp, val_tokens, byte_lengths)
    write_json(tmp / BUNDLE_JSON, meta)


def export_bundle(source: str | Path, out_dir: str | Path, *, quantize: str | None = None) -> Path:
    """Export a run folder (its best checkpoint, else latest) or a checkpoint file to a bundle."""
    from decoder.checkpoint import load_model

    model, tokenizer, config, meta = load_model(source)
    return export_model(model, tokenizer, config, out_dir, quantize=quantize, run_meta=meta)

