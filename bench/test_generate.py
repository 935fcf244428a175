"""Generation throughput: batch 1 and 8, 128 new tokens after a 16-token prompt, greedy.

The model is the ONNX deployment shape (6 blocks, 6 heads, d_model 384, context 256) over
the book's compact vocabulary, with random weights (speed does not depend on them). Engines:

- torch without cache: the reference notebook's way, every step re-runs the last context tokens;
- torch with the KV cache (decoder.generate);
- Hugging Face transformers GPT2LMHeadModel.generate of the same shape (its own KV cache);
- onnxruntime fp32 and dynamic int8 with the KV cache (decoder.export + decoder.runtime), and
  onnxruntime-genai on the same model files and threads (bench/genai_baseline.py), timed
  alternating with decoder.runtime, greedy ids checked equal.

Tokens/s counts the new tokens (batch x 128) over the whole call, prompt prefill included.
`weight_bytes` (what one decoding step streams from memory) lets the report compute the
memory-bandwidth bound: batch x read bandwidth / weight bytes tokens per second.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import genai_baseline
from bench.common import DEVICES, GENERATION_SIZE, NEW_TOKENS, PROMPT_TOKENS, measure, weight_bytes
from decoder.config import RunConfig
from decoder.generate import generate_ids
from decoder.model import GPT
from decoder.sampling import SamplingParams

BATCHES = [1, 8]
GREEDY = SamplingParams(greedy=True)
ORT_DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skip(
        reason="decoder.runtime runs onnxruntime on its CPU execution provider: there is no CUDA onnxruntime row")),
]


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    """Random weights; no engine stops at <|endoftext|>, so each generates exactly 128 tokens."""
    torch.manual_seed(0)
    return GPT(GENERATION_SIZE.model, tokenizer.vocab_size).eval()


def prompt(batch: int, vocab_size: int) -> np.ndarray:
    return np.random.default_rng(batch).integers(0, vocab_size, (batch, PROMPT_TOKENS), dtype=np.int64)


def check_steps(steps: list, batch: int) -> None:
    assert len(steps) == NEW_TOKENS
    assert all(np.asarray(s).shape == (batch,) for s in steps)


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("device", DEVICES)
def test_generate_torch(benchmark, timing, tokenizer, model, device: str, batch: int, cache: bool) -> None:
    gpt = copy.deepcopy(model).to(device)
    ids = prompt(batch, tokenizer.vocab_size)

    def run() -> list:
        return list(generate_ids(gpt, ids, max_new_tokens=NEW_TOKENS, params=GREEDY, seed=0,
                                 eot_id=None, use_cache=cache, device=device))

    steps = measure(benchmark, run, device=device, timing=timing, workload="generate", model=GENERATION_SIZE.name,
                    engine="torch kv-cache" if cache else "torch uncached", precision="fp32", batch=batch,
                    tokens=batch * NEW_TOKENS, weight_bytes=weight_bytes(gpt))
    check_steps(steps, batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("device", DEVICES)
def test_generate_transformers(benchmark, timing, tokenizer, device: str, batch: int) -> None:
    pytest.importorskip("transformers", reason="Hugging Face transformers is not installed: it is an optional "
                                               "benchmark-only dependency (pip install -e '.[hf]')")
    from bench.hf_baseline import generate, gpt2_like

    hf = gpt2_like(GENERATION_SIZE.model, tokenizer.vocab_size).to(device)
    ids = torch.from_numpy(prompt(batch, tokenizer.vocab_size)).to(device)
    out = measure(benchmark, lambda: generate(hf, ids, NEW_TOKENS), device=device, timing=timing,
                  workload="generate", model=GENERATION_SIZE.name, engine="transformers", precision="fp32",
                  batch=batch, tokens=batch * NEW_TOKENS, weight_bytes=weight_bytes(hf))
    assert out.shape == (batch, PROMPT_TOKENS + NEW_TOKENS)
    assert torch.equal(out[:, :PROMPT_TOKENS], ids)


@pytest.fixture(scope="module")
def onnx_bundle(model, tokenizer, tmp_path_factory) -> Path:
    """fp32 and int8 exports of `model`, made once for the module. The int8 agreement figure that
    export computes is scored on a few tokens only: with random weights it means nothing here."""
    try:
        from decoder.export import export_model
    except ImportError as exc:
        pytest.skip(f"decoder.export is not importable ({exc}): the onnxruntime rows need the [export] extra")
    few_tokens = np.random.default_rng(0).integers(0, tokenizer.vocab_size, 65, dtype=np.int64)
    return Path(export_model(model, tokenizer, RunConfig(model=GENERATION_SIZE.model),
                             tmp_path_factory.mktemp("onnx") / "bundle", quantize="int8", val_tokens=few_tokens))


@pytest.fixture(scope="module")
def onnx_engines(onnx_bundle):
    """(precision, engine) -> a callable generating NEW_TOKENS greedy ids (B, NEW_TOKENS) for (B, T)
    prompts: decoder.runtime and onnxruntime-genai on the same model file, with the same threads."""
    from decoder.runtime import Runtime

    threads = torch.get_num_threads()
    engines = {}
    for precision, model_file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        runtime = Runtime(onnx_bundle, model_file=model_file, threads=threads)
        engines[precision, "onnxruntime"] = lambda ids, rt=runtime: np.stack(list(rt.generate_ids(
            ids, max_new_tokens=NEW_TOKENS, params=GREEDY, seed=0, use_cache=True, stop_at_eot=False)), axis=1)
        try:
            genai = genai_baseline.open_model(onnx_bundle, int8=precision == "int8", threads=threads)
        except ImportError:
            continue
        engines[precision, "onnxruntime-genai"] = lambda ids, m=genai: genai_baseline.generate(m, ids, NEW_TOKENS)
    return engines


@pytest.mark.parametrize("engine", ["onnxruntime", "onnxruntime-genai"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("device", ORT_DEVICES)
def test_generate_onnxruntime(benchmark, timing, tokenizer, onnx_bundle, onnx_engines, device: str, batch: int,
                              precision: str, engine: str) -> None:
    """decoder.runtime and onnxruntime-genai side by side: each engine's timed rounds alternate with
    untimed calls of the other, and their greedy ids must be equal (without onnxruntime-genai,
    decoder.runtime is timed alone)."""
    other = "onnxruntime-genai" if engine == "onnxruntime" else "onnxruntime"
    if (precision, engine) not in onnx_engines:
        pytest.skip("onnxruntime-genai is not installed: its rows need the [genai] extra")
    ids = prompt(batch, tokenizer.vocab_size)
    run, rival = onnx_engines[precision, engine], onnx_engines.get((precision, other))
    expected = rival(ids) if rival else None
    model_file = "model.onnx" if precision == "fp32" else "model.int8.onnx"
    out = measure(benchmark, lambda: run(ids), device=device, timing=timing,
                  between=(lambda: rival(ids)) if rival else None, workload="generate", model=GENERATION_SIZE.name,
                  engine=engine, precision=precision, batch=batch, tokens=batch * NEW_TOKENS,
                  weight_bytes=(onnx_bundle / model_file).stat().st_size)
    assert out.shape == (batch, NEW_TOKENS)
    if expected is not None:
        np.testing.assert_array_equal(out, expected, err_msg=f"{engine} and {other} disagree on greedy ids")


def test_scheduler_overhead_times_both_loops_through_one_runtime(onnx_bundle):
    import math

    from bench.scheduler_overhead import Timed, measure, offline, scheduled
    from decoder.serve.config import load_runtime

    runtime = load_runtime(onnx_bundle, "model.onnx", 1)
    timer = Timed(runtime)
    assert offline(runtime, 2, 6) == 6 and timer.calls == 6  # one prefill, then a decode per token
    steps = scheduled(runtime, 2, 6)
    assert 1 <= steps <= 6 and timer.calls >= 6 + steps  # every scheduler step ran the graph
    result = measure(runtime, timer, 2, 4, rounds=1)
    assert set(result) == {"scheduler", "offline"}
    assert all(math.isfinite(v) and v > 0 for row in result.values() for v in row)


def test_core_contention_times_the_loop_alone_and_beside_each_neighbour(onnx_bundle, tmp_path):
    import math
    import os

    from bench.core_contention import measure
    from decoder.serve.config import load_runtime

    runtime = load_runtime(onnx_bundle, "model.onnx", 1)
    flag = tmp_path / "ran"
    neighbours = {"alone": None, "python": (f"open({str(flag)!r}, 'w').write('x')", "pass")}
    result = measure(runtime, 2, 4, rounds=1, other_cpu=sorted(os.sched_getaffinity(0))[-1], neighbours=neighbours)
    assert set(result) == {"alone", "python"}
    assert all(math.isfinite(v) and v > 0 for v in result.values())
    assert flag.read_text() == "x"  # the neighbour was set up before the loop was timed
