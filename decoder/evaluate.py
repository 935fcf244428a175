"""Scoring a text with a PyTorch model under the three protocols of `decoder.protocols`: static
(`decoder.step.evaluate` itself, so `decoder eval` reproduces the training loop's val_bpb),
sliding windows, and dynamic evaluation.

Dynamic evaluation (Krause et al. 2018) walks the sliding windows of stride `segment` in order.
Each window is scored first, with the weights as they are, and then every parameter takes one step
on the mean loss of the tokens that window just scored, in eval mode (no dropout), with no
momentum, no weight decay and no decay back to the trained weights. The step follows the rule:

- "rms": Krause et al.'s normalised step, p -= lr * g / (rms + epsilon), where rms is the root
  mean square of that parameter's gradient over RMS_WINDOWS windows of the training split (the
  same loss: a window's last `segment` tokens; `gradient_rms`) and epsilon RMS_EPSILON times the
  mean rms over the parameter tensors. A parameter the training text moves little (the embedding
  of a rare name) takes a larger step than one it moves a lot. Their decay back to the trained
  weights is off by default: on the main job's model it scored 1.5881 bpb at lambda 0.001 and
  1.5978 at 0.01 against 1.5875 without (`python -m bench.dynamic_rules`; one book: the text stays
  the same text).
- "sgd": plain SGD, p -= lr * g.

So no token is ever scored by weights that have seen it: an update after window k saw tokens up
to window k's last one, and every later window scores only tokens after that. The model passed
in is not changed (a copy learns). With segment = context the windows are static's; a shorter
segment gives each token more context and more updates (one per segment).

The mix protocol (`mix_nats_of`) takes the model's nats of every token under those windows
(dynamic evaluation's when its dynamic_lr > 0, else sliding windows of stride segment: the same
windows without updates) and mixes each token's probability with an online Kneser-Ney n-gram's
(`decoder.online_ngram`), whose counts start from the training split. Only the probability of the
token that occurred is needed from each: a mixture of two proper distributions with a weight fixed
before the token is seen is proper, and its probability of that token is the same mixture of
theirs. The model's nats never depend on the n-gram nor the n-gram's on the model, so each is
computed whole, then mixed token by token.

The knn-mix protocol (`knn_mix_nats_of`) adds a third expert computed whole the same way: a
kNN-LM over the trained model's hidden states (`decoder.knn`: static weights, the datastore the
training split and the text positions already scored), mixed with the other two by
`decoder.online_ngram.mix_experts`.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from decoder.config import DataConfig
from decoder.hardware import autocast, resolve_device, resolve_precision, training_attention_backend
from decoder.loss import IGNORE_INDEX, linear_cross_entropy
from decoder.metrics import bits_per_byte
from decoder.model import GPT
from decoder.online_ngram import OnlineKneserNey, mix_experts, mix_nats
from decoder.protocols import DEFAULT_LRS, EvalError, Window, figures, windows
from decoder.step import evaluate
from decoder.tokenizer import Tokenizer

RMS_WINDOWS = 256
"""Training windows (evenly spread over the split) whose gradients give the "rms" rule's statistics."""
RMS_EPSILON = 0.1
"""The "rms" rule's epsilon, relative to the mean rms: on the main job's model at lr 1e-4, 0.1
scored 1.5875 bpb against 1.6382 at 0.01, 1.5992 at 0.3 and 1.6196 at 1 (research/dynamic-evaluation/)."""

Trace = Callable[[str, range], None]
"""Called with ("score", positions scored) before and ("update", positions the step saw) after
each dynamic-evaluation step: positions index the text's tokens."""


def load_scorer(source: str | Path, device: str = "auto", precision: str | None = None):
    """(model, tokenizer, config, device, precision) from a run folder or checkpoint, ready to
    score as training evaluated it: its saved precision unless `precision` is given, the training
    attention kernel of that device and precision."""
    from decoder.checkpoint import load_checkpoint, load_model

    model, tokenizer, config, meta = load_model(source)
    where = resolve_device(device)
    saved = load_checkpoint(Path(meta["path"]))["precision"]
    chosen = resolve_precision(precision or saved or "fp32", where)
    model.to(where).set_attention_backend(training_attention_backend(where.type, config.model.context_length, chosen))
    return model, tokenizer, config, where, chosen


