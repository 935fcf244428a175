"""Next-token selection on numpy logits: greedy, temperature, top-k, top-p, and the logit
adjustments (CTRL's repetition penalty, a ban on repeated n-grams, OpenAI's presence and frequency
penalties and logit bias).

Shared by the PyTorch generator, the onnxruntime runtime and the server, so that all pick the same
token from the same logits with the same seed. Numerically safe for every accepted parameter:
adjusted logits are clipped to finite float64 values (banned tokens are -inf), and temperature
divides logits only after each row's maximum is subtracted, so no temperature or penalty, however
small or large, turns a probability into NaN or inf. Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from decoder.errors import UserError


LOGIT_LIMIT = float(np.finfo(np.float64).max)
"""Adjusted logits are clipped to [-LOGIT_LIMIT, LOGIT_LIMIT] (only banned tokens are -inf)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. temperature 0 (or greedy=True) means argmax.

    The logit adjustments apply to greedy decoding too. The repetition controls look at the whole
    sequence, prompt included. repetition_penalty (CTRL, Keskar et al. 2019): the logit of every
    token already in the sequence is divided by it when positive and multiplied by it when negative
    (once per token, however often it occurs); 1 is off, above 1 discourages repetition.
    no_repeat_ngram_size n: a token that would complete an n-gram already in the sequence is never
    picked (unless that bans every token); 0 is off.
    presence_penalty and frequency_penalty (OpenAI's definitions) look at the generated tokens
    only: logit[j] -= presence_penalty * (count[j] > 0) + frequency_penalty * count[j], where
    count[j] is how often token j was generated so far; 0 is off, positive discourages repetition.
    logit_bias: (token id, bias) pairs added to those tokens' logits (OpenAI: -100 all but bans a
    token, 100 all but forces it)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.temperature < float("inf"):  # also rejects NaN
            raise ValueError(f"temperature={self.temperature}: must be a finite number >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 keeps all tokens)")
        if not 0.0 < self.top_p <= 1.0:  # also rejects NaN
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if not 0.0 < self.repetition_penalty < float("inf"):
            raise ValueError(f"repetition_penalty={self.repetition_penalty}: must be a number > 0 (1 is off)")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size={self.no_repeat_ngram_size}: must be >= 0 (0 is off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not abs(getattr(self, name)) < float("inf"):
                raise ValueError(f"{name}={getattr(self, name)}: must be a finite number (0 is off)")
        for token, bias in self.logit_bias:
            if not (isinstance(token, int) and token >= 0 and abs(bias) < float("inf")):
                raise ValueError(f"logit_bias ({token}, {bias}): must pair a token id >= 0 with a finite number")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0

    @property
    def controls_repetition(self) -> bool:
        """Whether the logits depend on the sequence so far (so the sampler needs its history)."""
        return (self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @property
    def adjusts_logits(self) -> bool:
        """Whether any adjustment applies (otherwise greedy decoding is a plain argmax)."""
        return self.controls_repetition or bool(self.logit_bias)


def banned_by_ngrams(tokens: np.ndarray, n: int) -> np.ndarray:
    """Tokens that would complete an n-gram already in `tokens` (1-D): the tokens that followed
    each earlier occurrence of the last n-1 tokens (for n = 1: every token so far)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if n < 1 or len(tokens) < n:
        return np.zeros(0, dtype=np.int64)
    grams = np.lib.stride_tricks.sliding_window_view(tokens, n)  # (L-n+1, n)
    prefix = tokens[len(tokens) - n + 1:]
    return np.unique(grams[(grams[:, :-1] == prefix).all(axis=1), -1])


History = Sequence[Sequence[int]] | np.ndarray
"""Token ids per row (rows may differ in length)."""


def adjusted_logits(logits: np.ndarray, params: SamplingParams, history: History,
                    generated: History | None = None) -> np.ndarray:
    """(B, V) float64 logits after every adjustment of `params`, in this order: repetition
    penalty (over `history`, each row's tokens so far, prompt included), presence and frequency
    penalties (over `generated`, each row's generated tokens only: None means none yet), logit
    bias, a clip to finite values (after each step that can overflow), and the n-gram ban (-inf)
    over `history`."""
    z = np.array(logits, dtype=np.float64)
    generated = [()] * z.shape[0] if generated is None else generated
    if not len(history) == len(generated) == z.shape[0]:
        raise ValueError(f"history and generated have {len(history)} and {len(generated)} rows for {z.shape[0]} "
                         "rows of logits")
    bias = np.zeros(z.shape[-1])
    for token, value in params.logit_bias:
        if token >= z.shape[-1]:
            raise ValueError(f"logit_bias names token {token}; the vocabulary has {z.shape[-1]} tokens")
        bias[token] += value
    with np.errstate(over="ignore", invalid="ignore"):
        for row, tokens, new in zip(z, history, generated):
            tokens = np.asarray(tokens, dtype=np.int64)
            if params.repetition_penalty != 1.0 and tokens.size:
                seen = np.unique(tokens)
                row[seen] = np.where(row[seen] > 0, row[seen] / params.repetition_penalty,
                                     row[seen] * params.repetition_penalty)
                np.clip(row, -LOGIT_LIMIT, LOGIT_LIMIT, out=row)  # finite, so the penalties below cannot make inf - inf
            if (params.presence_penalty or params.frequency_penalty) and len(new):
                counts = np.bincount(np.asarray(new, dtype=np.int64), minlength=z.shape[-1])
                row -= params.presence_penalty * (counts > 0) + params.frequency_penalty * counts
        z += bias
        np.clip(z, -LOGIT_LIMIT, LOGIT_LIMIT, out=z)
    for row, tokens in zip(z, history):
        banned = banned_by_ngrams(tokens, params.no_repeat_ngram_size)
        if banned.size < row.shape[0]:  # a ban of every token would leave nothing to pick: skip it
            row[banned] = -np.inf
    return z


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """(B, V) logits -> (B, V) float64 probabilities after temperature, top-k and top-p.

    Each row's maximum is subtracted before the temperature divides (every value <= 0, the top
    one 0), so a tiny temperature sends the others to -inf (probability 0), never to inf - inf."""
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):
        z = (z - z.max(axis=-1, keepdims=True)) / params.temperature
    V = z.shape[-1]
    if 0 < params.top_k < V:
        kth = np.partition(z, V - params.top_k, axis=-1)[:, V - params.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        # Keep a token if the mass strictly before it is below top_p (so the top token always stays).
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < params.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


Generators = np.random.Generator | Sequence[np.random.Generator]
"""One generator for the whole batch (one draw per row, in row order), or one per row."""


def _uniforms(rng: Generators, rows: int) -> np.ndarray:
    if isinstance(rng, np.random.Generator):
        return rng.random(rows)
    if len(rng) != rows:
        raise ValueError(f"{len(rng)} generators for {rows} rows: give one generator, or one per row")
    return np.array([g.random() for g in rng])


def next_tokens(
    logits: np.ndarray,
    params: SamplingParams,
    rng: Generators,
    history: History | None = None,
    generated: History | None = None,
) -> np.ndarray:
    """Pick one token per row of (B, V) logits; returns int64 (B,).

    Sampling draws one uniform number per row and inverts the cumulative distribution, so a row's
    choice depends only on its logits and its generator's state: with one generator per row (a
    server's per-request seed) a row picks the same token whatever else shares the batch.
    history: each row's tokens so far (prompt included), needed when params control repetition;
    generated: each row's generated tokens (the presence and frequency penalties' counts; None: none yet).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, vocab), got shape {logits.shape}")
    if params.adjusts_logits:
        if history is None and params.controls_repetition:
            raise ValueError("repetition_penalty / no_repeat_ngram_size / presence_penalty / frequency_penalty need "
                             "each row's tokens so far (history)")
        logits = adjusted_logits(logits, params, [()] * logits.shape[0] if history is None else history, generated)
    if params.is_greedy:
        return logits.argmax(axis=-1).astype(np.int64)
    p = probabilities(logits, params)
    u = _uniforms(rng, p.shape[0])[:, None]
    cdf = np.cumsum(p, axis=-1)
    choice = (cdf < u * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(choice, p.shape[-1] - 1).astype(np.int64)


Forward = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]
"""An engine step: (B, T) int64 ids and the cache from the previous call (None at first) ->
((B, V) logits of the last position, the new cache)."""


class GenerationError(UserError, ValueError):
    """A prompt or generation length a user must fix."""


def check_prompt(prompt: str | Sequence[int] | np.ndarray, where: str = "prompt") -> None:
    """Refuse an empty prompt: text, or token ids (T,) or (B, T). The one home of this rule (the
    CLI checks the text before it loads a model; `check_generation_args` checks the ids)."""
    if (len(prompt) if isinstance(prompt, str) else np.size(prompt)) == 0:
        raise GenerationError(f"{where} is empty: give at least one character of text")


def check_generation_args(prompt_ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
    """(B, T) int64 prompt ids from (T,) or (B, T) ones, after refusing an empty prompt or a
    length below 1."""
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    if prompt_ids.ndim == 1:
        prompt_ids = prompt_ids[None, :]
    if prompt_ids.ndim != 2:
        raise ValueError(f"prompt ids must be (T,) or (B, T), got shape {prompt_ids.shape}")
    check_prompt(prompt_ids)
    if max_new_tokens <= 0:
        raise GenerationError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    return prompt_ids


def decode_loop(
    forward: Forward,
    prompt_ids: np.ndarray,
    *,
    context_length: int,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int | None = 0,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> Iterator[np.ndarray]:
    """Yield (B,) new token ids, one step at a time, for equal-length prompts (B, T).

    With the cache: the prompt (its last context_length tokens) is run once, then one token per
    step. When the cache is full, the window slides: the last context_length // 2 tokens are run
    again as a fresh prompt (positions are absolute, so cached keys cannot simply be shifted), and
    decoding continues from there. Without the cache (the reference notebook's way) every step
    re-runs the last context_length tokens. Rows stop at <|endoftext|> (later tokens of a finished
    row are reported as eot_id); the loop ends when every row has stopped or after max_new_tokens.
    Every row samples from its own generator seeded with `seed`, so a row's text is the text its
    prompt gets alone. The repetition controls see the whole prompt, even beyond the window; the
    presence and frequency penalties count the generated tokens.
    """
    history = check_generation_args(prompt_ids, max_new_tokens)
    prompt_length = history.shape[1]
    ids = history[:, -context_length:]
    rngs = [np.random.default_rng(seed) for _ in range(ids.shape[0])]
    done = np.zeros(ids.shape[0], dtype=bool)
    logits, past = forward(ids, None)
    cached = ids.shape[1]
    for step in range(max_new_tokens):
        token = next_tokens(logits, params, rngs, history, history[:, prompt_length:])
        if eot_id is not None:
            token = np.where(done, eot_id, token)
            done |= token == eot_id
        yield token
        if done.all() or step == max_new_tokens - 1:
            return
        ids = np.concatenate([ids, token[:, None]], axis=1)
        history = np.concatenate([history, token[:, None]], axis=1)
        if not use_cache:
            logits, past = forward(ids[:, -context_length:], None)
        elif cached + 1 > context_length:
            ids = ids[:, -max(1, context_length // 2):]
            logits, past = forward(ids, None)
            cached = ids.shape[1]
        else:
            logits, past = forward(token[:, None], past)
            cached += 1
