"""Configuration: frozen dataclasses for the model, data, training and sampling, with strict loading.

A run is fully described by a `RunConfig` (the four sections below). Loading from YAML or a dict
rejects unknown keys (suggesting a close match), wrong types and impossible values, and reports
every problem at once in a single `ConfigError` (the checking itself: `decoder.validation`). The same structure is written next to every
checkpoint (`config.yaml`), so a run can be rebuilt from its folder alone.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from decoder.validation import ConfigError, build_section, field_problems, unknown_key
from decoder.validation import check  # noqa: F401  (re-exported: callers import it from here)


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 256
    """Width of the residual stream (embedding size)."""
    n_heads: int = 4
    """Attention heads per block; must divide d_model."""
    n_blocks: int = 4
    """Number of transformer blocks."""
    d_ff: int | None = None
    """Hidden width of the MLP; null means 4 * d_model (swiglu uses two thirds of it: see mlp)."""
    context_length: int = 128
    """Maximum sequence length the model attends over (positions)."""
    dropout: float = 0.0
    """Dropout probability on embeddings, attention weights and residual branches."""
    positional: Literal["learned", "sinusoidal", "rope"] = "learned"
    """Positions: 'learned' (GPT-2's added table), 'sinusoidal' (a fixed added table, as in the
    reference notebook) or 'rope' (rotary: q and k of each head rotated by their position, nothing
    added to the embeddings; needs an even head_dim)."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalisation of the blocks and the final layer: 'layernorm' (GPT-2) or 'rmsnorm' (no mean
    subtraction and no bias, torch.nn.RMSNorm)."""
    mlp: Literal["gelu", "relu2", "swiglu"] = "gelu"
    """MLP: 'gelu' (GPT-2's tanh GELU), 'relu2' (squared ReLU) or 'swiglu' (a SiLU-gated pair of
    projections; its hidden width is round(2/3 * d_ff), so the parameter count stays that of the
    other two)."""
    qk_norm: bool = False
    """RMSNorm on each head's queries and keys (before rotary positions), with a learned scale per head dimension."""
    tie_embeddings: bool = True
    """Share the output head's weight with the token embedding."""
    bias: bool = True
    """Use biases in linear layers and LayerNorms (GPT-2 does)."""

    @property
    def ff_width(self) -> int:
        """The MLP's hidden width: d_ff (4 * d_model when null), two thirds of it for swiglu, whose
        two input projections then hold the parameters of one."""
        width = self.d_ff if self.d_ff is not None else 4 * self.d_model
        return max(1, round(2 * width / 3)) if self.mlp == "swiglu" else width

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def problems(self) -> list[str]:
        out = field_problems(self, "model", {
            "d_model": ">= 1", "n_heads": ">= 1", "n_blocks": ">= 1", "d_ff": ">= 1 or null (4 * d_model)",
            "context_length": ">= 2", "dropout": "in [0, 1)"})
        if self.n_heads >= 1 and self.d_model % self.n_heads:
            out.append(
                f"model.d_model={self.d_model}, model.n_heads={self.n_heads}: "
                "d_model must be divisible by n_heads"
            )
        if self.positional == "sinusoidal" and self.d_model % 2:
            out.append(f"model.d_model={self.d_model}: sinusoidal positions need an even d_model")
        if self.positional == "rope" and self.n_heads >= 1 and (self.d_model // self.n_heads) % 2:
            out.append(f"model.d_model={self.d_model}, model.n_heads={self.n_heads}: rope positions need "
                       "an even head dimension (d_model / n_heads)")
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
    min_count: int = 2
    """Compact vocabulary only: keep a token if it occurs at least this often in the training split;
    rarer tokens are spelled with the vocabulary's tokens everywhere (see `fallback`), so the
    fallback that unseen validation words need is trained."""
    fallback: Literal["bytes", "pieces"] = "pieces"
    """Compact vocabulary only: how a token outside it is spelled: 'bytes' (its UTF-8 bytes' byte
    tokens) or 'pieces' (the fewest vocabulary tokens whose bytes join to it; bytes only where no
    longer piece fits)."""
    val_fraction: float = 0.1
    """Fraction of the token stream (its end, contiguous) held out for validation."""
    windows: Literal["random", "sliding"] = "random"
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
        out = field_problems(self, "data", {"val_fraction": "in (0, 1)", "min_count": ">= 1"})
        if not self.corpora or not all(isinstance(c, str) and c for c in self.corpora):
            out.append(f"data.corpus={self.corpus!r}: must name a registered corpus or a text file, "
                       "or be a non-empty list of them")
        return out


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 32
    """Sequences per optimizer step per process (the global batch is batch_size * world_size)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (each of batch_size / grad_accum_steps sequences)."""
    optimizer: Literal["adamw", "adam", "muon"] = "adamw"
    """'adamw' (decoupled weight decay on matrices only), 'adam' (the reference's; no decay) or
    'muon' (Muon on the blocks' weight matrices, its update scaled to AdamW's RMS so lr and
    weight_decay keep their meaning; AdamW on embeddings, norms and biases; decoder/muon.py)."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum; used only with optimizer 'muon'."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio at the end of the budget."""
    warmup_steps: int = 50
    """Linear warm-up steps from 0 to lr (ignored when warmup_fraction is set)."""
    warmup_fraction: float | None = None
    """Linear warm-up over this fraction of the budget (steps, tokens or seconds, whichever ends
    first), so a short run on a slow machine is not mostly warm-up; null uses warmup_steps."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """'cosine' (warm-up, then cosine decay over the budget) or 'constant' (warm-up, then flat)."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices (not to norms, biases or embeddings)."""
    beta1: float = 0.9
    """Adam/AdamW first-moment decay (momentum)."""
    beta2: float = 0.95
    """Adam/AdamW second-moment decay."""
    eps: float = 1e-8
    """Adam/AdamW denominator epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    input_noise: float = 0.0
    """Unigram noising of the inputs (Xie et al. 2017, "Data noising as smoothing in neural network
    language models"): each input token of a training window, not its targets, is replaced with this
    probability by a token drawn from the training split's unigram distribution (the token at a
    uniformly drawn position of the split). 0 is off. Evaluation never noises."""
    ema: float = 0.0
    """Exponential moving average of the weights with this decay (e.g. 0.999; 0 is off), updated
    after every optimizer step with the decay warmed up as min(ema, (1 + n) / (10 + n)) after n
    updates: evaluated, checkpointed as the model (best.pt, model.safetensors, exports) and used for
    the samples, while the optimizer keeps stepping the raw weights (saved too, for exact resume)."""
    ema_warmup: float = 10.0
    """The moving average's warm-up constant W: the decay after n updates is min(ema, (1 + n) / (W +
    n)). The default 10 keeps the decay below 0.99 for 890 updates; a smaller W reaches a high
    decay sooner (W = 2: 0.995 after 198 updates), so a long average takes effect in a short run."""
    max_steps: int | None = None
    """Budget in optimizer steps. At least one of max_steps / max_tokens / max_seconds / max_flops is required;
    with several, training stops at the first reached."""
    max_tokens: int | None = None
    """Budget in training tokens (global, all processes)."""
    max_seconds: float | None = None
    """Budget in wall-clock seconds of training (evaluation excluded)."""
    max_flops: float | None = None
    """Budget in training FLOPs (all processes): tokens seen x (6 N + 6 n_blocks context_length
    d_model), N the blocks' matrix weights plus the output head, embeddings not counted
    (`decoder.flops`). Equal-compute comparisons of shapes (the IsoFLOP study) use it."""
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
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto' (bf16 autocast where it is faster than fp32 on this device), 'fp32' or 'bf16'."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    seed: int = 0
    """Seeds weights, data sampling and dropout."""
    num_threads: int | None = None
    """CPU threads for torch (null: torch's default, all cores)."""
    tensorboard: bool = True
    """Log scalars (at log_interval steps and evaluations only, never per step) and, at the end, the
    hyperparameters with the final metrics to the run folder's tensorboard/ (`tensorboard --logdir runs`)."""
    final_protocols: str | list[str] | None = None
    """Evaluation protocols (`decoder eval`'s: 'static', 'sliding', 'dynamic', 'mix', each with its
    default settings) to score the best checkpoint with once training ends, on the validation split;
    their bits per byte and seconds go into summary.json's `protocols` and the report's table. Null
    or empty: none (the training metric is the static protocol's anyway)."""

    def __post_init__(self) -> None:
        if isinstance(self.final_protocols, (str, list)):  # a tuple inside, so the frozen config stays hashable
            names = [self.final_protocols] if isinstance(self.final_protocols, str) else self.final_protocols
            object.__setattr__(self, "final_protocols", tuple(names))

    def problems(self) -> list[str]:
        out = field_problems(self, "training", {
            "batch_size": ">= 1", "lr": "> 0", "min_lr_ratio": "in [0, 1]", "warmup_steps": ">= 0",
            "warmup_fraction": "in [0, 1) or null", "eval_fraction": "in (0, 1] or null", "weight_decay": ">= 0",
            "beta1": "in [0, 1)", "beta2": "in [0, 1)", "muon_momentum": "in [0, 1)", "eps": "> 0",
            "grad_clip": ">= 0 (0 disables)", "input_noise": "in [0, 1)", "ema": "in [0, 1) (0 is off)",
            "ema_warmup": ">= 1",
            "max_steps": "> 0", "max_tokens": "> 0", "max_seconds": "> 0", "max_flops": "> 0", "eval_interval": ">= 1",
            "patience": ">= 1 or null", "log_interval": ">= 1", "num_threads": ">= 1 or null"})
        if self.grad_accum_steps < 1 or (self.batch_size >= 1 and self.batch_size % self.grad_accum_steps):
            out.append(
                f"training.grad_accum_steps={self.grad_accum_steps}: must be >= 1 and divide "
                f"training.batch_size={self.batch_size}"
            )
        allowed = ("static", "sliding", "dynamic", "mix", "knn-mix")  # decoder.protocols.PROTOCOLS
        for name in self.final_protocols or ():
            if name not in allowed:
                out.append(f"training.final_protocols: {name!r} is not a protocol; allowed {', '.join(allowed)}")
        if all(b is None for b in (self.max_steps, self.max_tokens, self.max_seconds, self.max_flops)):
            out.append("training: no budget (a budget is required): set at least one of max_steps, "
                       "max_tokens, max_seconds, max_flops")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            out.append(f"training.device={self.device!r}: allowed 'auto', 'cpu', 'cuda', 'cuda:N'")
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
    repetition_penalty: float = 1.2
    """Divide positive logits (multiply negative ones) of tokens already in the text by this
    (CTRL's penalty); 1 turns it off."""
    no_repeat_ngram_size: int = 4
    """Never complete an n-gram of this many tokens that already occurs in the text; 0 turns it off."""

    def problems(self) -> list[str]:
        return field_problems(self, "sampling", {
            "max_new_tokens": ">= 1", "temperature": ">= 0 (0 is greedy)", "top_k": ">= 0 (0 keeps all)",
            "top_p": "in (0, 1]", "repetition_penalty": "> 0 (1 is off)", "no_repeat_ngram_size": ">= 0 (0 is off)"})


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(max_steps=1000))
    """A budget so that RunConfig() is valid in Python; a config file must give its own."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def problems(self) -> list[str]:
        return self.model.problems() + self.data.problems() + self.training.problems() + self.sampling.problems()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(out["data"]["corpus"], tuple):
            out["data"]["corpus"] = list(out["data"]["corpus"])
        return out

    def validated(self) -> "RunConfig":
        return check(self)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
}


def config_from_dict(raw: Any, *, source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a nested dict, raising one ConfigError listing every problem.

    This is where a config is validated (once, as it is loaded). A missing section takes its
    defaults, except that the training budget has none: an empty file is an error, not a default run."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping with sections {', '.join(SECTIONS)}", source)
    problems = [unknown_key("", str(key), list(SECTIONS)) for key in raw if key not in SECTIONS]
    config = RunConfig(**{name: build_section(name, cls, raw.get(name), problems) for name, cls in SECTIONS.items()})
    problems.extend(config.problems())
    if problems:
        raise ConfigError(problems, source)
    return config


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such file", str(path))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", str(path)) from None


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
