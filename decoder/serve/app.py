"""The ASGI app: `create_app(runtime, config)` -> a FastAPI app serving one bundle.

Routes: POST /v1/completions (`decoder.serve.completions`), POST /v1/chat/completions (the same
over a plain-text chat template, `decoder.serve.chat`), GET /v1/models and GET /v1/models/{name}
(the bundle: names, config, tokenizer, validation bits per byte, sha256 of the model file served),
POST /tokenize and POST /detokenize (`decoder.serve.tokens`), GET /health, GET /tokenizer_info
(vLLM's, for lm-evaluation-harness), GET /metrics (Prometheus text), GET /openapi.json and GET
/docs (FastAPI's OpenAPI document and its Swagger page, `decoder.serve.schema`) and GET / (a page
to try the model in a browser). Every error is an OpenAI-style error object
(`decoder.serve.errors`); a client's mistake is answered, never logged as a crash. With
`config.api_key` the model's routes need it (`decoder.serve.auth`); with `config.cors_origins`
browsers on those origins may call the API (Starlette's CORSMiddleware). The engine (worker threads,
or with `config.engine` "process" a process of its own) starts and stops with the app's lifespan.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response

from decoder import __version__
from decoder.bundle import MODEL_FILE
from decoder.serve import schema, tokens
from decoder.serve.chat import CHAT_TEMPLATE, create_chat_completion
from decoder.serve.completions import create_completion
from decoder.serve.auth import RequireKey
from decoder.serve.config import ServeConfig, batch_shares, engine_workers, load_runtime, sampling_defaults
from decoder.serve.engine import Engine, EngineBase
from decoder.serve.engine_process import ProcessEngine
from decoder.serve.errors import add_error_handlers
from decoder.serve.metrics import ServerMetrics
from decoder.serve.protocol import ChatCompletionRequest, CompletionRequest
from decoder.serve.tokens import DetokenizeRequest, TokenizeRequest
from decoder.serve.scheduler import Model, Scheduler
from decoder.serve.served import Served, bundle_card, model_names, prompt_scorer

DESCRIPTION = ("An OpenAI-style completions API over one exported `decoder` model (onnxruntime, continuous "
               "batching), with vLLM's /tokenize and /detokenize. Errors are OpenAI error objects.")


def page_html() -> str:
    return resources.files("decoder.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(runtime: Model, config: ServeConfig = ServeConfig(), *, model_file: str = MODEL_FILE,
               model_id: str | None = None, served_model_names: Sequence[str] = (),
               engine_model: Callable[[], Model] | None = None) -> FastAPI:
    """An app serving `runtime` (a `decoder.runtime.Runtime`, or any `Model`) under `config`.

    The model answers to `served_model_names` (the first is the name responses give) and to its
    run id (`model_id`, by default the bundle's run id). With `config.engine` "process",
    `engine_model` (picklable) loads the engine process's copy of the model; by default the
    runtime's bundle and `model_file` with the server's session options."""
    meta = getattr(runtime, "meta", {})
    model_id = model_id or (meta.get("run") or {}).get("id") or "decoder"
    metrics = ServerMetrics()
    engine = build_engine(runtime, config, metrics, model_file, engine_model)
    card = {**bundle_card(meta, model_file, runtime.tokenizer, runtime.context_length, model_id),
            "chat_template": CHAT_TEMPLATE}
    defaults = sampling_defaults(config.sampling_defaults, getattr(runtime, "bundle_dir", None))
    served = Served(model_names(model_id, tuple(served_model_names)), runtime.tokenizer, runtime.context_length,
                    config, card, prompt_scorer(runtime), defaults)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="decoder", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  redoc_url=None)
    app.state.engine, app.state.metrics = engine, metrics
    add_error_handlers(app, metrics)
    if config.api_key is not None:
        app.add_middleware(RequireKey, key=config.api_key)
    if config.cors_origins:  # added last, so outermost: preflights and 401s carry the CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    schema.install_openapi(app)
    _add_model_routes(app, served, engine)
    _add_service_routes(app, engine, metrics)
    return app


def build_engine(runtime: Model, config: ServeConfig, metrics: ServerMetrics, model_file: str,
                 engine_model: Callable[[], Model] | None) -> EngineBase:
    """The engine `config.engine` names: over `runtime` in a thread, or over `engine_model()` in a process."""
    if config.engine == "process":
        if engine_model is None:
            bundle_dir = getattr(runtime, "bundle_dir", None)
            if bundle_dir is None:
                raise ValueError("engine='process' loads the model again in the engine process: give engine_model "
                                 "for a model without a bundle_dir")
            engine_model = partial(load_runtime, bundle_dir, model_file)
        return ProcessEngine(engine_model, metrics, max_batch=config.max_batch, max_queue=config.max_queue)
    shares = batch_shares(config.max_batch, engine_workers(config))
    return Engine([Scheduler(runtime, max_batch=share) for share in shares], metrics, max_queue=config.max_queue,
                  stream_interval=config.stream_interval)


def _add_model_routes(app: FastAPI, served: Served, engine: EngineBase) -> None:
    @app.post("/v1/completions", openapi_extra=schema.request_body(CompletionRequest),
              responses={200: {"model": schema.Completion, "content": schema.STREAM},
                         **schema.errors(400, 404, 413, 429, 500, 503)})
    async def completions(request: Request):
        """Continue each prompt: one JSON object, or server-sent events with stream: true."""
        return await create_completion(request, engine, served)

    @app.post("/v1/chat/completions", openapi_extra=schema.request_body(ChatCompletionRequest),
              responses={200: {"model": schema.ChatCompletion, "content": schema.CHAT_STREAM},
                         **schema.errors(400, 404, 413, 429, 500, 503)})
    async def chat_completions(request: Request):
        """Continue a conversation rendered by the model card's chat_template (a base model: it continues
        the transcript): one JSON object, or server-sent events with stream: true."""
        return await create_chat_completion(request, engine, served)

    @app.get("/v1/models", response_model=schema.ModelList)
    async def models() -> dict:
        """The served model, one card per name it answers to."""
        return {"object": "list", "data": [served.model_card(name) for name in served.names]}

    @app.get("/v1/models/{model:path}", response_model=schema.ModelCard, responses=schema.errors(404))
    async def model(model: str) -> dict:
        """The card of one of the served model's names."""
        return served.model_card(model)

    @app.post("/tokenize", response_model=schema.TokenizeResponse, openapi_extra=schema.request_body(TokenizeRequest),
              responses=schema.errors(400, 404, 413))
    async def tokenize(request: Request) -> dict:
        """The token ids of a text, as completions encode a prompt (vLLM's fields)."""
        return await tokens.tokenize(request, served)

    @app.post("/detokenize", response_model=schema.DetokenizeResponse,
              openapi_extra=schema.request_body(DetokenizeRequest), responses=schema.errors(400, 404, 413))
    async def detokenize(request: Request) -> dict:
        """The text of token ids (vLLM's fields)."""
        return await tokens.detokenize(request, served)

    @app.get("/tokenizer_info", response_model=schema.TokenizerInfoResponse)
    async def tokenizer_info() -> dict:
        """vLLM's tokenizer description (what lm-evaluation-harness's remote tokenizer reads)."""
        return tokens.tokenizer_info(served)


def _add_service_routes(app: FastAPI, engine: EngineBase, metrics: ServerMetrics) -> None:
    @app.get("/health", response_model=schema.Health, responses={503: {"model": schema.Health}})
    async def health() -> JSONResponse:
        """ok (200) while the server takes requests; draining (503) once it shuts down."""
        if not engine.accepting:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "running": engine.jobs_running, "waiting": engine.jobs_waiting})

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.exposition(), media_type=metrics.content_type)

    page = page_html()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)
