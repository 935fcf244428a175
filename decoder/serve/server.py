"""`decoder serve`: load a bundle and run the app under uvicorn until SIGTERM or Ctrl-C.

Shutdown on SIGTERM (or the first Ctrl-C): uvicorn stops accepting connections and the engine
drains: new requests get 503, in-flight ones get `shutdown_grace` seconds to finish and are then
cancelled (each response still ends properly, with finish_reason "cancelled"); uvicorn cuts
whatever is left a moment later as a backstop. Then the engine stops and the process
exits 0. uvicorn (>= 0.29) re-raises the signal it caught once it has shut down, which under the
default SIGTERM disposition would end the process with status 143; a handler installed here for
the duration only notes the signal.
"""

from __future__ import annotations

import signal
import sys
from functools import partial
from pathlib import Path
from typing import Sequence

import uvicorn

from decoder.bundle import INT8_MODEL_FILE, MODEL_FILE
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig, engine_workers, load_runtime

UVICORN_MARGIN_S = 2.0
"""uvicorn's own deadline is the grace plus this, so responses end first, cleanly."""


class _Server(uvicorn.Server):
    """uvicorn's server, telling the engine to drain when a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, engine, grace: float) -> None:
        super().__init__(config)
        self._engine, self._grace = engine, grace

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        self._engine.drain(self._grace)


def serve(bundle_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, quantized: bool = False,
          config: ServeConfig = ServeConfig(), threads: int | None = None, spinning: bool = False,
          log_level: str = "info", served_model_names: Sequence[str] = ()) -> int:
    """Serve the bundle until stopped; returns the exit status (0 after SIGTERM). The model answers
    to its run id and to `served_model_names` (responses give the first of these). `threads` and
    `spinning`: onnxruntime's intra-op threads and whether they spin (`session_options`)."""
    model_file = INT8_MODEL_FILE if quantized else MODEL_FILE
    runtime = load_runtime(bundle_dir, model_file, threads, engine_workers(config), spinning)
    app = create_app(runtime, config, model_file=model_file, served_model_names=served_model_names,
                     engine_model=partial(load_runtime, bundle_dir, model_file, threads, spinning=spinning))
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                    timeout_graceful_shutdown=config.shutdown_grace + UVICORN_MARGIN_S),
                     app.state.engine, config.shutdown_grace)
    print(f"decoder serve: {bundle_dir} ({model_file}, max batch {config.max_batch}) on http://{host}:{port}",
          file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 1
