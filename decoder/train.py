"""Training: `train(config, run_dir) -> summary`, with checkpoints, exact resume and evaluation.

A run folder holds `config.yaml` (resolved), `tokenizer.json`, `metrics.jsonl` (one object per
evaluation), `checkpoints/latest.pt` (everything needed to resume) and `checkpoints/best.pt`
(best validation loss), `summary.json` and `samples.json`. Under torchrun the same function runs
data-parallel (see `decoder.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from decoder import distributed as dist_utils
from decoder.config import RunConfig, config_from_dict, dump_config
from decoder.data import BatchSampler, Dataset, prepare
from decoder.errors import UserError
from decoder.generate import generate_text
from decoder.hardware import cpu_name, resolve_device, resolve_precision, training_attention_backend
from decoder.model import GPT
from decoder.sampling import SamplingParams
from decoder.tokenizer import Tokenizer

CHECKPOINT_FORMAT = 1


class TrainingError(UserError, RuntimeError):
    """Training cannot start or cannot go on (bad checkpoint, divergence, config mismatch)."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be read or does not fit."""


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, fsync, then rename: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a decoder checkpoint of format {CHECKPOINT_FORMAT}")
    return state


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
        candidates = [path / "checkpoints" / "best.pt", path / "checkpoints" / "latest.pt"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise CheckpointError(f"{path}: no checkpoints/best.pt or checkpoints/latest.pt (is it a run folder?)")
        path = found[0]
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], source=str(path))
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


# ---------------------------------------------------------------------------------------------
# Schedule, optimizer, evaluation


def lr_at(config: RunConfig, step: int, progress: float) -> float:
    """Linear warm-up to lr (over warmup_fraction of the budget, else warmup_steps), then cosine decay
    to lr * min_lr_ratio as the budget is used."""
    t = config.training
    if t.warmup_fraction is not None:
        if progress < t.warmup_fraction:
            return t.lr * max(progress, 0.0) / t.warmup_fraction
    elif step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    progress = min(max(progress, 0.0), 1.0)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: GPT, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (not norms, biases, embeddings); or plain Adam."""
    t = config.training
    embeddings = {id(model.transformer.wte.weight)}
    if "wpe" in model.transformer:
        embeddings.add(id(model.transformer.wpe.weight))
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    kwargs = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **kwargs)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, **kwargs)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, byte_lengths: np.ndarray, device: torch.device, precision: str) -> dict:
    """Loss over the *whole* split: consecutive windows of context_length, every token after the
    first predicted exactly once. Returns nats/token, perplexity and bits per byte."""
    was_training = model.training
    model.eval()
    T = model.config.context_length
    n_pred = len(tokens) - 1
    starts = list(range(0, n_pred, T))
    batch = max(1, min(64, 2**25 // (T * model.vocab_size)))
    data = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    total = 0.0
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        lengths = [min(T, n_pred - s) for s in group]
        L = max(lengths)
        x = torch.zeros(len(group), L, dtype=torch.long)
        y = torch.full((len(group), L), -100, dtype=torch.long)
        for j, (s, n) in enumerate(zip(group, lengths)):
            x[j, :n] = data[s : s + n]
            y[j, :n] = data[s + 1 : s + 1 + n]
        with autocast(device, precision):
            logits, _ = model(x.to(device))
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
    model.train(was_training)
    loss = total / n_pred
    n_bytes = int(byte_lengths[tokens[1:]].sum())
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 700.0)),
        "val_bpb": total / math.log(2) / max(n_bytes, 1),
        "val_tokens": n_pred,
    }


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    precision: str,
    grad_clip: float,
    ctx: dist_utils.DistContext = dist_utils.DistContext(),
) -> torch.Tensor:
    """One optimizer step over gradient-accumulated micro-batches; returns the mean loss (detached).

    `model` may be DDP-wrapped: gradients are all-reduced only on the last micro-batch. The
    benchmarks time this very function."""
    n = len(micro_batches)
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with dist_utils.no_sync(model, ctx, last=i == n - 1):
            with autocast(device, precision):
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / n
            loss.backward()
        total += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    last_eval_step: int = -1


class _StopFlag:
    """Set by SIGINT/SIGTERM (first signal: finish the step, checkpoint, exit) or by a callback."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_id_of(config: RunConfig) -> str:
    """A short stable id of a resolved config (the experiment runner names folders by it)."""
    import hashlib

    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def _budget_progress(config: RunConfig, state: TrainState) -> float:
    t = config.training
    parts = []
    if t.max_steps is not None:
        parts.append(state.step / t.max_steps)
    if t.max_tokens is not None:
        parts.append(state.tokens_seen / t.max_tokens)
    if t.max_seconds is not None:
        parts.append(state.elapsed_s / t.max_seconds)
    return max(parts)


