"""Export to a Hugging Face folder: `decoder export RUN --format hf --out DIR`.

`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads the folder as a `GPT2LMHeadModel`
(learned or sinusoidal positions) or a `GPTNeoXForCausalLM` (rotary positions, `hf_class`) with the
same weights and the same logits (checked at export: `HF_PARITY_TOLERANCE`). It holds:

- `config.json`, `generation_config.json` and `model.safetensors` (`save_pretrained`): widths,
  blocks, heads, the MLP width, the context length (n_positions / max_position_embeddings),
  vocab_size = the compact vocabulary, the LayerNorm epsilon, the activation of `decoder.model.MLP`
  (`ACTIVATIONS`: the tanh GELU, in GPT-2 `gelu_new`, its formula for it, ~1e-6 from torch's kernel
  in the logits, in GPT-NeoX `gelu_pytorch_tanh`, torch's kernel itself; the squared ReLU,
  `relu2`, in both), bos/eos/pad = the <|endoftext|> id;
- `tokenizer.json`: the project's tokenizer (`Tokenizer.to_dict`, the file a run folder has). It
  is not a Hugging Face `tokenizers` file: ids come from `decoder.tokenizer` (README.md says how).
  AutoTokenizer fails on it, which is better than what it does without it (build an empty GPT-2
  tokenizer without a word of complaint);
- `README.md`: what the folder is, how to get ids, the parity figure.

GPT-2's layout differs in two places: it stores c_attn, c_proj and c_fc as `Conv1D`, whose weight
is the transpose of `nn.Linear`'s; and a GPT2LMHeadModel always has learned positions and biases.
So the variants it has no switch for are written as what they compute: sinusoidal positions as the
fixed table in `wpe`, a bias-free model with zero biases (fine-tuning the folder would then train
them). GPT-NeoX (use_parallel_residual false: the same pre-norm block; rotary_pct 1 with the
model's base; scores scaled by 1/sqrt(head_dim) like SDPA) rotates the halves of each head as
`decoder.model.rotate` does, and fuses q, k, v per head, so c_attn's rows are regrouped
(`neox_state_dict`); its MLP and LayerNorms always have biases (zeros for a bias-free model). An
untied output layer sets `tie_word_embeddings` false. Generation in transformers is limited to
the context length in all (prompt included); the project's own decoding slides its window
instead. The options neither class computes (RMSNorm, the SwiGLU MLP, query/key norm) are refused
with the reason (`unsupported`).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
from pathlib import Path

import torch

from decoder.export import ExportError, check_out_dir, move_into_place
from decoder.io import atomic_write
from decoder.model import GPT, rotary_table
from decoder.tokenizer import Tokenizer

HF_CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_README_FILE = "README.md"
HF_PARITY_TOLERANCE = 1e-4
"""A folder whose logits differ from the project's model by more than this (max abs) is refused."""
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
"""Weights Hugging Face's GPT-2 keeps as Conv1D: (in, out), the transpose of nn.Linear's (out, in)."""
ROPE_BASE = inspect.signature(rotary_table).parameters["base"].default
"""The rotary base `decoder.model` uses (GPT-NeoX's rotary_emb_base)."""


def hf_class(model: GPT) -> str:
    """The transformers class the folder of `model` is: GPTNeoXForCausalLM for rotary positions,
    else GPT2LMHeadModel."""
    return "GPTNeoXForCausalLM" if model.config.positional == "rope" else "GPT2LMHeadModel"


ACTIVATIONS = {"gelu": ("gelu_new", "gelu_pytorch_tanh"), "relu2": ("relu2", "relu2")}
"""model.mlp -> the transformers activation names that compute it: (GPT-2's, GPT-NeoX's)."""


def unsupported(model: GPT) -> str | None:
    """Why `hf_class(model)` cannot compute `model` (its architecture options that class has no
    switch for, which no weight mapping can stand in for), or None when it can."""
    c = model.config
    expressible = {"norm": ("layernorm",), "mlp": tuple(ACTIVATIONS), "qk_norm": (False,)}
    parts = [f"model.{key}={getattr(c, key)!r}" for key, allowed in expressible.items()
             if getattr(c, key) not in allowed]
    if not parts:
        return None
    positions = "rotary positions" if c.positional == "rope" else "added positions"
    return (f"{hf_class(model)} cannot express {', '.join(parts)} (it has LayerNorm, a tanh GELU or squared-ReLU MLP, no "
            f"query/key norm and {positions}); export the ONNX bundle instead (decoder export RUN --out BUNDLE)")


