"""An online (adaptive) interpolated Kneser-Ney n-gram model, and the causal mixture of its
predictions with a neural model's: the count-based half of `decoder eval --protocol mix`.
Torch-free.

**The n-gram** (Chen & Goodman's interpolated Kneser-Ney with modified discounts, orders 1..n):

    P_k(w | h) = (c_k(h w) - D_k(c_k(h w)) + gamma_k(h) P_{k-1}(w | h')) / c_k(h)
    gamma_k(h) = D_k1 N1_k(h) + D_k2 N2_k(h) + D_k3 N3+_k(h)

h is the k-1 most recent tokens, h' drops the oldest of them, c_k(h) = sum_w c_k(h w), Nj_k(h)
counts the w with c_k(h w) = j (3+: at least 3) and D_k(0) = 0. The highest order counts raw
n-grams, every lower order continuation counts (c_k(g) = how many distinct tokens have preceded the
k-gram g: Kneser-Ney's "in how many contexts does it appear"). A history with c_k(h) = 0 leaves
P_k = P_{k-1}; P_0 is uniform over the vocabulary. With 0 < D_kj <= j every P_k(. | h) sums to 1
over the vocabulary (the discounts taken from the seen words are exactly gamma), so -log P is a
real code length. The discounts are Chen & Goodman's estimates from the counts-of-counts of the
*training* counts (Y = n1 / (n1 + 2 n2), D_kj = j - (j + 1) Y n_{j+1} / n_j), clipped into
[0.05, j], and stay fixed while scoring.

**Online**: the counts start as the training split's and `score` walks the text in order: token t
is predicted from the counts of the training split and of text tokens 0..t-1 only, and only then
is its n-gram added (the raw count of the n-gram, and where that n-gram is new, the continuation
count of its suffix one order down, and so on down while the suffix is new), as an adaptive
compressor learns. The first n-2 tokens, whose n-gram would reach before the text, are predicted
from the shorter history there is and not added.

**The mixture** (`mix_nats`): p = lam p_model + (1 - lam) p_ngram of each token, lam the posterior
mean of a Bayesian mixture over a grid of fixed weights (a discretised uniform prior on lam; each
grid weight's posterior is the prior times its mixture's probability of every token already
scored, so lam is causal and never tuned on the token it codes, and the mixture's total code
length is within log(grid size) nats of the best fixed grid weight's in hindsight). One posterior
per bucket: the bucket of a token is the longest n-gram order whose history the counts had seen
(how much the n-gram knows there). A mixture of two proper distributions with a weight fixed before
the token is seen is a proper distribution, so the mixed bits are a real code length as well.
`mix_experts` is the same mixture of any number of experts, its grid the weight vectors of a
simplex (the knn-mix protocol's three: the model, the n-gram and a kNN-LM, `decoder.knn`).
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from decoder.baseline import training_ids

MAX_ORDER = 8
MIN_DISCOUNT = 0.05
WEIGHT_GRID = np.linspace(0.0, 1.0, 41)[1:-1]
"""lam in 0.025 .. 0.975: the grid of the mixture's Bayesian posterior (both ends left out, so
neither expert is ever given all the weight)."""
SIMPLEX_STEPS = 20
"""`mix_experts`'s grid: weights in multiples of 1/20, every expert's > 0 (171 points for three)."""


def _discounts(counts: Counter) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the counts-of-counts of one order, each in [0.05, j]."""
    n = Counter(c for c in counts.values() if c <= 4)
    n1, n2, n3, n4 = (n.get(j, 0) for j in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return 0.5, 1.0, 1.5
    y = n1 / (n1 + 2 * n2)
    raw = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / max(n3, 1))
    return tuple(float(min(max(d, MIN_DISCOUNT), j)) for j, d in enumerate(raw, start=1))


