"""The official `openai` Python client against `decoder serve` on 127.0.0.1: a real server process
for the sync client, uvicorn in a thread for the async one. Completions (with logprobs, and
streamed), chat completions (and streamed) and the model list; greedy text equals
`Runtime.generate`, and streamed pieces join to the text of the same request unstreamed. And
LangChain's OpenAI and ChatOpenAI (langchain-openai) with their default parameters, and greedy:
the text the bundle's sampling config gives (the server's defaults)."""

from __future__ import annotations

import asyncio

import pytest
from servekit import server_process, uvicorn_thread

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams
from decoder.serve.app import create_app
from decoder.serve.chat import TURN_STOPS, render
from decoder.serve.config import ServeConfig
from decoder.serve.protocol import ChatMessage

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")

PROMPT = "Harding wondered"
MESSAGES = [{"role": "user", "content": "Harding"}]  # 13 tokens of the tiny model's 16-token context
MAX_TOKENS = 20  # past the context: the window slides
REPEATS = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}
"""Our fields beyond OpenAI's (the client's extra_body): plain greedy text of the tiny model is all newlines."""
GREEDY = {"temperature": 0, "extra_body": REPEATS}


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def expected(runtime) -> dict[str, str]:
    """Greedy continuations straight from the runtime: of the prompt, and of the rendered chat (cut at a new turn)."""
    greedy = SamplingParams(temperature=0.0, **REPEATS)
    chat = runtime.generate(render([ChatMessage(**m) for m in MESSAGES]), max_new_tokens=MAX_TOKENS, params=greedy)
    cut = min((i for i in (chat.find(s) for s in TURN_STOPS) if i >= 0), default=len(chat))
    return {"completion": runtime.generate(PROMPT, max_new_tokens=MAX_TOKENS, params=greedy), "chat": chat[:cut]}


@pytest.fixture(scope="module")
def url(onnx_bundle):
    with server_process(onnx_bundle, "--served-model-name", "verne") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def bundle_greedy(runtime) -> dict[str, str]:
    """Greedy continuations under the bundle's sampling config (the server's defaults: repetition
    penalty 1.2, no repeated 4-grams), of the prompt and of the rendered chat (cut at a new turn)."""
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.2, no_repeat_ngram_size=4)
    chat = runtime.generate(render([ChatMessage(**m) for m in MESSAGES]), max_new_tokens=MAX_TOKENS, params=greedy)
    cut = min((i for i in (chat.find(s) for s in TURN_STOPS) if i >= 0), default=len(chat))
    return {"completion": runtime.generate(PROMPT, max_new_tokens=MAX_TOKENS, params=greedy), "chat": chat[:cut]}


def test_models_list_names_the_served_model(client, runtime):
    names = [model.id for model in client.models.list()]
    assert names == ["verne", runtime.meta["run"]["id"]]
    assert client.models.retrieve("verne").id == "verne"


def test_completion_greedy_text_equals_runtime_generate_with_logprobs(client, expected):
    r = client.completions.create(model="verne", prompt=PROMPT, max_tokens=MAX_TOKENS, **GREEDY, logprobs=2)
    (choice,) = r.choices
    assert r.object == "text_completion" and r.model == "verne"
    assert choice.text == expected["completion"]
    assert choice.finish_reason in ("stop", "length")
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == r.usage.completion_tokens
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and top[token] == logprob  # the 2 most likely, and the token picked (after penalties)
        assert 1 <= len(top) <= 3 and sorted(top.values(), reverse=True)[0] >= logprob


