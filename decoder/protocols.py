"""Evaluation protocols, their figures, and scoring with an ONNX bundle: the torch-free half of
`decoder eval` (`decoder.evaluate` is the PyTorch half, and the one that can learn as it scores).

Every protocol predicts tokens 1..N-1 of a text exactly once (token 0 is context only) and differs
in what each prediction sees:

- **static**: consecutive windows of the context length, the weights fixed: the first token of
  each window is predicted from one token, the last from the whole context. Exactly the
  evaluation the training loop reports as val_bpb (`decoder.step.evaluate`).
- **sliding**: windows advanced by `stride` tokens; each window predicts only the tokens no
  earlier window did, so every token after the first window is predicted from at least
  context - stride + 1 tokens. stride = context is static.
- **dynamic** (Krause et al. 2018, "Dynamic evaluation of neural sequence models"): the sliding
  windows with stride = segment, scored in order, each followed by one gradient step on the
  tokens it just scored, so the model keeps learning from text it has already been charged for
  (as every adaptive compressor does). The step's `rule`: "rms" (the default), each parameter's
  gradient divided by its root mean square over training windows, as Krause et al. normalise it;
  or "sgd", plain SGD. PyTorch only: `decoder.evaluate.dynamic_nats`.
- **mix**: each token coded by p = lam p_model + (1 - lam) p_ngram: the model's probability under
  the windows of stride `segment` (dynamic evaluation's, with its updates, when `dynamic_lr` > 0;
  sliding windows when 0) mixed with an online interpolated Kneser-Ney n-gram of `order` over the
  same ids, its counts the training split's plus every text token already scored, lam a causal
  Bayesian mixture weight learnt from the tokens already scored (`decoder.online_ngram`). PyTorch
  only: `decoder.evaluate.mix_nats_of`.
- **knn-mix**: the mix plus a third expert, a kNN-LM (Khandelwal et al. 2020, "Generalization
  through memorization"): p_knn from the `neighbours` stored hidden states nearest the static
  model's state at the token (softmax of -distance / `knn_temperature`), the datastore the training
  split's states and the text's own already scored ones (`decoder.knn`); the three experts mixed by
  a causal Bayesian mixture over a simplex of weights, one posterior per matched n-gram order
  (`decoder.online_ngram.mix_experts`). PyTorch only.

The figures (`figures`) follow lm-evaluation-harness: bits per byte and byte perplexity over the
UTF-8 bytes of the predicted tokens (<|endoftext|> counts none, as in `decoder.metrics`), word
perplexity over the words of that text (`len(re.split(r"\\s+", text))`, lm-eval's count).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decoder.errors import UserError
from decoder.io import read_utf8
from decoder.metrics import bits_per_byte, perplexity
from decoder.online_ngram import MAX_ORDER
from decoder.tokenizer import Tokenizer

PROTOCOLS = ("static", "sliding", "dynamic", "mix", "knn-mix")
BUNDLE_PROTOCOLS = ("static", "sliding")
"""What an ONNX bundle can run (dynamic evaluation needs gradients: PyTorch)."""
DYNAMIC_RULES = ("rms", "sgd")
"""Dynamic evaluation's update rules (`decoder.evaluate.dynamic_nats`); the first is the default."""
DEFAULT_LRS = {"rms": 1e-4, "sgd": 0.02}
"""Dynamic evaluation's learning rate for each rule, at the default segment. Chosen on the main
job's validation split (so, like DEFAULT_ORDER, settings picked on scored text). sgd: at segment 32
lr 0.02 / 0.03 / 0.05 gave 1.6152 / 1.6197 / 1.6434 bpb (segment 64, lr 0.03: 1.6345). rms, on
the main job's model at the slow class's budget (sgd lr 0.02: 1.6107): lr 5e-5 / 1e-4 / 2e-4 gave
1.6044 / 1.5875 / 1.5905 bpb (research/dynamic-evaluation/, `python -m bench.dynamic_rules`)."""
DEFAULT_ORDER = 4
"""The mix protocol's n-gram order, chosen on the default model's validation split (so that one
setting, unlike the mixture weight, was picked on scored text): order 4 mixed 0.004 bpb better
than 3 and 0.0005 better than 5."""
DEFAULT_NEIGHBOURS = 64
DEFAULT_KNN_TEMPERATURE = 30.0
"""The knn-mix protocol's k and softmax temperature (of squared L2 distances between the main
job's d_model 192 float32 states), chosen on the main job's validation split (so, like
DEFAULT_ORDER, settings picked on scored text, not learnt online as the mixture weights are): with
the dynamic model at segment 64 the three-way mix gave 1.5465 bpb at k 64 and temperature 30,
1.5481 at k 32, 1.5489 at temperature 100; mixed with the model alone, an early checkpoint's kNN
expert kept improving up to k 64 and temperature 30 from k 8 and temperature 1."""
MIXES = ("mix", "knn-mix")
"""The protocols that mix the model with the online n-gram (and need the training split)."""


