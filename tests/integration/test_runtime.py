"""The onnxruntime runtime: same text as PyTorch, batching, streaming, no torch, bad bundles and input."""

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from decoder.cli import main as cli_main
from decoder.export import export_model
from decoder.generate import generate_ids as torch_generate_ids
from decoder.generate import generate_text
from decoder.model import GPT
from decoder.bundle import INT8_MODEL_FILE, MODEL_FILE, BundleError, sha256_of
from decoder.runtime import Runtime
from decoder.config import SamplingConfig
from decoder.sampling import SamplingParams
from decoder.checkpoint import load_model
from decoder.runs import RunDir

GREEDY = SamplingParams(greedy=True)
SAMPLED = SamplingParams(temperature=1.0, top_k=40, top_p=0.95)
# Words of the training text (in the compact vocabulary), and one prompt longer than the context.
PROMPTS = ["The sea", "He said that", "and the engineer", "Harding wondered"]


@pytest.fixture(scope="module")
def sharp(onnx_run, tmp_path_factory):
    """(model, tokenizer, its bundle): random weights scaled up 25x. A tiny model trained for
    seconds barely looks at its context (greedy text is newlines whatever the prompt); these
    weights give varied, context-dependent text with clear argmax margins, so a cache or position
    mistake changes the text."""
    _, tokenizer, config, _ = load_model(onnx_run)
    torch.manual_seed(0)
    model = GPT(config.model, tokenizer.vocab_size).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(25.0)
    bundle = export_model(model, tokenizer, config, tmp_path_factory.mktemp("sharp") / "bundle")
    return model, tokenizer, bundle


@pytest.fixture(scope="module")
def model_and_tokenizer(sharp):
    return sharp[0], sharp[1]


@pytest.fixture(scope="module")
def runtime(sharp):
    return Runtime(sharp[2], threads=1)


@pytest.fixture
def bundle_copy(tmp_path, onnx_bundle):
    """A private copy of the bundle that a test may damage."""
    return shutil.copytree(onnx_bundle, tmp_path / "bundle")


