"""POST /v1/chat/completions: the messages rendered to one prompt, then the completions path.

The served model is a base model: it was trained to continue text, not to follow instructions or
take turns. So a conversation becomes a plain-text transcript it can continue, one line per
message and an open assistant turn at the end:

    System: You are terse.
    User: Who is Harding?
    Assistant:

(`{Role}: {content}` and a newline per message, then `Assistant:`). The reply is the continuation
as generated (it usually starts with a space), cut before a line that opens another turn
(`TURN_STOPS`) as well as before any of the request's `stop` strings. The template is in every
model card (`chat_template`). From there the request is a completion (`decoder.serve.completions`:
same sampling, queue, engine, cancellation and shutdown); only the answer's wording differs:
`chat.completion` with `choices[i].message` (and, with `logprobs`, OpenAI's
`choices[i].logprobs.content`: each token of the reply with its log probability, bytes and the
`top_logprobs` most likely), or `chat.completion.chunk` events whose first delta per choice carries
the role and the rest the content (and their tokens' logprobs).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from decoder.serve.answer import EventStream, Shape, respond
from decoder.serve.completions import build_job, check_capacity
from decoder.serve.engine import EngineBase
from decoder.serve.job import Job
from decoder.serve.logprobs import Cursor, chat_logprobs
from decoder.serve.prompts import encode_prompts
from decoder.serve.parsing import parse_chat_request, read_body
from decoder.serve.protocol import ChatMessage
from decoder.serve.served import Served

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""Each role's name in the transcript."""
MESSAGE_TEMPLATE = "{role}: {content}\n"
GENERATION_PROMPT = "Assistant:"
TURN_STOPS = ["\nUser:", "\nSystem:", "\nAssistant:"]
"""The reply ends before the model starts another turn."""
CHAT_TEMPLATE = {"roles": ROLES, "message": MESSAGE_TEMPLATE, "generation_prompt": GENERATION_PROMPT,
                 "stop": TURN_STOPS}
"""The model card's `chat_template`: how messages become the prompt."""


def render(messages: list[ChatMessage]) -> str:
    """The prompt of a conversation (see the module docstring)."""
    lines = [MESSAGE_TEMPLATE.format(role=ROLES[m.role], content=m.content) for m in messages]
    return "".join(lines) + GENERATION_PROMPT


def _message_piece(index: int, text: str, finish: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs, "finish_reason": finish}


def _opening(index: int) -> dict:
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


CHAT = Shape("chatcmpl", "chat.completion", "chat.completion.chunk", _message_piece, chat_logprobs, _opening)


def _choices(job: Job, served: Served, logprobs: bool, texts: list[str], finishes: list[str | None]) -> list[dict]:
    return [{"index": i, "message": {"role": "assistant", "content": text},
             "logprobs": chat_logprobs(served.tokenizer, Cursor(served.tokenizer).take(seq.logprobs, text))
             if logprobs else None, "finish_reason": finish}
            for i, (seq, text, finish) in enumerate(zip(job.sequences, texts, finishes))]


async def create_chat_completion(request: Request, engine: EngineBase,
                                 served: Served) -> JSONResponse | EventStream:
    """Answer one POST /v1/chat/completions (see the module docstring)."""
    req = parse_chat_request(await read_body(request, served.config.max_body_bytes))
    served.check_model(req.model)
    check_capacity(1, req.n, engine.capacity)
    encoded = encode_prompts([render(req.messages)], served, ["messages"], req.truncate_prompt_tokens)
    job = build_job(req, encoded, served, per_prompt=req.n, max_tokens=req.completion_tokens,
                    stops=req.stops + TURN_STOPS, top_logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    engine.submit(job)
    return await respond(request, req, job, engine, served, CHAT,
                         lambda texts, finishes: _choices(job, served, req.logprobs, texts, finishes),
                         truncated=encoded[0].truncated, logprobs=req.logprobs)
