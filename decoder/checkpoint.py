"""Checkpoints: the format, saving and loading, the Checkpointer a run saves through, load_model.

A checkpoint is one `torch.save`d dict, format 1:

    format          1
    config          RunConfig.to_dict() of the run
    vocab_size      rows of the embedding
    tokenizer       Tokenizer.to_dict()
    model           the model's state dict, without wrapper prefixes (DDP, torch.compile)
    optimizer       the optimizer's state dict
    sampler         one BatchSampler state per rank
    rng             {"torch": one CPU RNG state per rank, "cuda": one CUDA RNG state per rank or None}
    train_state     the loop's counters (`decoder.train.TrainState` as a dict)
    world_size      processes that trained it (a resume needs the same number)
    run_id          `decoder.run_ids.run_id` of the config
    val             the last evaluation's figures (val_loss, val_ppl, val_bpb, val_tokens) or None
    train_loss      the logged training loss at that evaluation
    device          the resolved device it trained on ("cpu", "cuda:0", ...)
    precision       the resolved precision it trained in ("fp32" or "bf16")
    raw_model       with training.ema only: the raw weights the optimizer steps ("model" then
    ema_updates     holds their moving average, `decoder.ema`) and the average's update count

latest.pt and best.pt hold the same dict (best.pt: as it was at the best evaluation). Files from
before the Checkpointer have fewer keys (best.pt lacked optimizer, sampler, rng and world_size;
latest.pt lacked train_loss; neither had device or precision): `load_checkpoint` fills the missing
ones with None (world_size 1), so both load, and a latest.pt of either age resumes.
`decoder.resume` decides what a run folder resumes from and in which precision.

Safe to open: a checkpoint holds only tensors, plain containers (dict, list, tuple), numbers,
strings, booleans and None (`plain` checks every save), and `load_checkpoint` reads it with
`torch.load(..., weights_only=True)`, whose unpickler builds nothing else. A file that asks for
any other global (a pickled object whose reconstruction could run code) is refused before that
global is touched; only the numpy types older files may hold (scalars, arrays, dtypes: data, no
code) are allowed, for exactly the files that need them (`LEGACY_GLOBALS`).

Alongside best.pt the Checkpointer writes the best weights alone as checkpoints/model.safetensors
(`BEST_WEIGHTS_FILE`, `best_weights_path`): the model's state dict, a tied output layer stored
once (as transformer.wte.weight), with the run's config, vocab_size, tokenizer, run_id, train_state
and val as JSON strings in the safetensors metadata; `read_weights` reads it back.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from decoder import distributed as dist_utils
from decoder.config import RunConfig
from decoder.run_ids import saved_config_from_dict
from decoder.errors import UserError
from decoder.io import atomic_write
from decoder.model import GPT
from decoder.runs import RunDir
from decoder.tokenizer import Tokenizer

CHECKPOINT_FORMAT = 1

# Keys a checkpoint of format 1 may lack (older files), with what a missing one means.
_OPTIONAL = {"optimizer": None, "sampler": None, "rng": None, "world_size": 1, "run_id": None, "val": None,
             "train_loss": None, "device": None, "precision": None}
_multiarray = (getattr(np, "_core", None) or np.core).multiarray  # numpy 2 renamed numpy.core
BEST_WEIGHTS_FILE = "model.safetensors"
"""The best weights alone, in the run's checkpoints/ folder next to best.pt (safetensors)."""
LEGACY_GLOBALS: dict[str, Any] = {
    f"{module}.{name}": obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("scalar", _multiarray.scalar), ("_reconstruct", _multiarray._reconstruct))
} | {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
"""The only non-default globals a checkpoint may ask for, by the name its pickle gives them: the
numpy scalars, arrays and dtypes (numpy 1 and 2 spell the module differently) that files saved with
numpy values (an RNG state tuple, a float64 figure) refer to. Each rebuilds data, never calls code.
A file that needs them may also set the state of numpy's dtype classes (`_DTYPE_CLASSES`)."""
_DTYPE_CLASSES = [getattr(np.dtypes, name) for name in np.dtypes.__all__] if hasattr(np, "dtypes") else []
_PLAIN = (torch.Tensor, torch.dtype, torch.device, torch.Size, str, bytes, int, float, bool, type(None))
"""What `plain` keeps as it is (torch's own dtype, device and Size are allowed by weights_only)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit."""


def _serialized(state: dict) -> bytes:
    """`state` as torch.save writes it (in memory, so that one dict can become two files, each
    written whole or not at all by `atomic_write`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` with numpy scalars as Python numbers and numpy arrays as lists, after checking that
    the rest is tensors, numbers, strings, None and dicts/lists/tuples of them (what a
    weights_only load reads back). Anything else raises TypeError naming where it sits (a bug)."""
    if isinstance(obj, (np.generic, np.ndarray)):  # before _PLAIN: np.float64 is a float
        return obj.tolist()
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):
        return {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where} is a {type(obj).__qualname__}: a checkpoint holds only tensors, numbers, "
                    "strings and containers of them")


