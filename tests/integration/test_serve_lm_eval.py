"""The requests lm-evaluation-harness's `local-completions` model sends (lm_eval/models/
openai_completions.py, 0.4.x), answered and parsed as lm-eval parses them, without lm-eval itself
(it pulls torch, transformers and datasets; bench/lm_eval_serve.py runs the real thing).

loglikelihood: token-id prompts (context + continuation, a batch per request), echo, max_tokens 1,
logprobs 1, temperature 0, a seed; lm-eval sums `token_logprobs[ctxlen:-1]` (the last entry is the
generated token's) and calls the continuation greedy if each token is its position's top one. The
summed echo log probabilities of a text equal `decoder eval`'s static evaluation of it (bits per
byte to 1e-3: onnxruntime against PyTorch). generate_until: token-id prompts, max_tokens,
temperature 0, stop strings with <|endoftext|> among them (its eos, from GET /tokenizer_info)."""

from __future__ import annotations

import math
from operator import itemgetter

import numpy as np
import pytest
from servekit import in_process

from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.logprobs import log_softmax

TEXTS = ["Harding wondered whether the island", "The sailor looked at the sea"]


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime)  # the bundle's sampling defaults: log probabilities do not depend on them


def post(app, body: dict) -> dict:
    r = in_process(app, lambda client: client.post("/v1/completions", json=body))
    assert r.status_code == 200, r.text
    return r.json()


def loglikelihood_payload(model: str, batch: list[list[int]]) -> dict:
    """LocalCompletionsAPI._create_payload(messages, generate=False)."""
    return {"model": model, "prompt": batch, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}


def parse_logprobs(out: dict, ctxlens: list[int]) -> list[tuple[float, bool]]:
    """LocalCompletionsAPI.parse_logprobs, as lm-eval writes it."""
    res = []
    for choice, ctxlen in zip(sorted(out["choices"], key=itemgetter("index")), ctxlens):
        assert ctxlen > 0
        logprobs = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
        tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        is_greedy = all(tok == max(top.values()) for tok, top in zip(tokens_logprobs, top_logprobs))
        res.append((logprobs, is_greedy))
    return res


def test_loglikelihood_requests_score_as_decoder_eval_does(app, runtime, onnx_run):
    from decoder.evaluate import load_scorer, score

    model_id = runtime.meta["run"]["id"]
    batch = [runtime.tokenizer.encode(text) for text in TEXTS]
    assert all(len(ids) <= runtime.context_length for ids in batch)
    ctxlens = [1, 3]  # the whole text after its first token; a continuation after a 3-token context
    out = post(app, loglikelihood_payload(model_id, batch))
    assert len(out["choices"]) == 2 and all(len(c["logprobs"]["token_logprobs"]) == len(ids) + 1
                                            for c, ids in zip(out["choices"], batch))
    parsed = parse_logprobs(out, ctxlens)
    model, tokenizer, _, device, precision = load_scorer(onnx_run, "cpu", "fp32")
    ids = np.array(batch[0])
    own = score(model, tokenizer, ids, {"protocol": "static"}, device, precision)
    served_bpb = -parsed[0][0] / math.log(2) / len(tokenizer.decode_bytes(ids[1:]))
    assert served_bpb == pytest.approx(own["bits_per_byte"], abs=1e-3)
    ids = batch[1]
    expected = log_softmax(runtime.run(np.array([ids]))[0][0])
    wanted = [expected[i - 1, ids[i]] for i in range(ctxlens[1], len(ids))]
    assert parsed[1][0] == pytest.approx(sum(wanted), abs=1e-4)
    assert parsed[1][1] == all(expected[i - 1].argmax() == ids[i] for i in range(ctxlens[1], len(ids)))


def test_the_generated_token_is_always_the_last_entry_even_at_the_end_of_text(app, runtime):
    ids = runtime.tokenizer.encode(TEXTS[0])
    body = {**loglikelihood_payload(None, [ids]), "logit_bias": {str(runtime.eot_id): 100}}
    (choice,) = post(app, body)["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == TEXTS[0] and lp["tokens"][-1] == "<|endoftext|>" and len(lp["tokens"]) == len(ids) + 1
    assert parse_logprobs(post(app, loglikelihood_payload(None, [ids])), [1])[0][0] == \
        pytest.approx(sum(lp["token_logprobs"][1:-1]), abs=1e-9)


def test_generate_until_requests_and_the_remote_tokenizer_routes(app, runtime):
    async def calls(client):
        info = (await client.get("/tokenizer_info")).json()
        tokens = (await client.post("/tokenize", json={"prompt": "test", "add_special_tokens": False})).json()
        text = (await client.post("/detokenize", json={"tokens": tokens["tokens"]})).json()
        return info, tokens, text
    info, tokens, text = in_process(app, calls)
    assert info["eos_token"] == "<|endoftext|>" and isinstance(tokens["tokens"], list) and text["prompt"] == "test"
    ids = runtime.tokenizer.encode(TEXTS[1])
    out = post(app, {"prompt": [ids], "model": None, "max_tokens": 8, "temperature": 0,
                     "stop": ["\n\n", info["eos_token"]], "seed": 1234})
    (choice,) = out["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and out["usage"]["completion_tokens"] <= 8
