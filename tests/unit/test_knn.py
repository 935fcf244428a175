"""The knn-mix protocol (`decoder.knn`, `decoder.online_ngram.mix_experts`,
`decoder.evaluate.knn_mix_nats_of`): p_knn is a distribution over the vocabulary, a query never
uses a text key at or after its own position, a repeat is remembered, and the mixture of experts
is proper, causal, `mix_nats` for two and within its regret bound."""

import numpy as np
import pytest
import torch
from tinyconf import tiny_config

from decoder.config import DataConfig
from decoder.data import prepare
from decoder.evaluate import knn_mix_nats_of, score, score_protocols
from decoder.knn import hidden_states, knn_distribution, knn_nats, knn_target_nats, principal_projection, search
from decoder.model import GPT
from decoder.online_ngram import WEIGHT_GRID, mix_experts, mix_nats, simplex_grid
from decoder.protocols import EvalError, protocol_settings

CPU = torch.device("cpu")
T = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, excerpt_text):
    """(tiny GPT with random fixed weights, its tokenizer, the excerpt's training and validation ids)."""
    corpus = tmp_path_factory.mktemp("knn") / "small.txt"
    corpus.write_text(excerpt_text, encoding="utf-8")
    dataset = prepare(DataConfig(corpus=str(corpus), tokenizer="gpt2"))
    torch.manual_seed(0)
    model = GPT(tiny_config(corpus).model, dataset.tokenizer.vocab_size).eval()
    return model, dataset.tokenizer, dataset.train, dataset.val


