"""Text generation from an exported bundle with onnxruntime: no torch needed.

A bundle (written by `decoder.export`) is a folder with `model.onnx` (optionally
`model.int8.onnx`) and `bundle.json` (format version, tokenizer, context length, sha256 of each
model file). `Runtime(bundle_dir)` checks the bundle, opens an onnxruntime session tuned for CPU
and generates text with the same decoding loop and sampler as the PyTorch path
(`decoder.sampling.decode_loop`), so for the same weights, prompt and seed both give the same text.

The cache between steps is the previous step's `present_*` outputs (numpy arrays) fed back as the
next step's `past_*` inputs. Binding them as OrtValues through I/O binding instead measured no
faster here (batch 1, past lengths 16-250, fp32 and int8), so the plain `session.run` is used.

This module imports only numpy, onnxruntime, tiktoken and the torch-free `decoder.tokenizer` and
`decoder.sampling`: a deployment machine needs no PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from decoder.sampling import SamplingParams, check_generation_args, decode_loop
from decoder.tokenizer import Tokenizer, TokenizerError, text_pieces

BUNDLE_FORMAT = 1
"""Version of the bundle layout; a runtime refuses bundles of another version."""
BUNDLE_JSON = "bundle.json"
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
INPUT_IDS = "input_ids"
LOGITS = "logits"

# The cache between steps: keys and values of every block in graph-input order, each (B, nh, P, hs).
Cache = list[np.ndarray]


class BundleError(ValueError):
    """A bundle that cannot be used: missing or corrupt files, or an unknown format."""


def past_names(n_blocks: int) -> list[str]:
    """Graph input names of the cache, in order: past_key_0, past_value_0, past_key_1, ..."""
    return [f"past_{kind}_{i}" for i in range(n_blocks) for kind in ("key", "value")]


def present_names(n_blocks: int) -> list[str]:
    """Graph output names of the updated cache, in the order of `past_names`."""
    return [f"present_{kind}_{i}" for i in range(n_blocks) for kind in ("key", "value")]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle_json(bundle_dir: str | Path) -> dict:
    """bundle.json of `bundle_dir`, checked for a known format version."""
    path = Path(bundle_dir) / BUNDLE_JSON
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {BUNDLE_JSON}); make one with `decoder export`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    version = meta.get("format") if isinstance(meta, dict) else None
    if version != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: bundle format {version!r} is unknown; this runtime reads format {BUNDLE_FORMAT} "
            "(re-export the model with this version of `decoder export`)"
        )
    return meta


def verify_model_file(bundle_dir: str | Path, meta: dict, model_file: str) -> Path:
    """The path of `model_file` after checking it exists, is complete and matches its sha256."""
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


def default_threads() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for batch-small CPU decoding: all graph optimisations, one op at a time across
    `threads` intra-op threads (default: all cores this process may use)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    return options


class Runtime:
    """An exported model ready to generate: `Runtime(bundle_dir).generate("Harding wondered", ...)`.

    threads: intra-op threads (default all usable cores); session_options replaces the tuned
    options entirely. model_file picks `model.onnx` (fp32) or `model.int8.onnx`. Measure the
    thread count for your model: on 2 Zen 5 cores a 6-block d_model-384 model decoded fp32 faster
    on 2 threads (~860 vs ~560 tokens/s) but int8 faster on 1 (~2370 vs ~1970 tokens/s), its
    steps being too short for the threads' hand-offs to pay.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        model_file: str = MODEL_FILE,
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}: must be >= 1 or None (all usable cores)")
        self.bundle_dir = Path(bundle_dir)
        self.meta = read_bundle_json(self.bundle_dir)
        try:
            self._context_length = int(self.meta["context_length"])
            n_blocks = int(self.meta["model"]["n_blocks"])
            self._tokenizer = Tokenizer.from_dict(self.meta["tokenizer"])
        except TokenizerError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{self.bundle_dir / BUNDLE_JSON}: bad or missing entry ({type(exc).__name__}: {exc})"
            ) from None
        self._eot_id = self._tokenizer.eot_id
        self._past_names = past_names(n_blocks)
        self._output_names = [LOGITS, *present_names(n_blocks)]
        path = verify_model_file(self.bundle_dir, self.meta, model_file)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options or cpu_session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(
                f"{path}: onnxruntime {ort.__version__} cannot load it (the graph uses ONNX opset "
                f"{self.meta.get('opset')}; opset 23 needs onnxruntime >= 1.23): {str(exc).splitlines()[0]}"
            ) from None
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        if set(shapes) != {INPUT_IDS, *self._past_names}:
            raise BundleError(f"{path}: graph inputs {sorted(shapes)} do not match a {n_blocks}-block bundle")
        self._heads, self._head_dim = int(shapes[self._past_names[0]][1]), int(shapes[self._past_names[0]][3])

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def empty_cache(self, batch: int) -> Cache:
        """A cache of past length 0 for `batch` rows (the first call needs no special graph)."""
        empty = np.zeros((batch, self._heads, 0, self._head_dim), dtype=np.float32)
        return [empty] * len(self._past_names)

    def run(self, ids: np.ndarray, past: Cache | None = None) -> tuple[np.ndarray, Cache]:
        """(B, T) int64 ids and a cache (None: empty) -> (B, T, V) float32 logits and the new cache."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        feed = dict(zip(self._past_names, past if past is not None else self.empty_cache(ids.shape[0])))
        feed[INPUT_IDS] = ids
        logits, *presents = self.session.run(self._output_names, feed)
        return logits, presents

    def forward(self, ids: np.ndarray, past: Cache | None) -> tuple[np.ndarray, Cache]:
        """The `decoder.sampling.Forward` step: logits of the last position only, (B, V) float32."""
        logits, presents = self.run(ids, past)
        return logits[:, -1], presents

    def generate_ids(
        self,
        prompt_ids: Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int,
        params: SamplingParams,
        seed: int | None = 0,
        use_cache: bool = True,
        stop_at_eot: bool = True,
    ) -> Iterator[np.ndarray]:
        """Yield (B,) new token ids step by step for (T,) or equal-length (B, T) prompts.

        Rows stop at <|endoftext|> (stop_at_eot=False decodes max_new_tokens regardless, as a
        benchmark wants); use_cache=False re-runs the whole window every step (the reference
        notebook's way). Bad arguments raise here, before the first step."""
        return decode_loop(
            self.forward,
            check_generation_args(prompt_ids, max_new_tokens),
            context_length=self._context_length,
            max_new_tokens=max_new_tokens,
            params=params,
            seed=seed,
            eot_id=self._eot_id if stop_at_eot else None,
            use_cache=use_cache,
        )

    def stream(
        self, prompt: str, *, max_new_tokens: int, params: SamplingParams, seed: int | None = 0
    ) -> Iterator[str]:
        """Yield pieces of the continuation of `prompt` (not the prompt) as tokens are produced."""
        tokens = self.generate_ids(self._encode(prompt), max_new_tokens=max_new_tokens, params=params, seed=seed)
        return text_pieces(self._tokenizer, tokens)

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        max_new_tokens: int,
        params: SamplingParams,
        seed: int | None = 0,
    ) -> str | list[str]:
        """The continuation of one prompt, or of each prompt of a list (in the list's order).

        Batching: prompts with the same number of tokens form one group that runs as a single
        batch (no padding, so every row sees exactly what it would see alone); groups run one
        after another. Greedy text is therefore the same as generating each prompt alone. Each
        group draws its samples from one generator seeded with `seed`, so sampled text of a
        prompt depends on which prompts share its group; generate prompts one by one for text
        that depends on the prompt and seed only.
        """
        if isinstance(prompt, str):
            return "".join(self.stream(prompt, max_new_tokens=max_new_tokens, params=params, seed=seed))
        prompts = list(prompt)
        if not prompts:
            raise ValueError("no prompts: give a string or a non-empty list of strings")
        encoded = [self._encode(p, index=i) for i, p in enumerate(prompts)]
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(encoded):
            groups.setdefault(len(ids), []).append(i)
        texts: list[str] = [""] * len(prompts)
        for members in groups.values():
            batch = np.array([encoded[i] for i in members], dtype=np.int64)
            rows = self._decode_batch(batch, max_new_tokens=max_new_tokens, params=params, seed=seed)
            for i, row in zip(members, rows):
                texts[i] = row
        return texts

    def _decode_batch(self, batch: np.ndarray, **kwargs) -> list[str]:
        steps = list(self.generate_ids(batch, **kwargs))
        new = np.stack(steps, axis=1) if steps else np.zeros((batch.shape[0], 0), dtype=np.int64)
        out = []
        for row in new:
            stop = np.flatnonzero(row == self._eot_id)
            out.append(self._tokenizer.decode(row[: stop[0]] if stop.size else row))
        return out

    def _encode(self, prompt: str, index: int | None = None) -> list[int]:
        where = "prompt" if index is None else f"prompt {index}"
        if not isinstance(prompt, str):
            raise ValueError(f"{where} is a {type(prompt).__name__}: give text (str)")
        if not prompt:
            raise ValueError(f"{where} is empty: give at least one character of text")
        return self._tokenizer.encode(prompt)
