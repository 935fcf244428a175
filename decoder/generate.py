"""Text generation with a PyTorch model and its KV cache, and the samples written at the end of a run.

The decoding loop and the sampler are `decoder.sampling`'s (numpy), shared with the onnxruntime
runtime; this module only adapts the torch model to that loop's `forward` signature.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from decoder.config import SamplingConfig
from decoder.hardware import autocast
from decoder.model import GPT, KVCache
from decoder.runs import RunDir
from decoder.sampling import SamplingParams, decode_loop
from decoder.tokenizer import Tokenizer, text_pieces


def torch_forward(model: GPT, device: torch.device | str = "cpu", precision: str = "fp32"):
    """Adapt `model` to decode_loop: numpy ids + cache -> numpy logits of the last position + cache."""
    device = torch.device(device)

    @torch.inference_mode()
    def forward(ids: np.ndarray, past: KVCache | None) -> tuple[np.ndarray, KVCache]:
        idx = torch.from_numpy(np.ascontiguousarray(ids)).to(device)
        with autocast(device, precision):
            logits, presents = model(idx, past)
        return logits[:, -1].float().cpu().numpy(), presents

    return forward


def generate_ids(
    model: GPT,
    prompt_ids: list[int] | np.ndarray,
    *,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int | None = 0,
    eot_id: int | None = None,
    use_cache: bool = True,
    device: torch.device | str = "cpu",
) -> Iterator[np.ndarray]:
    """Yield (B,) token ids step by step (see decode_loop) from a torch model in eval mode."""
    model.eval()
    yield from decode_loop(
        torch_forward(model, device),
        np.asarray(prompt_ids),
        context_length=model.config.context_length,
        max_new_tokens=max_new_tokens,
        params=params,
        seed=seed,
        eot_id=eot_id,
        use_cache=use_cache,
    )


def stream_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int,
    params: SamplingParams,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
) -> Iterator[str]:
    """Yield pieces of generated text (not including the prompt) as tokens are produced (an empty
    prompt is refused by `decode_loop`, before the first step)."""
    steps = generate_ids(
        model, tokenizer.encode(prompt), max_new_tokens=max_new_tokens, params=params,
        seed=seed, eot_id=tokenizer.eot_id, device=device,
    )
    yield from text_pieces(tokenizer, steps)


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, **kwargs) -> str:
    """The whole continuation of `prompt` as one string."""
    return "".join(stream_text(model, tokenizer, prompt, **kwargs))


def write_samples(run: RunDir, model: GPT, tokenizer: Tokenizer, sampling: SamplingConfig,
                  device: torch.device | str = "cpu") -> list[dict]:
    """One greedy and one sampled continuation of the configured prompt, both under the configured
    repetition controls (fields: `decoder.runs`), written to the run folder and returned."""
    repetition = dict(repetition_penalty=sampling.repetition_penalty,
                      no_repeat_ngram_size=sampling.no_repeat_ngram_size)
    samples = []
    for strategy, params in (
        ("greedy", SamplingParams(greedy=True, **repetition)),
        ("sampled", SamplingParams(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                   **repetition)),
    ):
        text = generate_text(model, tokenizer, sampling.prompt, max_new_tokens=sampling.max_new_tokens,
                             params=params, seed=sampling.seed, device=device)
        samples.append({"strategy": strategy, "prompt": sampling.prompt, "text": text, "seed": sampling.seed,
                        "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                        **repetition})
    run.write_samples(samples)
    return samples
