"""Shared pieces of the benchmark suites: devices, model sizes, shapes and the timed runner.

Every benchmark goes through `measure`: one untimed warm-up call (which also sizes the number
of rounds to the time budget), then pytest-benchmark's pedantic mode, with the device
synchronised inside the timed function. What the report needs to turn a time into a figure
(tokens per call, FLOPs per call, weight bytes, ...) is stored in `benchmark.extra_info`, so
`decoder bench` reads every number from the saved JSON alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from decoder.config import ModelConfig, read_yaml
from decoder.hardware import autocast  # noqa: F401  (the suites' autocast is the package's)

CUDA_MISSING = "CUDA is not available on this machine (torch.cuda.is_available() is False)"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_MISSING)),
]
PRECISIONS = ["fp32", "bf16"]


@dataclass(frozen=True)
class Size:
    """A model shape and the training batch it is benchmarked with."""

    name: str
    model: ModelConfig
    batch: int


EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SHAPE_KEYS = ("d_model", "n_heads", "n_blocks", "d_ff", "context_length", "positional")


def experiment_size(name: str, experiment: str, **override) -> Size:
    """The model shape and batch of a shipped experiment's base config (dropout off, our defaults
    for the rest: a throughput benchmark compares shapes, not regularisation), with `override`."""
    base = read_yaml(EXPERIMENTS / f"{experiment}.yaml")["base"]
    shape = {k: v for k, v in base["model"].items() if k in SHAPE_KEYS}
    return Size(name, ModelConfig(**{**shape, **override}), base["training"]["batch_size"])


SIZES = {
    # experiments/reference.yaml: the notebook's context 40, d_model 500, 10 heads, 10 blocks, d_ff 20, batch 50.
    "reference": experiment_size("reference", "reference"),
    # experiments/default.yaml: the project's main job (d_model 192, 4 heads, 3 blocks, context 64, batch 32),
    # with learned positions, as nanoGPT and transformers' GPT-2 have (the main job's rotary positions
    # would leave those baselines a different model to run).
    "small": experiment_size("small", "default", positional="learned"),
    # The ONNX deployment shape: 6 blocks, 6 heads, d_model 384, context 256 (batch 16).
    "medium": Size("medium", ModelConfig(d_model=384, n_heads=6, n_blocks=6, context_length=256), batch=16),
}
GENERATION_SIZE = SIZES["medium"]
PROMPT_TOKENS = 16
NEW_TOKENS = 128


@dataclass(frozen=True)
class Timing:
    """How long to time each benchmark: rounds = clamp(seconds / warm-up time, min_rounds, max_rounds)."""

    seconds: float
    min_rounds: int
    max_rounds: int = 50

    def rounds_for(self, call_seconds: float) -> int:
        wanted = math.ceil(self.seconds / max(call_seconds, 1e-9))
        return min(self.max_rounds, max(self.min_rounds, wanted))


def sync(device: str) -> None:
    """Wait for queued device work, so the clock reads finished work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def skip_unless_supported(device: str, precision: str) -> None:
    """Skip bf16 on a GPU without bf16 (every CPU runs bf16 autocast; whether it pays is measured)."""
    if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(device)} does not support bf16")


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters, each counted once (a tied head is one tensor)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def measure(benchmark: Any, fn: Callable[[], Any], *, device: str, timing: Timing,
            between: Callable[[], Any] | None = None, **extra_info: Any) -> Any:
    """Time `fn()` (device synchronised inside the timing) and return its last result.

    between: called untimed before every round (warm-up included): the other engine of a pair
    compared side by side, so both are timed alternating under the same conditions of the machine.
    With --benchmark-disable the body runs exactly once, untimed, as a plain test.
    """

    def timed() -> Any:
        out = fn()
        sync(device)
        return out

    benchmark.extra_info.update(device=torch.device(device).type, threads=torch.get_num_threads(), **extra_info)
    if benchmark.disabled:
        return benchmark.pedantic(timed)
    def setup() -> None:  # pytest-benchmark would take a returned value for the call's arguments
        between()

    if between is not None:
        between()
    start = time.perf_counter()
    timed()  # warm-up: allocations, kernel selection, lazy initialisation; not recorded
    first = time.perf_counter() - start
    # A second warm-up round only where it is cheap (short calls: GPU, small models).
    return benchmark.pedantic(timed, setup=setup if between else None, rounds=timing.rounds_for(first),
                              warmup_rounds=1 if first < 1.0 else 0)
