"""`decoder export --format hf`: a folder transformers loads as GPT2LMHeadModel (learned or
sinusoidal positions) or GPTNeoXForCausalLM (rotary positions), with the project's logits and greedy ids."""

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
from decoder.hf import (HF_PARITY_TOLERANCE, ROPE_BASE, export_hf, export_hf_folder, gpt2_state_dict,  # noqa: E402
                        logits_diff)
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
                                     dict(positional="sinusoidal", tie_embeddings=False, bias=False, d_ff=48),
                                     dict(mlp="relu2")],
                         ids=["sinusoidal", "untied", "bias-free", "all", "relu2"])
def test_variants_are_written_as_what_they_compute(tmp_path, loaded, variant):
    """Sinusoidal positions as the fixed table in wpe, no biases as zero biases, an untied head
    with tie_word_embeddings false, the squared-ReLU MLP as transformers' relu2: the same logits."""
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


@pytest.mark.parametrize("option, shown", [
    (dict(norm="rmsnorm"), "GPT2LMHeadModel cannot express model.norm='rmsnorm'"),
    (dict(mlp="swiglu"), "GPT2LMHeadModel cannot express model.mlp='swiglu'"),
    (dict(qk_norm=True), "GPT2LMHeadModel cannot express model.qk_norm=True"),
    (dict(positional="rope", norm="rmsnorm"), "GPTNeoXForCausalLM cannot express model.norm='rmsnorm'"),
    (dict(positional="rope", mlp="swiglu", qk_norm=True),
     "GPTNeoXForCausalLM cannot express model.mlp='swiglu', model.qk_norm=True")])
def test_architectures_the_classes_cannot_express_are_refused_with_the_reason(tmp_path, loaded, option, shown):
    _, tokenizer, config, _ = loaded
    model = GPT(dataclasses.replace(config.model, **option), tokenizer.vocab_size).eval()
    with pytest.raises(ExportError) as refused:
        export_hf(model, tokenizer, tmp_path / "no")
    message = str(refused.value)
    assert f"{shown} (" in message and "\n" not in message
    assert not (tmp_path / "no").exists()


@pytest.fixture(scope="module")
def rope_model(loaded):
    """The trained run's weights in a rope model with dropout 0.1 (the main job's choices): not what
    it was trained as, but peaked logits, so greedy decoding has clear winners to agree on."""
    model, tokenizer, config, _ = loaded
    rope = GPT(dataclasses.replace(config.model, positional="rope", dropout=0.1), tokenizer.vocab_size)
    state = {k: v for k, v in model.state_dict().items() if k != "transformer.wpe.weight"}
    rope.load_state_dict(state, strict=False)
    return rope.eval()


@pytest.fixture(scope="module")
def rope_hf(rope_model, loaded, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder, diff = export_hf(rope_model, loaded[1], tmp_path_factory.mktemp("hf") / "neox")
    assert diff < 1e-4
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval()


def test_a_rope_model_loads_as_gpt_neox_with_our_config(rope_model, rope_hf, loaded):
    folder, hf = rope_hf
    c, ours = hf.config, rope_model.config
    assert type(hf).__name__ == "GPTNeoXForCausalLM" and c.model_type == "gpt_neox"  # docs/deployment.md
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.max_position_embeddings,
            c.vocab_size) == (ours.d_model, ours.n_blocks, ours.n_heads, ours.ff_width, ours.context_length,
                              loaded[1].vocab_size)
    assert c.rope_parameters["partial_rotary_factor"] == 1.0 and c.rope_parameters["rope_theta"] == ROPE_BASE
    assert hf.gpt_neox.layers[0].attention.rotary_ndims == ours.head_dim  # the whole head turns
    assert c.use_parallel_residual is False and c.hidden_act == "gelu_pytorch_tanh" and c.layer_norm_eps == 1e-5
    assert hf.lm_head.weight.data_ptr() == hf.gpt_neox.embed_in.weight.data_ptr()  # tied
    assert "GPTNeoXForCausalLM" in (folder / "README.md").read_text()


def test_neox_fuses_q_k_v_per_head(rope_model, rope_hf):
    """query_key_value's rows are (head, [q, k, v], head_dim): head 1's query rows are c_attn's."""
    ours = rope_model.transformer.h[0].attn.c_attn.weight
    theirs = rope_hf[1].gpt_neox.layers[0].attention.query_key_value.weight
    C, hs = rope_model.config.d_model, rope_model.config.head_dim
    assert torch.equal(theirs[3 * hs:4 * hs], ours[hs:2 * hs])  # q of head 1
    assert torch.equal(theirs[4 * hs:5 * hs], ours[C + hs:C + 2 * hs])  # k of head 1
    assert not torch.equal(theirs, ours)


def test_rope_logits_match_on_validation_text(rope_model, rope_hf, loaded):
    from decoder.data import prepare

    config = loaded[2]
    T = config.model.context_length
    val = torch.from_numpy(np.asarray(prepare(config.data).val[: 8 * T], dtype=np.int64)).view(8, T)
    with torch.no_grad():
        ours, _ = rope_model(val)
        theirs = rope_hf[1](val).logits
    assert ours.std() > 0.5  # logits with something to compare
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_rope_greedy_generation_gives_our_ids(rope_model, rope_hf, loaded, prompt):
    ours, theirs = _greedy_pair(rope_model, loaded[1], rope_hf[1], prompt)
    assert ours == theirs and len(ours) >= 1
    ours, theirs = _greedy_pair(rope_model, loaded[1], rope_hf[1], prompt, repetition_penalty=1.5,
                                no_repeat_ngram_size=2)
    assert ours == theirs


@pytest.mark.parametrize("variant", [dict(bias=False), dict(tie_embeddings=False), dict(mlp="relu2")],
                         ids=["bias-free", "untied", "relu2"])
def test_rope_variants_are_written_as_what_they_compute(tmp_path, loaded, variant):
    from transformers import AutoModelForCausalLM

    _, tokenizer, config, _ = loaded
    torch.manual_seed(3)
    model = GPT(dataclasses.replace(config.model, positional="rope", **variant), tokenizer.vocab_size).eval()
    folder, diff = export_hf(model, tokenizer, tmp_path / "v")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    assert diff < 1e-4 and logits_diff(model, hf, seed=5) < 1e-4
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    assert hf.config.attention_bias == model.config.bias
    assert ("stored as zeros" in (folder / "README.md").read_text()) == (not model.config.bias)
    ours, theirs = _greedy_pair(model, tokenizer, hf, "Harding wondered")
    assert ours == theirs


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
