"""Export to a Hugging Face folder: `decoder export RUN --format hf --out DIR`.

`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads the folder as a `GPT2LMHeadModel`
with the same weights and the same logits (checked at export: `HF_PARITY_TOLERANCE`). It holds:

- `config.json`, `generation_config.json` and `model.safetensors` (`save_pretrained`): n_embd,
  n_layer, n_head, n_inner (the MLP width), n_positions = the context length, vocab_size = the
  compact vocabulary, layer_norm_epsilon from the model's LayerNorms, activation `gelu_new` (GPT-2's
  name for the tanh GELU of `decoder.model.MLP`; its formula differs from torch's kernel by float
  rounding, ~1e-6 in the logits, where the exact GELU would be a real difference), bos/eos/pad =
  the <|endoftext|> id;
- `tokenizer.json`: the project's tokenizer (`Tokenizer.to_dict`, the file a run folder has). It
  is not a Hugging Face `tokenizers` file: ids come from `decoder.tokenizer` (README.md says how).
  AutoTokenizer fails on it, which is better than what it does without it (build an empty GPT-2
  tokenizer without a word of complaint);
- `README.md`: what the folder is, how to get ids, the parity figure.

The layouts differ in two places: Hugging Face's GPT-2 stores c_attn, c_proj and c_fc as `Conv1D`,
whose weight is the transpose of `nn.Linear`'s; and a GPT2LMHeadModel always has learned positions
and biases. So the variants it has no switch for are written as what they compute: sinusoidal
positions as the fixed table in `wpe`, a bias-free model with zero biases (fine-tuning the folder
would then train them). An untied output layer sets `tie_word_embeddings` false. Generation in
transformers is limited to n_positions tokens in all (prompt included); the project's own decoding
slides its window instead. The architecture options GPT-2's class cannot compute at all (RMSNorm,
squared ReLU or SwiGLU MLPs, query/key norm, rotary positions) are refused with the reason
(`unsupported`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch

from decoder.export import ExportError, check_out_dir, move_into_place
from decoder.io import atomic_write
from decoder.model import GPT
from decoder.tokenizer import Tokenizer

HF_CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_README_FILE = "README.md"
HF_PARITY_TOLERANCE = 1e-4
"""A folder whose logits differ from the project's model by more than this (max abs) is refused."""
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
"""Weights Hugging Face's GPT-2 keeps as Conv1D: (in, out), the transpose of nn.Linear's (out, in)."""


def unsupported(model: GPT) -> str | None:
    """Why GPT2LMHeadModel cannot compute `model` (its architecture options GPT-2 has no switch
    for, which no weight mapping can stand in for), or None when it can."""
    c = model.config
    expressible = {"norm": ("layernorm",), "mlp": ("gelu",), "qk_norm": (False,),
                   "positional": ("learned", "sinusoidal")}
    parts = [f"model.{key}={getattr(c, key)!r}" for key, allowed in expressible.items()
             if getattr(c, key) not in allowed]
    if not parts:
        return None
    return (f"GPT2LMHeadModel cannot express {', '.join(parts)} (it has LayerNorm, the tanh GELU MLP, no "
            "query/key norm and added positions); export the ONNX bundle instead (decoder export RUN --out BUNDLE)")


def gpt2_config(model: GPT, tokenizer: Tokenizer):
    """The `transformers.GPT2Config` of `model`."""
    from transformers import GPT2Config

    c = model.config
    eot = tokenizer.eot_id
    return GPT2Config(
        vocab_size=model.vocab_size, n_positions=c.context_length, n_embd=c.d_model, n_layer=c.n_blocks,
        n_head=c.n_heads, n_inner=c.ff_width, activation_function="gelu_new",
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


def to_gpt2(model: GPT, tokenizer: Tokenizer):
    """A `transformers.GPT2LMHeadModel` (eval mode, CPU) computing what `model` computes."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt2_config(model, tokenizer)).eval()
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    missing = [name for name in missing if not (model.config.tie_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise ExportError(f"the weights do not map onto GPT2LMHeadModel (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
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
    """What the README says about parts GPT2LMHeadModel holds differently (empty for plain GPT-2)."""
    c, notes = model.config, []
    if c.positional != "learned":
        notes.append("- positions: the model's fixed sinusoidal table, stored as `wpe` (fine-tuning would train it)")
    if not c.bias:
        notes.append("- biases: the model has none; they are stored as zeros (fine-tuning would train them)")
    if not c.tie_embeddings:
        notes.append("- output layer: its own weight (`tie_word_embeddings` false)")
    return "\n\nGPT2LMHeadModel has no switch for some of this model's choices:\n\n" + "\n".join(notes) if notes else ""


def _readme(source: str, model: GPT, diff: float) -> str:
    c = model.config
    return f"""# GPT-2 export of a decoder run

Exported by `decoder export {source} --format hf`: a `GPT2LMHeadModel` (transformers) with
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

Prompt and continuation together may not exceed {c.context_length} tokens (n_positions).
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
        hf = to_gpt2(cpu_model.eval(), tokenizer)
        diff = logits_diff(cpu_model, hf)
        if not diff <= HF_PARITY_TOLERANCE:
            raise ExportError(f"GPT2LMHeadModel logits differ from the model's by {diff:.3g} "
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