def splits(data: DataConfig, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(training split, validation split) of `data` in the model's ids; refuses a corpus whose
    rebuilt tokenizer is not the model's (the splits would not be the ones it was trained and
    scored on)."""
    from decoder.data import prepare

    dataset = prepare(data)
    if dataset.tokenizer.to_dict() != tokenizer.to_dict():
        raise EvalError(f"the tokenizer rebuilt from corpus {data.corpus!r} differs from the model's, so its "
                        "splits cannot be rebuilt; score a file with --text instead (with --protocol static, "
                        "sliding, or dynamic --rule sgd: the mixes and the rms rule need the training split)")
    return dataset.train, dataset.val


def validation_tokens(data: DataConfig, tokenizer: Tokenizer) -> np.ndarray:
    """The validation split of `data` in the model's ids (see `splits`)."""
    return splits(data, tokenizer)[1]


def _batch(tokens: torch.Tensor, group: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a group of windows, padded to the longest: y is IGNORE_INDEX where not scored."""
    L = max(w.length for w in group)
    x = torch.zeros(len(group), L, dtype=torch.long)
    y = torch.full((len(group), L), IGNORE_INDEX, dtype=torch.long)
    for j, w in enumerate(group):
        x[j, : w.length] = tokens[w.start : w.start + w.length]
        y[j, w.skip : w.length] = tokens[w.start + 1 + w.skip : w.start + 1 + w.length]
    return x, y


def _token_nats(model: GPT, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """Per-position nats (B, L) of targets y (0 where IGNORE_INDEX), with grad if enabled."""
    with autocast(device, precision):
        hidden, _ = model.hidden(x.to(device))
        logits = model.lm_head(hidden).float()
    y = y.to(device)
    nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                             reduction="none")
    return nats.view(y.shape)


@torch.no_grad()
def sliding_nats(model: GPT, tokens: np.ndarray, stride: int, device: torch.device, precision: str) -> np.ndarray:
    """Nats of every prediction (index i: token i + 1) over the sliding windows of `stride`,
    batched as `decoder.step.evaluate` batches its windows."""
    was_training = model.training
    model.eval()
    T = model.config.context_length
    plan = windows(len(tokens), T, stride)
    batch = max(1, min(64, 2**25 // (T * model.vocab_size)))
    data = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    out = np.zeros(len(tokens) - 1)
    for i in range(0, len(plan), batch):
        group = plan[i : i + batch]
        x, y = _batch(data, group)
        nats = _token_nats(model, x, y, device, precision).cpu().double().numpy()
        for j, w in enumerate(group):
            out[w.start + w.skip : w.start + w.length] = nats[j, w.skip : w.length]
    model.train(was_training)
    return out


def gradient_rms(model: GPT, train: np.ndarray, segment: int, device: torch.device, precision: str,
                 n_windows: int = RMS_WINDOWS) -> list[torch.Tensor]:
    """Each parameter's root mean square gradient (Krause et al.'s statistics for the "rms" rule)
    of the mean loss on a window's last `segment` tokens, over `n_windows` context-length windows
    spread evenly over the training split, in eval mode; the model's weights are unchanged."""
    T = model.config.context_length
    if len(train) < T + 2:
        raise EvalError(f"the training split has {len(train)} tokens: the rms rule's statistics need at least {T + 2}")
    data = torch.from_numpy(np.ascontiguousarray(train, dtype=np.int64))
    params = list(model.parameters())
    squares = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    for start in np.linspace(0, len(train) - T - 1, n_windows).astype(int):
        x, y = _batch(data, [Window(int(start), T, T - segment)])
        model.zero_grad(set_to_none=True)
        _token_nats(model, x, y, device, precision)[0, T - segment:].mean().backward()
        for square, p in zip(squares, params):
            square += p.grad.float() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return [torch.sqrt(square / n_windows) for square in squares]


