"""Training: `train(config, run_dir) -> summary`, with checkpoints, exact resume and evaluation.

The loop runs in named steps: setup (`_Trainer.__init__`: hardware, resume, data, the model and
optimizer from `decoder.step.build_training`, run folder), `step` (one optimizer step), `evaluate`
(the whole validation split, one metrics row), `should_stop` (signals and the caller's callback)
and `finish` (last evaluation, samples, summary).
What the run folder holds is `decoder.runs`; the checkpoint format and the resume checks are
`decoder.checkpoint`; TensorBoard logging (log and evaluation steps only) is `decoder.tensorboard`.
Under torchrun the same function runs data-parallel (see `decoder.distributed`); only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from decoder import distributed as dist_utils
from decoder.checkpoint import Checkpointer, CheckpointError, load_model
from decoder.resume import resume_precision, resume_state
from decoder.config import RunConfig
from decoder.data import Dataset, prepare
from decoder.ema import WeightAverage
from decoder.errors import TrainingError
from decoder.evaluate import score_protocols
from decoder.flops import flops_per_token
from decoder.generate import write_samples
from decoder.hardware import cpu_name, resolve_device
from decoder.run_ids import run_id
from decoder.runs import RunDir
from decoder.signals import StopFlag
from decoder.step import evaluate as evaluate_split
from decoder.step import batch_sampler, budget_progress, build_training, eval_due, lr_at
from decoder.tensorboard import TensorBoardLog


# ---------------------------------------------------------------------------------------------
# Budget and bookkeeping


@dataclass
class TrainState:
    """The loop's counters, saved in every checkpoint (older checkpoints lack the last two)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    last_eval_step: int = -1
    best_val_bpb: float | None = None
    train_loss_at_best: float | None = None


class _LossWindow:
    """Training loss and throughput over the steps since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        self.count = 0
        self.tokens = 0
        self.start = time.perf_counter()
        self.train_loss = float("nan")
        self.tokens_per_s = 0.0

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss_sum += loss
        self.count += 1
        self.tokens += tokens

    def close(self, ctx: dist_utils.DistContext) -> float:
        """The mean loss of the window over every rank (also kept in `train_loss`); starts a new window."""
        self.train_loss = dist_utils.mean_float((self.loss_sum / self.count).item(), ctx)
        now = time.perf_counter()
        self.tokens_per_s = self.tokens / max(now - self.start, 1e-9)
        self.start, self.tokens, self.count = now, 0, 0
        self.loss_sum.zero_()
        return self.train_loss

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a checkpoint) out of the throughput."""
        self.start += seconds


# ---------------------------------------------------------------------------------------------
# Setup helpers


