"""onnxruntime-genai runs a bundle through its genai_config.json: the same greedy ids as the
project's runtime, for fp32 and int8."""

import json
import shutil

import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (the [genai] extra) is not installed")

from genaikit import genai_logits_gap  # noqa: E402

from decoder.bundle import GENAI_CONFIG_FILE, BundleError, input_names, output_names, sha256_of  # noqa: E402
from decoder.genai import INT8_OVERLAY, generate_ids, open_model  # noqa: E402
from decoder.runtime import Runtime  # noqa: E402
from decoder.sampling import GenerationError, SamplingParams  # noqa: E402

PROMPTS = ["Harding wondered", "The engineer", "\"Pencroft,\" said", "At last the", "It"]
NEUTRAL = dict(repetition_penalty=1.0, no_repeat_ngram_size=0)


@pytest.fixture(scope="module", params=[False, True], ids=["fp32", "int8"])
def pair(request, onnx_bundle):
    """(genai model, decoder Runtime) of the same model file."""
    return open_model(onnx_bundle, quantized=request.param), Runtime(onnx_bundle, quantized=request.param, threads=1)


def _ours(runtime, ids, n, **params):
    steps = runtime.generate_ids(ids, max_new_tokens=n, params=SamplingParams(greedy=True, **params))
    return [int(t[0]) for t in steps]


def test_genai_config_describes_the_graph(onnx_bundle):
    config = json.loads((onnx_bundle / GENAI_CONFIG_FILE).read_text())
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    model, decoder = config["model"], config["model"]["decoder"]
    n = meta["model"]["n_blocks"]
    assert model["type"] == "decoder" and decoder["filename"] == "model.onnx"
    assert model["bos_token_id"] == model["eos_token_id"] == model["pad_token_id"] == meta["eot_id"]
    assert (model["context_length"], model["vocab_size"]) == (meta["context_length"], meta["model"]["vocab_size"])
    assert decoder["num_hidden_layers"] == n and decoder["num_attention_heads"] == meta["model"]["n_heads"]
    assert decoder["head_size"] * decoder["num_attention_heads"] == decoder["hidden_size"] == meta["model"]["d_model"]
    inputs, outputs = decoder["inputs"], decoder["outputs"]
    named_in = [inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]]
    named_in += [inputs[f"past_{kind}_names"] % i for i in range(n) for kind in ("key", "value")]
    named_out = [outputs["logits"]]
    named_out += [outputs[f"present_{kind}_names"] % i for i in range(n) for kind in ("key", "value")]
    assert named_in == input_names(n) and named_out == output_names(n)
    assert config["search"]["do_sample"] is False and config["search"]["past_present_share_buffer"] is False
    assert meta["files"][GENAI_CONFIG_FILE] == {"sha256": sha256_of(onnx_bundle / GENAI_CONFIG_FILE),
                                                "bytes": (onnx_bundle / GENAI_CONFIG_FILE).stat().st_size}
    assert INT8_OVERLAY == {"model": {"decoder": {"filename": "model.int8.onnx"}}}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_ids_equal_the_runtime(pair, prompt):
    model, runtime = pair
    ids = runtime.tokenizer.encode(prompt)
    n = runtime.context_length - len(ids)
    theirs = generate_ids(model, ids, max_new_tokens=n, context_length=runtime.context_length, **NEUTRAL)
    assert theirs == _ours(runtime, ids, n, **NEUTRAL) and theirs


def test_logits_through_genais_cache_equal_the_runtime(pair):
    """At every step genai's logits (its own KV-cache handling: masks, positions, cache growth)
    are the runtime's with its cache: the prompt at once, then one token per step (the same
    chunks, which int8's dynamic activation scales depend on)."""
    model, runtime = pair
    assert genai_logits_gap(og, model, runtime, runtime.tokenizer.encode("Harding wondered")) <= 1e-4


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_default_repetition_controls_mean_the_same(pair, onnx_bundle, prompt):
    """The config's search defaults (the run's repetition_penalty and no_repeat_ngram_size) pick
    what decoder.sampling picks with them."""
    model, runtime = pair
    search = json.loads((onnx_bundle / GENAI_CONFIG_FILE).read_text())["search"]
    ids = runtime.tokenizer.encode(prompt)
    n = runtime.context_length - len(ids)
    theirs = generate_ids(model, ids, max_new_tokens=n, context_length=runtime.context_length)
    ours = _ours(runtime, ids, n, repetition_penalty=search["repetition_penalty"],
                 no_repeat_ngram_size=search["no_repeat_ngram_size"])
    assert theirs == ours
    stronger = dict(repetition_penalty=1.8, no_repeat_ngram_size=2)
    assert generate_ids(model, ids, max_new_tokens=n, context_length=runtime.context_length, **stronger) == \
        _ours(runtime, ids, n, **stronger)


def test_seeded_sampling_gives_valid_ids_of_the_requested_length(pair):
    model, runtime = pair
    ids = runtime.tokenizer.encode("Harding wondered")
    n = runtime.context_length - len(ids)
    search = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, random_seed=11, **NEUTRAL)
    first = generate_ids(model, ids, max_new_tokens=n, context_length=runtime.context_length, **search)
    again = generate_ids(model, ids, max_new_tokens=n, context_length=runtime.context_length, **search)
    vocab = runtime.tokenizer.vocab_size
    assert first == again and all(0 <= t < vocab for t in first)
    assert len(first) == n or first[-1] == runtime.eot_id
    top_k = generate_ids(model, ids, max_new_tokens=n, context_length=runtime.context_length,
                         **{**search, "top_k": 5, "random_seed": 12})
    assert len(top_k) == n or top_k[-1] == runtime.eot_id


def test_the_model_loads_without_tokenizer_files(onnx_bundle):
    assert not [p for p in onnx_bundle.iterdir() if p.name.startswith("tokenizer")]
    assert open_model(onnx_bundle).type == "decoder"


def test_generation_past_the_context_is_refused(onnx_bundle):
    model = open_model(onnx_bundle)
    with pytest.raises(GenerationError, match="within the context length 16"):
        generate_ids(model, [5] * 10, max_new_tokens=7, context_length=16)


def test_an_older_bundle_without_the_config_stays_readable(tmp_path, onnx_bundle):
    bundle = shutil.copytree(onnx_bundle, tmp_path / "old")
    (bundle / GENAI_CONFIG_FILE).unlink()
    meta = json.loads((bundle / "bundle.json").read_text())
    del meta["files"][GENAI_CONFIG_FILE]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    runtime = Runtime(bundle, threads=1)
    assert _ours(runtime, [5, 9, 2], 3) == _ours(Runtime(onnx_bundle, threads=1), [5, 9, 2], 3)
    with pytest.raises(BundleError, match=r"has no genai_config.json .* re-export it with `decoder export") as caught:
        open_model(bundle)
    assert "\n" not in str(caught.value)


def test_a_changed_config_is_refused(tmp_path, onnx_bundle):
    bundle = shutil.copytree(onnx_bundle, tmp_path / "changed")
    config = json.loads((bundle / GENAI_CONFIG_FILE).read_text())
    config["model"]["decoder"]["filename"] = "model.int8.onnx"
    (bundle / GENAI_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match="genai_config.json: (truncated or changed|sha256 does not match)"):
        open_model(bundle)
    np.testing.assert_equal(Runtime(bundle, threads=1).eot_id, Runtime(onnx_bundle, threads=1).eot_id)