def gpt2_config(model: GPT, tokenizer: Tokenizer):
    """The `transformers.GPT2Config` of `model`."""
    from transformers import GPT2Config

    c = model.config
    eot = tokenizer.eot_id
    return GPT2Config(
        vocab_size=model.vocab_size, n_positions=c.context_length, n_embd=c.d_model, n_layer=c.n_blocks,
        n_head=c.n_heads, n_inner=c.ff_width, activation_function=ACTIVATIONS[c.mlp][0],
        layer_norm_epsilon=model.transformer.ln_f.eps, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
        attn_pdrop=c.dropout, tie_word_embeddings=c.tie_embeddings, bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, architectures=["GPT2LMHeadModel"],
    )


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights under GPT2LMHeadModel's names (the same names; Conv1D weights transposed),
    with the fixed position table as `wpe` and zeros for the biases a bias-free model lacks."""
    c = model.config
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items() if name != "wpe_table"}
    if "wpe" not in model.transformer:
        state["transformer.wpe.weight"] = model.wpe_table.detach().cpu()
    out = {}
    for name, tensor in state.items():
        out[name] = tensor.t().contiguous() if name.endswith(_CONV1D) else tensor
    if not c.bias:
        widths = {"ln_1": c.d_model, "ln_2": c.d_model, "attn.c_attn": 3 * c.d_model, "attn.c_proj": c.d_model,
                  "mlp.c_fc": c.ff_width, "mlp.c_proj": c.d_model}
        for i in range(c.n_blocks):
            for part, width in widths.items():
                out[f"transformer.h.{i}.{part}.bias"] = torch.zeros(width)
        out["transformer.ln_f.bias"] = torch.zeros(c.d_model)
    if c.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def neox_config(model: GPT, tokenizer: Tokenizer):
    """The `transformers.GPTNeoXConfig` of a rope `model`: sequential residuals, rotary over the
    whole head (rotary_pct 1) with the model's base, the MLP's activation (`ACTIVATIONS`)."""
    from transformers import GPTNeoXConfig

    c = model.config
    eot = tokenizer.eot_id
    return GPTNeoXConfig(
        vocab_size=model.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_blocks,
        num_attention_heads=c.n_heads, intermediate_size=c.ff_width, hidden_act=ACTIVATIONS[c.mlp][1],
        max_position_embeddings=c.context_length, rotary_pct=1.0, rotary_emb_base=ROPE_BASE,
        layer_norm_eps=model.transformer.ln_f.eps, use_parallel_residual=False, attention_bias=c.bias,
        attention_dropout=c.dropout, hidden_dropout=c.dropout, tie_word_embeddings=c.tie_embeddings,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, architectures=["GPTNeoXForCausalLM"],
    )


def neox_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights under GPTNeoXForCausalLM's names. Its fused query_key_value is laid out
    per head, (heads, [q, k, v], head_dim), where c_attn is ([q, k, v], heads, head_dim): the rows
    are regrouped. Both rotate the halves of each head (`decoder.model.rotate`), so q and k need no
    other change. LayerNorms and MLPs always have biases there: zeros for a bias-free model."""
    c = model.config
    ours = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    names = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_attn": "attention.query_key_value",
             "attn.c_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
    widths = {"ln_1": c.d_model, "ln_2": c.d_model, "mlp.c_fc": c.ff_width, "mlp.c_proj": c.d_model}
    out = {"gpt_neox.embed_in.weight": ours["transformer.wte.weight"]}
    for i in range(c.n_blocks):
        for part, theirs in names.items():
            for kind in ("weight", "bias"):
                tensor = ours.get(f"transformer.h.{i}.{part}.{kind}")
                if tensor is None:
                    if kind == "weight" or part not in widths:
                        continue
                    tensor = torch.zeros(widths[part])
                if part == "attn.c_attn":  # rows [3, nh, hs] -> [nh, 3, hs]
                    tensor = tensor.view(3, c.n_heads, c.head_dim, -1).transpose(0, 1).reshape(tensor.shape)
                out[f"gpt_neox.layers.{i}.{theirs}.{kind}"] = tensor.contiguous()
    out["gpt_neox.final_layer_norm.weight"] = ours["transformer.ln_f.weight"]
    out["gpt_neox.final_layer_norm.bias"] = ours.get("transformer.ln_f.bias", torch.zeros(c.d_model))
    if not c.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    return out


