"""`--api-key`: the routes that use the model need `Authorization: Bearer KEY`.

Protected: everything under /v1/ and /tokenize, /detokenize, /tokenizer_info (as vLLM's --api-key
guards its API routes). Open: /health (load balancers probe it without credentials), /metrics
(Prometheus scrapes it; it holds counts, no text), / (the page itself: it sends no key, so with one
its requests are refused), /docs and /openapi.json (the schema is no secret). A request without the
right key gets 401 with an OpenAI error object (code invalid_api_key) and `WWW-Authenticate:
Bearer`; the key is compared in constant time (`hmac.compare_digest`). CORS preflight requests
(OPTIONS) never reach this check: the CORS middleware, outside it, answers them.
"""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from decoder.serve.protocol import error_body

PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")


def protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES)


class RequireKey:
    """An ASGI middleware answering 401 to a protected request without `Bearer {key}`."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and protected(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = error_body("Incorrect or missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                                  type="invalid_request_error", code="invalid_api_key")
                response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
