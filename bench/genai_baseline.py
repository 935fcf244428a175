"""onnxruntime-genai as a generation baseline: the bundle's own genai_config.json, the same model
file (model.onnx or model.int8.onnx) and the same intra-op threads as `decoder.runtime`.

Batches: one `og.Generator` over (B, T) prompt ids, greedy, exactly `new_tokens` steps. The
search options that adjust logits (the run's repetition controls in genai_config.json) are set
neutral, so greedy ids must equal `decoder.runtime`'s with plain greedy sampling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from decoder.genai import INT8_OVERLAY

NEUTRAL = dict(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0)


def open_model(bundle_dir: str | Path, *, int8: bool, threads: int) -> Any:
    """An `og.Model` of the bundle whose decoder session runs `threads` intra-op threads, one inter-op."""
    import onnxruntime_genai as og

    overlay: dict = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                               "inter_op_num_threads": 1}}}}
    if int8:
        overlay["model"]["decoder"].update(INT8_OVERLAY["model"]["decoder"])
    config = og.Config(str(bundle_dir))
    config.overlay(json.dumps(overlay))
    return og.Model(config)


def generate(model: Any, prompt_ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """(B, new_tokens) greedy ids after the (B, T) prompts (rows of equal length)."""
    import onnxruntime_genai as og

    batch, length = prompt_ids.shape
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length + new_tokens, batch_size=batch, **NEUTRAL)
    generator = og.Generator(model, params)
    generator.append_tokens(np.ascontiguousarray(prompt_ids, dtype=np.int32))
    steps = []
    for _ in range(new_tokens):
        generator.generate_next_token()
        steps.append(generator.get_next_tokens().astype(np.int64))
    return np.stack(steps, axis=1)
