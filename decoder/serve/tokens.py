"""POST /tokenize and POST /detokenize, with vLLM's field names: the served model's own token ids,
as completions encode a prompt and decode a choice (so a client can count a prompt against the
context or build a `logit_bias`)."""

from __future__ import annotations

from fastapi import Request

from decoder.serve.logprobs import token_text
from decoder.serve.protocol import APIError, DetokenizeRequest, TokenizeRequest, parse_as, read_body
from decoder.serve.served import Served


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