def both_ids(model, runtime, prompt_ids, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(steps, B) token ids from PyTorch and from onnxruntime for the same arguments."""
    ours = np.stack(list(runtime.generate_ids(prompt_ids, stop_at_eot=False, **kwargs)))
    theirs = np.stack(list(torch_generate_ids(model, prompt_ids, **kwargs)))
    return ours, theirs


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_text_is_identical_to_pytorch(model_and_tokenizer, runtime, prompt, params):
    model, tokenizer = model_and_tokenizer
    kwargs = dict(max_new_tokens=12, params=params, seed=7)
    ours = runtime.generate(prompt, **kwargs)
    assert ours == generate_text(model, tokenizer, prompt, **kwargs)
    assert "".join(runtime.stream(prompt, **kwargs)) == ours


def test_text_depends_on_prompt_and_seed(runtime):
    greedy = {runtime.generate(p, max_new_tokens=12, params=GREEDY) for p in PROMPTS}
    sampled = {runtime.generate("The sea", max_new_tokens=12, params=SAMPLED, seed=s) for s in range(4)}
    assert len(greedy) == len(PROMPTS) and len(sampled) == 4


def test_trained_model_text_is_identical_to_pytorch(onnx_run, onnx_bundle):
    model, tokenizer, _, _ = load_model(onnx_run)
    runtime = Runtime(onnx_bundle, threads=1)
    for params in (GREEDY, SAMPLED):
        kwargs = dict(max_new_tokens=20, params=params, seed=1)
        assert runtime.generate("The sea", **kwargs) == generate_text(model, tokenizer, "The sea", **kwargs)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_generation_past_the_context_slides_like_pytorch(model_and_tokenizer, runtime, params, use_cache):
    model, tokenizer = model_and_tokenizer
    prompt = np.array([tokenizer.encode(p)[:2] for p in PROMPTS])  # (4, 2): a batch of equal lengths
    steps = 3 * model.config.context_length  # the window slides several times
    ours, theirs = both_ids(model, runtime, prompt, max_new_tokens=steps, params=params, seed=3,
                            use_cache=use_cache)
    assert ours.shape == (steps, len(PROMPTS))
    np.testing.assert_array_equal(ours, theirs)


def test_a_prompt_longer_than_the_context_keeps_its_end(model_and_tokenizer, runtime):
    model, tokenizer = model_and_tokenizer
    long_prompt = tokenizer.encode(" ".join(PROMPTS * 3))
    assert len(long_prompt) > model.config.context_length
    ours, theirs = both_ids(model, runtime, long_prompt, max_new_tokens=8, params=GREEDY)
    np.testing.assert_array_equal(ours, theirs)


def test_batch_groups_equal_length_prompts_and_keeps_order(runtime):
    prompts = ["The sea", "He said that", "The island", "and the engineer", "The sea"]
    lengths = [len(runtime.tokenizer.encode(p)) for p in prompts]
    assert len(set(lengths)) < len(prompts)  # at least one group of several prompts
    batch = runtime.generate(prompts, max_new_tokens=10, params=GREEDY)
    alone = [runtime.generate(p, max_new_tokens=10, params=GREEDY) for p in prompts]
    assert batch == alone and batch[0] == batch[4]
    solo = next(i for i, n in enumerate(lengths) if lengths.count(n) == 1)  # a group of one
    sampled = runtime.generate(prompts, max_new_tokens=10, params=SAMPLED, seed=5)
    assert sampled[solo] == runtime.generate(prompts[solo], max_new_tokens=10, params=SAMPLED, seed=5)


def test_int8_model_generates(onnx_bundle):
    runtime = Runtime(onnx_bundle, quantized=True, threads=1)
    ids = list(runtime.generate_ids(runtime.tokenizer.encode("The sea"), max_new_tokens=8, params=GREEDY,
                                    stop_at_eot=False))
    assert len(ids) == 8 and all(0 <= int(t[0]) < runtime.tokenizer.vocab_size for t in ids)


def test_quantized_loads_the_int8_file(onnx_bundle):
    ids = np.array([[5, 9, 2, 7]])
    int8 = Runtime(onnx_bundle, quantized=True, threads=1).run(ids)[0]
    named = Runtime(onnx_bundle, model_file=INT8_MODEL_FILE, threads=1).run(ids)[0]
    fp32 = Runtime(onnx_bundle, threads=1).run(ids)[0]
    np.testing.assert_array_equal(int8, named)
    assert not np.allclose(int8, fp32, atol=1e-4)
    with pytest.raises(ValueError, match="quantized=True loads model.int8.onnx"):
        Runtime(onnx_bundle, quantized=True, model_file=MODEL_FILE)


def test_properties_come_from_the_bundle(runtime, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert runtime.context_length == model.config.context_length
    assert runtime.tokenizer.to_dict() == tokenizer.to_dict() and runtime.eot_id == tokenizer.eot_id


def cli_params(**kwargs) -> SamplingParams:
    """What `decoder generate` samples with: its options over the config's defaults (repetition
    controls included)."""
    defaults = SamplingConfig()
    return SamplingParams(repetition_penalty=defaults.repetition_penalty,
                          no_repeat_ngram_size=defaults.no_repeat_ngram_size, **kwargs)


def test_generate_command_with_onnx_prints_prompt_and_continuation(sharp, runtime, capsys):
    args = ["generate", "--onnx", str(sharp[2]), "--prompt", "The engineer", "--max-new-tokens", "9",
            "--seed", "2", "--top-k", "40"]
    assert cli_main(args) == 0
    expected = runtime.generate("The engineer", max_new_tokens=9, params=cli_params(top_k=40), seed=2)
    assert capsys.readouterr().out == "The engineer" + expected + "\n"


TORCH_FREE = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    from decoder.runtime import Runtime
    from decoder.sampling import SamplingParams

    runtime = Runtime(sys.argv[1], threads=1)
    greedy = runtime.generate(sys.argv[2], max_new_tokens=12, params=SamplingParams(greedy=True))
    sampled = runtime.generate(sys.argv[2], max_new_tokens=12, params=SamplingParams(top_k=40), seed=4)
    torch_modules = [m for m in sys.modules if m.split(".")[0] == "torch"]
    print(json.dumps({"greedy": greedy, "sampled": sampled, "torch": torch_modules}))
""")