class OnlineKneserNey:
    """Interpolated modified Kneser-Ney over ids 0..vocab_size-1, counts from `train` and then
    from each scored token (see the module docstring).

    levels[k - 1] maps a history (tuple of k - 1 ids, oldest first) to [c_k(h), N1, N2, N3+,
    {w: c_k(h w)}]."""

    def __init__(self, train: np.ndarray, vocab_size: int, order: int = 4) -> None:
        train = training_ids(train, vocab_size, order, MAX_ORDER)
        self.order, self.vocab_size = order, vocab_size
        ids = train.tolist()
        grams = Counter(zip(*(ids[j : len(ids) - order + 1 + j] for j in range(order))))
        per_order = [grams]
        for k in range(order - 1, 0, -1):  # continuation counts: distinct tokens before each k-gram
            longer = zip(*(ids[j : len(ids) - k + j] for j in range(k + 1))) if k + 1 < order else grams
            per_order.append(Counter(g[1:] for g in set(longer)))
        per_order.reverse()  # per_order[k - 1]: the counts of order k
        self.discounts = [(0.0, *_discounts(c)) for c in per_order]
        self.levels: list[dict] = []
        for counts in per_order:
            level: dict = {}
            for gram, c in counts.items():
                entry = level.get(gram[:-1])
                if entry is None:
                    entry = level[gram[:-1]] = [0, 0, 0, 0, {}]
                entry[4][gram[-1]] = c
                entry[0] += c
                entry[min(c, 3)] += 1
            self.levels.append(level)

    def probability(self, history: tuple, word: int) -> tuple[float, int]:
        """(P(word | history), the longest order whose history the counts have seen, 0 if none);
        `history` holds up to order - 1 ids, oldest first (only the last order - 1 are used)."""
        p, matched, n = 1.0 / self.vocab_size, 0, len(history)
        for k in range(1, min(self.order, n + 1) + 1):
            entry = self.levels[k - 1].get(history[n - k + 1 :] if k > 1 else ())
            if entry is None:
                continue
            d = self.discounts[k - 1]
            c = entry[4].get(word, 0)
            p = (c - d[min(c, 3)] + (d[1] * entry[1] + d[2] * entry[2] + d[3] * entry[3]) * p) / entry[0]
            matched = k
        return p, matched

    def distribution(self, history: tuple) -> np.ndarray:
        """P(w | history) for every id w, as `probability` computes each (vectorised)."""
        p, n = np.full(self.vocab_size, 1.0 / self.vocab_size), len(history)
        for k in range(1, min(self.order, n + 1) + 1):
            entry = self.levels[k - 1].get(history[n - k + 1 :] if k > 1 else ())
            if entry is None:
                continue
            d = np.asarray(self.discounts[k - 1])
            words = np.fromiter(entry[4].keys(), dtype=np.int64, count=len(entry[4]))
            counts = np.fromiter(entry[4].values(), dtype=np.float64, count=len(entry[4]))
            p = (d[1] * entry[1] + d[2] * entry[2] + d[3] * entry[3]) * p
            p[words] += counts - d[np.minimum(counts, 3).astype(np.int64)]
            p /= entry[0]
        return p

    def update(self, gram: tuple) -> None:
        """Count the n-gram `gram` (order ids, oldest first): its raw count at the highest order,
        then the continuation count of each suffix one order down while the one above was new."""
        for k in range(self.order, 0, -1):
            history, word = gram[self.order - k : -1], gram[-1]
            level = self.levels[k - 1]
            entry = level.get(history)
            if entry is None:
                entry = level[history] = [0, 0, 0, 0, {}]
            c = entry[4].get(word, 0)
            entry[4][word] = c + 1
            entry[0] += 1
            if c < 3:
                entry[c + 1] += 1
                if c > 0:
                    entry[c] -= 1
            if c > 0:  # not a new type at this order: no new continuation below
                return

    def score(self, tokens: np.ndarray, check=None) -> tuple[np.ndarray, np.ndarray]:
        """Online: (-ln P of tokens 1..N-1, each predicted from the counts before it and then
        counted; the matched order of each). `check(t, history)`, if given, is called before token
        t is predicted (a test hook: the distribution there)."""
        ids = np.asarray(tokens, dtype=np.int64).tolist()
        n_ctx = self.order - 1
        nats = np.empty(len(ids) - 1)
        matched = np.empty(len(ids) - 1, dtype=np.int64)
        for t in range(1, len(ids)):
            history = tuple(ids[max(t - n_ctx, 0) : t])
            if check is not None:
                check(t, history)
            p, matched[t - 1] = self.probability(history, ids[t])
            nats[t - 1] = -np.log(p)
            if t >= n_ctx:
                self.update((*history, ids[t]) if n_ctx else (ids[t],))
        return nats, matched


