"""The ASGI app: `create_app(runtime, config)` -> a FastAPI app serving one bundle.

Routes: POST /v1/completions (`decoder.serve.completions`), GET /v1/models (the bundle: id,
config, validation bits per byte, sha256 of the model file served), GET /health, GET /metrics
(Prometheus text) and GET / (a page to try the model in a browser). Every error is an OpenAI-style
error object; a client's mistake is answered, never logged as a crash. The engine starts and stops
with the app's lifespan.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from decoder.bundle import INT8_MODEL_FILE, MODEL_FILE
from decoder.serve.completions import Served, create_completion
from decoder.serve.config import ServeConfig
from decoder.serve.engine import Engine
from decoder.serve.metrics import ServerMetrics
from decoder.serve.protocol import APIError, error_body
from decoder.serve.scheduler import Model, Scheduler

log = logging.getLogger("decoder.serve")


def model_card(meta: dict, model_file: str, model_id: str) -> dict:
    """GET /v1/models' entry for the bundle: OpenAI's fields plus what the bundle records."""
    run = meta.get("run") or {}
    val = run.get("val") if isinstance(run.get("val"), dict) else {}
    int8 = meta.get("int8") or {}
    quantized = model_file == INT8_MODEL_FILE
    bpb = int8.get("val_bpb_int8") if quantized else val.get("val_bpb")
    return {
        "id": model_id, "object": "model", "created": 0, "owned_by": "decoder",
        "file": model_file, "quantized": quantized,
        "sha256": meta["files"][model_file]["sha256"],
        "config": meta.get("model"), "context_length": meta.get("context_length"),
        "validation_bpb": bpb, "run": run,
    }


def page_html() -> str:
    return resources.files("decoder.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(runtime: Model, config: ServeConfig = ServeConfig(), *, model_file: str = MODEL_FILE,
               model_id: str | None = None) -> FastAPI:
    """An app serving `runtime` (a `decoder.runtime.Runtime`, or any `Model`) under `config`."""
    meta = getattr(runtime, "meta", {})
    model_id = model_id or (meta.get("run") or {}).get("id") or "decoder"
    metrics = ServerMetrics()
    engine = Engine(Scheduler(runtime, max_batch=config.max_batch), metrics, max_queue=config.max_queue)
    served = Served(model_id, runtime.tokenizer, runtime.context_length, config)
    card = model_card(meta, model_file, model_id) if meta else {"id": model_id, "object": "model"}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="decoder", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics = engine, metrics
    _add_error_handlers(app, metrics)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await create_completion(request, engine, served)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.accepting:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "running": engine.jobs_running, "waiting": engine.jobs_waiting})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    page = page_html()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
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

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejected.labels("400").inc()
        return JSONResponse(error_body(str(exc), type="invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body("Internal server error", type="server_error", code="internal_error"),
                            status_code=500)
