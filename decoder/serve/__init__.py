"""An OpenAI-style HTTP server over the torch-free runtime, with continuous batching.

    decoder serve BUNDLE_DIR [--host 127.0.0.1] [--port 8000] [--quantized] [--max-batch N] [--max-queue N]
                       [--engine thread|process] [--engine-workers N]

Modules, top-down: `server` (uvicorn, signals) -> `app` (routes; `auth` for --api-key) -> `chat` (a
conversation rendered to a prompt by a plain-text template, then answered as a completion in chat's
wording) -> `completions` (one request: parse, prompts as the model sees them in `prompts`, queue,
best_of; `answer` words the reply as JSON or server-sent events, `logprobs` its log probabilities)
and `tokens` (/tokenize, /detokenize, /tokenizer_info) -> `engine` (the queue and the worker
threads that drive the schedulers, one batch each; `admission` what a worker takes and how it
steps; `engine_process` runs the same in a process of its own) -> `scheduler` (continuous batching:
one model call per step for every sequence, see its docstring for the step and `decoder.kvcache`
for the left-padded cache) -> `text` (UTF-8 and stop strings). `served` is what one server serves
(names, model card, limits, sampling defaults from `config`), `protocol` the wire format and its
validation, `schema` the response models and the OpenAPI document (/openapi.json, /docs), `errors`
the error objects, `metrics` the Prometheus registry, `page.html` the page at `/`.

Imports fastapi, uvicorn and prometheus-client (the `serve` extra), never torch.
"""
