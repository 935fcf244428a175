"""OpenAI's `logprobs` of a completion choice: each token's text, its log probability, the `k` most
likely tokens at its position, and its offset in the choice's text.

Log probabilities are the log-softmax of the model's own logits, before temperature, penalties,
logit bias and top-k/top-p (vLLM's default, "raw" log probabilities), so they score the text under
the model whatever the sampling. The scheduler records an `Entry` per sampled token (not the end
of text) of a sequence that asks for them; `prompt_entries` scores an echoed prompt from one
forward pass over it; `choice_logprobs` turns entries into the response's object.
"""

from __future__ import annotations

import numpy as np

from decoder.tokenizer import Tokenizer

Entry = tuple[int, "float | None", "list[tuple[int, float]] | None"]
"""(token id, its log probability, the top (id, log probability) pairs), None for a prompt's first token."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., V) logits -> float64 log probabilities (finite for finite logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def entry(logprobs: np.ndarray, token: int, k: int) -> Entry:
    """The entry of `token` sampled from (V,) log probabilities: its own and the `k` highest."""
    k = min(k, logprobs.shape[-1])
    top = np.argpartition(-logprobs, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
    top = top[np.argsort(-logprobs[top], kind="stable")]
    return token, float(logprobs[token]), [(int(i), float(logprobs[i])) for i in top]


def sampled_entry(logits: np.ndarray, token: int, k: int) -> Entry:
    """The entry of `token` sampled from a row of (V,) raw logits."""
    return entry(log_softmax(logits), token, k)


def prompt_entries(logits: np.ndarray, ids: list[int], k: int) -> list[Entry]:
    """Entries of an echoed prompt from its (T, V) logits (position i predicts token i + 1): the
    first token has none, having no context."""
    logprobs = log_softmax(logits[:-1])
    return [(ids[0], None, None)] + [entry(logprobs[i], ids[i + 1], k) for i in range(len(ids) - 1)]


def token_text(tokenizer: Tokenizer, token: int) -> str:
    """One token's text: its bytes as UTF-8 (a partial character as U+FFFD; end-of-text as nothing)."""
    return tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")


def choice_logprobs(tokenizer: Tokenizer, entries: list[Entry], text_length: int) -> dict:
    """The response's logprobs object of a choice whose text is `text_length` characters long: the
    entries of the tokens that start within it (a stop string may have cut the last ones off).
    Offsets add up the tokens' texts, as vLLM's do (they match the choice's text where every token
    is whole UTF-8)."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    offset = 0
    for token, logprob, top in entries:
        if offset >= text_length:
            break
        text = token_text(tokenizer, token)
        tokens.append(text)
        token_logprobs.append(logprob)
        top_logprobs.append(None if top is None else
                            {**{token_text(tokenizer, i): lp for i, lp in top}, text: logprob})
        text_offset.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}
