"""A check shared by the onnxruntime-genai tests (test_genai.py, test_export.py)."""

from __future__ import annotations

import numpy as np


def genai_logits_gap(og, genai, runtime, prompt: list[int]) -> float:
    """The largest |difference| between genai's logits (its own KV-cache handling: masks,
    positions, cache growth) and the runtime's with its cache, over every step up to the context
    length: the prompt at once, then the token genai chose, one per step. Neutral search options
    (no repetition controls)."""
    params = og.GeneratorParams(genai)
    params.set_search_options(max_length=runtime.context_length, repetition_penalty=1.0, no_repeat_ngram_size=0)
    generator = og.Generator(genai, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    ours, past = runtime.forward(np.array([prompt]), None)
    gap = 0.0
    for _ in range(runtime.context_length - len(prompt)):
        theirs = np.asarray(generator.get_logits()).reshape(1, -1)
        gap = max(gap, float(np.abs(theirs - ours).max()))
        generator.generate_next_token()
        ours, past = runtime.forward(np.asarray(generator.get_next_tokens(), dtype=np.int64)[None, :], past)
    return gap
