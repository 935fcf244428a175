"""OpenAI's `logprobs` of a completion choice: each token's text, its log probability, the `k` most
likely tokens at its position, and its offset in the choice's text.

Log probabilities are the log-softmax of the model's own logits, before temperature, penalties,
logit bias and top-k/top-p (vLLM's default, "raw" log probabilities), so they score the text under
the model whatever the sampling. The scheduler records an `Entry` per sampled token (not the end
of text) of a sequence that asks for them; `prompt_entries` scores an echoed prompt from one
forward pass over it; a `Cursor` hands a choice's entries out as its text arrives (all at once,
or chunk by chunk in a stream) and `completion_logprobs` / `chat_logprobs` word them. A choice that
ends at the end of text gets that token's entry last (`eot_entry`, named EOT_TEXT), as OpenAI's do:
lm-evaluation-harness drops the last entry of an echoed prompt as the generated token's.
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


EOT_TEXT = "<|endoftext|>"
"""How logprobs name the end-of-text token (it adds nothing to the text, so its offset does not advance)."""


def token_name(tokenizer: Tokenizer, token: int) -> str:
    """A token as logprobs name it: its text, or EOT_TEXT for the end of text."""
    return EOT_TEXT if token == tokenizer.eot_id else token_text(tokenizer, token)


def eot_entry(seq: object, eot_id: int) -> Entry | None:
    """The entry of the end of text that ended `seq` (a `decoder.serve.scheduler.Sequence` that
    records logprobs), from the logits it was sampled from; None if the sequence did not end there."""
    sampled = len(seq.tokens) - len(seq.prompt_ids)  # the end of text is never appended
    if seq.top_logprobs is None or seq.final_logits is None or seq.generated <= sampled:
        return None
    return sampled_entry(seq.final_logits, eot_id, seq.top_logprobs)


Scored = list[tuple[Entry, int]]
"""Entries with the offset of each token in the choice's text."""


class Cursor:
    """Hands out a choice's entries as its text arrives: each entry once, when the text reaches the
    token it scores (so a stop string that cuts the text cuts its tokens too). Offsets add up the
    tokens' texts, as vLLM's do (they match the choice's text where every token is whole UTF-8)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sent, self.offset, self.length = 0, 0, 0

    def take(self, entries: list[Entry], text: str, last: Entry | None = None) -> Scored:
        """The entries whose tokens start within the text so far, extended by `text`; `last` (the end
        of text that ended the choice) comes after them."""
        self.length += len(text)
        out: Scored = []
        while self.sent < len(entries) and self.offset < self.length:
            token = entries[self.sent][0]
            out.append((entries[self.sent], self.offset))
            self.offset += len(token_text(self.tokenizer, token))
            self.sent += 1
        if last is not None:
            out.append((last, self.offset))
        return out

    def take_all(self, entries: list[Entry]) -> Scored:
        """All of an echoed prompt's entries (before the generated ones, which `take` hands out)."""
        out: Scored = []
        for entry_ in entries:
            out.append((entry_, self.offset))
            self.offset += len(token_text(self.tokenizer, entry_[0]))
        self.length = self.offset
        return out


def completion_logprobs(tokenizer: Tokenizer, scored: Scored) -> dict:
    """OpenAI's completions logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    tops = [None if top is None else {**{token_name(tokenizer, i): lp for i, lp in top},
                                      token_name(tokenizer, token): logprob}
            for (token, logprob, top), _ in scored]
    return {"tokens": [token_name(tokenizer, token) for (token, _, _), _ in scored],
            "token_logprobs": [logprob for (_, logprob, _), _ in scored], "top_logprobs": tops,
            "text_offset": [offset for _, offset in scored]}


def _chat_token(tokenizer: Tokenizer, token: int, logprob: float) -> dict:
    return {"token": token_text(tokenizer, token), "logprob": logprob, "bytes": list(tokenizer.decode_bytes([token]))}


def chat_logprobs(tokenizer: Tokenizer, scored: Scored) -> dict:
    """OpenAI's chat logprobs object: content[] of token, logprob, bytes, top_logprobs[]."""
    return {"content": [{**_chat_token(tokenizer, token, logprob),
                         "top_logprobs": [_chat_token(tokenizer, i, lp) for i, lp in top or []]}
                        for (token, logprob, top), _ in scored]}


def mean_logprob(scored: Scored) -> float:
    """best_of's ranking: the mean log probability per token (-inf for a choice of no token)."""
    values = [logprob for (_, logprob, _), _ in scored if logprob is not None]
    return sum(values) / len(values) if values else float("-inf")