def _progress_bar(config: RunConfig, tokens_per_step: int, quiet: bool, done: int, flops_per_token: int):
    from tqdm.auto import tqdm

    t = config.training
    totals = [t.max_steps] if t.max_steps else []
    if t.max_tokens:
        totals.append(math.ceil(t.max_tokens / tokens_per_step))
    if t.max_flops:
        totals.append(math.ceil(t.max_flops / (tokens_per_step * flops_per_token)))
    disable = quiet or not dist_utils.is_rank0() or not os.isatty(2)
    return tqdm(total=min(totals) if totals else None, initial=done, unit="step", disable=disable,
                dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------------------------
# The loop


def train(config: RunConfig, run_dir: str | Path, **kwargs) -> dict:
    """Train `config` into `run_dir` and return the summary dict (also written to summary.json).

    resume: continue from the run folder's latest checkpoint (model, optimizer, step, RNG, sampler).
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


def _train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
           on_step: Callable[[int, dict], bool] | None = None, dataset: Dataset | None = None) -> dict:
    trainer = _Trainer(config.validated(), RunDir(run_dir), resume=resume, dataset=dataset)
    status, error = "completed", None
    with StopFlag() as stop, _progress_bar(config, trainer.tokens_per_step, quiet, trainer.state.step,
                                              trainer.flops_per_token) as bar:
        try:
            while trainer.progress() < 1.0:
                lr, due = trainer.step(bar)
                if due and trainer.evaluate_and_save():
                    status = "early_stopped"
                    break
                if trainer.should_stop(stop, on_step, lr):
                    status = "interrupted"
                    trainer.save()
                    break
        except TrainingError as exc:
            status, error = "diverged", str(exc)
    summary = trainer.finish(status, error)
    if stop.requested and status != "interrupted":
        stop.redeliver()
    return summary


class _Trainer:
    """One training run, in named steps: setup (here), step, evaluate, should_stop, finish."""

    def __init__(self, config: RunConfig, run: RunDir, *, resume: bool, dataset: Dataset | None) -> None:
        self.config, self.run = config, run
        self.ctx = ctx = dist_utils.init()
        t = config.training
        self.device = ctx.device if ctx.world_size > 1 else resolve_device(t.device)
        saved = resume_state(run, config, ctx.world_size, resume)
        self.precision = resume_precision(t.precision, self.device, saved)
        self.dataset = dataset or prepare(config.data)
        tokenizer = self.dataset.tokenizer
        if saved is not None and saved["tokenizer"] != tokenizer.to_dict():
            raise CheckpointError(f"{run.latest}: its tokenizer differs from the one built from the corpus now")
        self.byte_lengths = tokenizer.byte_lengths()

        self.training = build_training(config, tokenizer.vocab_size, self.device, self.precision, ctx=ctx)
        self.model, self.optimizer = self.training.model, self.training.optimizer
        self.ema = WeightAverage(self.model, t.ema, t.ema_warmup)  # training.ema: evaluated and saved as the model
        self.sampler = batch_sampler(config, self.dataset.train, ctx.rank)
        self.run_id = run_id(config)
        self.checkpointer = Checkpointer(
            run, model=self.model, optimizer=self.optimizer, sampler=self.sampler, ctx=ctx, device=self.device,
            fixed={"config": config.to_dict(), "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.to_dict(),
                   "world_size": ctx.world_size, "run_id": self.run_id, "device": str(self.device),
                   "precision": self.precision}, ema=self.ema)
        self.state = TrainState(**self.checkpointer.restore(saved)) if saved is not None else TrainState()
        self.last_val: dict | None = saved["val"] if saved is not None else None
        self.tokens_per_step = t.batch_size * config.model.context_length * ctx.world_size
        self.flops_per_token = flops_per_token(config.model, tokenizer.vocab_size)
        self.window = _LossWindow(self.device)
        self.tensorboard = TensorBoardLog(run.tensorboard_dir, t.tensorboard and dist_utils.is_rank0(), self.state.step)
        if dist_utils.is_rank0():
            run.write_config(config)
            run.write_tokenizer(tokenizer)
            run.clear_summary()
            run.restart_metrics(keep_through_step=self.state.step)

    def progress(self) -> float:
        """The fraction of the budget used so far (`decoder.step.budget_progress`)."""
        return budget_progress(self.config, self.state, self.flops_per_token)

    def step(self, bar) -> tuple[float, bool]:
        """One optimizer step; returns its learning rate and whether an evaluation is due after it."""
        t, state = self.config.training, self.state
        started = time.perf_counter()
        progress_before = self.progress()
        lr = lr_at(self.config, state.step, progress_before)
        micro_batches = [self.sampler.next_batch() for _ in range(t.grad_accum_steps)]
        loss = self.training.step(micro_batches, lr)
        self.ema.update(self.model)
        state.step += 1
        state.tokens_seen += self.tokens_per_step
        self.window.add(loss, self.tokens_per_step)
        if self.device.type == "cuda" and state.step % t.log_interval == 0:
            torch.cuda.synchronize(self.device)
        state.elapsed_s = dist_utils.broadcast_float(state.elapsed_s + (time.perf_counter() - started), self.ctx)

        due = eval_due(self.config, state.step, progress_before, self.progress())
        if state.step % t.log_interval == 0 or due:
            train_loss = self.window.close(self.ctx)
            if not math.isfinite(train_loss):
                raise self._diverged("training loss", train_loss)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{self.window.tokens_per_s:,.0f}", lr=f"{lr:.2e}")
            self.tensorboard.training(state.step, {"train_loss": train_loss, "lr": lr,
                                                   "tokens_per_s": self.window.tokens_per_s})
        bar.update(1)
        return lr, due

    def evaluate(self) -> dict:
        """Evaluate on the whole validation split (rank 0 computes, every rank gets the figures),
        update the best-so-far counters, and return the metrics row (fields: `decoder.runs`)."""
        model = self.ema.evaluated(self.model)  # the moving average with training.ema, else the model
        val = evaluate_split(model, self.dataset.val, self.byte_lengths, self.device, self.precision) \
            if dist_utils.is_rank0() else None
        val = self.last_val = dist_utils.broadcast_object(val, self.ctx)
        state = self.state
        state.last_eval_step = state.step
        if val["val_loss"] < state.best_val_loss:
            state.best_val_loss, state.best_step, state.evals_since_best = val["val_loss"], state.step, 0
            state.best_val_bpb, state.train_loss_at_best = val["val_bpb"], self.window.train_loss
        else:
            state.evals_since_best += 1
        return {"step": state.step, "tokens_seen": state.tokens_seen, "flops": state.tokens_seen * self.flops_per_token,
                "train_loss": self.window.train_loss, **val,
                "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": self.window.tokens_per_s,
                "elapsed_s": round(state.elapsed_s, 3)}

    def log_metrics(self, row: dict) -> None:
        """Record one evaluation's row (rank 0): metrics.jsonl and TensorBoard."""
        if dist_utils.is_rank0():
            self.run.append_metrics(row)
            self.tensorboard.evaluation(row)

    def save(self) -> None:
        """Checkpoint latest.pt (collective), and best.pt too when the last evaluation is the best."""
        state = self.state
        best = state.best_step == state.step == state.last_eval_step and math.isfinite(state.best_val_loss)
        self.checkpointer.save(asdict(state), self.last_val, self.window.train_loss, best=best)

    def evaluate_and_save(self) -> bool:
        """Evaluate, log, checkpoint; True when validation loss has not improved for `patience` evaluations."""
        started = time.perf_counter()
        row = self.evaluate()
        self.log_metrics(row)
        if not math.isfinite(row["val_loss"]):
            raise self._diverged("validation loss", row["val_loss"])
        self.save()
        self.window.exclude(time.perf_counter() - started)  # evaluation time is not training throughput
        patience = self.config.training.patience
        return patience is not None and self.state.evals_since_best >= patience

    def should_stop(self, stop: StopFlag, on_step: Callable[[int, dict], bool] | None, lr: float) -> bool:
        """Whether a signal or the caller's callback asked any rank to stop after this step."""
        wants = stop.requested or (
            on_step is not None and bool(on_step(self.state.step, {"lr": lr, "train_loss": self.window.train_loss})))
        return dist_utils.any_true(wants, self.ctx)

    def finish(self, status: str, error: str | None) -> dict:
        """Evaluate the last step if it was not, write samples and the summary; returns the summary.
        A diverged run writes its summary and raises TrainingError."""
        if status == "diverged":
            if dist_utils.is_rank0():
                summary = self.summary(status, error)
                self.run.write_summary(summary)
                self.tensorboard.close(self.config.to_dict(), summary)
            dist_utils.barrier(self.ctx)
            raise TrainingError(error)
        if status != "interrupted" and self.state.last_eval_step != self.state.step:
            self.log_metrics(self.evaluate())
            self.save()
        summary = self.summary(status, None)
        if dist_utils.is_rank0():
            if status != "interrupted":
                model, tokenizer, _, _ = load_model(self.run.path, map_location=str(self.device))
                summary["samples"] = write_samples(self.run, model, tokenizer, self.config.sampling, self.device)
                if self.config.training.final_protocols:
                    summary["protocols"] = score_protocols(model, tokenizer, self.dataset.train, self.dataset.val,
                                                           self.config.training.final_protocols, self.device,
                                                           self.precision)
            self.run.write_summary(summary)
            self.tensorboard.close(self.config.to_dict(), summary)
        dist_utils.barrier(self.ctx)
        return summary

    def summary(self, status: str, error: str | None) -> dict:
        """summary.json's fields (documented in `decoder.runs`), but samples."""
        state, val, model = self.state, self.last_val or {}, self.model
        return {
            "run_id": self.run_id,
            "status": status,
            "error": error,
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "elapsed_s": round(state.elapsed_s, 3),
            "tokens_per_s": state.tokens_seen / state.elapsed_s if state.elapsed_s > 0 else None,
            "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
            "best_step": state.best_step,
            "best_val_bpb": state.best_val_bpb,
            "train_loss_at_best": state.train_loss_at_best,
            "final_val_loss": val.get("val_loss"),
            "final_val_ppl": val.get("val_ppl"),
            "final_val_bpb": val.get("val_bpb"),
            "final_train_loss": self.window.train_loss,
            "params_total": model.num_params(),
            "params_non_embedding": model.num_params(non_embedding=True),
            "vocab_size": model.vocab_size,
            "flops_per_token": self.flops_per_token,
            "flops": state.tokens_seen * self.flops_per_token,
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.ctx.world_size,
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "best_checkpoint": self.run.relative(self.run.best) if self.run.best.is_file() else None,
        }

    def _diverged(self, what: str, value: float) -> TrainingError:
        latest = self.run.latest if self.run.latest.is_file() else "none saved yet"
        return TrainingError(f"{what} became {value} at step {self.state.step}; stopped. The last good checkpoint "
                             f"is kept ({latest}); lower training.lr or raise warmup_steps")
