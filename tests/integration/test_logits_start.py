"""The graph's optional `logits_start` input: the last position's logits alone, the same numbers as
the full graph's, fed by the runtime when it generates; bundles without it still generate alike."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from decoder import export as export_module
from decoder.bundle import INT8_MODEL_FILE, LOGITS, LOGITS_START, MODEL_FILE, output_names
from decoder.checkpoint import load_model
from decoder.export import export_model
from decoder.kvcache import left_padded
from decoder.logits_start import with_logits_start
from decoder.runtime import Runtime
from decoder.sampling import SamplingParams


def prompts_of(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(text) for text in ("The sea was calm", "Harding", "and the engineer said that he")]


@pytest.mark.parametrize("name", [MODEL_FILE, INT8_MODEL_FILE])
def test_the_last_position_alone_is_the_full_graphs_last_position(onnx_bundle, name):
    """[-1] gives (B, 1, V): bit for bit the full graph's last column (for int8 too: the slice comes
    after the activation quantization), the same presents, and not feeding it gives every position."""
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    session = ort.InferenceSession(str(onnx_bundle / name), providers=["CPUExecutionProvider"])
    heads, blocks = meta["model"]["n_heads"], meta["model"]["n_blocks"]
    head_dim = meta["model"]["d_model"] // heads
    ids, mask, positions = left_padded(prompts_of(Runtime(onnx_bundle).tokenizer))
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    feed |= {f"past_{k}_{i}": np.zeros((3, heads, 0, head_dim), np.float32) for i in range(blocks) for k in ("key", "value")}
    names = output_names(blocks)
    full = session.run(names, feed)
    last = session.run(names, {**feed, LOGITS_START: np.array([-1], dtype=np.int64)})
    first = session.run(names, {**feed, LOGITS_START: np.array([0], dtype=np.int64)})
    assert full[0].shape == (3, ids.shape[1], meta["model"]["vocab_size"]) and last[0].shape == (3, 1, full[0].shape[2])
    np.testing.assert_array_equal(last[0][:, 0], full[0][:, -1])
    for a, b, c in zip(full[1:], last[1:], first[1:]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(first[0], full[0])


class Feeds:
    """Records what the runtime feeds its session and the logits' shapes it gets back."""

    def __init__(self, runtime: Runtime) -> None:
        self.calls: list[tuple[bool, tuple]] = []
        self._run = runtime.session.run
        runtime.session.run = self

    def __call__(self, names, feed):
        out = self._run(names, feed)
        self.calls.append((LOGITS_START in feed, out[0].shape))
        return out


def test_the_runtime_asks_for_the_last_position_only_when_generating(onnx_bundle):
    runtime = Runtime(onnx_bundle, threads=1)
    feeds = Feeds(runtime)
    prompts = prompts_of(runtime.tokenizer)
    logits, cache = runtime.prefill(prompts)
    runtime.decode(cache, np.array([1, 2, 3]))
    list(runtime.generate_ids(prompts[0], max_new_tokens=3, params=SamplingParams(greedy=True)))
    scored, _ = runtime.run(np.array([prompts[0]]))
    V = logits.shape[1]
    assert feeds.calls == [(True, (3, 1, V)), (True, (3, 1, V)),  # prefill, decode
                           (True, (1, 1, V)), (True, (1, 1, V)), (True, (1, 1, V)),  # generate_ids
                           (False, (1, len(prompts[0]), V))]  # run: every position, for scoring
    np.testing.assert_array_equal(logits[0], runtime.run(np.array([prompts[0]]))[0][0, -1])
    assert scored.shape == (1, len(prompts[0]), V)


def test_a_bundle_without_the_input_generates_the_same_text(tmp_path, onnx_run, onnx_bundle, monkeypatch):
    """A graph the rewrite does not recognise (or one exported before it) has no `logits_start`:
    the runtime slices the logits after the run and the text is the same."""
    model, tokenizer, config, meta = load_model(onnx_run)
    monkeypatch.setattr(export_module, "add_logits_start", lambda path: False)
    plain = export_model(model, tokenizer, config, tmp_path / "plain", run_meta=meta)
    graph = onnx.load(str(plain / MODEL_FILE)).graph
    assert LOGITS_START not in [i.name for i in graph.input]
    assert "optional_inputs" not in json.loads((plain / "bundle.json").read_text())
    params = SamplingParams(temperature=1.0, top_k=20)
    old, new = Runtime(plain, threads=1), Runtime(onnx_bundle, threads=1)
    prompts = [tokenizer.decode(p) for p in prompts_of(tokenizer)]
    assert old.generate(prompts, max_new_tokens=40, params=params, seed=3) == \
        new.generate(prompts, max_new_tokens=40, params=params, seed=3)
    np.testing.assert_allclose(old.prefill(prompts_of(tokenizer))[0], new.prefill(prompts_of(tokenizer))[0],
                               rtol=0, atol=1e-5)


def test_a_graph_whose_output_is_not_a_matmul_is_left_unchanged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])
    out = helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "seq", 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], [LOGITS], axis=-1)], "g", [x], [out])
    proto = helper.make_model(graph)
    before = proto.SerializeToString()
    assert not with_logits_start(proto)
    assert proto.SerializeToString() == before


def test_prefill_logits_benchmark_reports_each_shape(onnx_bundle):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "bench.prefill_logits", str(onnx_bundle), "--tokens", "4,8,999",
                           "--rows", "1,2", "--rounds", "2"], capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in done.stdout.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "4"), ("1", "8"), ("2", "4"), ("2", "8")]  # 999 > context: left out
    for row in rows:
        every, last, ratio = map(float, row[2:])
        assert every > 0 and last > 0 and ratio == pytest.approx(last / every, rel=0.05)