def test_completion_stream_joins_to_the_text(client, expected):
    stream = client.completions.create(model="verne", prompt=PROMPT, max_tokens=MAX_TOKENS, **GREEDY,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["completion"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_chat_greedy_reply_equals_runtime_generate_of_the_rendered_prompt(client, expected):
    r = client.chat.completions.create(model="verne", messages=MESSAGES, max_completion_tokens=MAX_TOKENS,
                                       **GREEDY, seed=1)
    (choice,) = r.choices
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == expected["chat"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_role_first_then_content_joining_to_the_reply(client, expected):
    stream = client.chat.completions.create(model="verne", messages=MESSAGES, max_tokens=MAX_TOKENS, **GREEDY,
                                            stream=True)
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected["chat"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_async_client_over_uvicorn(runtime, expected):
    app = create_app(runtime, ServeConfig(max_batch=4, max_queue=8))

    async def calls(url: str) -> None:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
            (model,) = [m.id async for m in client.models.list()]
            completion, chat = await asyncio.gather(
                client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, **GREEDY),
                client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, **GREEDY))
            assert completion.choices[0].text == expected["completion"]
            assert chat.choices[0].message.content == expected["chat"]
            pieces = [c.choices[0].text async for c in await client.completions.create(
                model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, **GREEDY, stream=True)]
            assert "".join(pieces) == expected["completion"]
            deltas = [c.choices[0].delta async for c in await client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, **GREEDY, stream=True)]
            assert deltas[0].role == "assistant" and "".join(d.content or "" for d in deltas) == expected["chat"]
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model=model, messages=[{"role": "tool", "content": "x"}])
            assert caught.value.body["param"] == "messages.0.role"

    with uvicorn_thread(app) as (host, port):
        asyncio.run(calls(f"http://{host}:{port}"))


def test_langchain_openai_llm_with_its_default_parameters_invokes_and_streams(url, bundle_greedy):
    llms = pytest.importorskip("langchain_openai", reason="langchain-openai is in the dev extra")
    llm = llms.OpenAI(base_url=url + "/v1", api_key="unused", model="verne", max_retries=0, timeout=120)
    text = llm.invoke(PROMPT)  # LangChain's defaults: temperature 0.7, max_tokens 256, top_p 1, penalties 0, n 1
    pieces = list(llm.stream(PROMPT))
    assert isinstance(text, str) and text and pieces and all(isinstance(p, str) for p in pieces)
    greedy = llms.OpenAI(base_url=url + "/v1", api_key="unused", model="verne", temperature=0, max_tokens=MAX_TOKENS,
                         max_retries=0)
    assert greedy.invoke(PROMPT) == bundle_greedy["completion"]
    assert "".join(greedy.stream(PROMPT)) == bundle_greedy["completion"]


def test_langchain_chat_openai_invokes_and_streams(url, bundle_greedy):
    llms = pytest.importorskip("langchain_openai", reason="langchain-openai is in the dev extra")
    chat = llms.ChatOpenAI(base_url=url + "/v1", api_key="unused", model="verne", max_retries=0, timeout=120)
    assert isinstance(chat.invoke(MESSAGES).content, str)
    greedy = llms.ChatOpenAI(base_url=url + "/v1", api_key="unused", model="verne", temperature=0,
                             max_completion_tokens=MAX_TOKENS, max_retries=0)
    assert greedy.invoke(MESSAGES).content == bundle_greedy["chat"]
    assert "".join(chunk.content for chunk in greedy.stream(MESSAGES)) == bundle_greedy["chat"]


def test_the_openai_client_reads_chat_logprobs_and_streamed_completion_logprobs(client, expected):
    r = client.chat.completions.create(model="verne", messages=MESSAGES, max_tokens=MAX_TOKENS, **GREEDY,
                                       logprobs=True, top_logprobs=2)
    (choice,) = r.choices
    content = choice.logprobs.content
    assert choice.message.content == expected["chat"]
    assert "".join(t.token for t in content).startswith(choice.message.content) and content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes for t in content)
    chunks = list(client.completions.create(model="verne", prompt=PROMPT, max_tokens=MAX_TOKENS, **GREEDY,
                                            logprobs=1, stream=True))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert "".join(tokens).replace("<|endoftext|>", "") == expected["completion"]
