"""Other ways to mix the knn-mix protocol's experts, probed on one run's validation split.

knn-mix (docs/evaluation.md) mixes three experts: the dynamically evaluated model, the online
Kneser-Ney 4-gram and the kNN-LM. Their weights come from a Bayesian mixture over a simplex grid,
with one posterior per matched n-gram order. This script computes each expert's nats once with the
library's own functions, so the first row is the protocol's own figure. It then prints the bits
per byte that each variant of the mixture gives on the same tokens:

- **forgetting**: each token, the posterior of the weights is raised to a power below 1 (a
  discounted Bayesian mixture), so the weight can track a text whose best mixture drifts;
- **buckets**: the matched order crossed with the entropy of the trained model's own distribution
  (sliding windows of the segment; known before the token) or with the quartile of the nearest kNN
  distance. Those quartiles are taken over the text's own distances, so that variant is not a
  causal coder: it is an optimistic bound on what such buckets can give;
- **experts**: the n-gram at orders 2 and 6 beside 4, a decaying unigram cache of the text already
  scored (Kuhn & De Mori 1990), or the kNN at temperature 10 as a fourth expert (four experts use a
  grid of multiples of 1/10, and the protocol's three are shown on that grid too);
- **online gradient**: softmax weights per bucket, one SGD step on the log loss after each token,
  in the linear domain (a PAQ-style mixer), mixed 2% towards uniform so that no weight reaches 0.

Every variant fixes a token's weights before the token is seen. Prints a Markdown table.

Run:  python -m bench.mixers RUN [--decays 0.9995,0.999] [--lrs 0.02,0.05]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from decoder.evaluate import load_scorer, mix_nats_of, splits
from decoder.hardware import autocast
from decoder.knn import knn_nats, knn_target_nats
from decoder.metrics import bits_per_byte
from decoder.online_ngram import OnlineKneserNey, mix_experts
from decoder.protocols import protocol_settings, windows

ENTROPY_EDGES = (1.0, 2.0, 3.0, 4.0)
"""Bins of the model's entropy (nats) for the entropy buckets."""
CACHE_FLOOR = 0.05
"""The unigram cache's probability mass spread uniformly over the vocabulary."""
OGD_FLOOR = 0.02


def gradient_mix(nats_list: list[np.ndarray], buckets: np.ndarray, lr: float) -> np.ndarray:
    """Linear mixture with softmax weights per bucket, an SGD step on -ln p after each token."""
    probs = np.exp(-np.stack(nats_list, axis=1))
    n_experts = probs.shape[1]
    logits = np.zeros((int(buckets.max(initial=0)) + 1, n_experts))
    out = np.empty(len(probs))
    for t, b in enumerate(buckets.tolist()):
        w = np.exp(logits[b] - logits[b].max())
        w = (1 - OGD_FLOOR) * w / w.sum() + OGD_FLOOR / n_experts
        p = float(w @ probs[t])
        out[t] = -np.log(p)
        logits[b] += lr * (w * probs[t] / p - w)
    return out


def cache_nats(tokens: np.ndarray, vocab_size: int, decay: float) -> np.ndarray:
    """-ln p of tokens[1:] under a unigram cache of the tokens before each, weights decay^age."""
    counts, total = np.zeros(vocab_size), 0.0
    out = np.empty(len(tokens) - 1)
    for t in range(1, len(tokens)):
        counts *= decay
        counts[tokens[t - 1]] += 1.0
        total = total * decay + 1.0
        out[t - 1] = -np.log((1 - CACHE_FLOOR) * counts[tokens[t]] / total + CACHE_FLOOR / vocab_size)
    return out


