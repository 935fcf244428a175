"""A check shared by the onnxruntime-genai tests (test_genai.py, test_export.py)."""

from __future__ import annotations

import numpy as np


def assert_genai_follows_the_runtime(og, genai, runtime, prompt: list[int], atol: float = 1e-4) -> None:
    """At every step up to the context length, genai's logits (its own KV-cache handling: masks,
    positions, cache growth) equal the runtime's with its cache: the prompt at once, then the
    token genai chose, one per step. Neutral search options (no repetition controls)."""
    params = og.GeneratorParams(genai)
    params.set_search_options(max_length=runtime.context_length, repetition_penalty=1.0, no_repeat_ngram_size=0)
    generator = og.Generator(genai, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    ours, past = runtime.forward(np.array([prompt]), None)
    for _ in range(runtime.context_length - len(prompt)):
        np.testing.assert_allclose(np.asarray(generator.get_logits()).reshape(1, -1), ours, rtol=0, atol=atol)
        generator.generate_next_token()
        ours, past = runtime.forward(np.asarray(generator.get_next_tokens(), dtype=np.int64)[None, :], past)