def to_hf(model: GPT, tokenizer: Tokenizer):
    """A transformers model of class `hf_class(model)` (eval mode, CPU) computing what `model` computes."""
    import transformers

    rope = model.config.positional == "rope"
    config = neox_config(model, tokenizer) if rope else gpt2_config(model, tokenizer)
    hf = getattr(transformers, hf_class(model))(config).eval()
    state = neox_state_dict(model) if rope else gpt2_state_dict(model)
    head = next(name for name, m in hf.named_modules() if m is hf.get_output_embeddings()) + ".weight"
    if "lm_head.weight" in state and head != "lm_head.weight":  # older transformers: embed_out
        state[head] = state.pop("lm_head.weight")
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (model.config.tie_embeddings and name == head)]
    if missing or unexpected:
        raise ExportError(f"the weights do not map onto {hf_class(model)} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    if model.config.tie_embeddings and hf.get_output_embeddings().weight is not hf.get_input_embeddings().weight:
        raise ExportError(f"{hf_class(model)} did not tie its output layer to the embedding")
    return hf


def logits_diff(model: GPT, hf, *, batch: int = 2, seed: int = 0) -> float:
    """Max abs difference of the two models' logits over `batch` random sequences of the full
    context length (every position, every token)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab_size, (batch, model.config.context_length), generator=generator)
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    return float((ours - theirs).abs().max())


def _variant_notes(model: GPT) -> str:
    """What the README says about parts the class holds differently (empty for plain GPT-2)."""
    c, notes = model.config, []
    if c.positional == "sinusoidal":
        notes.append("- positions: the model's fixed sinusoidal table, stored as `wpe` (fine-tuning would train it)")
    if not c.bias:
        notes.append("- biases: the model has none; those the class always has are stored as zeros "
                     "(fine-tuning would train them)")
    if not c.tie_embeddings:
        notes.append("- output layer: its own weight (`tie_word_embeddings` false)")
    return (f"\n\n{hf_class(model)} has no switch for some of this model's choices:\n\n" + "\n".join(notes)
            if notes else "")


def _readme(source: str, model: GPT, diff: float) -> str:
    c = model.config
    family = ("GPT-NeoX (rotary positions over the whole head, sequential residuals)"
              if c.positional == "rope" else "GPT-2")
    return f"""# {family} export of a decoder run

Exported by `decoder export {source} --format hf`: a `{hf_class(model)}` (transformers) with
{c.n_blocks} blocks, d_model {c.d_model}, {c.n_heads} heads, context {c.context_length} tokens and a
{model.vocab_size}-token compact vocabulary. Its logits differ from the project's model by at most
{diff:.2e} (max abs, random ids over the whole context).{_variant_notes(model)}

`tokenizer.json` is the project's tokenizer (a compact tiktoken vocabulary), not a Hugging Face
one (AutoTokenizer cannot read it): get ids with the `decoder` package (its base install, no torch):

```python
from decoder.tokenizer import Tokenizer
ids = Tokenizer.load("tokenizer.json").encode("Harding wondered")
```

Then, with transformers:

```python
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(".")
out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                     max_new_tokens=20, do_sample=False)
print(Tokenizer.load("tokenizer.json").decode(out[0, len(ids):].tolist()))
```

Prompt and continuation together may not exceed {c.context_length} tokens (the context length).
"""


def export_hf(model: GPT, tokenizer: Tokenizer, out_dir: str | Path, *, source: str = "RUN") -> tuple[Path, float]:
    """Write the Hugging Face folder of `model` to `out_dir` (built aside, renamed into place);
    returns its path and the logits difference (`logits_diff`), refusing one above HF_PARITY_TOLERANCE."""
    if model.vocab_size != tokenizer.vocab_size:
        raise ExportError(f"model vocab_size {model.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}")
    if (reason := unsupported(model)) is not None:
        raise ExportError(reason)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, HF_CONFIG_FILE)
    was_training = model.training
    cpu_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    try:
        hf = to_hf(cpu_model.eval(), tokenizer)
        diff = logits_diff(cpu_model, hf)
        if not diff <= HF_PARITY_TOLERANCE:
            raise ExportError(f"{hf_class(cpu_model)} logits differ from the model's by {diff:.3g} "
                              f"(> {HF_PARITY_TOLERANCE}); not exported")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save_pretrained(tmp)
        atomic_write(tmp / HF_TOKENIZER_FILE, json.dumps(tokenizer.to_dict()))
        atomic_write(tmp / HF_README_FILE, _readme(source, cpu_model, diff))
        move_into_place(tmp, out_dir)
    finally:
        model.train(was_training)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir, diff


def export_hf_folder(source: str | Path, out_dir: str | Path) -> tuple[Path, float]:
    """`export_hf` of a run folder (its best checkpoint, else latest) or a checkpoint file."""
    from decoder.checkpoint import load_model

    model, tokenizer, _, _ = load_model(source)
    return export_hf(model, tokenizer, out_dir, source=str(source))
