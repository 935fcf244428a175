"""Where a decoding step of `decoder.runtime` goes: inside onnxruntime or in Python around it.

    python -m bench.runtime_overhead [BUNDLE] [--threads N]

Without BUNDLE it exports the throughput suite's generation model (the medium shape, random
weights, fp32 and int8) to a temporary folder first (needs torch and the [export] extra). For
batch 1 and 8, 128 new tokens after a 16-token prompt, it prints per step:

- `python`: the work of the loop alone, with the session replaced by one that returns ready
  arrays of the right shapes (greedy, and top-k/top-p sampling);
- `in run` / `outside`: with the real session, the time inside `session.run` and the rest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams

NEW_TOKENS, PROMPT_TOKENS = 128, 16
GREEDY, SAMPLED = SamplingParams(greedy=True), SamplingParams(temperature=0.8, top_k=50, top_p=0.95)


class ReadySession:
    """Stands in for an onnxruntime session: the outputs of a (batch, seq, past) are made once."""

    def __init__(self, session, heads: int, head_dim: int) -> None:
        self.vocab = session.get_outputs()[0].shape[2]
        self.heads, self.head_dim, self.made = heads, head_dim, {}

    def run(self, names: list[str], feed: dict) -> list[np.ndarray]:
        B, T = feed["input_ids"].shape
        P = feed["past_key_0"].shape[2]
        if (B, T, P) not in self.made:
            logits = np.random.default_rng(P).random((B, T, self.vocab), dtype=np.float32)
            present = np.zeros((B, self.heads, P + T, self.head_dim), np.float32)
            self.made[B, T, P] = [logits] + [present] * (len(names) - 1)
        return self.made[B, T, P]


def per_step(runtime: Runtime, ids: np.ndarray, params: SamplingParams, rounds: int = 5) -> float:
    """Median seconds per new token of `rounds` generations (after one untimed)."""
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        list(runtime.generate_ids(ids, max_new_tokens=NEW_TOKENS, params=params, stop_at_eot=False))
        times.append((time.perf_counter() - start) / NEW_TOKENS)
    return float(np.median(times[1:]))


def report(bundle: Path, threads: int) -> None:
    for model_file in ("model.onnx", "model.int8.onnx"):
        real = Runtime(bundle, model_file=model_file, threads=threads)
        stand_in = Runtime(bundle, model_file=model_file, threads=threads)
        stand_in.session = ReadySession(real.session, real._heads, real._head_dim)
        inside = [0.0]
        run = real.session.run

        def timed_run(*args, **kwargs):
            start = time.perf_counter()
            out = run(*args, **kwargs)
            inside[0] += time.perf_counter() - start
            return out

        real.session.run = timed_run
        for batch in (1, 8):
            ids = np.random.default_rng(batch).integers(0, real.tokenizer.vocab_size, (batch, PROMPT_TOKENS))
            greedy, sampled = per_step(stand_in, ids, GREEDY), per_step(stand_in, ids, SAMPLED)
            per_step(real, ids, GREEDY, rounds=1)  # warm-up
            inside[0] = 0.0
            start = time.perf_counter()
            for _ in range(3):
                list(real.generate_ids(ids, max_new_tokens=NEW_TOKENS, params=GREEDY, stop_at_eot=False))
            total, in_run = (time.perf_counter() - start) / NEW_TOKENS / 3, inside[0] / NEW_TOKENS / 3
            print(f"{model_file} batch {batch}, {threads} thread(s): python {greedy * 1e6:.1f} us greedy, "
                  f"{sampled * 1e6:.0f} us sampled; real session {total * 1e3:.3f} ms/step: "
                  f"{in_run * 1e3:.3f} ms in run, {(total - in_run) * 1e6:.0f} us outside", flush=True)


def export_generation_model(out: Path) -> Path:
    import torch

    from bench.common import GENERATION_SIZE
    from decoder.config import DataConfig, RunConfig
    from decoder.data import prepare
    from decoder.export import export_model
    from decoder.model import GPT

    tokenizer = prepare(DataConfig()).tokenizer
    torch.manual_seed(0)
    model = GPT(GENERATION_SIZE.model, tokenizer.vocab_size).eval()
    few = np.random.default_rng(0).integers(0, tokenizer.vocab_size, 65, dtype=np.int64)
    return Path(export_model(model, tokenizer, RunConfig(model=GENERATION_SIZE.model), out / "bundle",
                             quantize="int8", val_tokens=few))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", help="a bundle with model.onnx and model.int8.onnx")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args()
    if args.bundle:
        report(Path(args.bundle), args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        report(export_generation_model(Path(tmp)), args.threads)


if __name__ == "__main__":
    main()