def mix_nats(model_nats: np.ndarray, ngram_nats: np.ndarray, buckets: np.ndarray | None = None,
             fixed_weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(-ln (lam p_model + (1 - lam) p_ngram) of each token, the lam used for each), lam per
    token from the Bayesian posterior over WEIGHT_GRID of its bucket (see the module docstring),
    or `fixed_weight` for every token (a test hook: 1.0 is the model alone)."""
    model_nats, ngram_nats = np.asarray(model_nats, np.float64), np.asarray(ngram_nats, np.float64)
    if fixed_weight is not None:
        lam = np.full(len(model_nats), float(fixed_weight))
        with np.errstate(divide="ignore"):
            mixed = -np.logaddexp(np.log(lam) - model_nats, np.log1p(-lam) - ngram_nats)
        return mixed, lam
    buckets = np.zeros(len(model_nats), dtype=np.int64) if buckets is None else np.asarray(buckets, np.int64)
    log_w, log_1w = np.log(WEIGHT_GRID), np.log1p(-WEIGHT_GRID)
    posterior = np.zeros((int(buckets.max(initial=0)) + 1, len(WEIGHT_GRID)))  # log, unnormalised
    mixed, lam = np.empty(len(model_nats)), np.empty(len(model_nats))
    for t, (b, m, g) in enumerate(zip(buckets.tolist(), (-model_nats).tolist(), (-ngram_nats).tolist())):
        post = posterior[b]
        weights = np.exp(post - post.max())
        lam[t] = float(weights @ WEIGHT_GRID) / float(weights.sum())
        mixed[t] = -np.logaddexp(np.log(lam[t]) + m, np.log1p(-lam[t]) + g)
        post += np.logaddexp(log_w + m, log_1w + g)
    return mixed, lam


def simplex_grid(n_experts: int, steps: int = SIMPLEX_STEPS) -> np.ndarray:
    """(G, n_experts): every weight vector of multiples of 1 / steps summing to 1, each weight > 0."""
    points = [p for p in itertools.product(range(1, steps), repeat=n_experts - 1) if sum(p) < steps]
    return np.array([(*p, steps - sum(p)) for p in points], dtype=np.float64) / steps


def mix_experts(nats_list: list[np.ndarray], buckets: np.ndarray | None = None,
                steps: int = SIMPLEX_STEPS, decay: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(-ln sum_e w_e p_e of each token, the weights (N, E) used for each): `mix_nats` for any
    number of experts, w the posterior mean of a Bayesian mixture over `simplex_grid` (uniform
    prior; one posterior per bucket, updated after each token), so fixed before the token is seen.
    Two experts with steps 40 are `mix_nats`'s grid, so `mix_nats`'s mixture. `decay` < 1 raises
    the bucket's posterior to that power before each update (a discounted mixture, which can track
    a drifting weight; `python -m bench.mixers` measures it, the protocols keep 1)."""
    log_p = -np.stack([np.asarray(n, np.float64) for n in nats_list], axis=1)  # (N, E)
    grid = simplex_grid(log_p.shape[1], steps)
    log_grid = np.log(grid)
    buckets = np.zeros(len(log_p), dtype=np.int64) if buckets is None else np.asarray(buckets, np.int64)
    posterior = np.zeros((int(buckets.max(initial=0)) + 1, len(grid)))  # log, unnormalised
    mixed, weights = np.empty(len(log_p)), np.empty(log_p.shape)
    for t, b in enumerate(buckets.tolist()):
        post = posterior[b]
        belief = np.exp(post - post.max())
        weights[t] = belief @ grid / belief.sum()
        mixed[t] = -np.logaddexp.reduce(np.log(weights[t]) + log_p[t])
        if decay != 1.0:
            post *= decay
        post += np.logaddexp.reduce(log_grid + log_p[t], axis=1)
    return mixed, weights