def default_segment(context: int) -> int:
    """Dynamic evaluation's (and the mix's) segment when none is given: half the context, so every
    token is predicted from at least half a window, with an update every half window (on the main
    job's model, dynamic evaluation at lr 0.03: 1.6197 bpb at segment 32 against 1.6345 at 64, the
    context; segment 16 gained 0.002 more in the mix for twice the time)."""
    return max(1, context // 2)


class EvalError(UserError, ValueError):
    """An evaluation that cannot run: a bad protocol option, an unreadable or too short text."""


@dataclass(frozen=True)
class Window:
    """One forward pass: input tokens[start : start + length] predicting tokens[start + 1 : start +
    1 + length], of which the first `skip` were predicted by an earlier window and are not scored."""

    start: int
    length: int
    skip: int

    @property
    def scored(self) -> range:
        """Positions (indices into the text's tokens) this window scores."""
        return range(self.start + 1 + self.skip, self.start + 1 + self.length)


def windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """The windows that predict tokens 1..n_tokens-1 once each: starts 0, stride, 2 stride, ...,
    each at most `context` long (stride = context: static's consecutive windows)."""
    if not 1 <= stride <= context:
        raise EvalError(f"stride={stride}: must be in [1, {context}] (the context length)")
    n_pred, out, scored_to, start = n_tokens - 1, [], 0, 0
    while scored_to < n_pred:
        length = min(context, n_pred - start)
        out.append(Window(start, length, max(scored_to - start, 0)))
        scored_to, start = start + length, start + stride
    return out


def protocol_settings(protocol: str, context: int, *, stride: int | None = None, segment: int | None = None,
                      lr: float | None = None, dynamic_lr: float | None = None, order: int | None = None,
                      neighbours: int | None = None, knn_temperature: float | None = None,
                      rule: str | None = None) -> dict:
    """The protocol's settings with defaults filled in (sliding: stride = half the context; dynamic:
    segment = `default_segment`, rule = the first of DYNAMIC_RULES, lr = DEFAULT_LRS[rule]; mix:
    segment = `default_segment`, the same rule, dynamic_lr = DEFAULT_LRS[rule], order =
    DEFAULT_ORDER; knn-mix: the mix's and neighbours = DEFAULT_NEIGHBOURS, knn_temperature =
    DEFAULT_KNN_TEMPERATURE), after refusing options that do not fit it."""
    if protocol not in PROTOCOLS:
        raise EvalError(f"protocol={protocol!r}: allowed {', '.join(PROTOCOLS)}")
    given = {"--stride": (stride, ("sliding",)), "--segment": (segment, ("dynamic", *MIXES)),
             "--lr": (lr, ("dynamic",)), "--rule": (rule, ("dynamic", *MIXES)),
             "--dynamic-lr": (dynamic_lr, MIXES), "--order": (order, MIXES),
             "--neighbours": (neighbours, ("knn-mix",)), "--knn-temperature": (knn_temperature, ("knn-mix",))}
    for option, (value, needs) in given.items():
        if value is not None and protocol not in needs:
            raise EvalError(f"{option} applies to --protocol {' or '.join(needs)}, not {protocol}")
    for option, value in (("--stride", stride), ("--segment", segment)):
        if value is not None and not 1 <= value <= context:
            raise EvalError(f"{option}={value}: must be in [1, {context}] (the model's context length)")
    for option, value in (("--lr", lr), ("--dynamic-lr", dynamic_lr)):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            raise EvalError(f"{option}={value}: must be a finite number >= 0")
    if rule is not None and rule not in DYNAMIC_RULES:
        raise EvalError(f"--rule={rule!r}: allowed {', '.join(DYNAMIC_RULES)}")
    rule = rule or DYNAMIC_RULES[0]
    if order is not None and not 1 <= order <= MAX_ORDER:
        raise EvalError(f"--order={order}: must be in [1, {MAX_ORDER}]")
    if neighbours is not None and neighbours < 1:
        raise EvalError(f"--neighbours={neighbours}: must be >= 1")
    if knn_temperature is not None and not (knn_temperature > 0 and np.isfinite(knn_temperature)):
        raise EvalError(f"--knn-temperature={knn_temperature}: must be a finite number > 0")
    settings: dict = {"protocol": protocol, "context_length": context}
    if protocol == "static":
        return {**settings, "stride": context}
    if protocol == "sliding":
        return {**settings, "stride": stride or max(1, context // 2)}
    if protocol in MIXES:
        settings.update(segment=segment or default_segment(context), rule=rule,
                        dynamic_lr=DEFAULT_LRS[rule] if dynamic_lr is None else dynamic_lr, order=order or DEFAULT_ORDER)
        if protocol == "knn-mix":
            settings.update(neighbours=neighbours or DEFAULT_NEIGHBOURS, knn_temperature=float(
                DEFAULT_KNN_TEMPERATURE if knn_temperature is None else knn_temperature))
        return settings
    return {**settings, "segment": segment or default_segment(context), "rule": rule,
            "lr": DEFAULT_LRS[rule] if lr is None else lr}


def read_text(path: str | Path) -> str:
    """A UTF-8 text file to score, as given (no header stripping)."""
    return read_utf8(path, EvalError)


def text_tokens(tokenizer: Tokenizer, text: str, source: str = "the text") -> np.ndarray:
    """Model ids of `text`; refuses one too short to predict anything."""
    tokens = tokenizer.to_model_ids(tokenizer.raw_encode(text))
    if len(tokens) < 2:
        raise EvalError(f"{source}: {len(tokens)} token(s); scoring needs at least 2")
    return tokens


def count_words(text: str) -> int:
    """Words as lm-evaluation-harness counts them for word perplexity."""
    return len(re.split(r"\s+", text))


def figures(total_nats: float, tokens: np.ndarray, tokenizer: Tokenizer) -> dict:
    """The quality figures of `total_nats` summed over the predictions of tokens[1:]."""
    scored = tokenizer.decode_bytes(tokens[1:])
    n_tokens, n_bytes = len(tokens) - 1, len(scored)
    n_words = count_words(scored.decode("utf-8", errors="replace"))
    return {
        "bits_per_byte": bits_per_byte(total_nats, n_bytes),
        "nats_per_token": total_nats / n_tokens,
        "token_perplexity": perplexity(total_nats / n_tokens),
        "byte_perplexity": perplexity(total_nats / max(n_bytes, 1)),
        "word_perplexity": perplexity(total_nats / max(n_words, 1)),
        "total_nats": total_nats,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "words": n_words,
    }


def _log_softmax_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64: logits (N, V), targets (N,)."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1)
    log_z = np.log(np.exp(logits - peak[:, None]).sum(axis=-1)) + peak
    return log_z - logits[np.arange(len(targets)), targets]


def bundle_nats(runtime, tokens: np.ndarray, stride: int, batch: int = 16) -> np.ndarray:
    """Nats of every prediction (index i: token i + 1) by a `decoder.runtime.Runtime` over the
    sliding windows of `stride` (stride = context length: static). Windows of one length run as
    one batch of up to `batch` rows."""
    tokens = np.asarray(tokens, dtype=np.int64)
    out = np.zeros(len(tokens) - 1)
    plan = windows(len(tokens), runtime.context_length, stride)
    for i in range(0, len(plan), batch):
        group = plan[i : i + batch]
        for length in sorted({w.length for w in group}):
            rows = [w for w in group if w.length == length]
            ids = np.stack([tokens[w.start : w.start + length] for w in rows])
            logits, _ = runtime.run(ids)  # (B, T, V)
            for w, row in zip(rows, logits):
                targets = tokens[w.start + 1 : w.start + 1 + length]
                out[w.start + w.skip : w.start + length] = _log_softmax_nats(row[w.skip:], targets[w.skip:])
    return out


def score_bundle(bundle_dir: str | Path, tokens: np.ndarray, settings: dict, threads: int | None = None) -> dict:
    """Score model ids `tokens` with a bundle's fp32 model under `settings` (`protocol_settings`:
    static or sliding)."""
    from decoder.runtime import Runtime

    if settings["protocol"] not in BUNDLE_PROTOCOLS:
        raise EvalError(f"--protocol {settings['protocol']} needs PyTorch (a run folder or checkpoint), not an "
                        f"ONNX bundle; a bundle runs {' or '.join(BUNDLE_PROTOCOLS)}")
    runtime = Runtime(bundle_dir, threads=threads)
    started = time.perf_counter()
    nats = bundle_nats(runtime, tokens, settings["stride"])
    return {**figures(float(nats.sum()), tokens, runtime.tokenizer), **settings, "engine": "onnxruntime",
            "seconds": round(time.perf_counter() - started, 3)}