@torch.no_grad()
def model_entropy(model, tokens: np.ndarray, stride: int, device, precision: str) -> np.ndarray:
    """Entropy (nats) of the trained model's distribution at each prediction of tokens[1:], under
    the sliding windows of `stride`."""
    model.eval()
    data = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    out = np.zeros(len(tokens) - 1)
    for w in windows(len(tokens), model.config.context_length, stride):
        with autocast(device, precision):
            hidden, _ = model.hidden(data[None, w.start : w.start + w.length].to(device))
            logits = model.lm_head(hidden).float()[0, w.skip : w.length]
        log_p = torch.log_softmax(logits, -1)
        out[w.start + w.skip : w.start + w.length] = (-(log_p.exp() * log_p).sum(-1)).double().cpu().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder or checkpoint")
    parser.add_argument("--decays", default="0.9995,0.999,0.998")
    parser.add_argument("--lrs", default="0.02,0.05")
    args = parser.parse_args()
    model, tokenizer, config, device, precision = load_scorer(args.run)
    train, val = splits(config.data, tokenizer)
    settings = protocol_settings("knn-mix", model.config.context_length)
    n_bytes = len(tokenizer.decode_bytes(val[1:]))
    base = mix_nats_of(model, val, train, settings, device, precision)
    knn = knn_nats(model, train, val, settings["neighbours"], settings["knn_temperature"], device, precision)
    experts = [base["model_nats"], base["ngram_nats"], knn["nats"]]
    matched = base["matched"]
    rows: list[tuple[str, float, float]] = []

    def row(name: str, make) -> None:
        started = time.perf_counter()
        nats = make()
        rows.append((name, bits_per_byte(float(np.sum(nats)), n_bytes), time.perf_counter() - started))

    row("knn-mix: the protocol's mixture", lambda: mix_experts(experts, matched)[0])
    row("the same on a grid of 1/10", lambda: mix_experts(experts, matched, steps=10)[0])
    for decay in (float(x) for x in args.decays.split(",")):
        row(f"forgetting, decay {decay}", lambda: mix_experts(experts, matched, decay=decay)[0])
    entropy = np.digitize(model_entropy(model, val, settings["segment"], device, precision), ENTROPY_EDGES)
    row("buckets: matched order x model entropy (5 bins)",
        lambda: mix_experts(experts, matched * (len(ENTROPY_EDGES) + 1) + entropy)[0])
    nearest = knn["dists"][:, 0].double().numpy()
    finite = np.isfinite(nearest)
    quartile = np.digitize(nearest, np.quantile(nearest[finite], [0.25, 0.5, 0.75])) if finite.any() else \
        np.zeros(len(nearest), np.int64)
    row("buckets: matched order x nearest kNN distance quartile (not causal)",
        lambda: mix_experts(experts, matched * 4 + quartile)[0])
    orders = {order: OnlineKneserNey(train, model.vocab_size, order).score(val)[0] for order in (2, 6)}
    for order, extra in orders.items():
        row(f"experts: + the n-gram at order {order} (grid 1/10)", lambda: mix_experts([*experts, extra], matched, steps=10)[0])
    cache = cache_nats(np.asarray(val, np.int64), model.vocab_size, 0.999)
    row("experts: + a unigram cache, decay 0.999 (grid 1/10)", lambda: mix_experts([*experts, cache], matched, steps=10)[0])
    targets = torch.from_numpy(np.asarray(val[1:], np.int64))
    hot = knn_target_nats(knn["dists"], torch.where(knn["hits"], targets[:, None], -1), targets, model.vocab_size, 10.0)
    row("experts: + the kNN at temperature 10 (grid 1/10)", lambda: mix_experts([*experts, hot], matched, steps=10)[0])
    for lr in (float(x) for x in args.lrs.split(",")):
        row(f"online gradient mixer, lr {lr}", lambda: gradient_mix(experts, matched, lr))
        row(f"online gradient mixer, lr {lr}, + order 6 and the cache",
            lambda: gradient_mix([*experts, orders[6], cache], matched, lr))
    reference = rows[0][1]
    print(f"# {args.run}: {len(val) - 1} tokens, {n_bytes} bytes; experts alone: model "
          f"{bits_per_byte(float(experts[0].sum()), n_bytes):.4f}, n-gram {bits_per_byte(float(experts[1].sum()), n_bytes):.4f}, "
          f"kNN {bits_per_byte(float(experts[2].sum()), n_bytes):.4f}, cache {bits_per_byte(float(cache.sum()), n_bytes):.4f}")
    print("| mixture | bits per byte | against knn-mix | seconds |\n|---|---:|---:|---:|")
    for name, bpb, seconds in rows:
        print(f"| {name} | {bpb:.4f} | {bpb - reference:+.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
