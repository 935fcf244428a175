"""Every error the app answers, as an OpenAI-style error object (`decoder.serve.protocol.error_body`).

A client's mistake (`APIError`, an unknown route or method) is answered and counted, never logged
as a crash. A bug (any other exception) is logged with its traceback and answered 500 by
`CatchAll`, an ASGI middleware inside Starlette's `ServerErrorMiddleware`: that middleware
re-raises whatever reaches it after answering, and uvicorn then closes the connection without a
`Connection: close` header, so a keep-alive client's next request on it would fail. Caught here,
the response is an ordinary one and the connection stays usable. An exception after the response
has started (mid-stream) cannot be answered any more: it goes on to uvicorn, which cuts the
connection, the only signal left.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from decoder.serve.metrics import ServerMetrics
from decoder.serve.protocol import APIError, error_body

log = logging.getLogger("decoder.serve")


class CatchAll:
    """Answers an exception the routes let through with a 500 error object (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            body = error_body("Internal server error", type="server_error", code="internal_error")
            await JSONResponse(body, status_code=500)(scope, receive, send)


def add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Error objects for APIError and Starlette's HTTP errors, and `CatchAll` for the rest."""
    app.add_middleware(CatchAll)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.rejected.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        metrics.rejected.labels(str(exc.status_code)).inc()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), type="invalid_request_error", code=code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))