def eval_due(config: RunConfig, step: int, progress_before: float, progress_after: float) -> bool:
    """Whether the step just taken (ending at `step`) is followed by an evaluation: every
    eval_interval steps, or, with eval_fraction, when the budget crosses a multiple of it."""
    t = config.training
    if t.eval_fraction is None:
        return step % t.eval_interval == 0
    return math.floor(progress_after / t.eval_fraction) > math.floor(progress_before / t.eval_fraction)


def _progress_bar(config: RunConfig, tokens_per_step: int, quiet: bool):
    from tqdm.auto import tqdm

    t = config.training
    totals = [t.max_steps] if t.max_steps else []
    if t.max_tokens:
        totals.append(math.ceil(t.max_tokens / tokens_per_step))
    disable = quiet or not os.isatty(2) or not dist_utils.is_rank0()
    return tqdm(total=min(totals) if totals else None, unit="step", disable=disable, dynamic_ncols=True, leave=False)


def train(config: RunConfig, run_dir: str | Path, **kwargs) -> dict:
    """Train `config` into `run_dir` and return the summary dict (also written to summary.json).

    resume: continue from run_dir/checkpoints/latest.pt (model, optimizer, step, RNG, sampler).
    quiet: no progress bar. dataset: an already prepared Dataset for config.data (saves re-reading).
    on_step(step, {"lr", "train_loss"}) is called after every optimizer step (train_loss is the mean
    over the last log_interval steps); returning True requests a graceful stop (checkpoint, status
    'interrupted'), as SIGINT/SIGTERM do.
    """
    threads = torch.get_num_threads()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    try:
        return _train(config, run_dir, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    on_step: Callable[[int, dict], bool] | None = None,
    dataset: Dataset | None = None,
) -> dict:
    config.validated()
    run_dir = Path(run_dir)
    ctx = dist_utils.init()
    rank0 = ctx.rank == 0
    t = config.training
    device = ctx.device if ctx.world_size > 1 else resolve_device(t.device)
    precision = resolve_precision(t.precision, device)

    latest = run_dir / "checkpoints" / "latest.pt"
    checkpoint = None
    if resume and latest.is_file():
        checkpoint = load_checkpoint(latest)
        if checkpoint["config"] != config.to_dict():
            raise TrainingError(f"{run_dir}: the saved config differs from this one; resume needs the same config")
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != ctx.world_size:
            raise TrainingError(
                f"{latest}: saved by {saved_world} process(es), resumed with {ctx.world_size}; "
                f"resume with the same number (torchrun --nproc_per_node={saved_world})"
            )
    elif latest.is_file():
        raise TrainingError(
            f"{run_dir}: already holds a run; pass --resume to continue it, or use another folder"
        )

    dataset = dataset or prepare(config.data)
    tokenizer = dataset.tokenizer
    byte_lengths = tokenizer.byte_lengths()
    if checkpoint is not None and checkpoint["tokenizer"] != tokenizer.to_dict():
        raise CheckpointError(f"{latest}: its tokenizer differs from the one built from the corpus now")

    torch.manual_seed(t.seed)
    model = GPT(config.model, tokenizer.vocab_size).to(device)
    optimizer = make_optimizer(model, config)
    micro_batch = t.batch_size // t.grad_accum_steps
    model.set_attention_backend(training_attention_backend(device.type, config.model.context_length, precision))
    sampler = BatchSampler(dataset.train, config.model.context_length, micro_batch, config.data.windows,
                           seed=t.seed + 1000003 * ctx.rank)
    state = TrainState()
    if checkpoint is not None:
        model.load_state_dict(clean_state_dict(checkpoint["model"]))
        optimizer.load_state_dict(checkpoint["optimizer"])
        sampler.load_state_dict(checkpoint["sampler"][ctx.rank])
        state = TrainState(**checkpoint["train_state"])
        torch.set_rng_state(checkpoint["rng"]["torch"][ctx.rank])
        if device.type == "cuda" and checkpoint["rng"].get("cuda"):
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][ctx.rank], device)

    train_model = dist_utils.wrap(model, ctx)
    if t.compile:
        train_model = torch.compile(train_model)

    run_id = run_id_of(config)
    if rank0:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        tokenizer.save(run_dir / "tokenizer.json")
        (run_dir / "summary.json").unlink(missing_ok=True)
        if checkpoint is None:
            atomic_write_text(run_dir / "metrics.jsonl", "")
        else:  # drop rows a killed run wrote after its last checkpoint; they will be written again
            rows = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
            kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= state.step]
            atomic_write_text(run_dir / "metrics.jsonl", "".join(r + "\n" for r in kept))

    tokens_per_step = t.batch_size * config.model.context_length * ctx.world_size

    def gather_rank_state() -> tuple[list, list, list]:
        own_rng = torch.get_rng_state()
        own_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return (dist_utils.gather_objects(sampler.state_dict(), ctx),
                dist_utils.gather_objects(own_rng, ctx),
                dist_utils.gather_objects(own_cuda, ctx))

    def checkpoint_state(val: dict | None) -> dict:
        samplers, rngs, cuda_rngs = gather_rank_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "vocab_size": tokenizer.vocab_size,
            "tokenizer": tokenizer.to_dict(),
            "model": clean_state_dict(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "sampler": samplers,
            "rng": {"torch": rngs, "cuda": cuda_rngs if device.type == "cuda" else None},
            "train_state": vars(state).copy(),
            "world_size": ctx.world_size,
            "run_id": run_id,
            "val": val,
        }

    def save_latest(val: dict | None) -> None:
        full = checkpoint_state(val)  # collective: every rank takes part
        if rank0:
            save_checkpoint(latest, full)

    metrics_path = run_dir / "metrics.jsonl"
    bar = _progress_bar(config, tokens_per_step, quiet)
    bar.update(state.step)
    status, error = "completed", None
    last_val: dict | None = None
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    train_loss = float("nan")
    window_start, window_tokens = time.perf_counter(), 0
    tokens_per_s = 0.0

    def run_eval() -> dict:
        nonlocal last_val
        val = evaluate(model, dataset.val, byte_lengths, device, precision) if rank0 else None
        val = dist_utils.broadcast_object(val, ctx)
        last_val = val
        state.last_eval_step = state.step
        improved = val["val_loss"] < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_since_best = val["val_loss"], state.step, 0
        else:
            state.evals_since_best += 1
        if rank0:
            row = {"step": state.step, "tokens_seen": state.tokens_seen, "train_loss": train_loss, **val,
                   "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_per_s,
                   "elapsed_s": round(state.elapsed_s, 3)}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if improved and math.isfinite(val["val_loss"]):
                save_checkpoint(run_dir / "checkpoints" / "best.pt", {
                    "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "vocab_size": tokenizer.vocab_size,
                    "tokenizer": tokenizer.to_dict(), "model": clean_state_dict(model.state_dict()),
                    "train_state": vars(state).copy(), "run_id": run_id, "val": val, "train_loss": train_loss,
                })
        return val

    def diverged(what: str, value: float) -> TrainingError:
        return TrainingError(
            f"{what} became {value} at step {state.step}; stopped. The last good checkpoint is kept "
            f"({latest if latest.is_file() else 'none saved yet'}); lower training.lr or raise warmup_steps"
        )

    with _StopFlag() as stop:
        try:
            while _budget_progress(config, state) < 1.0:
                step_start = time.perf_counter()
                progress_before = _budget_progress(config, state)
                lr = lr_at(config, state.step, progress_before)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro_batches = [sampler.next_batch() for _ in range(t.grad_accum_steps)]
                loss_sum += train_step(train_model, optimizer, micro_batches, device=device, precision=precision,
                                       grad_clip=t.grad_clip, ctx=ctx)
                state.step += 1
                state.tokens_seen += tokens_per_step
                loss_count += 1
                window_tokens += tokens_per_step
                if device.type == "cuda" and state.step % t.log_interval == 0:
                    torch.cuda.synchronize(device)
                state.elapsed_s += time.perf_counter() - step_start
                state.elapsed_s = dist_utils.broadcast_float(state.elapsed_s, ctx)

                due_eval = eval_due(config, state.step, progress_before, _budget_progress(config, state))
                if state.step % t.log_interval == 0 or due_eval:
                    train_loss = dist_utils.mean_float((loss_sum / loss_count).item(), ctx)
                    if not math.isfinite(train_loss):
                        raise diverged("training loss", train_loss)
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    loss_sum.zero_()
                    loss_count = 0
                    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
                bar.update(1)

                if due_eval:
                    eval_start = time.perf_counter()
                    val = run_eval()
                    if not math.isfinite(val["val_loss"]):
                        raise diverged("validation loss", val["val_loss"])
                    save_latest(val)
                    window_start += time.perf_counter() - eval_start  # eval time is not training throughput
                    if t.patience is not None and state.evals_since_best >= t.patience:
                        status = "early_stopped"
                        break
                wants_stop = stop.requested or (
                    on_step is not None and bool(on_step(state.step, {"lr": lr, "train_loss": train_loss})))
                if dist_utils.any_true(wants_stop, ctx):
                    status = "interrupted"
                    save_latest(last_val)
                    break
        except TrainingError as exc:
            status, error = "diverged", str(exc)
        finally:
            bar.close()

    if status == "diverged":
        if rank0:
            _write_summary(run_dir, _summary(config, state, model, last_val, status, error, device, precision,
                                             ctx.world_size, run_id, train_loss))
        dist_utils.barrier(ctx)
        raise TrainingError(error)

    if status in ("completed", "early_stopped"):
        if state.last_eval_step != state.step:
            run_eval()
            save_latest(last_val)
    summary = _summary(config, state, model, last_val, status, None, device, precision, ctx.world_size, run_id,
                       train_loss)
    if rank0:
        if status != "interrupted":
            summary["samples"] = write_samples(run_dir, config, tokenizer, device)
        _write_summary(run_dir, summary)
    dist_utils.barrier(ctx)
    return summary


