"""ONNX export: the graph's signature and checker, bundle.json, PyTorch parity, int8, the command."""

import dataclasses
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch

from decoder import export as export_module
from decoder.cli import main as cli_main
from decoder.model import GPT
from decoder.export import ExportError, export_model
from decoder.parity import int8_agreement, padded_parity_check, parity_check
from decoder.bundle import (
    BUNDLE_FORMAT,
    GENAI_CONFIG_FILE,
    INT8_MODEL_FILE,
    LOGITS_START,
    MODEL_FILE,
    input_names,
    output_names,
    sha256_of,
)
from decoder.runtime import Runtime
from decoder.checkpoint import load_model


@pytest.fixture(scope="module")
def loaded(onnx_run):
    """(model, tokenizer, config, meta) of the trained tiny run."""
    return load_model(onnx_run)


@pytest.fixture(scope="module")
def runtime(onnx_bundle):
    return Runtime(onnx_bundle, threads=1)


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", [MODEL_FILE, INT8_MODEL_FILE])
def test_graphs_pass_the_full_checker(onnx_bundle, name):
    onnx.checker.check_model(onnx.load(str(onnx_bundle / name)), full_check=True)


def test_graph_signature_has_dynamic_batch_seq_and_past(onnx_bundle, loaded):
    model = loaded[0]
    c = model.config
    graph = onnx.load(str(onnx_bundle / MODEL_FILE)).graph
    inputs = {i.name: dims(i) for i in graph.input}
    outputs = {o.name: dims(o) for o in graph.output}
    assert inputs.pop("input_ids") == ["batch", "seq"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert outputs.pop("logits") == ["batch", "seq", model.vocab_size]
    assert inputs.pop("attention_mask") == ["batch", "past + seq"]
    assert inputs.pop("position_ids") == ["batch", "seq"]
    assert inputs.pop(LOGITS_START) == [1]
    assert [i.name for i in graph.input] == [*input_names(c.n_blocks), LOGITS_START]
    assert [o.name for o in graph.output] == output_names(c.n_blocks)
    assert sorted(inputs) == sorted(f"past_{k}_{i}" for i in range(c.n_blocks) for k in ("key", "value"))
    assert set(map(tuple, inputs.values())) == {("batch", c.n_heads, "past", c.head_dim)}
    assert sorted(outputs) == sorted(n.replace("past", "present") for n in inputs)
    assert set(map(tuple, outputs.values())) == {("batch", c.n_heads, "past + seq", c.head_dim)}


def test_bundle_json_describes_model_tokenizer_run_and_files(onnx_bundle, onnx_run, loaded):
    model, tokenizer, config, meta = loaded
    bundle = json.loads((onnx_bundle / "bundle.json").read_text())
    assert bundle["format"] == BUNDLE_FORMAT == 2
    assert bundle["inputs"] == input_names(config.model.n_blocks)
    assert bundle["outputs"] == output_names(config.model.n_blocks)
    assert bundle["optional_inputs"] == [LOGITS_START]
    assert bundle["parity"]["padded_max_abs_logits_diff"] < 1e-4
    assert bundle["model"]["d_model"] == config.model.d_model and bundle["model"]["vocab_size"] == model.vocab_size
    assert bundle["tokenizer"] == tokenizer.to_dict() and bundle["tokenizer"]["compact"]
    assert bundle["eot_id"] == tokenizer.eot_id
    assert bundle["context_length"] == config.model.context_length
    assert bundle["opset"] == onnx.load(str(onnx_bundle / MODEL_FILE)).opset_import[0].version
    summary = json.loads((onnx_run / "summary.json").read_text())
    assert bundle["run"]["id"] == summary["run_id"] == meta["run_id"]
    assert bundle["run"]["val"]["val_bpb"] == summary["best_val_bpb"]
    assert bundle["run"]["source"] == str(onnx_run / "checkpoints" / "best.pt")
    assert sorted(bundle["files"]) == sorted([MODEL_FILE, INT8_MODEL_FILE, GENAI_CONFIG_FILE])
    for name in (MODEL_FILE, INT8_MODEL_FILE, GENAI_CONFIG_FILE):
        record = bundle["files"][name]
        assert record == {"sha256": sha256_of(onnx_bundle / name), "bytes": (onnx_bundle / name).stat().st_size}
    assert not [p for p in onnx_bundle.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_logits_match_pytorch_at_every_past_length(loaded, runtime):
    model = loaded[0]
    ctx = model.config.context_length
    diffs = parity_check(model, runtime, past_lengths=range(ctx), batch=2)
    assert sorted(diffs) == list(range(ctx))
    assert max(diffs.values()) < 1e-4, diffs


@pytest.mark.parametrize("batch, past, seq", [(1, 0, 16), (3, 5, 4), (2, 9, 7), (1, 15, 1)])
def test_multi_token_chunks_after_a_cache_match_pytorch(loaded, runtime, batch, past, seq):
    model = loaded[0]
    ids = torch.randint(0, model.vocab_size, (batch, past + seq), generator=torch.Generator().manual_seed(past))
    with torch.no_grad():
        expected, torch_past = model(ids[:, :past]) if past else (None, None)
        expected, presents = model(ids[:, past:], torch_past)
    ort_past = runtime.run(ids[:, :past].numpy())[1] if past else None
    logits, ort_presents = runtime.run(ids[:, past:].numpy(), ort_past)
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=1e-4)
    for (k, v), i in zip(presents, range(0, len(ort_presents), 2)):
        torch.testing.assert_close(torch.from_numpy(ort_presents[i]), k, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(ort_presents[i + 1]), v, rtol=0, atol=1e-5)


def test_padded_rows_match_pytorch_and_each_row_alone(loaded, runtime):
    """Left-padded rows of different lengths through the graph: every real column's logits equal
    PyTorch's for the same mask and positions, and the row's own logits run alone."""
    model = loaded[0]
    assert padded_parity_check(model, runtime, batch=4, seed=3) < 1e-4
    rows = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 6], [11]]
    logits, cache = runtime.prefill(rows)
    for i, row in enumerate(rows):
        with torch.no_grad():
            expected, _ = model(torch.tensor([row]))
        torch.testing.assert_close(torch.from_numpy(logits[i]), expected[0, -1], rtol=0, atol=1e-4)
    assert cache.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [1] * 7, [0] * 6 + [1]]


