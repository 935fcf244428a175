"""A request's prompts as the model sees them: token ids (from a text or given as ids), cut to what
fits, and, for echo with logprobs, scored.

A prompt longer than the context is seen through its last `context_length` tokens, as `decoder
generate` (`decoder.sampling.decode_loop`) opens its window: the first token generated has the most
context the model can take, and generation slides on from there (the repetition controls still see
the whole prompt, as there). The server can refuse such a prompt instead (`ServeConfig.long_prompts
= "refuse"`: 400 context_length_exceeded). `truncate_prompt_tokens` (vLLM's) keeps only a prompt's
last k tokens: the rest is as if not sent (not seen, not echoed, not scored, not counted by the
repetition controls). `usage.prompt_tokens` counts the tokens the model saw and
`usage.prompt_tokens_truncated` those it did not.

Echo with logprobs scores what the model sees: the tokens of the window, each given the window's
tokens before it (one forward pass); the window's first token, and any token before the window, has
null log probability (no context, or none the model saw).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from decoder.serve.logprobs import Entry, prompt_entries
from decoder.serve.protocol import APIError, Prompt
from decoder.serve.served import Served


@dataclass(frozen=True)
class PromptIds:
    """One prompt as the request's sequences run it."""

    ids: list[int]
    """The prompt's tokens (after truncate_prompt_tokens): the sequence's history."""
    text: str
    """What echo returns: the prompt's text (the decoded ids, for ids or a truncated prompt)."""
    seen: int
    """Tokens the model sees (the last ones of `ids`, at most the context)."""
    truncated: int
    """Tokens of the prompt as sent that the model does not see."""


def encode_prompts(prompts: list[Prompt], served: Served, params: list[str],
                   truncate: int | None = None) -> list[PromptIds]:
    """Each prompt's ids, after refusing (400, naming its field in `params`) a token id outside the
    vocabulary, or (with `long_prompts` "refuse") a prompt longer than the context."""
    tokenizer, context = served.tokenizer, served.context_length
    encoded = []
    for prompt, param in zip(prompts, params):
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        for i, token in enumerate(ids):
            if not 0 <= token < tokenizer.vocab_size:
                raise APIError(400, f"{param}[{i}]={token}: token ids of this model are 0 to {tokenizer.vocab_size - 1}"
                               " (POST /tokenize gives a text's ids)", param=param, code="invalid_value")
        sent = len(ids)
        kept = ids[-truncate:] if truncate is not None else ids
        if len(kept) > context and served.config.long_prompts == "refuse":
            raise APIError(400, f"{param} is {len(kept)} tokens; this model's context is {context} tokens (send "
                           "truncate_prompt_tokens to keep the last ones)", param=param, code="context_length_exceeded")
        text = prompt if isinstance(prompt, str) and len(kept) == sent else tokenizer.decode(kept)
        seen = min(len(kept), context)
        encoded.append(PromptIds(kept, text, seen, sent - seen))
    return encoded


async def score_prompts(encoded: list[PromptIds], served: Served, k: int) -> list[list[Entry]]:
    """Each prompt's echo entries (see the module docstring): one forward pass over its window, in a
    worker thread beside the engine's."""
    if served.score is None:
        raise APIError(400, "echo with logprobs needs a model that scores whole prompts; this one does not",
                       param="echo", code="unsupported_parameter")
    scored = []
    for prompt in encoded:
        window = prompt.ids[len(prompt.ids) - prompt.seen:]
        entries = prompt_entries(await asyncio.to_thread(served.score, window), window, k)
        scored.append([(token, None, None) for token in prompt.ids[: len(prompt.ids) - prompt.seen]] + entries)
    return scored