def dynamic_nats(model: GPT, tokens: np.ndarray, segment: int, lr: float, device: torch.device, precision: str,
                 trace: Trace | None = None, rms: list[torch.Tensor] | None = None, epsilon: float = RMS_EPSILON,
                 decay: float = 0.0) -> np.ndarray:
    """Nats of every prediction under dynamic evaluation (see the module docstring): the "rms" rule
    with `rms` (`gradient_rms` of the same model; `epsilon` relative to its mean; `decay`, Krause et
    al.'s lambda, pulls each parameter back towards its trained value by lambda times its rms over
    the mean, at most 1, after each step), plain SGD without; `model` is left as it was. `trace`
    sees what each step scored and what each update saw."""
    learner = copy.deepcopy(model).eval()
    params = list(learner.parameters())
    if rms is not None:
        mean = float(sum(r.mean() for r in rms) / len(rms))
        scales = [lr / (r + epsilon * mean) for r in rms]
        pulls = [torch.clamp(decay * r / mean, max=1.0) for r in rms] if decay > 0 else None
        trained = [p.detach().clone() for p in params] if decay > 0 else None
    rule = "sgd" if rms is None else "rms"
    data = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    out = np.zeros(len(tokens) - 1)
    for w in windows(len(tokens), learner.config.context_length, segment):
        x, y = _batch(data, [w])
        nats = _token_nats(learner, x, y, device, precision)[0, w.skip : w.length]
        if not torch.isfinite(nats).all():
            raise EvalError(f"--lr={lr}: dynamic evaluation diverged after {w.start + w.skip} of {len(tokens) - 1} "
                            f"tokens (the loss became infinite or NaN); use a smaller --lr (default "
                            f"{DEFAULT_LRS[rule]} with --rule {rule})")
        out[w.start + w.skip : w.start + w.length] = nats.detach().cpu().double().numpy()
        if trace:
            trace("score", w.scored)
        learner.zero_grad(set_to_none=True)
        nats.mean().backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                if rms is None:
                    p.add_(p.grad, alpha=-lr)
                    continue
                p.sub_(p.grad * scales[i])
                if pulls is not None:
                    p.add_((trained[i] - p) * pulls[i])
        if trace:
            trace("update", range(w.start, w.start + 1 + w.length))
    return out


def dynamic_nats_of(model: GPT, tokens: np.ndarray, train: np.ndarray | None, segment: int, lr: float, rule: str,
                    device: torch.device, precision: str) -> np.ndarray:
    """`dynamic_nats` under `rule`, the "rms" rule's statistics taken from `train` first."""
    if rule == "sgd":
        return dynamic_nats(model, tokens, segment, lr, device, precision)
    if train is None:
        raise EvalError("--rule rms takes its gradient statistics from the training split, which is not at hand "
                        "(rebuild it from the run's corpus, or use --rule sgd)")
    rms = gradient_rms(model, train, segment, device, precision)
    return dynamic_nats(model, tokens, segment, lr, device, precision, rms=rms)


