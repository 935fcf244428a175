"""What one server serves: the model's names, its card (GET /v1/models), its tokenizer and limits.

A model is served under its run id and any `served_model_names` (vLLM's `--served-model-name`):
a request's `model` may be any of them, and responses name the first one (the first served name
when there are any), so a client asking for an alias learns which model answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from decoder.bundle import INT8_MODEL_FILE
from decoder.serve.config import OPENAI_DEFAULTS, SamplingDefaults, ServeConfig
from decoder.serve.protocol import APIError
from decoder.tokenizer import Tokenizer


@dataclass(frozen=True)
class Served:
    """The model behind the routes and the server's limits."""

    names: tuple[str, ...]
    """Every name a request's `model` may give; responses use the first."""
    tokenizer: Tokenizer
    context_length: int
    config: ServeConfig
    card: dict
    """The bundle's fields of GET /v1/models' entries (besides the name)."""
    score: Callable[[list[int]], np.ndarray] | None = None
    """A prompt's token ids -> the (T, V) logits at every position (for echo with logprobs)."""
    defaults: SamplingDefaults = OPENAI_DEFAULTS
    """What a request's missing sampling fields take (`ServeConfig.sampling_defaults`)."""

    @property
    def model_id(self) -> str:
        return self.names[0]

    def check_model(self, model: str | None) -> None:
        """Refuse (404) a request naming a model this server does not serve (None: any)."""
        if model is not None and model not in self.names:
            raise APIError(404, f"The model {model!r} does not exist; this server serves "
                           f"{', '.join(map(repr, self.names))}", param="model", code="model_not_found")

    def model_card(self, name: str) -> dict:
        """GET /v1/models' entry for one of the names (404 for another)."""
        self.check_model(name)
        return {"id": name, "object": "model", "created": 0, "owned_by": "decoder", **self.card,
                "sampling_defaults": self.defaults.as_dict()}


def model_names(run_id: str, served_model_names: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The served names first (in order, each once), then the run id if it is not among them."""
    return tuple(dict.fromkeys([*served_model_names, run_id]))


def bundle_card(meta: dict, model_file: str, tokenizer: Tokenizer, context_length: int, run_id: str) -> dict:
    """The bundle's fields of a model card: OpenAI's plus what the bundle records, the tokenizer's
    metadata and vLLM's `max_model_len` (the context: the longest prompt; generation slides on)."""
    tokenizer_info = {"encoding": tokenizer.encoding_name, "vocab_size": tokenizer.vocab_size,
                      "eos_token_id": tokenizer.eot_id, "context_length": context_length}
    if not meta:
        return {"root": run_id, "max_model_len": context_length, "tokenizer": tokenizer_info}
    run = meta.get("run") or {}
    val = run.get("val") if isinstance(run.get("val"), dict) else {}
    int8 = meta.get("int8") or {}
    quantized = model_file == INT8_MODEL_FILE
    bpb = int8.get("val_bpb_int8") if quantized else val.get("val_bpb")
    return {
        "root": run_id, "file": model_file, "quantized": quantized,
        "sha256": meta["files"][model_file]["sha256"],
        "config": meta.get("model"), "context_length": meta.get("context_length"), "max_model_len": context_length,
        "validation_bpb": bpb, "run": run, "tokenizer": tokenizer_info,
    }


def prompt_scorer(model: object) -> Callable[[list[int]], np.ndarray] | None:
    """`Served.score` over a `decoder.runtime.Runtime` (its `run`: onnxruntime sessions may run in
    several threads at once, so beside the engine's); None for a model without one."""
    run = getattr(model, "run", None)
    if run is None:
        return None
    return lambda ids: run(np.array([ids], dtype=np.int64))[0][0]