def _summary(config, state, model, last_val, status, error, device, precision, world_size, run_id, train_loss) -> dict:
    return {
        "run_id": run_id,
        "status": status,
        "error": error,
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "elapsed_s": round(state.elapsed_s, 3),
        "tokens_per_s": state.tokens_seen / state.elapsed_s if state.elapsed_s > 0 else None,
        "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
        "best_step": state.best_step,
        "final_val_loss": last_val["val_loss"] if last_val else None,
        "final_val_ppl": last_val["val_ppl"] if last_val else None,
        "final_val_bpb": last_val["val_bpb"] if last_val else None,
        "final_train_loss": train_loss,
        "params_total": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "vocab_size": model.vocab_size,
        "flops_per_token": model.flops_per_token(),
        "device": str(device),
        "precision": precision,
        "world_size": world_size,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "best_checkpoint": None,
    }


def _write_summary(run_dir: Path, summary: dict) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        meta = torch.load(best, map_location="cpu", weights_only=False)
        summary["best_val_bpb"] = meta["val"]["val_bpb"]
        summary["train_loss_at_best"] = meta.get("train_loss")
        summary["best_checkpoint"] = str(best.relative_to(run_dir))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))


def write_samples(run_dir: Path, config: RunConfig, tokenizer: Tokenizer, device: torch.device) -> list[dict]:
    """One greedy and one sampled continuation of the configured prompt, from the best weights."""
    model, _, _, _ = load_model(run_dir, map_location=str(device))
    s = config.sampling
    samples = []
    repetition = dict(repetition_penalty=s.repetition_penalty, no_repeat_ngram_size=s.no_repeat_ngram_size)
    for strategy, params in (
        ("greedy", SamplingParams(greedy=True, **repetition)),
        ("sampled", SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, **repetition)),
    ):
        text = generate_text(model, tokenizer, s.prompt, max_new_tokens=s.max_new_tokens, params=params,
                             seed=s.seed, device=device)
        samples.append({"strategy": strategy, "prompt": s.prompt, "text": text, "seed": s.seed,
                        "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                        **repetition})
    atomic_write_text(run_dir / "samples.json", json.dumps(samples, indent=2, ensure_ascii=False))
    return samples
