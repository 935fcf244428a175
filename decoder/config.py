"""Configuration: frozen dataclasses for the model, data, training and sampling, with strict loading.

A run is fully described by a `RunConfig` (the four sections below). Loading from YAML or a dict
rejects unknown keys (suggesting a close match), wrong types and impossible values, and reports
every problem at once in a single `ConfigError`. The same structure is written next to every
checkpoint (`config.yaml`), so a run can be rebuilt from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem a user must fix; the message lists every problem, one per line."""


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 256
    """Width of the residual stream (embedding size)."""
    n_heads: int = 4
    """Attention heads per block; must divide d_model."""
    n_blocks: int = 4
    """Number of transformer blocks."""
    d_ff: int | None = None
    """Hidden width of the MLP; null means 4 * d_model."""
    context_length: int = 128
    """Maximum sequence length the model attends over (positions)."""
    dropout: float = 0.0
    """Dropout probability on embeddings, attention weights and residual branches."""
    positional: str = "learned"
    """Positional embedding: 'learned' (GPT-2) or 'sinusoidal' (fixed, as in the reference notebook)."""
    tie_embeddings: bool = True
    """Share the output head's weight with the token embedding."""
    bias: bool = True
    """Use biases in linear layers and LayerNorms (GPT-2 does)."""

    @property
    def ff_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def problems(self) -> list[str]:
        out = []
        for name in ("d_model", "n_heads", "n_blocks"):
            if getattr(self, name) < 1:
                out.append(f"model.{name}={getattr(self, name)}: must be >= 1")
        if self.n_heads >= 1 and self.d_model % self.n_heads:
            out.append(
                f"model.d_model={self.d_model}, model.n_heads={self.n_heads}: "
                "d_model must be divisible by n_heads"
            )
        if self.d_ff is not None and self.d_ff < 1:
            out.append(f"model.d_ff={self.d_ff}: must be >= 1 or null (4 * d_model)")
        if self.context_length < 2:
            out.append(f"model.context_length={self.context_length}: must be >= 2")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"model.dropout={self.dropout}: must be in [0, 1)")
        if self.positional not in ("learned", "sinusoidal"):
            out.append(f"model.positional={self.positional!r}: allowed 'learned', 'sinusoidal'")
        if self.positional == "sinusoidal" and self.d_model % 2:
            out.append(f"model.d_model={self.d_model}: sinusoidal positions need an even d_model")
        return out


