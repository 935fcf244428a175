"""POST /v1/completions: from the HTTP body to a job in the engine, and back (`decoder.serve.answer`).

Each prompt (a text or token ids) becomes its ids as the model sees them (`decoder.serve.prompts`:
a long prompt is seen through its last context-length tokens, or cut by truncate_prompt_tokens),
then one sequence per prompt and choice (best_of of them with best_of) sampled with the request's
fields, each missing one taking the model card's `sampling_defaults`. With `echo`, each choice's
text starts with the prompt's; with `logprobs`, OpenAI's logprobs object (`decoder.serve.logprobs`),
streamed chunk by chunk too. `max_tokens` 0 with echo scores the prompt without generating (no job).
With best_of, the n candidates of each prompt with the highest mean log probability per token are
returned. A request of more sequences than the engine's slots and queue could ever hold is
refused with 400, not 429.
"""

from __future__ import annotations

import time

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from decoder.sampling import SamplingParams
from decoder.serve.answer import EventStream, Shape, respond, response_id
from decoder.serve.engine import EngineBase
from decoder.serve.job import Job
from decoder.serve.logprobs import Cursor, Entry, Scored, completion_logprobs, eot_entry, mean_logprob
from decoder.serve.prompts import PromptIds, encode_prompts, score_prompts
from decoder.serve.parsing import parse_request, read_body
from decoder.serve.protocol import APIError, CompletionRequest, SamplingRequest
from decoder.serve.scheduler import Sequence
from decoder.serve.served import Served
from decoder.serve.text import TextStream


def _text_piece(index: int, text: str, finish: str | None, logprobs: dict | None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}


COMPLETION = Shape("cmpl", "text_completion", "text_completion", _text_piece, completion_logprobs, names_eot=True)


def check_capacity(prompts: int, per_prompt: int, capacity: int, param: str = "n") -> None:
    """Refuse (400) a request of more sequences (prompts x per_prompt) than the server could ever hold at once."""
    sequences = prompts * per_prompt
    if sequences > capacity:
        raise APIError(400, f"This request asks for {prompts} prompt(s) x {param}={per_prompt} = {sequences} "
                       f"sequences; this server takes at most {capacity} in one request (its batch slots plus queue "
                       f"places): send fewer prompts or a smaller {param}", param=param, code="too_many_sequences")


def prompt_params(req: CompletionRequest) -> list[str]:
    single = isinstance(req.prompt, str) or isinstance(req.prompt[0], int)
    return ["prompt"] if single else [f"prompt.{i}" for i in range(len(req.prompts))]


def sampling_params(req: SamplingRequest, served: Served) -> SamplingParams:
    """The request's sampler (each field it leaves out from the served defaults), after refusing
    (400) a logit_bias token beyond the vocabulary."""
    vocab_size = served.tokenizer.vocab_size
    for token, _ in req.bias_pairs:
        if token >= vocab_size:
            raise APIError(400, f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1} "
                           "(POST /tokenize gives a text's ids)", param="logit_bias", code="invalid_value")
    values = {name: getattr(req, name) if getattr(req, name) is not None else default
              for name, default in served.defaults.as_dict().items()}
    return SamplingParams(**values, logit_bias=req.bias_pairs)


def build_job(req: SamplingRequest, encoded: list[PromptIds], served: Served, *, per_prompt: int, max_tokens: int,
              stops: list[str], top_logprobs: int | None = None) -> Job:
    """`per_prompt` sequences per prompt (candidate j of a prompt is seeded with seed + j)."""
    params = sampling_params(req, served)
    sequences = [
        Sequence(prompt_ids=prompt.ids, params=params, max_tokens=max_tokens, text=TextStream(served.tokenizer, stops),
                 rng=None if params.is_greedy else np.random.default_rng(None if req.seed is None else req.seed + j),
                 top_logprobs=top_logprobs)
        for prompt in encoded for j in range(per_prompt)
    ]
    return Job(sequences, prompt_tokens=sum(prompt.seen for prompt in encoded),
               stream_interval=served.config.stream_interval)