def _safe_load(path: Path) -> Any:
    """torch.load with weights_only=True; the numpy globals of `LEGACY_GLOBALS` are allowed for a
    file that asks for them and nothing else; a file asking for any other global is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # torch's pre-1.6 format: its globals cannot be listed without loading it
        wanted = None
    refused = sorted(set(wanted) - set(LEGACY_GLOBALS)) if wanted is not None else ["unlisted: old torch.save format"]
    if refused:
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects that could run code when loaded "
            f"({', '.join(refused)}); a decoder checkpoint holds only tensors, numbers and strings "
            f"(if you trust where it came from, re-save it with decoder.checkpoint.resave_trusted('{path}'))")
    with torch.serialization.safe_globals([(LEGACY_GLOBALS[name], name) for name in wanted] + _DTYPE_CLASSES):
        return torch.load(path, map_location="cpu", weights_only=True)


def resave_trusted(path: str | Path, out: str | Path | None = None) -> Path:
    """Re-save a checkpoint `load_checkpoint` refuses as a safe one (to `out`, default in place).

    This unpickles the file without restrictions, which runs whatever code it holds: only for a
    file from a source you trust. Values `plain` cannot convert raise TypeError."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    return atomic_write(Path(out or path), _serialized(plain(state)))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint dict (on the CPU) with every key of the current format (see the module docstring).

    Read with weights_only=True (see the module docstring); one that asks for code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = _safe_load(path)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated zip, pickle garbage, ...
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {first_line})") \
            from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a decoder checkpoint of format {CHECKPOINT_FORMAT}")
    for key, default in _OPTIONAL.items():
        state.setdefault(key, default)
    return state


def best_weights_path(run: RunDir) -> Path:
    """Where a run's best weights are also kept as safetensors (next to best.pt)."""
    return run.checkpoints / BEST_WEIGHTS_FILE


def weights_bytes(state: dict) -> bytes:
    """The model weights of checkpoint dict `state` as a safetensors file (in memory, for
    `atomic_write`): each tensor once (a tied output layer under its first name,
    transformer.wte.weight) and the run's description as JSON strings in the metadata."""
    tensors, seen = {}, set()
    for name, tensor in clean_state_dict(state["model"]).items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            tensors[name] = tensor.detach().cpu().contiguous()
    described = {k: state.get(k) for k in ("config", "vocab_size", "tokenizer", "run_id", "train_state", "val")}
    metadata = {"format": "pt", "decoder_checkpoint_format": str(CHECKPOINT_FORMAT),
                **{k: json.dumps(v) for k, v in described.items()}}
    return safetensors.torch.save(tensors, metadata=metadata)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, description) of a safetensors file written by `weights_bytes` (description:
    its metadata with the JSON values parsed)."""
    path = Path(path)
    try:
        tensors = safetensors.torch.load_file(path)
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (OSError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors, {k: v if k == "format" else json.loads(v) for k, v in metadata.items()}


def clean_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (DDP's 'module.', torch.compile's '_orig_mod.')."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[GPT, Tokenizer, RunConfig, dict]:
    """A model from a run folder (its best checkpoint, else latest) or a checkpoint file.

    Returns (model in eval mode, tokenizer, config, checkpoint metadata without tensors)."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        found = run.model_checkpoint()
        if found is None:
            raise CheckpointError(f"{path}: no {run.relative(run.best)} or {run.relative(run.latest)} "
                                  "(is it a run folder?)")
        path = found
    state = load_checkpoint(path)
    config = saved_config_from_dict(state["config"], source=str(path))
    model = GPT(config.model, state["vocab_size"])
    try:
        model.load_state_dict(clean_state_dict(state["model"]))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the saved config ({str(exc).splitlines()[0]})") from None
    model.to(map_location).eval()
    tokenizer = Tokenizer.from_dict(state["tokenizer"])
    meta = {k: v for k, v in state.items() if k in ("train_state", "run_id", "val")}
    meta["path"] = str(path)
    return model, tokenizer, config, meta


