"""Text generation from an exported bundle with onnxruntime: no torch needed.

`Runtime(bundle_dir)` checks the bundle (`decoder.bundle`), opens an onnxruntime session tuned for
CPU and generates text with the same decoding loop and sampler as the PyTorch path
(`decoder.sampling.decode_loop`), so for the same weights, prompt and seed both give the same text.

For a server's scheduler (rows of different lengths joining and leaving one batch) there is the
low-level `Runtime.step(input_ids, attention_mask, position_ids, past)` and, over it,
`prefill(prompts)` / `decode(cache, tokens)` on a `decoder.kvcache.BatchCache` (the left-padded
cache layout and its row operations are documented there).

The cache between steps is the previous step's `present_*` outputs (numpy arrays, which
onnxruntime hands over and takes back without copying) fed back as the next step's `past_*`
inputs. Binding preallocated buffers or OrtValues through I/O binding instead measured slower here
(its per-name binding calls cost more than they save), so the plain `session.run` is used, and the
cached generation loop (`decoder.runtime_loop`) keeps the Python work between calls small.

This module imports only numpy, onnxruntime, tiktoken and torch-free `decoder` modules: a
deployment machine needs no PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from decoder.bundle import (
    ATTENTION_MASK,
    BUNDLE_JSON,
    INPUT_IDS,
    INT8_MODEL_FILE,
    LOGITS_START,
    MODEL_FILE,
    POSITION_IDS,
    REEXPORT,
    BundleError,
    input_names,
    output_names,
    past_names,
    read_bundle_json,
    verify_model_file,
)
from decoder.kvcache import BatchCache, Cache, left_padded
from decoder.runtime_loop import Inputs, cached_loop
from decoder.sampling import SamplingParams, check_generation_args, check_prompt, decode_loop
from decoder.tokenizer import Tokenizer, TokenizerError, text_pieces


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
    # errors only: onnxruntime warns at every load that `logits_start` is an input with a default
    options.log_severity_level = 3
    return options


class Runtime:
    """An exported model ready to generate: `Runtime(bundle_dir).generate("Harding wondered", ...)`.

    quantized=True loads `model.int8.onnx` (the bundle must have one: `decoder export --quantize
    int8`); model_file names any other model file of the bundle. threads: intra-op threads (default
    all usable cores); session_options replaces the tuned options entirely. Measure the thread
    count for your model: on 2 Zen 5 cores a 6-block d_model-384 model decoded fp32 faster on 2
    threads (~860 vs ~560 tokens/s) but int8 faster on 1 (~2370 vs ~1970 tokens/s), its steps
    being too short for the threads' hand-offs to pay.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        quantized: bool = False,
        model_file: str | None = None,
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}: must be >= 1 or None (all usable cores)")
        if quantized and model_file not in (None, INT8_MODEL_FILE):
            raise ValueError(f"quantized=True loads {INT8_MODEL_FILE}; it contradicts model_file={model_file!r}")
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
        self._output_names = output_names(n_blocks)
        model_file = model_file or (INT8_MODEL_FILE if quantized else MODEL_FILE)
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
        if set(shapes) != set(input_names(n_blocks)):
            raise BundleError(f"{path}: graph inputs {sorted(shapes)} are not those of a {n_blocks}-block "
                              f"bundle; re-export it with `{REEXPORT}`")
        self._heads, self._head_dim = int(shapes[self._past_names[0]][1]), int(shapes[self._past_names[0]][3])
        optional = {i.name for i in self.session.get_overridable_initializers()}
        # fed when only the last position's logits are wanted; older bundles: sliced after the run
        self._last_position = {LOGITS_START: np.array([-1], dtype=np.int64)} if LOGITS_START in optional else {}
        self._inputs = Inputs(self._context_length)

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

    def step(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Cache | None,
        *,
        last_only: bool = True,
    ) -> tuple[np.ndarray, Cache]:
        """One run of the graph: the low-level step of a batching scheduler.

        input_ids (B, T) int64; attention_mask (B, P+T): 1 real, 0 padding, over the P cached
        columns and the T new ones; position_ids (B, T), each below context_length; past: the
        previous step's presents (None: empty). Returns the logits of the last column (B, V), or of
        every column (B, T, V) with last_only=False, and the presents (B, n_heads, P+T, head_dim).
        With left padding the last column is a real token in every row. A bundle with the optional
        `logits_start` input computes only that column's logits for last_only (a T-token prefill
        then takes 0.56-0.71x the time: docs/deployment.md)."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids has shape {ids.shape}: must be (batch, seq) with seq >= 1")
        past = past if past is not None else self.empty_cache(ids.shape[0])
        B, T, P = ids.shape[0], ids.shape[1], past[0].shape[2]
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        positions = np.ascontiguousarray(position_ids, dtype=np.int64)
        if mask.shape != (B, P + T) or positions.shape != (B, T):
            raise ValueError(f"attention_mask {mask.shape} and position_ids {positions.shape} must be "
                             f"(batch, past + seq) = {(B, P + T)} and (batch, seq) = {(B, T)}")
        self._check_positions(positions)
        logits, presents = self._run(ids, mask, positions, past, last_only=last_only)
        return (logits[:, -1] if last_only else logits), presents

    def _check_positions(self, positions: np.ndarray) -> None:
        if positions.size and not 0 <= positions.min() <= positions.max() < self._context_length:
            raise ValueError(f"position_ids reach {positions.max()}: positions must be in [0, "
                             f"{self._context_length - 1}] (the context length); finish or slide the row")

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: Cache | None,
             *, last_only: bool = False) -> tuple[np.ndarray, Cache]:
        """The graph on checked int64 inputs: (B, T, V) logits and the presents; with last_only, the
        logits may be (B, 1, V), the graph computing only the last position's (`logits_start`)."""
        feed = dict(zip(self._past_names, past if past is not None else self.empty_cache(ids.shape[0])))
        if last_only:
            feed.update(self._last_position)
        feed[INPUT_IDS] = np.ascontiguousarray(ids)
        feed[ATTENTION_MASK] = mask
        feed[POSITION_IDS] = positions
        logits, *presents = self.session.run(self._output_names, feed)
        return logits, presents

    def _last_logits(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: Cache | None
                     ) -> tuple[np.ndarray, Cache]:
        """`decoder.runtime_loop.Run`: the logits of the last column only, (B, V)."""
        logits, presents = self._run(ids, mask, positions, past, last_only=True)
        return logits[:, -1], presents

    def run(self, ids: np.ndarray, past: Cache | None = None, *, last_only: bool = False) -> tuple[np.ndarray, Cache]:
        """(B, T) int64 ids after an unpadded cache (None: empty) -> (B, T, V) float32 logits and
        the new cache: every row real, positions P..P+T-1. last_only: the logits may be only the
        last position's, (B, 1, V), at a lower cost (see `step`)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids has shape {ids.shape}: must be (batch, seq) with seq >= 1")
        B, T = ids.shape
        P = 0 if past is None else past[0].shape[2]
        if P + T > self._context_length:
            raise ValueError(f"position_ids reach {P + T - 1}: positions must be in [0, "
                             f"{self._context_length - 1}] (the context length); finish or slide the row")
        mask, positions = self._inputs.mask(B, P + T), self._inputs.positions(B, P, T)
        return self._run(ids, mask, positions, past, last_only=last_only)

    def forward(self, ids: np.ndarray, past: Cache | None) -> tuple[np.ndarray, Cache]:
        """The `decoder.sampling.Forward` step: logits of the last position only, (B, V) float32."""
        logits, presents = self.run(ids, past, last_only=True)
        return logits[:, -1], presents

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, BatchCache]:
        """Run prompts (token id lists of any lengths, each at most context_length) as one
        left-padded batch: the (B, V) logits of each prompt's last token and the batch's cache."""
        ids, mask, positions = left_padded(prompts)
        logits, presents = self.step(ids, mask, positions, None)
        return logits, BatchCache(presents, mask)

    def decode(self, cache: BatchCache, tokens: np.ndarray) -> tuple[np.ndarray, BatchCache]:
        """Append one token (B,) to every row of `cache`: the (B, V) next-token logits and the new cache."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(cache.batch, 1)
        mask, positions = cache.next_inputs(1)
        self._check_positions(positions)
        logits, presents = self._last_logits(tokens, mask, positions, cache.past)
        return logits, BatchCache(presents, mask)

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
        notebook's way). Bad arguments raise here, before the first step. The cached loop is
        `decoder.runtime_loop.cached_loop`, step for step `decoder.sampling.decode_loop`'s."""
        history = check_generation_args(prompt_ids, max_new_tokens)
        eot_id = self._eot_id if stop_at_eot else None
        if use_cache:
            return cached_loop(self._last_logits, self._inputs, history, max_new_tokens=max_new_tokens,
                               params=params, seed=seed, eot_id=eot_id)
        return decode_loop(
            self.forward,
            history,
            context_length=self._context_length,
            max_new_tokens=max_new_tokens,
            params=params,
            seed=seed,
            eot_id=eot_id,
            use_cache=False,
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
        after another. Every row samples from its own generator seeded with `seed`, so each
        prompt's text, greedy or sampled, is the text it gets alone.
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
        check_prompt(prompt, where)
        return self._tokenizer.encode(prompt)
