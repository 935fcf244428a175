"""An exponential moving average of the weights (training.ema): what a run evaluates and saves as
its model while the optimizer steps the raw weights.

After every optimizer step each averaged tensor moves towards the raw one,
`avg <- avg + (1 - d) (w - avg)`, with the decay warmed up as d = min(ema, (1 + n) / (W + n))
after n updates (W = training.ema_warmup, 10 by default; TensorFlow's
`ExponentialMovingAverage(num_updates=...)`), so that a short run is not an average dominated by
its initial weights. The averaging itself is torch's
`torch.optim.swa_utils.AveragedModel` (which also counts the updates).

In a checkpoint (`decoder.checkpoint`) the average is the `model` entry, so best.pt,
model.safetensors, `load_model` and every export use it with nothing else to know; the raw weights
go to `raw_model` and the update count to `ema_updates`, which is all an exact resume needs. With
training.ema 0 a `WeightAverage` is a no-op and a checkpoint holds what it always did.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from decoder.checkpoint import CheckpointError, clean_state_dict

WARMUP = 10.0
"""training.ema_warmup's default: the decay after n updates is min(ema, (1 + n) / (WARMUP + n))."""


def decay_after(updates: int, ema: float, warmup: float = WARMUP) -> float:
    """The decay of the update that follows `updates` earlier ones (training.ema_warmup: `warmup`)."""
    return min(ema, (1 + updates) / (warmup + updates))


class WeightAverage:
    """The moving average of `model`'s parameters with decay `ema` (0: off, every method a no-op
    that stands for the raw model)."""

    def __init__(self, model: torch.nn.Module, ema: float, warmup: float = WARMUP) -> None:
        self.ema, self.warmup = ema, warmup
        self.averaged: AveragedModel | None = None
        if ema > 0:
            self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=False)

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        # AveragedModel copies the weights at its first update (num_averaged 0) and calls this after.
        weight = 1.0 - decay_after(int(num_averaged), self.ema, self.warmup)
        for avg, now in zip(averaged, current, strict=True):
            avg.lerp_(now, weight)

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged) if self.averaged is not None else 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards `model`'s weights (call after every optimizer step)."""
        if self.averaged is not None:
            self.averaged.update_parameters(model)

    def evaluated(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to evaluate and sample from: the average, or `model` itself when off."""
        return self.averaged.module if self.averaged is not None else model

    def checkpoint_entries(self, model: torch.nn.Module) -> dict[str, Any]:
        """The checkpoint's weight entries: {"model"} when off; else the average as "model", the raw
        weights as "raw_model" and the update count as "ema_updates"."""
        if self.averaged is None:
            return {"model": clean_state_dict(model.state_dict())}
        return {"model": clean_state_dict(self.averaged.module.state_dict()),
                "raw_model": clean_state_dict(model.state_dict()), "ema_updates": self.updates}

    def restore(self, saved: dict, model: torch.nn.Module) -> None:
        """Put a checkpoint's weights back into `model` (the raw ones) and into the average."""
        if self.averaged is None:
            model.load_state_dict(clean_state_dict(saved["model"]))
            return
        if saved.get("raw_model") is None or saved.get("ema_updates") is None:
            raise CheckpointError("the checkpoint has no raw_model / ema_updates entries (saved without "
                            "training.ema), so a run with training.ema cannot resume from it")
        model.load_state_dict(clean_state_dict(saved["raw_model"]))
        self.averaged.module.load_state_dict(clean_state_dict(saved["model"]))
        self.averaged.n_averaged.fill_(int(saved["ema_updates"]))
