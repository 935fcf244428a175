"""lm-evaluation-harness's `local-completions` model against a running `decoder serve`.

    decoder serve bundles/default --port 8000 &
    pip install "lm-eval[api]"            # pulls torch, transformers and datasets: not in any extra
    python -m bench.lm_eval_serve http://127.0.0.1:8000 --tasks lambada_openai --limit 200

lm-eval reads the server's tokenizer through GET /tokenizer_info, POST /tokenize and POST
/detokenize (its "remote" tokenizer backend), sends token-id prompts (echo, max_tokens 1,
logprobs 1, temperature 0 for loglikelihood; max_tokens and stop strings for generate_until) and
`max_length` is the model's context (GET /v1/models' max_model_len). Loglikelihood-rolling tasks
(wikitext) start each window with lm-eval's end-of-text id, which its remote tokenizer takes from
encoding the text "<|endoftext|>"; this server encodes that text as plain characters, so prefer
loglikelihood and generate_until tasks. The results (lm-eval's JSON) go to stdout, or to --output.
Not run in CI (tests/integration/test_serve_lm_eval.py checks the same request shapes there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path


def served_model(base_url: str, api_key: str | None) -> dict:
    """The first card of GET /v1/models."""
    request = urllib.request.Request(base_url.rstrip("/") + "/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--tasks", default="lambada_openai", help="lm-eval task names, comma-separated")
    parser.add_argument("--limit", type=float, default=None, help="examples per task (lm-eval's --limit)")
    parser.add_argument("--api-key", default=None, help="the server's --api-key, if it has one")
    parser.add_argument("--concurrent", type=int, default=4, help="requests in flight (lm-eval's num_concurrent)")
    parser.add_argument("--output", type=Path, default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    try:
        import lm_eval
    except ImportError:
        print("lm_eval_serve: needs lm-evaluation-harness: pip install 'lm-eval[api]'", file=sys.stderr)
        return 2
    card = served_model(args.url, args.api_key)
    model_args = {"base_url": args.url.rstrip("/") + "/v1/completions", "model": card["id"],
                  "tokenizer_backend": "remote", "tokenized_requests": True, "max_length": card["max_model_len"],
                  "num_concurrent": args.concurrent, "max_retries": 3}
    if args.api_key:  # the remote tokenizer sends auth_token; the completions requests send OPENAI_API_KEY
        model_args["auth_token"] = args.api_key
        os.environ["OPENAI_API_KEY"] = args.api_key
    results = lm_eval.simple_evaluate(model="local-completions", model_args=model_args,
                                      tasks=args.tasks.split(","), limit=args.limit)
    text = json.dumps({"model": card["id"], "results": results["results"], "config": results.get("config")},
                      indent=2, default=str)
    if args.output is not None:
        from decoder.io import atomic_write

        atomic_write(args.output, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
