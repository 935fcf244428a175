"""The limits and policies of one server (`decoder serve`'s options), checked when built, and the
sampling defaults a request's missing fields take."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from decoder.bundle import GENAI_CONFIG_FILE
from decoder.config import SamplingConfig


@dataclass(frozen=True)
class ServeConfig:
    """Limits and policies of one server."""

    max_batch: int = 32
    """Sequences decoded together (1 turns batching off: one request at a time)."""
    max_queue: int = 256
    """Sequences (one per prompt and choice) waiting beyond the free slots before requests get 429."""
    max_body_bytes: int = 1 << 20
    """Largest request body (413 beyond)."""
    shutdown_grace: float = 10.0
    """On SIGTERM, seconds in-flight requests may run on before they are cancelled."""
    sampling_defaults: Literal["bundle", "openai"] = "bundle"
    """What a request's missing sampling fields take: the bundle's sampling config (as `decoder
    generate` decodes), or OpenAI's neutral values (no repetition controls)."""
    long_prompts: Literal["truncate", "refuse"] = "truncate"
    """A prompt longer than the context: the model sees its last context-length tokens (as
    `decoder generate`), or the request is refused with 400 context_length_exceeded."""
    cors_origins: tuple[str, ...] = ()
    """Origins a browser may call the API from (CORS); none by default."""
    api_key: str | None = None
    """If set, /v1/* and /tokenize, /detokenize, /tokenizer_info need `Authorization: Bearer KEY`."""

    def __post_init__(self) -> None:
        problems = config_problems(vars(self))
        if self.sampling_defaults not in ("bundle", "openai"):
            problems.append(f"sampling_defaults={self.sampling_defaults!r}: allowed 'bundle', 'openai'")
        if self.long_prompts not in ("truncate", "refuse"):
            problems.append(f"long_prompts={self.long_prompts!r}: allowed 'truncate', 'refuse'")
        if self.api_key is not None and not self.api_key:
            problems.append("api_key is empty: give a non-empty key, or none")
        if problems:
            raise ValueError("; ".join(problems))


LOWER_BOUNDS = {"max_batch": 1, "max_queue": 0, "max_body_bytes": 1, "shutdown_grace": 0}


def config_problems(values: dict) -> list[str]:
    """'field=value: must be >= low' for each out-of-range field among `values`."""
    return [f"{name}={value}: must be >= {LOWER_BOUNDS[name]}" for name, value in values.items()
            if name in LOWER_BOUNDS and not value >= LOWER_BOUNDS[name]]


@dataclass(frozen=True)
class SamplingDefaults:
    """The values a request's missing sampling fields take (shown in every model card)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


OPENAI_DEFAULTS = SamplingDefaults()
"""OpenAI's neutral values: plain softmax sampling, no repetition controls."""
SAMPLED_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size")
"""The fields a run's sampling config sets (the penalties of OpenAI's stay 0)."""


def bundle_defaults(bundle_dir: str | Path | None) -> SamplingDefaults:
    """The sampling config of the run a bundle was exported from (the `search` block of its
    genai_config.json), else `decoder generate`'s defaults (`decoder.config.SamplingConfig`)."""
    sampling = asdict(SamplingConfig())
    path = Path(bundle_dir) / GENAI_CONFIG_FILE if bundle_dir is not None else None
    if path is not None and path.is_file():
        search = json.loads(path.read_text(encoding="utf-8")).get("search") or {}
        sampling.update({name: search[name] for name in SAMPLED_FIELDS if name in search})
    return SamplingDefaults(**{name: type(getattr(OPENAI_DEFAULTS, name))(sampling[name]) for name in SAMPLED_FIELDS})


def sampling_defaults(policy: str, bundle_dir: str | Path | None) -> SamplingDefaults:
    return OPENAI_DEFAULTS if policy == "openai" else bundle_defaults(bundle_dir)
