"""The kNN-LM expert of `decoder eval --protocol knn-mix` (Khandelwal et al. 2020, "Generalization
through memorization: nearest neighbor language models"): a datastore of (hidden state, next token)
pairs and a search of it. PyTorch.

**Keys**: the trained model's final hidden state (the input of its output layer, `GPT.hidden`,
stored in float32) at every prediction position, projected on the KEY_DIMS (d_model // 2)
principal directions of the training split's states (centred by their mean; fitted on the training
split alone, so nothing of the text enters it). The value of the key at position i is token i + 1.
The datastore holds every position of the training split, computed under the training loop's
consecutive windows (stride = context), then the scored text's own positions (the queries).

**Queries**: the same model's hidden state at each position of the text, under the sliding windows
of stride context // 2 (`decoder.protocols.windows`: each position once, each seeing at least half a
window), projected the same way. The weights are the trained ones throughout (dynamic evaluation's
updates are not seen here), so a query depends on the tokens up to its position only.

**Cost**: the datastore's consecutive windows and the half-width keys are choices for speed. On the
main job's model (one thread, AMD EPYC Zen 5) they cut the datastore from 23 s to 10 s and the
search by a quarter or more, and the knn-mix figure moved by 0.0003 bpb (1.5340 with full-width
keys from sliding windows; each change measured alone: 1.5343 and 1.5341).

**Causality**: the query at text position t (predicting token t + 1) may use the text key at
position j only when j < t: that key's value, token j + 1, has then been scored. Key t itself (the
query's own state, at distance 0, whose value is the token being predicted) is excluded.

**The distribution**: over the k keys nearest the query in squared L2 distance d,

    p_knn(w) = (1 - floor) * sum_{neighbours with value w} softmax(-d / temperature) + floor / V

so p_knn sums to 1 over the vocabulary and no token gets 0 (a real code length, and a safe expert
to mix). A query with no usable key (an empty training split, the text's first position) gives the
uniform distribution.

The search is exact: it runs in chunks of QUERY_CHUNK queries, one matmul against the training
keys and one against the text keys they may use (memory chunk x keys floats), each followed by
`torch.topk`, and the two lists of neighbours merged.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from decoder.hardware import autocast
from decoder.model import GPT
from decoder.protocols import windows

KNN_FLOOR = 1e-3
"""The probability mass spread uniformly over the vocabulary (floor / V each): no token gets 0."""
KEY_DIMS = 0.5
"""The keys' width as a share of d_model (the principal directions kept)."""
QUERY_CHUNK = 256
"""Queries per search matmul: 256 x ~270k keys (the main job's 240,603 training keys and its
validation text's) is ~270 MB of float32."""

Check = Callable[[int, np.ndarray], None]
"""Called with (query position, the text positions of the keys it was given) for each query: a
test hook."""