async def create_completion(request: Request, engine: EngineBase, served: Served) -> JSONResponse | EventStream:
    """Answer one POST /v1/completions (see the module docstring)."""
    req = parse_request(await read_body(request, served.config.max_body_bytes))
    served.check_model(req.model)
    check_capacity(len(req.prompts), req.candidates, engine.capacity, "best_of" if req.best_of else "n")
    encoded = encode_prompts(req.prompts, served, prompt_params(req), req.truncate_prompt_tokens)
    scored = await score_prompts(encoded, served, req.logprobs) if req.echo and req.logprobs is not None else []
    truncated = sum(prompt.truncated for prompt in encoded)
    if req.max_tokens == 0:
        return JSONResponse(_scored_only(req, encoded, scored, served, truncated))
    ranked = req.logprobs if req.logprobs is not None else 0 if req.candidates > req.n else None
    job = build_job(req, encoded, served, per_prompt=req.candidates, max_tokens=req.max_tokens, stops=req.stops,
                    top_logprobs=ranked)
    engine.submit(job)
    return await respond(request, req, job, engine, served, COMPLETION,
                         lambda texts, finishes: _choices(req, encoded, served, job, texts, finishes, scored),
                         truncated=truncated, logprobs=req.logprobs is not None)


def _choices(req: CompletionRequest, encoded: list[PromptIds], served: Served, job: Job, texts: list[str],
             finishes: list[str | None], scored: list[list[Entry]]) -> list[dict]:
    """The response's choices: each prompt's best n candidates (all of them without best_of), the
    prompt first with echo, and the logprobs object when asked for."""
    choices = []
    per_prompt = req.candidates
    for p, prompt in enumerate(encoded):
        candidates = []
        for i in range(p * per_prompt, (p + 1) * per_prompt):
            entries = _entries(served, job.sequences[i], texts[i], finishes[i], scored[p] if scored else None)
            candidates.append((texts[i], finishes[i], entries))
        if per_prompt > req.n:
            candidates = sorted(candidates, key=lambda c: -mean_logprob(c[2][len(scored[p]) if scored else 0:]))
        for j, (text, finish, entries) in enumerate(candidates[: req.n]):
            logprobs = completion_logprobs(served.tokenizer, entries) if req.logprobs is not None else None
            choices.append({"text": prompt.text + text if req.echo else text, "index": p * req.n + j,
                            "logprobs": logprobs, "finish_reason": finish})
    return choices


def _entries(served: Served, seq: Sequence, text: str, finish: str | None, echoed: list[Entry] | None) -> Scored:
    """A choice's entries with offsets: the echoed prompt's (if any), then the tokens its text covers."""
    if seq.top_logprobs is None:
        return []
    cursor = Cursor(served.tokenizer)
    head = cursor.take_all(echoed) if echoed is not None else []
    return head + cursor.take(seq.logprobs, text, eot_entry(seq, served.tokenizer.eot_id) if finish == "stop" else None)


def _scored_only(req: CompletionRequest, encoded: list[PromptIds], scored: list[list[Entry]], served: Served,
                 truncated: int) -> dict:
    """max_tokens 0 with echo: each prompt's text (and logprobs), nothing generated."""
    choices = []
    for p, prompt in enumerate(encoded):
        logprobs = (completion_logprobs(served.tokenizer, Cursor(served.tokenizer).take_all(scored[p]))
                    if req.logprobs is not None else None)
        choices += [{"text": prompt.text, "index": p * req.n + j, "logprobs": logprobs, "finish_reason": "length"}
                    for j in range(req.n)]
    seen = sum(prompt.seen for prompt in encoded)
    return {"id": response_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": served.model_id, "choices": choices,
            "usage": {"prompt_tokens": seen, "completion_tokens": 0, "total_tokens": seen,
                      "prompt_tokens_truncated": truncated}}
