"""The limits and policies of one server (`decoder serve`'s options), checked when built, the
sampling defaults a request's missing fields take, and how the server loads its model
(`session_options`, `load_runtime`: the engine process loads its copy the same way)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from decoder.bundle import GENAI_CONFIG_FILE
from decoder.config import SamplingConfig
from decoder.runtime import Runtime, cpu_session_options, default_threads


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
    engine: Literal["thread", "process"] = "thread"
    """Where the engine (batched steps, sampling, detokenizing) runs: a worker thread of the server
    (`decoder.serve.engine`), or a process of its own, off the HTTP event loop's GIL
    (`decoder.serve.engine_process`)."""
    engine_workers: int | None = None
    """Decoding threads of the thread engine, each with its own batch (`max_batch` split evenly among
    them) over the one shared model, each running onnxruntime on its own core (one intra-op thread
    each, by default): data parallelism instead of splitting every small op across cores. None:
    `default_workers()`. The process engine has one."""

    stream_interval: int = 1
    """Tokens a stream sends at a time: 1 sends each token as its own event; N > 1 sends a choice's
    first token at once, then its tokens N at a time in one event (and whatever is left at its end),
    which cuts the event loop's and the client's work per token (vLLM's and SGLang's
    `--stream-interval`)."""

    def __post_init__(self) -> None:
        problems = config_problems(vars(self))
        if self.sampling_defaults not in ("bundle", "openai"):
            problems.append(f"sampling_defaults={self.sampling_defaults!r}: allowed 'bundle', 'openai'")
        if self.long_prompts not in ("truncate", "refuse"):
            problems.append(f"long_prompts={self.long_prompts!r}: allowed 'truncate', 'refuse'")
        if self.engine not in ("thread", "process"):
            problems.append(f"engine={self.engine!r}: allowed 'thread', 'process'")
        if self.engine == "process" and (self.engine_workers or 1) > 1:
            problems.append(f"engine_workers={self.engine_workers}: the process engine has one worker; "
                            "allowed with engine='thread'")
        if self.api_key is not None and not self.api_key:
            problems.append("api_key is empty: give a non-empty key, or none")
        if problems:
            raise ValueError("; ".join(problems))


LOWER_BOUNDS = {"max_batch": 1, "max_queue": 0, "max_body_bytes": 1, "shutdown_grace": 0, "engine_workers": 1,
                "stream_interval": 1}


def config_problems(values: dict) -> list[str]:
    """'field=value: must be >= low' for each out-of-range field among `values`."""
    return [f"{name}={value}: must be >= {LOWER_BOUNDS[name]}" for name, value in values.items()
            if name in LOWER_BOUNDS and value is not None and not value >= LOWER_BOUNDS[name]]


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
        return dict(vars(self))  # (flat fields: dataclasses.asdict's deep copy took tens of µs per request)


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


MAX_DEFAULT_WORKERS = 2
"""Engine workers by default at most: measured on 2 cores only (and more workers' Python per step
would contend for the one GIL)."""


def default_workers() -> int:
    """Engine workers by default: one per core this process may use, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(default_threads(), MAX_DEFAULT_WORKERS))


def engine_workers(config: ServeConfig) -> int:
    """The thread engine's workers under `config`: never more than its batch slots."""
    if config.engine == "process":
        return 1
    return max(1, min(config.engine_workers or default_workers(), config.max_batch))


def batch_shares(max_batch: int, workers: int) -> list[int]:
    """`max_batch` slots split among `workers` as evenly as can be (the first ones get the remainder)."""
    return [max_batch // workers + (k < max_batch % workers) for k in range(workers)]


def session_options(threads: int | None = None, workers: int = 1, spinning: bool = False) -> ort.SessionOptions:
    """onnxruntime options as the server runs them, measured on 2 AMD EPYC cores (machine shared)
    with the default-size model, A/B in one run:

    - intra-op threads: one core fewer than the process may use (at least 1), by default, shared
      out among the engine's `workers` (whose concurrent runs share the session's threads). The
      event loop (one socket send per token per stream) needs a core: 16 streaming clients got
      1124 / 963 / 865 tok/s with one thread and 1375 / 872 / 587 with two, alternating (two win
      only while nothing else runs on the machine);
    - no spinning between ops (onnxruntime's threads busy-wait by default, taking the cores the
      event loop needs): 1.4x (1 client) and 1.6x (16 clients) the tokens/s. `spinning` (`decoder
      serve --allow-spinning`) turns it back on, for a server that runs one request at a time on
      several threads (results/serving.md, "One client")."""
    options = cpu_session_options(threads or max(1, (default_threads() - 1) // workers))
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def load_runtime(bundle_dir: str | Path, model_file: str, threads: int | None = None, workers: int = 1,
                 spinning: bool = False) -> Runtime:
    """The bundle's `model_file` with the server's `session_options` (a picklable recipe, with
    `functools.partial`, for the engine process)."""
    return Runtime(bundle_dir, model_file=model_file, session_options=session_options(threads, workers, spinning))
