"""The bundle contract between `decoder.export` (writer) and `decoder.runtime` (reader).

A bundle is a folder with `model.onnx` (optionally `model.int8.onnx`), `bundle.json` (format
version, model config, tokenizer, <|endoftext|> id, context length, opset, the graph's input and
output names, the sha256 and size of each file below, parity and int8 figures) and
`genai_config.json`, the same graph described for onnxruntime-genai (`decoder.genai`; bundles
exported before it lack it and stay readable by the runtime). This module names every part of it
once, reads bundle.json and verifies the listed files. Torch-free.

The graph (format 2):

- inputs `input_ids` (int64 [batch, seq]), `attention_mask` (int64 [batch, past + seq]: 1 for a
  real token, 0 for padding, over the cached columns and the new ones), `position_ids` (int64
  [batch, seq]: each new token's position in its own row), then `past_key_{i}` /
  `past_value_{i}` (float32 [batch, n_heads, past, head_dim]) for every block i;
- the optional input `logits_start` (int64 [1], default [0]: the first position whose logits are
  computed; [-1] gives only the last position's, which is what generation needs, for 0.56-0.71x
  the time of a prefill: `decoder.logits_start`). Listed in bundle.json's `optional_inputs`;
  bundles exported before it lack it and the runtime slices their logits after the run;
- outputs `logits` (float32 [batch, seq, vocab], or [batch, 1, vocab] with `logits_start` [-1])
  and `present_key_{i}` / `present_value_{i}`
  ([batch, n_heads, past + seq, head_dim]).

The cache is left-padded: every row has the same number of cached columns, a shorter row's padding
sits on its left and is masked out by `attention_mask` (see `decoder.model` for why). Format 1
(before the mask and position inputs) is refused with the command that re-exports it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from decoder.errors import UserError

BUNDLE_FORMAT = 2
"""Version of the bundle layout; a runtime refuses bundles of another version."""
REEXPORT = "decoder export RUN --out BUNDLE"
"""The command that rebuilds a bundle from its training run, named in refusals."""
BUNDLE_JSON = "bundle.json"
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
GENAI_CONFIG_FILE = "genai_config.json"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
LOGITS_START = "logits_start"
"""The optional input: int64 (1,), the first position whose logits are computed (-1: the last)."""


class BundleError(UserError, ValueError):
    """A bundle that cannot be used: missing or corrupt files, or an unknown format."""


def cache_template(io: str, kind: str) -> str:
    """The cache's graph names for io 'past' (inputs) or 'present' (outputs) and kind 'key' or
    'value', with %d for the block (the template form onnxruntime-genai's config takes)."""
    return f"{io}_{kind}_%d"


def past_names(n_blocks: int) -> list[str]:
    """Graph input names of the cache, in order: past_key_0, past_value_0, past_key_1, ..."""
    return [cache_template("past", kind) % i for i in range(n_blocks) for kind in ("key", "value")]


def present_names(n_blocks: int) -> list[str]:
    """Graph output names of the updated cache, in the order of `past_names`."""
    return [cache_template("present", kind) % i for i in range(n_blocks) for kind in ("key", "value")]


def input_names(n_blocks: int) -> list[str]:
    """All graph inputs, in order."""
    return [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(n_blocks)]


def output_names(n_blocks: int) -> list[str]:
    """All graph outputs, in order."""
    return [LOGITS, *present_names(n_blocks)]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """bundle.json's entry for a model file: what `verify_model_file` checks."""
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def read_bundle_json(bundle_dir: str | Path) -> dict:
    """bundle.json of `bundle_dir`, checked for the current format version."""
    path = Path(bundle_dir) / BUNDLE_JSON
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {BUNDLE_JSON}); make one with `{REEXPORT}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    version = meta.get("format") if isinstance(meta, dict) else None
    if version == 1:
        raise BundleError(
            f"{path}: bundle format 1 has no attention_mask/position_ids inputs; this runtime reads format "
            f"{BUNDLE_FORMAT}: re-export it with `{REEXPORT}`"
        )
    if version != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: bundle format {version!r} is unknown; this runtime reads format {BUNDLE_FORMAT} "
            f"(re-export the model with this version: `{REEXPORT}`)"
        )
    return meta


def verify_model_file(bundle_dir: str | Path, meta: dict, model_file: str) -> Path:
    """The path of `model_file` (a model file or genai_config.json) after checking it is listed,
    exists, is complete and matches its sha256."""
    path = Path(bundle_dir) / model_file
    files = meta.get("files")
    if not isinstance(files, dict) or model_file not in files:
        listed = ", ".join(files) if isinstance(files, dict) and files else "none"
        raise BundleError(f"{bundle_dir}: {model_file} is not part of this bundle (it lists: {listed})")
    record = files[model_file]
    if not (isinstance(record, dict) and isinstance(record.get("bytes"), int)
            and isinstance(record.get("sha256"), str)):
        raise BundleError(f"{Path(bundle_dir) / BUNDLE_JSON}: bad entry for {model_file} (needs bytes and sha256)")
    if not path.is_file():
        raise BundleError(f"{path}: missing; the bundle lists it (re-export or copy the whole folder)")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise BundleError(f"{path}: truncated or changed: {size} bytes, bundle.json says {record['bytes']}")
    if sha256_of(path) != record["sha256"]:
        raise BundleError(f"{path}: sha256 does not match bundle.json (the file is corrupt or was replaced)")
    return path
