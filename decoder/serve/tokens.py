"""POST /tokenize and POST /detokenize, with vLLM's field names: the served model's own token ids,
as completions encode a prompt and decode a choice (so a client can count a prompt against the
context or build a `logit_bias`)."""

from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel

from decoder.serve.logprobs import EOT_TEXT, token_text
from decoder.serve.parsing import parse_as, read_body
from decoder.serve.protocol import STRICT, APIError
from decoder.serve.served import Served


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's names): the token ids of a text, as completions would encode it."""

    model_config = STRICT
    prompt: str
    """The text to encode (it may be longer than the context: the answer says how long it is)."""
    model: str | None = None
    """If given, one of the served model's names."""
    add_special_tokens: bool = True
    """vLLM's switch for a tokenizer's BOS token; this model adds no special tokens either way."""
    return_token_strs: bool = False
    """Also return each token's text (its bytes as UTF-8, a partial character as U+FFFD)."""


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's names): the text of token ids."""

    model_config = STRICT
    tokens: list[int]
    """Token ids of this model's vocabulary (0 to vocab_size - 1, GET /v1/models); the end-of-text
    token decodes to nothing, as in completions."""
    model: str | None = None
    """If given, one of the served model's names."""


async def tokenize(request: Request, served: Served) -> dict:
    req = parse_as(TokenizeRequest, await read_body(request, served.config.max_body_bytes))
    served.check_model(req.model)
    ids = served.tokenizer.encode(req.prompt)
    strs = [token_text(served.tokenizer, i) for i in ids] if req.return_token_strs else None
    return {"count": len(ids), "max_model_len": served.context_length, "tokens": ids, "token_strs": strs}


async def detokenize(request: Request, served: Served) -> dict:
    req = parse_as(DetokenizeRequest, await read_body(request, served.config.max_body_bytes))
    served.check_model(req.model)
    vocab = served.tokenizer.vocab_size
    for i, token in enumerate(req.tokens):
        if not 0 <= token < vocab:
            raise APIError(400, f"tokens[{i}]={token}: token ids of this model are 0 to {vocab - 1}",
                           param="tokens", code="invalid_value")
    return {"prompt": served.tokenizer.decode(req.tokens)}


def tokenizer_info(served: Served) -> dict:
    """GET /tokenizer_info (vLLM's): the special tokens as text, and what the model card says of the tokenizer."""
    tokenizer = served.tokenizer
    return {"tokenizer_class": "tiktoken", "encoding": tokenizer.encoding_name, "vocab_size": tokenizer.vocab_size,
            "eos_token": EOT_TEXT, "eos_token_id": tokenizer.eot_id, "bos_token": None, "pad_token": None,
            "model_max_length": served.context_length, "chat_template": None}