class Checkpointer:
    """Saves a run's training state: one dict, built once per save (the collective part: every
    rank's sampler and RNG state), written by rank 0 to latest.pt (the latest before it kept as
    latest.prev.pt) and, at a new best evaluation, the same bytes to best.pt.

    `fixed` holds the entries that do not change during the run (config, vocab_size, tokenizer,
    world_size, run_id, device, precision)."""

    def __init__(self, run: RunDir, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: Any,
                 ctx: dist_utils.DistContext, device: torch.device, fixed: dict[str, Any], ema: Any = None) -> None:
        self.run, self.model, self.optimizer, self.sampler = run, model, optimizer, sampler
        self.ema = ema  # a decoder.ema.WeightAverage: its average is saved as "model" (None: no average)
        self.ctx, self.device, self.fixed = ctx, device, fixed

    def state(self, train_state: dict, val: dict | None, train_loss: float | None) -> dict:
        """The checkpoint dict now (collective: every rank must call it), checked by `plain`."""
        cuda = self.device.type == "cuda"
        own_cuda_rng = torch.cuda.get_rng_state(self.device) if cuda else None
        return plain({
            "format": CHECKPOINT_FORMAT,
            **self.fixed,
            **(self.ema.checkpoint_entries(self.model) if self.ema is not None
               else {"model": clean_state_dict(self.model.state_dict())}),
            "optimizer": self.optimizer.state_dict(),
            "sampler": dist_utils.gather_objects(self.sampler.state_dict(), self.ctx),
            "rng": {"torch": dist_utils.gather_objects(torch.get_rng_state(), self.ctx),
                    "cuda": dist_utils.gather_objects(own_cuda_rng, self.ctx) if cuda else None},
            "train_state": dict(train_state),
            "val": val,
            "train_loss": train_loss,
        })

    def restore(self, saved: dict) -> dict:
        """Put a checkpoint's weights, optimizer, sampler and RNG state back (this rank's); returns
        its train_state."""
        if self.ema is not None:
            self.ema.restore(saved, self.model)
        else:
            self.model.load_state_dict(clean_state_dict(saved["model"]))
        self.optimizer.load_state_dict(saved["optimizer"])
        self.sampler.load_state_dict(saved["sampler"][self.ctx.rank])
        torch.set_rng_state(saved["rng"]["torch"][self.ctx.rank])
        if self.device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state(saved["rng"]["cuda"][self.ctx.rank], self.device)
        return saved["train_state"]

    def save(self, train_state: dict, val: dict | None, train_loss: float | None, *, best: bool = False) -> None:
        """Checkpoint now (collective); `best`: also as best.pt and the weights as model.safetensors."""
        state = self.state(train_state, val, train_loss)
        if not dist_utils.is_rank0():
            return
        data = _serialized(state)
        if self.run.latest.is_file():
            os.replace(self.run.latest, self.run.previous)
        atomic_write(self.run.latest, data)
        if best:
            atomic_write(self.run.best, data)
            atomic_write(best_weights_path(self.run), weights_bytes(state))
