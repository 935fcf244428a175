"""What a run folder resumes from, and in which precision: the checks `decoder train --resume`
makes before the loop starts (the same config, the same number of processes, a checkpoint that holds
the optimizer, sampler and RNG states), falling back to the checkpoint before latest.pt when that
one is damaged or missing."""

from __future__ import annotations

from pathlib import Path

import torch

from decoder import distributed as dist_utils
from decoder.checkpoint import CheckpointError, load_checkpoint
from decoder.config import RunConfig
from decoder.errors import TrainingError
from decoder.hardware import resolve_precision
from decoder.runs import RunDir

_RESUME_KEYS = ("optimizer", "sampler", "rng")
"""What a checkpoint needs beyond the weights for training to resume from it."""


def load_resumable(run: RunDir) -> dict | None:
    """The checkpoint to resume `run` from: latest.pt; when that is damaged or missing, the one
    before it (with a warning); None when the folder has neither."""
    if run.latest.is_file():
        try:
            return _resumable(run.latest)
        except CheckpointError as exc:
            if not run.previous.is_file():
                raise
            reason = str(exc)
    elif run.previous.is_file():
        reason = f"{run.latest}: missing"
    else:
        return None
    state = _resumable(run.previous)
    dist_utils.warn(f"{reason}; resuming from the checkpoint before it, {run.previous} "
                    f"(step {state['train_state']['step']})")
    return state


def _resumable(path: Path) -> dict:
    state = load_checkpoint(path)
    missing = [k for k in _RESUME_KEYS if state[k] is None]
    if missing:
        raise CheckpointError(f"{path}: has no {', '.join(missing)} state, so training cannot resume from it")
    return state


def resume_state(run: RunDir, config: RunConfig, world_size: int, resume: bool) -> dict | None:
    """The checkpoint a run of `config` in `run` starts from (None: a fresh run); raises TrainingError
    for a folder that does not fit (a run there without `resume`, another config, another world size)."""
    if not resume:
        if run.has_checkpoint():
            raise TrainingError(f"{run.path}: already holds a run; pass --resume to continue it, or use another folder")
        return None
    saved = load_resumable(run)
    if saved is None:
        return None
    if saved["config"] != config.to_dict():
        raise TrainingError(f"{run.path}: the saved config differs from this one; resume needs the same config")
    if saved["world_size"] != world_size:
        raise TrainingError(
            f"{run.latest}: saved by {saved['world_size']} process(es), resumed with {world_size}; "
            f"resume with the same number (torchrun --nproc_per_node={saved['world_size']})"
        )
    return saved


def resume_precision(requested: str, device: torch.device, saved: dict | None) -> str:
    """The precision to train in: `requested` resolved here, except that a resumed 'auto' run keeps
    the precision it was trained in (another machine may resolve 'auto' differently)."""
    here = resolve_precision(requested, device)
    kept = saved and saved["precision"]
    if requested != "auto" or not kept or kept == here:
        return here
    dist_utils.warn(f"training.precision 'auto' resolves to {here} on this machine, but the run was trained "
                    f"in {kept}; keeping {kept}")
    return resolve_precision(kept, device)