def test_p_knn_is_a_distribution_over_the_vocabulary(setup):
    model, tokenizer, train, val = setup
    text = val[:120]
    train_keys, queries = hidden_states(model, train, CPU, "fp32"), hidden_states(model, text, CPU, "fp32")
    assert train_keys.shape == (len(train) - 1, model.config.d_model)
    dists, indices = search(queries, train_keys, 16)
    values = torch.from_numpy(np.concatenate([train[1:], text[1:]]).astype(np.int64))[indices]
    p = knn_distribution(dists, values, tokenizer.vocab_size, 30.0)
    assert p.shape == (len(text) - 1, tokenizer.vocab_size) and p.min() > 0
    torch.testing.assert_close(p.sum(1), torch.ones(len(p), dtype=torch.float64), rtol=0, atol=1e-12)
    targets = torch.from_numpy(text[1:].astype(np.int64))
    nats = knn_target_nats(dists, values, targets, tokenizer.vocab_size, 30.0)
    np.testing.assert_allclose(nats, -np.log(p[torch.arange(len(p)), targets].numpy()), rtol=1e-12)
    assert p.max(1).values.min() > 1e-3  # the neighbours' mass is not spread uniformly
    # no usable key at all (no training split, the text's first query): uniform
    empty = knn_distribution(*search(queries[:1], train_keys[:0], 16), 5, 30.0)
    torch.testing.assert_close(empty, torch.full((1, 5), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_a_query_never_uses_a_text_key_at_or_after_its_position(setup, chunk):
    model, _, train, val = setup
    text = val[:90]
    train_keys, queries = hidden_states(model, train[:300], CPU, "fp32"), hidden_states(model, text, CPU, "fp32")
    seen = {}

    def check(position, text_keys):
        seen[position] = text_keys

    # k larger than the training keys, so every usable text key is among the neighbours: a mask
    # one position late would hand query t its own state (distance 0, value its target)
    k = len(train_keys) + len(queries)
    dists, indices = search(queries, train_keys, k, chunk=chunk, check=check)
    assert sorted(seen) == list(range(len(queries)))
    for t, text_keys in seen.items():
        assert sorted(text_keys.tolist()) == list(range(t)), f"query {t} was given text keys {text_keys}"
    assert torch.isinf(dists[0, len(train_keys):]).all()  # the first query has only the training keys
    assert torch.isfinite(dists[-1, :-1]).all() and torch.isinf(dists[-1, -1])  # the last all but its own
    reference = search(queries, train_keys, 8, chunk=256)
    torch.testing.assert_close(search(queries, train_keys, 8, chunk=chunk)[0], reference[0], rtol=1e-4, atol=1e-4)


def test_the_knn_expert_is_causal_and_remembers_a_repeat(setup):
    model, tokenizer, train, val = setup
    half = val[:128]  # a multiple of the stride: the repeat's windows see what the first half's saw
    text = np.concatenate([half, half])
    nats = knn_nats(model, train, text, 64, 5.0, CPU, "fp32")["nats"]
    first, repeat = nats[: len(half) - 1], nats[len(half) - 1 :]
    assert repeat.mean() < 0.5 * first.mean()
    assert first.mean() > 2.0  # no query found its own target as a neighbour
    changed = text.copy()
    changed[200:] = (changed[200:] + 1) % tokenizer.vocab_size
    later = knn_nats(model, train, changed, 64, 5.0, CPU, "fp32")["nats"]
    np.testing.assert_array_equal(later[:199], nats[:199])  # the predictions of tokens 1..199
    assert later[199] != nats[199]


def test_two_experts_with_mix_nats_grid_are_mix_nats():
    rng = np.random.default_rng(0)
    model, ngram, buckets = rng.exponential(3.0, 1500), rng.exponential(2.0, 1500), rng.integers(0, 4, 1500)
    np.testing.assert_allclose(simplex_grid(2, 40)[:, 0], WEIGHT_GRID, rtol=0, atol=1e-15)
    mixed, weights = mix_experts([model, ngram], buckets, steps=40)
    reference, lam = mix_nats(model, ngram, buckets)
    np.testing.assert_allclose(mixed, reference, rtol=1e-9)
    np.testing.assert_allclose(weights[:, 0], lam, rtol=1e-9)


def test_the_mixture_of_proper_experts_is_proper_causal_and_near_the_best_weights():
    rng = np.random.default_rng(1)
    n, vocab = 600, 11
    experts = rng.dirichlet(np.full(vocab, 0.3), size=(3, n))  # (E, N, V): three proper distributions
    experts[2] = 0.7 * experts[2] + 0.3 * experts[0]
    targets = rng.integers(0, vocab, n)
    targets[::2] = experts[2, ::2].argmax(1)  # the third expert predicts half the tokens well
    nats = [-np.log(e[np.arange(n), targets]) for e in experts]
    buckets = rng.integers(0, 2, n)
    mixed, weights = mix_experts(nats, buckets)
    assert len(simplex_grid(3)) == 171 and (weights > 0).all()
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-12)
    mixture = np.einsum("ne,env->nv", weights, experts)
    np.testing.assert_allclose(mixture.sum(1), 1.0, rtol=1e-12)  # a distribution at every token
    np.testing.assert_allclose(mixed, -np.log(mixture[np.arange(n), targets]), rtol=1e-10)
    np.testing.assert_allclose(weights[0], 1 / 3)
    later_mixed, later_weights = mix_experts([x if i else np.r_[x[:300], x[300:] + 4] for i, x in enumerate(nats)],
                                             buckets)
    np.testing.assert_array_equal(later_weights[:301], weights[:301])  # token t's weights saw tokens < t only
    np.testing.assert_array_equal(later_mixed[:300], mixed[:300])
    grid = simplex_grid(3)
    best = sum(min(-np.log(np.exp(-np.stack(nats, 1)[buckets == b]) @ w).sum() for w in grid) for b in range(2))
    assert best <= mixed.sum() <= best + 2 * np.log(len(grid))
    assert weights[-1, 2] > 0.5  # learnt that the third expert is the best
    same, _ = mix_experts([nats[0]] * 3, buckets)
    np.testing.assert_allclose(same, nats[0], rtol=1e-12)  # a mixture of one expert thrice is that expert


def test_knn_mix_settings_and_refusals():
    assert protocol_settings("knn-mix", T) == {"protocol": "knn-mix", "context_length": T, "segment": T // 2,
                                               "rule": "rms", "dynamic_lr": 1e-4, "order": 4, "neighbours": 64,
                                               "knn_temperature": 30.0}
    assert protocol_settings("knn-mix", T, neighbours=8, knn_temperature=5, order=3)["knn_temperature"] == 5.0
    for protocol, options, message in [
            ("static", {"neighbours": 8}, "--neighbours applies to --protocol knn-mix, not static"),
            ("mix", {"knn_temperature": 5.0}, "--knn-temperature applies to --protocol knn-mix, not mix"),
            ("knn-mix", {"neighbours": 0}, "--neighbours=0: must be >= 1"),
            ("knn-mix", {"knn_temperature": 0.0}, "--knn-temperature=0.0: must be a finite number > 0"),
            ("knn-mix", {"knn_temperature": float("inf")}, "--knn-temperature=inf"),
            ("knn-mix", {"lr": 0.1}, "--lr applies to --protocol dynamic, not knn-mix")]:
        with pytest.raises(EvalError, match=message):
            protocol_settings(protocol, T, **options)


def test_knn_mix_scores_a_repeat_below_each_expert_alone(setup):
    model, tokenizer, train, val = setup
    half = val[:128]
    text = np.concatenate([half, half])
    settings = protocol_settings("knn-mix", T, dynamic_lr=0.0)
    arrays = knn_mix_nats_of(model, text, train, settings, CPU, "fp32")
    assert arrays["nats"].shape == arrays["knn_nats"].shape == (len(text) - 1,)
    result = score(model, tokenizer, text, settings, CPU, "fp32", train=train)
    assert result["bits_per_byte"] < min(result["model_bits_per_byte"], result["knn_bits_per_byte"])
    # the n-gram is this random model's best expert; 255 tokens are too few to pay back the grid's
    # regret, but the mixture stays within it of the grid point (0.05, 0.9, 0.05)
    buckets = len(set(arrays["matched"].tolist()))
    bound = arrays["ngram_nats"].sum() - len(text[1:]) * np.log(0.9) + buckets * np.log(len(simplex_grid(3)))
    assert arrays["nats"].sum() <= bound
    assert result["knn_bits_per_byte"] < result["model_bits_per_byte"]
    assert result["bits_per_byte"] == pytest.approx(arrays["nats"].sum() / np.log(2) / result["bytes"])
    assert result["mean_model_weight"] + result["mean_ngram_weight"] + result["mean_knn_weight"] == pytest.approx(1)
    assert min(result[f"{part}_seconds"] for part in ("model", "ngram", "datastore", "search", "mixing")) > 0
    with pytest.raises(EvalError, match="--protocol knn-mix needs the training split"):
        score(model, tokenizer, text, settings, CPU, "fp32")


def test_the_runs_end_shares_the_mixes_arrays_and_reports_each_protocols_own_cost(setup):
    model, tokenizer, train, val = setup
    text = val[:160]
    together = score_protocols(model, tokenizer, train, text, ["mix", "knn-mix"], CPU, "fp32")
    for name in ("mix", "knn-mix"):
        alone = score(model, tokenizer, text, protocol_settings(name, T), CPU, "fp32", train=train)
        assert together[name]["bits_per_byte"] == alone["bits_per_byte"]
    knn_mix = together["knn-mix"]
    assert knn_mix["mix_bits_per_byte"] == together["mix"]["bits_per_byte"]
    parts = sum(knn_mix[f"{part}_seconds"] for part in ("model", "ngram", "datastore", "search", "mixing"))
    assert knn_mix["seconds"] == pytest.approx(parts, abs=1e-9)  # its cost alone, the reused parts included
    assert knn_mix["model_seconds"] == together["mix"]["model_seconds"]  # reused, not recomputed


def test_the_principal_projection_keeps_the_distances_of_states_in_its_subspace():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 2)).Q  # a 2-D subspace of R^8, shifted off the origin
    states = torch.randn(500, 2) * torch.tensor([3.0, 1.0]) @ basis.T + 5.0
    project = principal_projection(states, 2)
    keys = project(states)
    assert keys.shape == (500, 2)
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(torch.cdist(keys, keys, compute_mode=exact), torch.cdist(states, states, compute_mode=exact),
                               rtol=1e-4, atol=1e-4)
    assert keys[:, 0].var() > keys[:, 1].var()  # the leading direction first
    off = project(states + 0.5 * torch.linalg.qr(torch.randn(8, 8)).Q[:, :1].T)  # a move outside is cut down
    assert torch.cdist(off[:1], keys[:1]) < 0.5