def mix_nats_of(model: GPT, tokens: np.ndarray, train: np.ndarray, settings: dict, device: torch.device,
                precision: str, fixed_weight: float | None = None, shared: dict | None = None) -> dict:
    """The mix protocol's arrays over the predictions of tokens[1:] (see the module docstring):
    "nats" (the mixture's), "model_nats", "ngram_nats", "weight" (the model's lam of each token),
    "matched" (the n-gram's matched order of each, the mixture's bucket), "model_seconds",
    "ngram_seconds" (the n-gram's counts, its scoring and the mixing).
    `fixed_weight` replaces the learnt lam by a constant (a test hook: 1.0 is the model alone).
    `shared`, a dict kept across calls on the same model and text, reuses the model's and the
    n-gram's arrays (with the seconds they took) for the same segment, lr and order (the mix and
    knn-mix of one run's end share them)."""
    key = (settings["segment"], settings["dynamic_lr"], settings["rule"], settings["order"])
    if shared is not None and key in shared and fixed_weight is None:
        return dict(shared[key])
    started = time.perf_counter()
    if settings["dynamic_lr"] > 0:
        model_nats = dynamic_nats_of(model, tokens, train, settings["segment"], settings["dynamic_lr"],
                                     settings["rule"], device, precision)
    else:
        model_nats = sliding_nats(model, tokens, settings["segment"], device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model_seconds, started = time.perf_counter() - started, time.perf_counter()
    ngram = OnlineKneserNey(train, model.vocab_size, settings["order"])
    ngram_nats, matched = ngram.score(tokens)
    nats, weight = mix_nats(model_nats, ngram_nats, matched, fixed_weight)
    out = {"nats": nats, "model_nats": model_nats, "ngram_nats": ngram_nats, "weight": weight, "matched": matched,
           "model_seconds": model_seconds, "ngram_seconds": time.perf_counter() - started}
    if shared is not None and fixed_weight is None:
        shared[key] = dict(out)
    return out


def knn_mix_nats_of(model: GPT, tokens: np.ndarray, train: np.ndarray, settings: dict, device: torch.device,
                    precision: str, shared: dict | None = None) -> dict:
    """The knn-mix protocol's arrays: `mix_nats_of`'s ("nats" there becomes "mix_nats", the two-way
    mix) plus "knn_nats" (`decoder.knn`, the static model's states) and "nats", "weights" (N, 3) of
    the three-way mixture (model, n-gram, kNN) bucketed by matched order, with the seconds of the
    datastore, the search and the mixing (`shared`: as `mix_nats_of`'s)."""
    from decoder.knn import knn_nats

    out = mix_nats_of(model, tokens, train, settings, device, precision, shared=shared)
    out["mix_nats"] = out.pop("nats")
    knn = knn_nats(model, train, tokens, settings["neighbours"], settings["knn_temperature"], device, precision)
    started = time.perf_counter()
    out["nats"], out["weights"] = mix_experts([out["model_nats"], out["ngram_nats"], knn["nats"]], out["matched"])
    return {**out, "knn_nats": knn["nats"], "datastore_seconds": knn["datastore_seconds"],
            "search_seconds": knn["search_seconds"], "mixing_seconds": time.perf_counter() - started}


def score(model: GPT, tokenizer: Tokenizer, tokens: np.ndarray, settings: dict, device: torch.device,
          precision: str, train: np.ndarray | None = None, shared: dict | None = None) -> dict:
    """The figures (`decoder.protocols.figures`) of `tokens` (model ids) under `settings`
    (`decoder.protocols.protocol_settings`), with the seconds the scoring took. Dynamic evaluation
    with the "rms" rule needs `train` for its gradient statistics. The mix protocol needs `train`,
    the training split its n-gram counts start from (and the rule's statistics), and adds the model's and the
    n-gram's own bits per byte, the mean weight of the model and the seconds of each part; knn-mix
    (which needs `train` too) adds the kNN expert's and the two-way mix's bits per byte, each
    expert's mean weight and the seconds of the datastore, the search and the mixing. `shared`
    (see `mix_nats_of`) lets the mixes of one model and text reuse the model's and the n-gram's
    arrays; "seconds" is then the sum of the parts, what the protocol costs on its own."""
    started = time.perf_counter()
    protocol = settings["protocol"]
    extra: dict = {}
    if protocol == "static":
        val = evaluate(model, tokens, tokenizer.byte_lengths(), device, precision)
        result = figures(val["val_loss"] * val["val_tokens"], tokens, tokenizer)
        result.update(bits_per_byte=val["val_bpb"], nats_per_token=val["val_loss"], token_perplexity=val["val_ppl"])
    elif protocol == "sliding":
        result = figures(float(sliding_nats(model, tokens, settings["stride"], device, precision).sum()), tokens,
                         tokenizer)
    elif protocol == "dynamic":
        nats = dynamic_nats_of(model, tokens, train, settings["segment"], settings["lr"], settings["rule"], device,
                               precision)
        result = figures(float(nats.sum()), tokens, tokenizer)
    elif protocol in ("mix", "knn-mix"):
        if train is None:
            raise EvalError(f"--protocol {protocol} needs the training split its n-gram counts start from")
        of = mix_nats_of if protocol == "mix" else knn_mix_nats_of
        mixed = of(model, tokens, train, settings, device, precision, shared=shared)
        result = figures(float(mixed["nats"].sum()), tokens, tokenizer)
        bpb = {f"{name}_bits_per_byte": bits_per_byte(float(mixed[f"{name}_nats"].sum()), result["bytes"])
               for name in ("model", "ngram", "knn", "mix") if f"{name}_nats" in mixed}
        extra = {**bpb, **{k: round(v, 3) for k, v in mixed.items() if k.endswith("_seconds")}}
        if protocol == "mix":
            extra["mean_model_weight"] = float(mixed["weight"].mean())
        else:
            means = mixed["weights"].mean(axis=0).tolist()
            extra.update(zip(("mean_model_weight", "mean_ngram_weight", "mean_knn_weight"), means))
    else:
        raise EvalError(f"protocol={protocol!r}: unknown")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if protocol in ("mix", "knn-mix") and shared:
        seconds = sum(v for k, v in extra.items() if k.endswith("_seconds"))  # the parts as reported
    return {**result, **settings, **extra, "engine": "torch", "device": str(device), "precision": precision,
            "seconds": round(seconds, 3)}


def score_protocols(model: GPT, tokenizer: Tokenizer, train: np.ndarray, val: np.ndarray, names, device: torch.device,
                    precision: str) -> dict:
    """{protocol: its `score` with default settings} of the validation split, for the end of a
    training run (`training.final_protocols`); the mix's n-gram counts start from `train`. The
    model is scored with the training attention kernel of its device and precision, so "static"
    is the training loop's val_bpb. The mix and knn-mix share the model's and the n-gram's arrays,
    each reporting the seconds it would take alone."""
    from decoder.protocols import protocol_settings

    model.to(device).set_attention_backend(training_attention_backend(device.type, model.config.context_length, precision))
    context = model.config.context_length
    out, shared = {}, {}
    for name in dict.fromkeys(names):
        result = score(model, tokenizer, val, protocol_settings(name, context), device, precision, train=train,
                       shared=shared)
        out[name] = {k: v for k, v in result.items() if k not in ("engine", "device", "precision", "context_length")}
    return out
