"""`decoder export --format hf`: a folder transformers loads as GPT2LMHeadModel, with the project's
logits and greedy ids."""

import dataclasses
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")

from decoder.checkpoint import load_model  # noqa: E402
from decoder.cli import main as cli_main  # noqa: E402
from decoder.export import ExportError  # noqa: E402
from decoder.generate import generate_ids  # noqa: E402
from decoder.hf import HF_PARITY_TOLERANCE, export_hf, export_hf_folder, gpt2_state_dict, logits_diff  # noqa: E402
from decoder.model import GPT  # noqa: E402
from decoder.sampling import SamplingParams  # noqa: E402
from decoder.tokenizer import Tokenizer  # noqa: E402

PROMPTS = ["Harding wondered", "The engineer", "\"Pencroft,\" said", "At last the"]


@pytest.fixture(scope="module")
def loaded(onnx_run):
    return load_model(onnx_run)


@pytest.fixture(scope="module")
def hf_dir(onnx_run, tmp_path_factory):
    folder, diff = export_hf_folder(onnx_run, tmp_path_factory.mktemp("hf") / "gpt2")
    assert diff < 1e-4
    return folder


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir).eval()


def test_the_folder_loads_as_gpt2_with_our_config(hf_dir, hf_model, loaded):
    model, tokenizer, config, _ = loaded
    c = hf_model.config
    assert type(hf_model).__name__ == "GPT2LMHeadModel" and c.model_type == "gpt2"
    assert (c.n_embd, c.n_layer, c.n_head, c.n_positions, c.vocab_size, c.n_inner) == (
        config.model.d_model, config.model.n_blocks, config.model.n_heads, config.model.context_length,
        tokenizer.vocab_size, config.model.ff_width)
    assert c.layer_norm_epsilon == model.transformer.ln_f.eps == 1e-5
    assert c.activation_function == "gelu_new"  # decoder.model.MLP: nn.GELU(approximate="tanh")
    assert c.bos_token_id == c.eos_token_id == c.pad_token_id == tokenizer.eot_id
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # tied
    assert sorted(p.name for p in hf_dir.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
    assert not [p for p in hf_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_conv1d_weights_are_the_transpose(loaded, hf_model):
    ours = loaded[0].transformer.h[0].attn.c_attn.weight
    assert torch.equal(hf_model.transformer.h[0].attn.c_attn.weight, ours.t())


def test_logits_match_on_validation_text(loaded, hf_model):
    from decoder.data import prepare

    model, _, config, _ = loaded
    T = config.model.context_length
    val = torch.from_numpy(np.asarray(prepare(config.data).val[: 8 * T], dtype=np.int64)).view(8, T)
    with torch.no_grad():
        ours, _ = model(val)
        theirs = hf_model(val).logits
    # 1e-5, not just 1e-4: on a model this small the exact GELU would still be within 1e-4 (2.8e-5)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def _greedy_pair(model, tokenizer, hf_model, prompt, **repetition):
    ids = tokenizer.encode(prompt)
    n = model.config.context_length - len(ids)  # transformers cannot go past n_positions
    ours = [int(t[0]) for t in generate_ids(model, ids, max_new_tokens=n, eot_id=tokenizer.eot_id,
                                            params=SamplingParams(greedy=True, **repetition))]
    prompt_ids = torch.tensor([ids])
    out = hf_model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=n,
                            do_sample=False, **repetition)[0, len(ids):].tolist()
    if tokenizer.eot_id in out:
        out = out[: out.index(tokenizer.eot_id) + 1]
    return ours, out


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generation_gives_our_ids(loaded, hf_model, prompt):
    model, tokenizer, _, _ = loaded
    ours, theirs = _greedy_pair(model, tokenizer, hf_model, prompt)
    assert ours == theirs and len(ours) >= 1


@pytest.mark.parametrize("prompt", PROMPTS)
def test_repetition_controls_mean_the_same_in_transformers(loaded, hf_model, prompt):
    """CTRL's repetition penalty over prompt + generated tokens and the n-gram ban: HF's
    RepetitionPenaltyLogitsProcessor and NoRepeatNGramLogitsProcessor pick the same ids."""
    model, tokenizer, _, _ = loaded
    ours, theirs = _greedy_pair(model, tokenizer, hf_model, prompt, repetition_penalty=1.5, no_repeat_ngram_size=2)
    assert ours == theirs
    neutral, _ = _greedy_pair(model, tokenizer, hf_model, prompt)
    assert len(set(ours)) >= len(set(neutral))


def test_readme_snippet_gets_the_ids(hf_dir, loaded):
    readme = (hf_dir / "README.md").read_text()
    assert 'Tokenizer.load("tokenizer.json").encode("Harding wondered")' in readme
    assert json.loads((hf_dir / "tokenizer.json").read_text()) == loaded[1].to_dict()
    assert Tokenizer.load(hf_dir / "tokenizer.json").encode("Harding wondered") == loaded[1].encode("Harding wondered")


@pytest.mark.parametrize("variant", [dict(positional="sinusoidal"), dict(tie_embeddings=False), dict(bias=False),
                                     dict(positional="sinusoidal", tie_embeddings=False, bias=False, d_ff=48)],
                         ids=["sinusoidal", "untied", "bias-free", "all"])
def test_variants_are_written_as_what_they_compute(tmp_path, loaded, variant):
    """Sinusoidal positions as the fixed table in wpe, no biases as zero biases, an untied head
    with tie_word_embeddings false: the same logits."""
    from transformers import AutoModelForCausalLM

    _, tokenizer, config, _ = loaded
    torch.manual_seed(2)
    model = GPT(dataclasses.replace(config.model, **variant), tokenizer.vocab_size).eval()
    folder, diff = export_hf(model, tokenizer, tmp_path / "v")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert diff < 1e-4 and logits_diff(model, hf, seed=5) < 1e-4
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    readme = (folder / "README.md").read_text()
    assert ("sinusoidal table" in readme) == (model.config.positional == "sinusoidal")
    assert ("stored as zeros" in readme) == (not model.config.bias)
    ours, theirs = _greedy_pair(model, tokenizer, hf, "Harding wondered")
    assert ours == theirs


@pytest.mark.parametrize("option, shown", [(dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
                                           (dict(mlp="swiglu"), "model.mlp='swiglu'"),
                                           (dict(mlp="relu2"), "model.mlp='relu2'"),
                                           (dict(qk_norm=True), "model.qk_norm=True"),
                                           (dict(positional="rope"), "model.positional='rope'"),
                                           (dict(positional="rope", norm="rmsnorm"),
                                            "model.norm='rmsnorm', model.positional='rope'")])
def test_architectures_gpt2_cannot_express_are_refused_with_the_reason(tmp_path, loaded, option, shown):
    _, tokenizer, config, _ = loaded
    model = GPT(dataclasses.replace(config.model, **option), tokenizer.vocab_size).eval()
    with pytest.raises(ExportError) as refused:
        export_hf(model, tokenizer, tmp_path / "no")
    message = str(refused.value)
    assert f"GPT2LMHeadModel cannot express {shown} (" in message and "\n" not in message
    assert not (tmp_path / "no").exists()


def test_a_model_gpt2_does_not_reproduce_is_refused(tmp_path, loaded, monkeypatch):
    from decoder import hf as hf_module

    model, tokenizer, _, _ = loaded
    monkeypatch.setattr(hf_module, "gpt2_state_dict",
                        lambda m: {k: v + 0.1 if k.endswith("ln_f.bias") else v for k, v in gpt2_state_dict(m).items()})
    with pytest.raises(ExportError, match=rf"differ from the model.s by \S+ \(> {HF_PARITY_TOLERANCE}\)"):
        export_hf(model, tokenizer, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_export_command_writes_the_folder(tmp_path, onnx_run, capsys):
    out = tmp_path / "hf"
    assert cli_main(["export", str(onnx_run), "--format", "hf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GPT2LMHeadModel" in printed and "max abs logits diff" in printed
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert cli_main(["export", str(onnx_run), "--format", "hf", "--out", str(out)]) == 0  # replaces its own


@pytest.mark.parametrize("extra, expected", [(["--quantize", "int8"], "--quantize applies to the ONNX bundle"),
                                             ([], "is not an earlier export")])
def test_export_command_refusals_are_one_line(tmp_path, onnx_run, capsys, extra, expected):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    argv = ["export", str(onnx_run), "--format", "hf", "--out", str(tmp_path / "mine"), *extra]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("decoder export: error:") and err.count("\n") == 1 and expected in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