@torch.no_grad()
def hidden_states(model: GPT, tokens: np.ndarray, device: torch.device, precision: str,
                  batch: int = 64, stride: int | None = None) -> torch.Tensor:
    """(N - 1, d_model) float32 on the CPU: row i the final hidden state predicting token i + 1,
    under the sliding windows of `stride` (default context // 2), the weights as they are."""
    was_training = model.training
    model.eval()
    T = model.config.context_length
    plan = windows(len(tokens), T, stride or max(1, T // 2))
    data = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    out = torch.zeros(len(tokens) - 1, model.config.d_model)
    for i in range(0, len(plan), batch):
        group = plan[i : i + batch]
        x = torch.zeros(len(group), max(w.length for w in group), dtype=torch.long)
        for j, w in enumerate(group):
            x[j, : w.length] = data[w.start : w.start + w.length]
        with autocast(device, precision):
            hidden, _ = model.hidden(x.to(device))  # (B, L, C)
        hidden = hidden.float().cpu()
        for j, w in enumerate(group):
            out[w.start + w.skip : w.start + w.length] = hidden[j, w.skip : w.length]
    model.train(was_training)
    return out


def _nearest(q: torch.Tensor, keys: torch.Tensor, key_norms: torch.Tensor, k: int,
             usable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest |key|^2 - 2 q.key of each query row (|q|^2 left out: it ranks nothing) and
    their key indices; `usable` (C, n) masks keys out where False."""
    d = torch.addmm(key_norms[None, :], q, keys.T, alpha=-2)  # (C, n) in one pass: no temporaries
    if usable is not None:
        d.masked_fill_(~usable, float("inf"))
    return torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)


def principal_projection(states: torch.Tensor, dims: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> (x - mean) @ the `dims` leading eigenvectors of the covariance of `states` (float64
    eigendecomposition: deterministic), fitted on `states` only."""
    mean = states.mean(0)
    centred = (states - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = vectors[:, -dims:].flip(1).float()
    return lambda x: (x - mean) @ basis


def search(queries: torch.Tensor, train_keys: torch.Tensor, k: int, chunk: int = QUERY_CHUNK,
           check: Check | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared L2 distances (Q, k), key indices (Q, k)) of the k nearest usable keys of each
    query, nearest first. The keys are `train_keys` then the queries themselves (the text's own
    positions, index len(train_keys) + j for text position j); query t may use text keys j < t
    only. Where fewer than k keys are usable the rest are at distance inf. Each chunk takes the
    k nearest training keys and the k nearest usable text keys, then the k nearest of those."""
    n_train, n_text = len(train_keys), len(queries)
    train_norms, text_norms = (train_keys * train_keys).sum(1), (queries * queries).sum(1)
    k_out = min(k, n_train + n_text)
    dists, indices = [], []
    for s in range(0, n_text, chunk):
        q = queries[s : s + chunk]  # (C, d)
        found = [_nearest(q, train_keys, train_norms, k_out)] if n_train else []
        usable = s + len(q) - 1  # the last query of the chunk may use text keys < s + C - 1
        if usable > 0:
            position = torch.arange(s, s + len(q))[:, None]
            dist, index = _nearest(q, queries[:usable], text_norms[:usable], k_out,
                                   torch.arange(usable)[None, :] < position)
            found.append((dist, index + n_train))
        if found:
            dist, index = torch.cat([d for d, _ in found], 1), torch.cat([i for _, i in found], 1)
            dist, pick = torch.topk(dist, min(k_out, dist.shape[1]), dim=1, largest=False)
            dist, index = dist + text_norms[s : s + len(q), None], index.gather(1, pick)
        else:
            dist, index = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
        pad = k_out - dist.shape[1]
        dists.append(torch.nn.functional.pad(dist, (0, pad), value=float("inf")))
        indices.append(torch.nn.functional.pad(index, (0, pad), value=0))
        if check is not None:
            for row in range(len(q)):
                hit = index[row][torch.isfinite(dist[row])]
                check(s + row, (hit[hit >= n_train] - n_train).numpy())
    return torch.cat(dists), torch.cat(indices)


def neighbour_weights(dists: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(-d / temperature) over each row's finite distances (float64; a row with none: 0)."""
    logits = -dists.double() / temperature
    peak = logits.max(dim=1, keepdim=True).values
    weights = torch.exp(logits - torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)))
    total = weights.sum(1, keepdim=True)
    return torch.where(total > 0, weights / torch.where(total > 0, total, torch.ones_like(total)), weights)


def knn_distribution(dists: torch.Tensor, values: torch.Tensor, vocab_size: int, temperature: float,
                     floor: float = KNN_FLOOR) -> torch.Tensor:
    """p_knn over the vocabulary (Q, V) of neighbours at `dists` with next tokens `values` (Q, k);
    a row without usable neighbours is uniform."""
    weights = neighbour_weights(dists, temperature)
    p = torch.zeros(len(dists), vocab_size, dtype=torch.float64).scatter_add_(1, values, weights)
    found = weights.sum(1, keepdim=True) > 0
    return torch.where(found, (1 - floor) * p + floor / vocab_size, torch.full_like(p, 1.0 / vocab_size))


def knn_target_nats(dists: torch.Tensor, values: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                    temperature: float, floor: float = KNN_FLOOR) -> np.ndarray:
    """-ln p_knn(target) of each row (`knn_distribution` at the target, without the (Q, V) array)."""
    weights = neighbour_weights(dists, temperature)
    hit = (weights * (values == targets[:, None])).sum(1)
    found = weights.sum(1) > 0
    p = torch.where(found, (1 - floor) * hit + floor / vocab_size, torch.full_like(hit, 1.0 / vocab_size))
    return (-torch.log(p)).numpy()


def knn_nats(model: GPT, train: np.ndarray, tokens: np.ndarray, neighbours: int, temperature: float,
             device: torch.device, precision: str) -> dict:
    """The kNN expert over the predictions of tokens[1:]: "nats" (-ln p_knn of each token),
    "dists" (Q, k) the squared distances of each query's neighbours, nearest first, "hits" (Q, k)
    whether each neighbour's value is the token that followed, "datastore_seconds" (the training
    split's keys), "search_seconds" (the text's states, the search and p_knn)."""
    started = time.perf_counter()
    T, dims = model.config.context_length, max(1, round(KEY_DIMS * model.config.d_model))
    train_keys = hidden_states(model, train, device, precision, stride=T) if len(train) >= 2 else \
        torch.zeros(0, model.config.d_model)
    project = principal_projection(train_keys, dims) if len(train_keys) > dims else lambda x: x
    train_keys = project(train_keys)
    datastore_seconds, started = time.perf_counter() - started, time.perf_counter()
    queries = project(hidden_states(model, tokens, device, precision))
    dists, indices = search(queries, train_keys, neighbours)
    values = torch.from_numpy(np.concatenate([np.asarray(train[1:], np.int64), np.asarray(tokens[1:], np.int64)]))
    targets = torch.from_numpy(np.asarray(tokens[1:], np.int64))
    nats = knn_target_nats(dists, values[indices], targets, model.vocab_size, temperature)
    return {"nats": nats, "dists": dists, "hits": values[indices] == targets[:, None],
            "datastore_seconds": datastore_seconds, "search_seconds": time.perf_counter() - started}