def test_runtime_works_where_torch_cannot_be_imported(sharp, tmp_path):
    model, tokenizer, bundle = sharp
    prompt = "He said that"
    script = tmp_path / "torch_free.py"
    script.write_text(TORCH_FREE)
    result = subprocess.run([sys.executable, str(script), str(bundle), prompt], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["torch"] == []
    assert out["greedy"] == generate_text(model, tokenizer, prompt, max_new_tokens=12, params=GREEDY)
    assert out["sampled"] == generate_text(model, tokenizer, prompt, max_new_tokens=12,
                                           params=SamplingParams(top_k=40), seed=4)


CLI_TORCH_FREE = TORCH_FREE.split("from decoder.runtime")[0] + textwrap.dedent("""
    from decoder.cli import main

    code = main(sys.argv[1:])
    print("torch modules:", [m for m in sys.modules if m.split(".")[0] == "torch"], file=sys.stderr)
    sys.exit(code)
""")


def test_generate_command_works_where_torch_cannot_be_imported(sharp, runtime, tmp_path):
    """A deployment machine installs numpy, onnxruntime and tiktoken only: `decoder generate --onnx`
    must still run there, and its bad input must still be a one-line error."""
    bundle = sharp[2]
    script = tmp_path / "cli_torch_free.py"
    script.write_text(CLI_TORCH_FREE)
    args = ["generate", "--onnx", str(bundle), "--prompt", "The engineer", "--max-new-tokens", "9", "--seed", "2",
            "--top-k", "40"]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = runtime.generate("The engineer", max_new_tokens=9, params=cli_params(top_k=40), seed=2)
    assert result.stdout == "The engineer" + expected + "\n"
    assert "torch modules: []" in result.stderr
    (tmp_path / "broken").mkdir()
    bad = subprocess.run([sys.executable, str(script), "generate", "--onnx", str(tmp_path / "broken")],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in bad.stderr.splitlines() if not line.startswith("torch modules:")]
    assert bad.returncode == 2 and len(errors) == 1 and "not a bundle" in errors[0], bad.stderr


def test_the_torch_blocker_really_blocks(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(TORCH_FREE.split("from decoder.runtime")[0] + "import decoder.generate\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "torch is blocked in this test" in result.stderr


def set_bundle_json(bundle, **changes):
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.update(changes)
    (bundle / "bundle.json").write_text(json.dumps(meta))


def damage_missing_model(bundle):
    (bundle / MODEL_FILE).unlink()


def damage_truncated_model(bundle):
    data = (bundle / MODEL_FILE).read_bytes()
    (bundle / MODEL_FILE).write_bytes(data[: len(data) // 2])


def damage_flipped_byte(bundle):
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / MODEL_FILE).write_bytes(bytes(data))


def damage_garbage_model_with_matching_sha(bundle):
    (bundle / MODEL_FILE).write_bytes(b"not an onnx graph")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["files"][MODEL_FILE] = {"sha256": sha256_of(bundle / MODEL_FILE), "bytes": 17}
    (bundle / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (damage_missing_model, "model.onnx: missing"),
    (damage_truncated_model, "model.onnx: truncated or changed"),
    (damage_flipped_byte, "model.onnx: sha256 does not match bundle.json"),
    (damage_garbage_model_with_matching_sha, "cannot load it (the graph uses ONNX opset 23"),
    (lambda b: set_bundle_json(b, format=99), "bundle format 99 is unknown; this runtime reads format 2"),
    (lambda b: set_bundle_json(b, format=1),
     "bundle format 1 has no attention_mask/position_ids inputs; this runtime reads format 2: "
     "re-export it with `decoder export RUN --out BUNDLE`"),
    (lambda b: (b / "bundle.json").unlink(), "not a bundle (no bundle.json)"),
    (lambda b: (b / "bundle.json").write_text("{not json"), "bundle.json: unreadable"),
    (lambda b: set_bundle_json(b, context_length=None), "bundle.json: bad or missing entry"),
])
def test_a_damaged_bundle_is_refused_in_one_line(bundle_copy, damage, message, capsys):
    damage(bundle_copy)
    with pytest.raises(BundleError) as info:
        Runtime(bundle_copy)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert cli_main(["generate", "--onnx", str(bundle_copy), "--prompt", "Harding"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decoder generate: error:") and message in err and err.count("\n") == 1


def test_an_unlisted_model_file_is_refused(onnx_bundle):
    with pytest.raises(BundleError, match="model.fp16.onnx is not part of this bundle"):
        Runtime(onnx_bundle, model_file="model.fp16.onnx")


@pytest.mark.parametrize("call, message", [
    (lambda rt: rt.generate("", max_new_tokens=5, params=GREEDY), "prompt is empty"),
    (lambda rt: rt.generate(["ok", ""], max_new_tokens=5, params=GREEDY), "prompt 1 is empty"),
    (lambda rt: rt.generate([], max_new_tokens=5, params=GREEDY), "no prompts"),
    (lambda rt: rt.stream("", max_new_tokens=5, params=GREEDY), "prompt is empty"),
    (lambda rt: rt.stream("Harding", max_new_tokens=0, params=GREEDY), "max_new_tokens=0: must be >= 1"),
    (lambda rt: rt.generate("Harding", max_new_tokens=-3, params=GREEDY), "max_new_tokens=-3: must be >= 1"),
    (lambda rt: rt.generate_ids([], max_new_tokens=5, params=GREEDY), "prompt is empty"),
])
def test_bad_generation_arguments_raise_before_any_work(runtime, call, message):
    with pytest.raises(ValueError, match=message):
        call(runtime)


def test_bad_thread_count_is_refused(onnx_bundle):
    with pytest.raises(ValueError, match="threads=0: must be >= 1"):
        Runtime(onnx_bundle, threads=0)


# --- the step API and the batch cache (rows of different lengths) ---------------------------------

BATCH_LENGTHS = [2, 4, 9, 3]
"""Prompt lengths (tokens) of the batch tests: prompt 2 is the longest."""


def batch_prompts(runtime) -> list[list[int]]:
    text = runtime.tokenizer.encode(" ".join(PROMPTS))
    return [text[i : i + n] for i, n in enumerate(BATCH_LENGTHS)]


def alone(runtime, ids, n, params=GREEDY, seed=0) -> list[int]:
    steps = runtime.generate_ids(ids, max_new_tokens=n, params=params, seed=seed, stop_at_eot=False)
    return [int(t[0]) for t in steps]


def test_padded_prefill_and_steps_give_each_rows_own_logits(runtime):
    prompts = batch_prompts(runtime)
    logits, cache = runtime.prefill(prompts)
    assert cache.width == max(len(p) for p in prompts) and cache.lengths.tolist() == [len(p) for p in prompts]
    tokens = np.array([7, 3, 11, 2])
    stepped, cache = runtime.decode(cache, tokens)
    for i, p in enumerate(prompts):
        first, past = runtime.run(np.array([p]))
        np.testing.assert_allclose(logits[i], first[0, -1], rtol=0, atol=1e-4)
        second, _ = runtime.run(tokens[i : i + 1, None], past)
        np.testing.assert_allclose(stepped[i], second[0, -1], rtol=0, atol=1e-4)


def test_continuous_batching_with_the_step_api_equals_each_prompt_alone(runtime):
    """Rows join (prefilled alone, left-padded into the batch) and leave (selected out, the cache
    trimmed) while others decode; greedy tokens are each prompt's own."""
    prompts = batch_prompts(runtime)
    logits, cache = runtime.prefill(prompts[:2])
    rows, out = [0, 1], {0: [], 1: []}
    for step in range(8):
        tokens = logits.argmax(axis=-1)
        for row, token in zip(rows, tokens):
            out[row].append(int(token))
        if step == 2:  # prompt 2, longer than the batch's cache, joins
            new_logits, new_cache = runtime.prefill([prompts[2]])
            logits, cache = runtime.decode(cache, tokens)
            logits, cache = np.concatenate([logits, new_logits]), type(cache).concat([cache, new_cache])
            rows, out[2] = rows + [2], []
            continue
        if step == 4:  # prompt 2 leaves after 2 tokens, the longest row: the padding it caused goes
            keep = [i for i, r in enumerate(rows) if r != 2]
            widest = cache.width
            cache, tokens, rows = cache.select(keep), tokens[keep], [rows[i] for i in keep]
            assert cache.width < widest and cache.lengths.max() == cache.width
        logits, cache = runtime.decode(cache, tokens)
    for row, tokens in out.items():
        assert tokens == alone(runtime, prompts[row], len(tokens)), row


def test_seeded_sampling_per_row_is_independent_of_the_batch(runtime):
    from decoder.sampling import next_tokens

    prompts = batch_prompts(runtime)
    rngs = [np.random.default_rng(100 + i) for i in range(len(prompts))]
    logits, cache = runtime.prefill(prompts)
    out = [[] for _ in prompts]
    for _ in range(6):
        tokens = next_tokens(logits, SAMPLED, rngs)
        for row, token in zip(out, tokens):
            row.append(int(token))
        logits, cache = runtime.decode(cache, tokens)
    for i, p in enumerate(prompts):
        assert out[i] == alone(runtime, p, 6, SAMPLED, seed=100 + i)


def test_step_refuses_positions_past_the_context_and_bad_shapes(runtime):
    ctx = runtime.context_length
    logits, cache = runtime.prefill([list(range(1, ctx + 1)), [1, 2]])
    assert cache.lengths.tolist() == [ctx, 2]
    with pytest.raises(ValueError, match=rf"position_ids reach {ctx}: positions must be in \[0, {ctx - 1}\]"):
        runtime.decode(cache, np.array([1, 1]))
    _, trimmed = runtime.decode(cache.select([1]), np.array([3]))  # the short row alone goes on
    assert trimmed.width == 3
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        runtime.prefill([[1], []])
    with pytest.raises(ValueError, match=r"attention_mask \(1, 2\) and position_ids \(1, 1\) must be"):
        runtime.step(np.array([[1]]), np.ones((1, 2)), np.zeros((1, 1)), None)


def test_batch_cache_operations():
    from decoder.kvcache import BatchCache, left_padded

    def cache(mask):
        mask = np.array(mask)
        values = np.cumsum(np.ones(mask.shape), axis=1)[:, None, :, None] * mask[:, None, :, None]
        return BatchCache([values.astype(np.float32)] * 2, mask)

    ids, mask, positions = left_padded([[5, 6, 7], [8]])
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(positions, [[0, 1, 2], [0, 0, 0]])
    a, b = cache([[1, 1, 1], [0, 1, 1]]), cache([[1]])
    joined = BatchCache.concat([a, b])
    np.testing.assert_array_equal(joined.mask, [[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(joined.past[0][2, 0, :, 0], [0, 0, 1])  # zero columns prepended
    assert joined.lengths.tolist() == [3, 2, 1]
    mask, positions = joined.next_inputs(2)
    np.testing.assert_array_equal(positions, [[3, 4], [2, 3], [1, 2]])
    assert mask.shape == (3, 5) and mask[:, 3:].all()
    rest = joined.select([2, 1])  # the longest row leaves: one all-padding column goes
    np.testing.assert_array_equal(rest.mask, [[0, 1], [1, 1]])
    np.testing.assert_array_equal(rest.past[1][:, 0, :, 0], [[0, 1], [2, 3]])
    assert joined.select([]).width == 0 and BatchCache.concat([joined.select([]), b]).mask.tolist() == [[1]]
    with pytest.raises(ValueError, match="do not match the mask"):
        BatchCache(a.past, np.ones((2, 4), dtype=np.int64))


# --- repetition controls: the same text from PyTorch and onnxruntime ------------------------------

REPETITION = [
    SamplingParams(greedy=True, repetition_penalty=1.5),
    SamplingParams(greedy=True, no_repeat_ngram_size=2),
    SamplingParams(temperature=0.8, top_k=40, repetition_penalty=1.3, no_repeat_ngram_size=3),
]


@pytest.mark.parametrize("params", REPETITION, ids=["penalty-greedy", "ngram-greedy", "both-sampled"])
def test_repetition_controls_give_the_same_text_in_pytorch_and_onnxruntime(model_and_tokenizer, runtime, params):
    model, tokenizer = model_and_tokenizer
    kwargs = dict(max_new_tokens=40, params=params, seed=5)  # past the context: the window slides
    for prompt in ("The sea", "He said that"):
        ours = runtime.generate(prompt, **kwargs)
        assert ours == generate_text(model, tokenizer, prompt, **kwargs)
    plain = dataclasses.replace(params, repetition_penalty=1.0, no_repeat_ngram_size=0)
    assert runtime.generate("The sea", **kwargs) != runtime.generate("The sea", **{**kwargs, "params": plain})


def test_no_repeat_ngram_leaves_no_repeated_ngram_in_the_text(runtime):
    prompt = runtime.tokenizer.encode("The sea")
    free = alone(runtime, prompt, 40)
    banned = alone(runtime, prompt, 40, SamplingParams(greedy=True, no_repeat_ngram_size=2))
    bigrams = lambda seq: [tuple(seq[i : i + 2]) for i in range(len(seq) - 1)]  # noqa: E731
    assert len(set(bigrams(prompt + free))) < len(bigrams(prompt + free))  # this model does repeat itself
    assert len(set(bigrams(prompt + banned))) == len(bigrams(prompt + banned))


# --- generate command: --quantized, --stop, repetition controls -------------------------------------


def test_generate_command_quantized_uses_the_int8_model(onnx_bundle, capsys):
    args = ["generate", "--onnx", str(onnx_bundle), "--prompt", "The sea", "--max-new-tokens", "12", "--greedy"]
    assert cli_main([*args, "--quantized"]) == 0
    expected = Runtime(onnx_bundle, quantized=True, threads=1).generate("The sea", max_new_tokens=12,
                                                                         params=cli_params(greedy=True))
    assert capsys.readouterr().out == "The sea" + expected + "\n"


def test_generate_command_stops_before_a_stop_string_split_across_tokens(sharp, runtime, capsys):
    full = runtime.generate("The engineer", max_new_tokens=20, params=cli_params(greedy=True))
    pieces = list(runtime.stream("The engineer", max_new_tokens=20, params=cli_params(greedy=True)))
    boundary = len(pieces[0]) + len(pieces[1])  # a stop string that spans the 2nd and 3rd tokens
    stop = full[boundary - 2 : boundary + 2]
    assert len(pieces[1]) >= 2 and len(pieces[2]) >= 2 and full.find(stop) == boundary - 2
    args = ["generate", "--onnx", str(sharp[2]), "--prompt", "The engineer", "--max-new-tokens", "20", "--greedy"]
    assert cli_main([*args, "--stop", "never there", "--stop", stop]) == 0
    assert capsys.readouterr().out == "The engineer" + full[: boundary - 2] + "\n"


def test_generate_command_repetition_controls_match_the_python_api(onnx_run, onnx_bundle, capsys):
    model, tokenizer, _, _ = load_model(onnx_run)
    params = SamplingParams(top_k=40, repetition_penalty=1.4, no_repeat_ngram_size=2)
    options = ["--prompt", "The sea", "--max-new-tokens", "16", "--top-k", "40", "--seed", "3",
               "--repetition-penalty", "1.4", "--no-repeat-ngram-size", "2"]
    expected = generate_text(model, tokenizer, "The sea", max_new_tokens=16, params=params, seed=3)
    assert expected == Runtime(onnx_bundle, threads=1).generate("The sea", max_new_tokens=16, params=params, seed=3)
    for source in (["--onnx", str(onnx_bundle)], [str(onnx_run)]):
        assert cli_main(["generate", *source, *options]) == 0
        assert capsys.readouterr().out == "The sea" + expected + "\n"


@pytest.mark.parametrize("options, message", [
    (["--quantized"], "--quantized picks a bundle's int8 model: give it with --onnx BUNDLE_DIR"),
    (["--stop", ""], "stop strings ['']: each must be non-empty text"),
    (["--repetition-penalty", "0"], "--repetition-penalty=0.0: must be > 0"),
    (["--no-repeat-ngram-size", "-2"], "--no-repeat-ngram-size=-2: must be >= 0"),
])
def test_generate_command_refuses_bad_options_in_one_line(onnx_run, options, message, capsys):
    assert cli_main(["generate", str(onnx_run), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decoder generate: error:") and message in err and err.count("\n") == 1


def test_end_of_run_samples_use_the_configs_repetition_controls(onnx_run, tmp_path):
    from decoder.generate import write_samples

    run = shutil.copytree(onnx_run, tmp_path / "run")
    model, tokenizer, config, _ = load_model(run)
    sampling = dataclasses.replace(config.sampling, max_new_tokens=30, repetition_penalty=1.3, no_repeat_ngram_size=2)
    samples = write_samples(RunDir(run), model, tokenizer, sampling, torch.device("cpu"))
    assert json.loads((run / "samples.json").read_text()) == samples
    for sample, params in zip(samples, [SamplingParams(greedy=True, repetition_penalty=1.3, no_repeat_ngram_size=2),
                                        SamplingParams(repetition_penalty=1.3, no_repeat_ngram_size=2)]):
        assert sample["repetition_penalty"] == 1.3 and sample["no_repeat_ngram_size"] == 2
        assert sample["text"] == generate_text(model, tokenizer, sampling.prompt, max_new_tokens=30, params=params,
                                               seed=sampling.seed)
    plain = generate_text(model, tokenizer, sampling.prompt, max_new_tokens=30, params=GREEDY)
    assert samples[0]["text"] != plain  # the controls change this model's greedy text