def test_position_ids_are_respected_by_the_graph(loaded, runtime):
    model = loaded[0]
    ids = np.array([[5, 9, 2, 7]] * 2)
    mask = np.ones((2, 4), dtype=np.int64)
    positions = np.array([[0, 1, 2, 3], [6, 7, 8, 9]])
    got, _ = runtime.step(ids, mask, positions, None, last_only=False)
    with torch.no_grad():
        expected, _ = model(torch.from_numpy(ids), None, torch.from_numpy(mask), torch.from_numpy(positions))
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # same tokens, other positions: other logits


def test_other_model_variants_export_with_parity(tmp_path, loaded):
    """Sinusoidal positions, an untied output layer and no biases take other paths through the graph."""
    _, tokenizer, config, _ = loaded
    variant = dataclasses.replace(config.model, positional="sinusoidal", tie_embeddings=False, bias=False)
    config = dataclasses.replace(config, model=variant)
    torch.manual_seed(1)
    model = GPT(variant, tokenizer.vocab_size).train()
    bundle = export_model(model, tokenizer, config, tmp_path / "variant")
    assert model.training  # export looks at the model in eval mode and leaves its mode alone
    model.eval()
    diffs = parity_check(model, Runtime(bundle, threads=1), past_lengths=[0, 1, 7, 15])
    assert max(diffs.values()) < 1e-4, diffs


