"""TensorBoard logging of a run into its folder's `tensorboard/` (`training.tensorboard`, on by default).

Scalars only at the steps the loop already synchronises, never per step, so a training step costs
nothing more: train/loss, train/lr, train/tokens_per_s at every log_interval step (and evaluation
step); val/loss, val/bpb, val/ppl at every evaluation. When the run stops, the hyperparameters (the
resolved config, flattened to section.field) with the final metrics through the HParams plugin, so
TensorBoard's HPARAMS tab compares the runs of a grid or a sweep (`tensorboard --logdir runs`). A
resumed run purges the events its killed predecessor wrote after the checkpoint. Only rank 0 logs.
Without the `tensorboard` package (the [tensorboard] extra) nothing is logged and one warning says so.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

_warned = False
TRAIN = {"train_loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s"}
VAL = {"val_loss": "val/loss", "val_bpb": "val/bpb", "val_ppl": "val/ppl"}
FINAL = {"best_val_loss": "hparam/best_val_loss", "best_val_bpb": "hparam/best_val_bpb",
         "final_val_bpb": "hparam/final_val_bpb", "tokens_per_s": "hparam/tokens_per_s"}


def _summary_writer():
    """torch's SummaryWriter, or None (one warning per process) when tensorboard is not installed."""
    global _warned
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        if not _warned:
            warnings.warn('TensorBoard logging skipped: the tensorboard package is not installed '
                          '(pip install "decoder[tensorboard]", or set training.tensorboard: false)', stacklevel=3)
            _warned = True
        return None
    return SummaryWriter


def _hparam(value: Any) -> Any:
    """A config value as the HParams plugin takes it (bool, number or string)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class TensorBoardLog:
    """Writes a run's scalars and hyperparameters into `log_dir`; every method is a no-op when disabled."""

    def __init__(self, log_dir: str | Path, enabled: bool, resume_step: int = 0) -> None:
        writer = _summary_writer() if enabled else None
        # purge_step hides events a killed run logged past the checkpoint it resumes from
        self.writer = writer(str(log_dir), purge_step=resume_step or None) if writer else None

    def _add(self, step: int, row: dict[str, Any], tags: dict[str, str]) -> None:
        if self.writer is not None:
            for key, tag in tags.items():
                if _finite(row.get(key)):
                    self.writer.add_scalar(tag, row[key], step)

    def training(self, step: int, row: dict[str, Any]) -> None:
        """train/* scalars from `row` (train_loss, lr, tokens_per_s) at a log_interval step."""
        self._add(step, row, TRAIN)

    def evaluation(self, row: dict[str, Any]) -> None:
        """val/* scalars of one metrics.jsonl row (`decoder.runs`), at its step."""
        self._add(row["step"], row, VAL)

    def close(self, config: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
        """Hyperparameters and the summary's final metrics (HParams plugin) at its step, then close."""
        if self.writer is None:
            return
        hparams = {f"{s}.{k}": _hparam(v) for s, section in config.items() for k, v in section.items()}
        metrics = {tag: summary[key] for key, tag in FINAL.items() if _finite(summary.get(key))}
        self.writer.add_hparams(hparams, metrics, run_name=".", global_step=summary["step"])
        self.writer.close()
