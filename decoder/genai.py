"""A bundle for onnxruntime-genai: its `genai_config.json`, and opening and running it there.

Every bundle `decoder export` writes has a `genai_config.json` (listed in bundle.json's files, with
its sha256) describing model.onnx to onnxruntime-genai (the [genai] extra, no torch):

    model.type                  "decoder": genai's generic decoder-only model (its "gpt2" type
                                expects one combined past_%d cache tensor per block; ours are separate)
    model.decoder               filename, num_attention_heads = num_key_value_heads, head_size,
                                hidden_size, num_hidden_layers, and the graph's IO names as genai's
                                templates: input_ids, attention_mask, position_ids,
                                past_key_%d / past_value_%d -> logits, present_key_%d / present_value_%d
    model.context_length, vocab_size, bos/eos/pad_token_id (all <|endoftext|>)
    search                      greedy by default (do_sample false), max_length = the context
                                length, past_present_share_buffer false (the graph concatenates its
                                cache rather than writing into a preallocated one), and the run's
                                sampling config: repetition_penalty and no_repeat_ngram_size (which
                                apply to greedy decoding too, as in the run's samples; genai's mean
                                what `decoder.sampling`'s do), temperature, top_k and top_p (used
                                when a caller sets do_sample true; genai draws its own random
                                numbers, so sampled ids differ from `decoder.runtime`'s)

int8: genai reads one config per folder and refuses a filename outside it, so the int8 model is
opened through the same file with the filename overlaid (`INT8_OVERLAY`, `open_model(...,
quantized=True)`). Tokenizer: genai's `og.Tokenizer` would need Hugging Face tokenizer files,
which a bundle does not have; `og.Model` loads without them, and ids come from the bundle's own
tokenizer (`decoder.tokenizer`, as `decoder.runtime` does) and go in with `Generator.append_tokens`.
Generation there cannot go past the context length (genai does not slide the window as
`decoder.sampling.decode_loop` does). The architecture options (`decoder.config.ModelConfig`:
rotary positions, RMSNorm, the MLPs, qk_norm) all live inside the graph, which takes its positions
from `position_ids` as genai feeds them, so the same config describes every one of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from decoder.bundle import (
    ATTENTION_MASK,
    GENAI_CONFIG_FILE,
    INPUT_IDS,
    INT8_MODEL_FILE,
    LOGITS,
    MODEL_FILE,
    POSITION_IDS,
    REEXPORT,
    BundleError,
    cache_template,
    read_bundle_json,
    verify_model_file,
)
from decoder.sampling import GenerationError

INT8_OVERLAY = {"model": {"decoder": {"filename": INT8_MODEL_FILE}}}
"""What `og.Config(bundle).overlay(json.dumps(INT8_OVERLAY))` changes to run model.int8.onnx."""


def genai_config(meta: dict, sampling: dict | None = None) -> dict:
    """genai_config.json for a bundle described by `meta` (its bundle.json); `sampling`: the run's
    SamplingConfig as a dict, for the search defaults (see the module docstring)."""
    model, eot = meta["model"], int(meta["eot_id"])
    sampling = sampling or {}
    return {
        "model": {
            "type": "decoder",
            "context_length": int(meta["context_length"]),
            "vocab_size": int(model["vocab_size"]),
            "bos_token_id": eot,
            "eos_token_id": eot,
            "pad_token_id": eot,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "num_attention_heads": int(model["n_heads"]),
                "num_key_value_heads": int(model["n_heads"]),
                "head_size": int(model["d_model"]) // int(model["n_heads"]),
                "hidden_size": int(model["d_model"]),
                "num_hidden_layers": int(model["n_blocks"]),
                "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, "position_ids": POSITION_IDS,
                           "past_key_names": cache_template("past", "key"),
                           "past_value_names": cache_template("past", "value")},
                "outputs": {"logits": LOGITS, "present_key_names": cache_template("present", "key"),
                            "present_value_names": cache_template("present", "value")},
            },
        },
        "search": {
            "do_sample": False,
            "max_length": int(meta["context_length"]),
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "diversity_penalty": 0.0,
            "temperature": float(sampling.get("temperature", 1.0)),
            "top_k": min(int(sampling.get("top_k", 0)), int(model["vocab_size"])),  # 0: all tokens, as here
            "top_p": float(sampling.get("top_p", 1.0)),
            "repetition_penalty": float(sampling.get("repetition_penalty", 1.0)),
            "no_repeat_ngram_size": int(sampling.get("no_repeat_ngram_size", 0)),
        },
    }


def genai_config_text(meta: dict, sampling: dict | None = None) -> str:
    """`genai_config` as the JSON text a bundle holds."""
    return json.dumps(genai_config(meta, sampling), indent=2) + "\n"


def open_model(bundle_dir: str | Path, *, quantized: bool = False) -> Any:
    """An `onnxruntime_genai.Model` of the bundle (model.int8.onnx with quantized=True), after
    verifying genai_config.json and the model file against bundle.json."""
    import onnxruntime_genai as og

    bundle_dir = Path(bundle_dir)
    meta = read_bundle_json(bundle_dir)
    if GENAI_CONFIG_FILE not in (meta.get("files") or {}):
        raise BundleError(f"{bundle_dir}: has no {GENAI_CONFIG_FILE} (exported before bundles had one); "
                          f"re-export it with `{REEXPORT}`")
    verify_model_file(bundle_dir, meta, GENAI_CONFIG_FILE)
    verify_model_file(bundle_dir, meta, INT8_MODEL_FILE if quantized else MODEL_FILE)
    try:
        config = og.Config(str(bundle_dir))
        if quantized:
            config.overlay(json.dumps(INT8_OVERLAY))
        return og.Model(config)
    except RuntimeError as exc:
        raise BundleError(f"{bundle_dir}: onnxruntime-genai {og.__version__} cannot load it: "
                          f"{(str(exc).splitlines() or [''])[0]}") from None


def generate_ids(model: Any, prompt_ids: Sequence[int], *, max_new_tokens: int, context_length: int,
                 **search: Any) -> list[int]:
    """New token ids for one prompt with an open genai `model`: the prompt goes in through
    `Generator.append_tokens`, then one `generate_next_token` per id, ending at <|endoftext|>
    (included, as `decoder.runtime` yields it) or after max_new_tokens. `search`: genai search
    options (do_sample, top_k, top_p, temperature, random_seed, repetition_penalty, ...)."""
    import onnxruntime_genai as og

    prompt = np.asarray(prompt_ids, dtype=np.int32)
    if prompt.ndim != 1 or prompt.size == 0:
        raise GenerationError(f"prompt ids have shape {prompt.shape}: give a non-empty list of ids")
    if max_new_tokens < 1 or prompt.size + max_new_tokens > context_length:
        raise GenerationError(f"{prompt.size} prompt ids + max_new_tokens={max_new_tokens} must be within the "
                              f"context length {context_length} (onnxruntime-genai does not slide the window)")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=int(prompt.size + max_new_tokens), **search)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out: list[int] = []
    while not generator.is_done() and len(out) < max_new_tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out