ARCHITECTURES = {
    "rope-rmsnorm-qk_norm-swiglu": {"positional": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "swiglu"},
    "relu2": {"mlp": "relu2"},
    "rope-relu2-qk_norm": {"positional": "rope", "mlp": "relu2", "qk_norm": True},  # the main job's
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_options_export_with_the_same_signature_and_parity(tmp_path, loaded, name):
    """Rotary positions (from position_ids, so cached and padded rows stay right), RMSNorm, qk-norm,
    SwiGLU and squared ReLU: the graph keeps the bundle's inputs and outputs, and the torch-free
    runtime runs it as it is, matching PyTorch after every past length and for padded rows."""
    _, tokenizer, config, _ = loaded
    options = dataclasses.replace(config.model, **ARCHITECTURES[name])
    config = dataclasses.replace(config, model=options)
    torch.manual_seed(2)
    model = GPT(options, tokenizer.vocab_size).eval()
    with torch.no_grad():  # sharper attention than at initialisation, so positions matter
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(8)
    bundle = export_model(model, tokenizer, config, tmp_path / name)
    graph = onnx.load(str(bundle / MODEL_FILE)).graph
    assert [i.name for i in graph.input] == [*input_names(options.n_blocks), LOGITS_START]
    assert [o.name for o in graph.output] == output_names(options.n_blocks)
    runtime = Runtime(bundle, threads=1)
    diffs = parity_check(model, runtime, past_lengths=[0, 1, 7, 15])
    assert max(diffs.values()) < 1e-4, diffs
    assert padded_parity_check(model, runtime, batch=3, seed=1) < 1e-4
    assert json.loads((bundle / "bundle.json").read_text())["model"]["mlp"] == options.mlp


def test_onnxruntime_genai_runs_an_architecture_option_bundle_as_the_runtime_does(tmp_path, loaded):
    """genai_config.json still describes the graph (heads, head size, IO names): genai's own cache
    handling gives the runtime's logits at every step for rotary positions, RMSNorm and SwiGLU."""
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (the [genai] extra) is not installed")
    from genaikit import genai_logits_gap

    from decoder.genai import open_model

    _, tokenizer, config, _ = loaded
    options = dataclasses.replace(config.model, **ARCHITECTURES["rope-rmsnorm-qk_norm-swiglu"])
    torch.manual_seed(3)
    model = GPT(options, tokenizer.vocab_size).eval()
    bundle = export_model(model, tokenizer, dataclasses.replace(config, model=options), tmp_path / "genai")
    runtime, genai = Runtime(bundle, threads=1), open_model(bundle)
    assert genai_logits_gap(og, genai, runtime, tokenizer.encode("Harding wondered")) <= 1e-4


def test_parity_check_catches_a_model_that_differs(loaded, runtime):
    model = loaded[0]
    other = type(model)(model.config, model.vocab_size)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.transformer.h[1].mlp.c_fc.bias.add_(0.5)
    assert max(parity_check(other, runtime, past_lengths=[0, 3]).values()) > 1e-2


def test_int8_agreement_is_recorded_and_recomputable(onnx_bundle, loaded):
    tokenizer, config = loaded[1], loaded[2]
    bundle = json.loads((onnx_bundle / "bundle.json").read_text())
    recorded = bundle["int8"]
    from decoder.data import prepare

    dataset = prepare(config.data)
    assert recorded["tokens"] == len(dataset.val) - 1  # the whole validation split
    # fp32 bits per byte over the same windows as training's evaluation: the same figure.
    assert recorded["val_bpb_fp32"] == pytest.approx(bundle["run"]["val"]["val_bpb"], abs=1e-4)
    assert 0.9 <= recorded["top1_agreement"] <= 1.0
    assert recorded["val_bpb_int8"] == pytest.approx(recorded["val_bpb_fp32"], rel=0.05)
    again = int8_agreement(onnx_bundle, dataset.val, tokenizer.byte_lengths(), max_tokens=200, threads=1)
    assert again["tokens"] == 200 and 0.0 <= again["top1_agreement"] <= 1.0


def test_int8_agreement_of_identical_models_is_total(tmp_path, onnx_bundle, loaded):
    bundle = tmp_path / "same"
    shutil.copytree(onnx_bundle, bundle)
    shutil.copy(bundle / MODEL_FILE, bundle / INT8_MODEL_FILE)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["files"][INT8_MODEL_FILE] = meta["files"][MODEL_FILE]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    tokens = np.asarray(loaded[1].encode("Captain Harding and his companions reached the island at last."))
    figures = int8_agreement(bundle, tokens, loaded[1].byte_lengths(), threads=1)
    assert figures["top1_agreement"] == 1.0 and figures["val_bpb_int8"] == figures["val_bpb_fp32"]


def test_failed_export_keeps_the_old_bundle(tmp_path, loaded, monkeypatch):
    model, tokenizer, config, meta = loaded
    out = export_model(model, tokenizer, config, tmp_path / "b", run_meta=meta)
    before = (out / "bundle.json").read_text()

    def broken(src, dst):
        raise ExportError("quantizer exploded")

    monkeypatch.setattr(export_module, "quantize_int8", broken)
    with pytest.raises(ExportError, match="exploded"):
        export_model(model, tokenizer, config, out, quantize="int8", run_meta=meta)
    assert (out / "bundle.json").read_text() == before and not (out / INT8_MODEL_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_export_refuses_bad_arguments(tmp_path, loaded):
    model, tokenizer, config, _ = loaded
    with pytest.raises(ExportError, match="quantize='int4': allowed int8"):
        export_model(model, tokenizer, config, tmp_path / "b", quantize="int4")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle folder"):
        export_model(model, tokenizer, config, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_export_command_writes_a_bundle_and_reports_parity(tmp_path, onnx_run, capsys):
    out = tmp_path / "cli-bundle"
    assert cli_main(["export", str(onnx_run / "checkpoints" / "best.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs logits diff" in printed and str(out) in printed
    assert (out / MODEL_FILE).is_file() and not (out / INT8_MODEL_FILE).exists()
    assert f"{GENAI_CONFIG_FILE}: " in printed and (out / GENAI_CONFIG_FILE).is_file()
    assert json.loads((out / "bundle.json").read_text())["run"]["source"].endswith("best.pt")


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decoder export: error:") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "b")



def test_a_graph_without_the_mask_inputs_is_refused(tmp_path, onnx_bundle):
    """A format-1 graph under a format-2 bundle.json (a hand-edited bundle) names the re-export."""
    from onnx import TensorProto, helper

    from decoder.bundle import BundleError, file_record

    bundle = shutil.copytree(onnx_bundle, tmp_path / "bundle")
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "old", [ids], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(bundle / MODEL_FILE))
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["files"][MODEL_FILE] = file_record(bundle / MODEL_FILE)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="graph inputs .* re-export it with `decoder export RUN --out BUNDLE`"):
        Runtime(bundle)