@dataclass(frozen=True)
class DataConfig:
    corpus: str | list[str] = "mysterious-island"
    """A registered corpus name (see `decoder data --list`) or a path to a UTF-8 text file; or a list
    of them: documents are joined with <|endoftext|> and each document's tail is held out."""
    tokenizer: str = "cl100k_base"
    """tiktoken encoding name, e.g. 'cl100k_base' or 'gpt2'."""
    compact_vocab: bool = True
    """Shrink the vocabulary to the 256 byte tokens + tokens seen in the training split + <|endoftext|>."""
    min_count: int = 1
    """Compact vocabulary only: keep a token if it occurs at least this often in the training split;
    rarer tokens are spelled in byte tokens everywhere, so the byte fallback is trained."""
    val_fraction: float = 0.1
    """Fraction of the token stream (its end, contiguous) held out for validation."""
    windows: str = "random"
    """Training windows: 'random' (uniform random offsets) or 'sliding' (every stride-1 window once
    per epoch, shuffled: the reference notebook's scheme)."""

    def __post_init__(self) -> None:
        if isinstance(self.corpus, list):  # a tuple inside, so the frozen config stays hashable
            object.__setattr__(self, "corpus", tuple(self.corpus))

    @property
    def corpora(self) -> tuple[str, ...]:
        """The corpus names or paths, one per document."""
        return self.corpus if isinstance(self.corpus, tuple) else (self.corpus,)

    def problems(self) -> list[str]:
        out = []
        if not 0.0 < self.val_fraction < 1.0:
            out.append(f"data.val_fraction={self.val_fraction}: must be in (0, 1)")
        if self.windows not in ("random", "sliding"):
            out.append(f"data.windows={self.windows!r}: allowed 'random', 'sliding'")
        if not self.corpora or not all(isinstance(c, str) and c for c in self.corpora):
            out.append(f"data.corpus={self.corpus!r}: must name a registered corpus or a text file, "
                       "or be a non-empty list of them")
        if self.min_count < 1:
            out.append(f"data.min_count={self.min_count}: must be >= 1")
        return out


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 32
    """Sequences per optimizer step per process (the global batch is batch_size * world_size)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (each of batch_size / grad_accum_steps sequences)."""
    optimizer: str = "adamw"
    """'adamw' (decoupled weight decay on matrices only) or 'adam' (the reference's; no decay)."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio at the end of the budget."""
    warmup_steps: int = 50
    """Linear warm-up steps from 0 to lr (ignored when warmup_fraction is set)."""
    warmup_fraction: float | None = None
    """Linear warm-up over this fraction of the budget (steps, tokens or seconds, whichever ends
    first), so a short run on a slow machine is not mostly warm-up; null uses warmup_steps."""
    schedule: str = "cosine"
    """'cosine' (warm-up, then cosine decay over the budget) or 'constant' (warm-up, then flat)."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices (not to norms, biases or embeddings)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    max_steps: int | None = None
    """Budget in optimizer steps. At least one of max_steps / max_tokens / max_seconds is required;
    with several, training stops at the first reached."""
    max_tokens: int | None = None
    """Budget in training tokens (global, all processes)."""
    max_seconds: float | None = None
    """Budget in wall-clock seconds of training (evaluation excluded)."""
    eval_interval: int = 100
    """Evaluate on the whole validation split every this many steps (and at the end); ignored when
    eval_fraction is set."""
    eval_fraction: float | None = None
    """Evaluate each time training crosses a multiple of this fraction of the budget (0.1: ten
    evaluations, whatever the machine's speed); null uses eval_interval."""
    patience: int | None = None
    """Early stopping: stop after this many evaluations without a new best validation loss."""
    log_interval: int = 10
    """Steps between progress-bar updates (each costs a device synchronisation)."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str = "auto"
    """'auto' (bf16 autocast where it is faster than fp32 on this device), 'fp32' or 'bf16'."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    seed: int = 0
    """Seeds weights, data sampling and dropout."""
    num_threads: int | None = None
    """CPU threads for torch (null: torch's default, all cores)."""

    def problems(self) -> list[str]:
        out = []
        if self.batch_size < 1:
            out.append(f"training.batch_size={self.batch_size}: must be >= 1")
        if self.grad_accum_steps < 1 or (self.batch_size >= 1 and self.batch_size % self.grad_accum_steps):
            out.append(
                f"training.grad_accum_steps={self.grad_accum_steps}: must be >= 1 and divide "
                f"training.batch_size={self.batch_size}"
            )
        if self.optimizer not in ("adamw", "adam"):
            out.append(f"training.optimizer={self.optimizer!r}: allowed 'adamw', 'adam'")
        if self.lr <= 0:
            out.append(f"training.lr={self.lr}: must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            out.append(f"training.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        if self.warmup_steps < 0:
            out.append(f"training.warmup_steps={self.warmup_steps}: must be >= 0")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            out.append(f"training.warmup_fraction={self.warmup_fraction}: must be in [0, 1) or null")
        if self.eval_fraction is not None and not 0.0 < self.eval_fraction <= 1.0:
            out.append(f"training.eval_fraction={self.eval_fraction}: must be in (0, 1] or null")
        if self.schedule not in ("cosine", "constant"):
            out.append(f"training.schedule={self.schedule!r}: allowed 'cosine', 'constant'")
        if self.weight_decay < 0:
            out.append(f"training.weight_decay={self.weight_decay}: must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"training.{name}={getattr(self, name)}: must be in [0, 1)")
        if self.eps <= 0:
            out.append(f"training.eps={self.eps}: must be > 0")
        if self.grad_clip < 0:
            out.append(f"training.grad_clip={self.grad_clip}: must be >= 0 (0 disables)")
        budgets = {"max_steps": self.max_steps, "max_tokens": self.max_tokens, "max_seconds": self.max_seconds}
        if all(v is None for v in budgets.values()):
            out.append("training: no budget: set at least one of max_steps, max_tokens, max_seconds")
        for name, value in budgets.items():
            if value is not None and value <= 0:
                out.append(f"training.{name}={value}: must be > 0")
        if self.eval_interval < 1:
            out.append(f"training.eval_interval={self.eval_interval}: must be >= 1")
        if self.patience is not None and self.patience < 1:
            out.append(f"training.patience={self.patience}: must be >= 1 or null")
        if self.log_interval < 1:
            out.append(f"training.log_interval={self.log_interval}: must be >= 1")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            out.append(f"training.device={self.device!r}: allowed 'auto', 'cpu', 'cuda', 'cuda:N'")
        if self.precision not in ("auto", "fp32", "bf16"):
            out.append(f"training.precision={self.precision!r}: allowed 'auto', 'fp32', 'bf16'")
        if self.num_threads is not None and self.num_threads < 1:
            out.append(f"training.num_threads={self.num_threads}: must be >= 1 or null")
        return out


@dataclass(frozen=True)
class SamplingConfig:
    prompt: str = "Harding wondered"
    """Prompt for the samples written at the end of training."""
    max_new_tokens: int = 100
    """Tokens to generate."""
    temperature: float = 1.0
    """Softmax temperature for multinomial sampling; 0 means greedy."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 keeps all)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    seed: int = 0
    """Seed of the sampler's random generator."""
    repetition_penalty: float = 1.0
    """Divide positive logits (multiply negative ones) of tokens already in the text by this
    (CTRL's penalty); 1 turns it off."""
    no_repeat_ngram_size: int = 0
    """Never complete an n-gram of this many tokens that already occurs in the text; 0 turns it off."""

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"sampling.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature < 0:
            out.append(f"sampling.temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            out.append(f"sampling.top_k={self.top_k}: must be >= 0 (0 keeps all)")
        if not 0.0 < self.top_p <= 1.0:
            out.append(f"sampling.top_p={self.top_p}: must be in (0, 1]")
        if self.repetition_penalty <= 0:
            out.append(f"sampling.repetition_penalty={self.repetition_penalty}: must be > 0 (1 is off)")
        if self.no_repeat_ngram_size < 0:
            out.append(f"sampling.no_repeat_ngram_size={self.no_repeat_ngram_size}: must be >= 0 (0 is off)")
        return out


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(max_steps=1000))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def problems(self) -> list[str]:
        return self.model.problems() + self.data.problems() + self.training.problems() + self.sampling.problems()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(out["data"]["corpus"], tuple):
            out["data"]["corpus"] = list(out["data"]["corpus"])
        return out

    def validated(self) -> "RunConfig":
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))
        return self


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether `value` (from YAML) fits the field annotation; ints are accepted for floats."""
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) if a is not type(None) else value is None for a in typing.get_args(annotation))
    return True


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else a.__name__ for a in typing.get_args(annotation))
    return annotation.__name__


def _unknown_key(prefix: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{prefix}{key}: unknown key{hint}; valid keys: {', '.join(allowed)}"


def _build_section(name: str, cls: type, raw: Any, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: must be a mapping of keys to values, got {type(raw).__name__}")
        return cls() if cls is not TrainingConfig else cls(max_steps=1000)
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            problems.append(_unknown_key(f"{name}.", str(key), allowed))
            continue
        if not _type_ok(value, hints[key]):
            problems.append(f"{name}.{key}={value!r}: must be {_type_name(hints[key])}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}.{key}={value!r}: must be a finite number")
            continue
        if hints[key] is float or (float in typing.get_args(hints[key]) and isinstance(value, int)):
            value = float(value) if value is not None else None
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(raw: Any, *, source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a nested dict, raising one ConfigError listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping with sections {', '.join(SECTIONS)}")
    problems: list[str] = []
    built = {}
    for key in raw:
        if key not in SECTIONS:
            problems.append(_unknown_key("", str(key), list(SECTIONS)))
    for name, cls in SECTIONS.items():
        if name in raw:
            built[name] = _build_section(name, cls, raw[name], problems)
    config = RunConfig(**built)
    problems.extend(config.problems())
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a single-run YAML config (sections model, data, training, sampling)."""
    return config_from_dict(read_yaml(path), source=str(path))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """Set `section.key` in a nested dict (used by grids and CLI overrides)."""
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"{dotted}: keys must be 'section.key' with section one of {', '.join(SECTIONS)}")
    section = raw.setdefault(parts[0], {})
    if section is None:
        section = raw[parts[0]] = {}
    section[parts[1]] = value
