"""`decoder serve BUNDLE_DIR`: an OpenAI-style HTTP server over the torch-free runtime, with
continuous batching (see `decoder.serve`). Binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE_DIR", help="an exported bundle (decoder export)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quantized", action="store_true", help="serve model.int8.onnx instead of model.onnx")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (1: no batching)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="sequences (one per prompt and choice) waiting for a slot before requests get 429")
    p.add_argument("--engine", choices=["thread", "process"], default="thread",
                   help="run the engine (batched steps, sampling, detokenizing) in a worker thread of the server "
                        "(default) or in a process of its own, off the HTTP event loop's GIL")
    p.add_argument("--engine-workers", type=int, default=None, metavar="N",
                   help="decoding threads of the thread engine, each with its own share of --max-batch and its "
                        "own core (default: one per usable core, at most 2)")
    p.add_argument("--stream-interval", type=int, default=1, metavar="N",
                   help="tokens a stream sends at a time: each choice's first at once, then N per event "
                        "(default 1: every token its own event; more: less work per token, burstier streams)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: one core fewer than usable, at least 1)")
    p.add_argument("--allow-spinning", action="store_true",
                   help="let onnxruntime's intra-op threads spin between ops (default: they sleep, leaving the "
                        "cores to the HTTP side); for one request at a time on several --threads")
    p.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may run on before they are cancelled")
    p.add_argument("--served-model-name", nargs="+", default=[], dest="served_model_names", metavar="NAME",
                   help="names the model answers to besides its run id (responses give the first)")
    p.add_argument("--sampling-defaults", choices=["bundle", "openai"], default="bundle",
                   help="what a request's missing sampling fields take: the bundle's sampling config, as decoder "
                        "generate (default), or OpenAI's neutral values (no repetition controls)")
    p.add_argument("--long-prompts", choices=["truncate", "refuse"], default="truncate",
                   help="a prompt longer than the context: the model sees its last context-length tokens (default), "
                        "or the request is refused with 400")
    p.add_argument("--cors-origin", action="append", default=[], dest="cors_origins", metavar="ORIGIN",
                   help="let browsers on ORIGIN (e.g. http://localhost:3000; * for any) call the API (repeatable)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* and the tokenizer routes (default: the "
                        "DECODER_API_KEY environment variable, else no key)")


def run(args: argparse.Namespace) -> int:
    import os

    from decoder.cli import UsageError
    from decoder.serve.config import ServeConfig, config_problems

    values = {"max_batch": args.max_batch, "max_queue": args.max_queue, "shutdown_grace": args.shutdown_grace,
              "stream_interval": args.stream_interval,
              **({"engine_workers": args.engine_workers} if args.engine_workers is not None else {})}
    problems = [f"--{p.replace('_', '-')}" for p in config_problems(values)]
    if args.engine == "process" and (args.engine_workers or 1) > 1:
        problems.append(f"--engine-workers={args.engine_workers}: the process engine has one worker; use "
                        "--engine thread for more")
    if not 0 <= args.port <= 65535:
        problems.append(f"--port={args.port}: must be in [0, 65535]")
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads={args.threads}: must be >= 1")
    api_key = args.api_key if args.api_key is not None else os.environ.get("DECODER_API_KEY") or None
    if args.api_key == "":
        problems.append("--api-key is empty: give a key, or leave the option out")
    if problems:
        raise UsageError("; ".join(problems))
    from decoder.serve.server import serve

    config = ServeConfig(**values, sampling_defaults=args.sampling_defaults, long_prompts=args.long_prompts,
                         cors_origins=tuple(args.cors_origins), api_key=api_key, engine=args.engine)
    return serve(args.bundle, host=args.host, port=args.port, quantized=args.quantized, config=config,
                 threads=args.threads, spinning=args.allow_spinning, served_model_names=args.served_model_names)
