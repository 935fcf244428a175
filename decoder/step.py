"""What one training step and one evaluation compute, and the one place a trainer is built: the
budget and evaluation schedule, the learning-rate schedule, the optimizer, `build_training` (model,
loss module, optimizer, attention kernel, precision: a `Training`), its gradient-accumulated
optimizer step, the batch sampler of a rank, and the validation loss over a whole split.

Both the step and the evaluation score next-token prediction the same way: cross-entropy of the
float32 logits under `decoder.hardware.autocast`, computed by `decoder.loss.linear_cross_entropy`
(fused with the output layer, in row chunks); `decoder.train` runs them in its loop and the
benchmarks build their step with `build_training` and time `Training.step` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from decoder import distributed as dist_utils
from decoder.config import RunConfig
from decoder.data import BatchSampler
from decoder.hardware import autocast, training_attention_backend
from decoder.loss import IGNORE_INDEX, NextTokenLoss, linear_cross_entropy
from decoder.metrics import quality
from decoder.model import GPT
from decoder.muon import Muon


def budget_progress(config: RunConfig, state, flops_per_token: int | None = None) -> float:
    """The fraction of the budget used by `state` (a `decoder.train.TrainState`): the largest of
    steps, tokens, seconds and FLOPs (tokens x `flops_per_token`, `decoder.flops`) over their
    limits; training stops at 1."""
    t = config.training
    parts = []
    if t.max_flops is not None:
        if flops_per_token is None:
            raise ValueError("training.max_flops needs the model's flops_per_token")
        parts.append(state.tokens_seen * flops_per_token / t.max_flops)
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


class OptimizerPair(torch.optim.Optimizer):
    """Two optimizers stepped as one (Muon for the blocks' matrices, AdamW for the rest): the
    trainer sets `lr` on `param_groups` and checkpoints `state_dict()` as it does for one."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer) -> None:
        self.optimizers = (first, second)
        # Not Optimizer.__init__: the two hold the parameters, their groups and their state.
        self.defaults = {}
        self.state = {}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure=None) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"pair": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for opt, saved in zip(self.optimizers, state_dict["pair"], strict=True):
            opt.load_state_dict(saved)


def make_optimizer(model: GPT, config: RunConfig, precision: str = "fp32") -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (not norms, biases, embeddings); plain Adam; or Muon on those
    matrices (the blocks' linear layers) with AdamW on the rest. `precision` is the run's resolved
    one ('fp32' or 'bf16'): Muon's Newton-Schulz iterations run in it."""
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
    if t.optimizer == "muon":
        # Each matrix's orthogonalised update is scaled to AdamW's typical RMS, so one lr and
        # schedule drive both optimizers.
        ns_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        muon = Muon(decay, lr=t.lr, weight_decay=t.weight_decay, momentum=t.muon_momentum, ns_dtype=ns_dtype)
        return OptimizerPair(muon, torch.optim.AdamW(no_decay, weight_decay=0.0, **kwargs))
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, **kwargs)


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, byte_lengths: np.ndarray, device: torch.device, precision: str) -> dict:
    """Loss over the *whole* split: consecutive windows of context_length, every token after the
    first predicted exactly once. Returns val_loss (nats/token), val_ppl, val_bpb and val_tokens."""
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
        y = torch.full((len(group), L), IGNORE_INDEX, dtype=torch.long)
        for j, (s, n) in enumerate(zip(group, lengths)):
            x[j, :n] = data[s : s + n]
            y[j, :n] = data[s + 1 : s + 1 + n]
        with autocast(device, precision):
            hidden, _ = model.hidden(x.to(device))
            total += linear_cross_entropy(hidden, model.lm_head.weight, y.to(device), reduction="sum").item()
    model.train(was_training)
    return {**quality(total, n_pred, int(byte_lengths[tokens[1:]].sum())), "val_tokens": n_pred}


@dataclass
class Training:
    """What a trainer steps (built by `build_training`): the model, the module differentiated
    (`loss_model`: a `decoder.loss.NextTokenLoss` over the model, DDP-wrapped and compiled as the
    run says), its optimizer, and the device, resolved precision and process group it runs in."""

    config: RunConfig
    model: GPT
    loss_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str
    ctx: dist_utils.DistContext

    def step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float | None = None) -> torch.Tensor:
        """One optimizer step over gradient-accumulated micro-batches at learning rate `lr` (None:
        the optimizer's own, the config's peak lr); returns the mean loss (detached). Gradients are
        all-reduced only on the last micro-batch. The benchmarks time this very method."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with dist_utils.no_sync(self.loss_model, self.ctx, last=i == n - 1):
                with autocast(self.device, self.precision):
                    loss = self.loss_model(x, y) / n
                loss.backward()
            total += loss.detach()
        if self.config.training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.loss_model.parameters(), self.config.training.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total


def build_training(config: RunConfig, vocab_size: int, device: torch.device | str, precision: str, *,
                   ctx: dist_utils.DistContext = dist_utils.DistContext(), fused: bool | None = None) -> Training:
    """The one place a trainer is built: torch seeded with training.seed, the model on `device`,
    `make_optimizer`'s optimizer, the attention kernel `training_attention_backend` picks, and the
    loss module, wrapped for DDP under `ctx` and compiled with training.compile. `precision` is the
    resolved one ('fp32' or 'bf16'). `fused`: the fused output-layer loss (default: unless
    training.compile, where inductor fuses the plain loss itself and the fused one's Python chunk
    loop would only break the graph); False is the plain-logits baseline the benchmarks compare."""
    t = config.training
    device = torch.device(device)
    torch.manual_seed(t.seed)
    model = GPT(config.model, vocab_size).to(device)
    optimizer = make_optimizer(model, config, precision)
    model.set_attention_backend(training_attention_backend(device.type, config.model.context_length, precision))
    loss_model = dist_utils.wrap(NextTokenLoss(model, fused=not t.compile if fused is None else fused), ctx)
    if t.compile:
        loss_model = torch.compile(loss_model)
    return Training(config, model, loss_model, optimizer, device, precision, ctx)


def batch_sampler(config: RunConfig, train_tokens: np.ndarray, rank: int = 0) -> BatchSampler:
    """The micro-batches a rank trains on: batch_size // grad_accum_steps windows per draw, seeded
    by training.seed and the rank (each rank draws its own batches)."""
    t = config.training
    return BatchSampler(train_tokens, config.model.context_length, t.batch_size // t.grad_accum_steps,
                        config.data.windows, seed=t.seed + 1000003 * rank, input_noise=t.input_noise)
