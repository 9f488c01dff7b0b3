"""The shared training loop: accumulation, the loss contract, optimizer, schedule, checkpoints.

SFT, RM and DPO plug a loss into `fit`; PPO, RLOO and GRPO plug one rollout and its updates per step into
`run_steps`, the loop `fit` runs too (one place for logging, checkpoints and resume).

The loss contract. Every loss_fn returns a SUM, and fit divides the gradients by the step's global count:

    loss, count, extras = loss_fn(model, batch)        one micro-batch, on one rank
      loss    0-dim float tensor, the unnormalised sum of per-unit losses:
                SFT       cross-entropy summed over the N completion tokens of a [1, T] packed or [B, T] padded
                          batch; count = N tokens
                RM / DPO  pairwise loss summed over the B pairs (one forward over [2B, T]: chosen rows, then
                          rejected rows; rewards or log-probs [B] per side); count = B pairs
      count   how many units `loss` sums over (tokens or pairs)
      extras  {metric: sum over the same units}, e.g. RM {"accuracy": pairs ranked right, "margin": sum of gaps}

    For one optimizer step, C = sum of `count` over the step's micro-batches on all ranks. Each micro-batch's
    `loss` is backpropagated as returned; before optimizer.step() every gradient is multiplied by world_size / C
    (DDP has already averaged over ranks). The update therefore follows the gradient of

        sum over the step's micro-batches and ranks of loss  /  C        (a mean per token or per pair)

    whatever the packing, padding, accumulation or number of ranks. What is backpropagated is the sum; what is
    logged (train `loss` and each extra, all-reduced and divided by C) is that mean.

    fit(opts, rt, model, *, epoch_batches, loss_fn, evaluate, batch_tokens, out) -> last eval metrics
    run_steps(opts, rt, n_steps, step, *, model, optimizers, scheduler, out, desc, state, restore, on_start)
    accumulate_step(ddp_models, param_groups, micro_losses, optimizer, scheduler, max_grad_norm, rt) -> StepResult
    make_optimizer(params, lr, weight_decay) / make_scheduler(optimizer, warmup_ratio, total_steps)
    step_plan(n_batches, grad_accum, world_size) -> list[list[int]]
    save_checkpoint / latest_checkpoint / load_checkpoint   OUT/checkpoints/step-XXXXXXXX (torch.distributed.checkpoint)
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zhihu_rlhf.errors import UserError, first_line
from zhihu_rlhf.train.options import TrainOptions
from zhihu_rlhf.train.report import MetricsLogger
from zhihu_rlhf.train.runtime import Runtime, gathered, wrap_ddp


Batch = Any  # whatever a command's loss_fn understands (e.g. a list of example indices)
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, float, dict[str, float]]]


def fit(
    opts: TrainOptions,
    rt: Runtime,
    model: nn.Module,
    *,
    epoch_batches: Callable[[int], Sequence[Batch]],
    loss_fn: LossFn,
    evaluate: Callable[[nn.Module], dict[str, float]],
    batch_tokens: Callable[[Batch], int],
    out: Path | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """Train `model` (already on rt.device) and return the last eval metrics.

    epoch_batches(epoch) -> the epoch's micro-batches in order (deterministic in epoch: resume relies on it).
    loss_fn(model, batch) -> (loss sum, count, extras sums): the loss contract at the top of this module.
    evaluate(model) -> metrics on the test split (called on every rank; only rank 0 logs them).
    batch_tokens(batch) -> tokens the batch feeds the model (throughput).
    """
    out = out or opts.out
    # Step plans for every epoch up front: the scheduler needs the total, resume needs the positions.
    # A fractional --epochs runs the first part of the last epoch.
    n_epochs = math.ceil(opts.epochs)
    plans = [step_plan(len(epoch_batches(e)), opts.grad_accum, rt.world_size) for e in range(n_epochs)]
    last_fraction = opts.epochs - (n_epochs - 1)
    plans[-1] = plans[-1][: max(1, math.ceil(len(plans[-1]) * last_fraction))]
    positions = [(epoch, i) for epoch, plan in enumerate(plans) for i in range(len(plan))]  # step -> (epoch, index)
    if not positions:
        raise UserError("the training split gives no optimizer step (too few examples for the batch settings)")

    ddp_model = wrap_ddp(model, rt)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, opts.lr, opts.weight_decay)
    scheduler = make_scheduler(optimizer, opts.warmup_ratio, len(positions))
    progress = {"tokens_seen": 0}
    epoch_cache: dict[int, Sequence[Batch]] = {}
    eval_metrics: dict[str, float] = {}

    def step(global_step: int) -> dict[str, dict[str, float]]:
        nonlocal eval_metrics
        t0 = time.perf_counter()
        epoch, step_in_epoch = positions[global_step]
        batches = epoch_cache.setdefault(epoch, epoch_batches(epoch))
        my_batches = [batches[i] for i in plans[epoch][step_in_epoch][rt.rank :: rt.world_size]]
        ddp_model.train()
        result = accumulate_step(
            [ddp_model], [params], [lambda b=b: loss_fn(ddp_model, b) for b in my_batches], optimizer, scheduler,
            opts.max_grad_norm, rt,
        )
        step_tokens = int(rt.all_reduce_sum(sum(batch_tokens(b) for b in my_batches)))
        progress["tokens_seen"] += step_tokens
        at = epoch + (step_in_epoch + 1) / len(plans[epoch])
        records = {
            "train": {
                "epoch": at, "loss": result.loss, **result.extras, "lr": scheduler.get_last_lr()[0],
                "grad_norm": result.grad_norm, "tokens": progress["tokens_seen"],
                "tokens_per_s": step_tokens / (time.perf_counter() - t0),
            }
        }
        if step_in_epoch == len(plans[epoch]) - 1 or (opts.eval_steps and (global_step + 1) % opts.eval_steps == 0):
            ddp_model.eval()
            # gathered: ranks may evaluate unequal shares, which a sharded model's per-forward all-gather forbids.
            with torch.no_grad(), rt.autocast(), gathered(model):
                eval_metrics = evaluate(model)
            records["eval"] = {"epoch": at, **eval_metrics}
        return records

    run_steps(
        opts, rt, len(positions), step, model=model, optimizers=optimizer, scheduler=scheduler, out=out, desc=desc,
        state=lambda: dict(progress), restore=lambda saved: progress.update(tokens_seen=saved["tokens_seen"]),
        postfix=("loss", "tokens_per_s"),
    )
    return eval_metrics


# ----------------------------------------------------------------------------------------------------------------
# The loop every command runs: steps, logging, checkpoints, resume


def run_steps(
    opts: TrainOptions,
    rt: Runtime,
    n_steps: int,
    step: Callable[[int], dict[str, dict[str, float]]],
    *,
    model: nn.Module,
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    scheduler: Any,
    out: Path,
    desc: str,
    state: Callable[[], dict[str, Any]] = dict,
    restore: Callable[[dict[str, Any]], None] = lambda _state: None,
    on_start: Callable[[int], None] = lambda _first: None,
    postfix: Sequence[str] = (),
) -> None:
    """Run step(0) .. step(n_steps - 1), or from the newest checkpoint with --resume; log, checkpoint, clean up.

    step(i) -> {split: metrics} ("train", and "eval" when it evaluated), logged at step i + 1. A step is one
    optimizer step for SFT, RM and DPO (fit) and one rollout with its updates for PPO, RLOO and GRPO.
    state() -> what else a checkpoint must hold to continue the same curve (JSON); restore(state) puts it back.
    on_start(first step) runs once before the first step (after a resume: the checkpoint's step).
    Checkpoints every --save-steps steps also record the options that shape the curve; --resume refuses others.
    """
    start = 0
    ckpt = latest_checkpoint(out)
    if opts.resume:
        if ckpt is None:
            raise UserError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}")
        saved = load_checkpoint(ckpt, model, optimizers, scheduler, rt)
        check_same_curve(ckpt, saved.get("options", {}), curve_options(opts))
        start = saved["global_step"]
        restore(saved)
    elif ckpt is not None:
        raise UserError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    logger = MetricsLogger(out, rt, start if opts.resume else None)
    on_start(start)
    bar = tqdm(total=n_steps, initial=start, desc=desc, disable=not rt.is_main, dynamic_ncols=True)
    for i in range(start, n_steps):
        records = step(i)
        for split, metrics in records.items():
            logger.log(i + 1, split, **metrics)
        if "eval" in records and rt.is_main:
            bar.write(f"step {i + 1} eval " + " ".join(f"{k}={v:.4f}" for k, v in records["eval"].items()))
        bar.update(1)
        bar.set_postfix({k: f"{records['train'][k]:.4g}" for k in postfix if k in records["train"]})
        if opts.save_steps and (i + 1) % opts.save_steps == 0 and i + 1 < n_steps:
            checkpoint_state = {**state(), "global_step": i + 1, "options": curve_options(opts)}
            save_checkpoint(out, rt, model, optimizers, scheduler, checkpoint_state, opts.save_limit)
    bar.close()
    logger.close()
    if rt.is_main and not opts.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


# Options that do not change what is trained, only where it goes, how often it is saved or what else is logged.
_NOT_CURVE = {"out", "resume", "save_steps", "save_limit", "keep_checkpoints", "eval_steps", "log_samples", "merge_lora",
              "save_dtype", "device", "grad_ckpt"}


def curve_options(opts: TrainOptions) -> dict[str, Any]:
    """The options a resumed run must share with the run that wrote the checkpoint."""
    return {k: v for k, v in opts.to_dict().items() if k not in _NOT_CURVE}


def check_same_curve(ckpt: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if changed:
        what = ", ".join(f"--{k.replace('_', '-')} {now[k]} (checkpoint: {saved[k]})" for k in changed)
        raise UserError(f"--resume: {ckpt} was written with other options: {what}; resume with the checkpoint's values")


@dataclass
class StepResult:
    loss: float  # sum over the step's micro-batches and ranks / their count (the loss contract's mean)
    extras: dict[str, float]  # each extra, likewise a mean per unit
    grad_norm: float  # of the first parameter group, before clipping
    count: float


def accumulate_step(
    ddp_models: Sequence[nn.Module],
    param_groups: Sequence[list[nn.Parameter]],
    micro_losses: Sequence[Callable[[], tuple[torch.Tensor, float, dict[str, float]]]],
    optimizer: Any,
    scheduler: Any,
    max_grad_norm: float,
    rt: Runtime,
) -> StepResult:
    """One optimizer step over this rank's micro-batches, under the loss contract (module docstring).

    micro_losses: one call per micro-batch, each returning (loss sum, count, extras sums) with the autograd graph.
    param_groups: clipped to max_grad_norm each on its own (PPO: the policy's and the value model's).
    """
    loss_sum, count, extra_sums = 0.0, 0.0, {}
    for i, micro_loss in enumerate(micro_losses):
        last = i == len(micro_losses) - 1
        with contextlib.ExitStack() as stack:
            for m in ddp_models:
                stack.enter_context(rt.no_sync(m, sync=last))
            stack.enter_context(rt.autocast())
            loss, n, extras = micro_loss()
        loss.backward()
        loss_sum += loss.item()
        count += n
        for k, v in extras.items():
            extra_sums[k] = extra_sums.get(k, 0.0) + v
    # Gradients hold sum-over-count of this rank; DDP averaged them over ranks. Scale to a mean over
    # everything the step saw on all ranks.
    total_count = rt.all_reduce_sum(count)
    scale = rt.world_size / max(total_count, 1.0)
    for group in param_groups:
        for p in group:
            if p.grad is not None:
                p.grad.mul_(scale)
    norms = [clip_grad_norm(group, max_grad_norm) for group in param_groups]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    denominator = max(total_count, 1.0)
    return StepResult(
        loss=rt.all_reduce_sum(loss_sum) / denominator,
        extras={k: rt.all_reduce_sum(v) / denominator for k, v in sorted(extra_sums.items())},
        grad_norm=norms[0],
        count=total_count,
    )


# ----------------------------------------------------------------------------------------------------------------
# Optimizer, schedule, step plan


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable `params`; weight decay only on matrices (embeddings, linear weights), not on norms
    and biases."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients' global norm to max_norm (0 = off); returns the norm before clipping."""
    if max_norm <= 0:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    # Sharded gradients give the norm as a DTensor (already reduced over the ranks).
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_ratio: float, total_steps: int):
    """Linear warmup over warmup_ratio of the steps, then cosine decay to 0."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = int(round(warmup_ratio * total_steps))
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def step_plan(n_batches: int, grad_accum: int, world_size: int) -> list[list[int]]:
    """Group an epoch's micro-batches into optimizer steps: grad_accum * world_size each.

    Rank r runs plan[step][r::world_size]. On one process the last step may be short; with several, a short last
    step is dropped so every rank runs the same number of backward passes (DDP requires it).
    """
    per_step = grad_accum * world_size
    plan = [list(range(i, min(i + per_step, n_batches))) for i in range(0, n_batches, per_step)]
    if world_size > 1 and plan and len(plan[-1]) < per_step:
        plan.pop()
    return plan


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints

CHECKPOINT_DIR = "checkpoints"


def _trained_state(
    model: nn.Module, optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, optimizer states) as checkpoints hold them, keyed by parameter name, sharded where the model is.

    Only trained weights: a frozen LoRA base is reloaded from where it came from, not copied into every checkpoint.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optimizer_state = get_state_dict(model, optimizers, options=StateDictOptions(ignore_frozen_params=True))
    # A frozen weight under a second name (a tied lm_head) escapes ignore_frozen_params.
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in weights.items() if k not in frozen}, optimizer_state


def save_checkpoint(
    out: Path, rt: Runtime, model: nn.Module, optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    scheduler, state: dict[str, Any], save_limit: int,
) -> Path:
    """OUT/checkpoints/step-XXXXXXXX: trained weights and optimizer states, scheduler, RNG states and `state`.

    Call on every rank. Weights and optimizer states go through torch.distributed.checkpoint: each rank writes its
    own shard when sharded (one copy when replicated), so a sharded run never gathers them; a run resumes on the
    same number of processes. Written to a temporary folder that rank 0 renames when every rank is done, so a
    kill mid-save never leaves a half checkpoint.
    """
    import torch.distributed.checkpoint as dcp

    root = out / CHECKPOINT_DIR
    final = root / f"step-{state['global_step']:08d}"
    tmp = root / f".tmp-{final.name}"
    if rt.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    rt.barrier()
    model_state, optimizer_state = _trained_state(model, optimizers)
    with _single_process_is_meant():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp, no_dist=not rt.distributed)
    if rt.is_main:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-save_limit] if save_limit > 0 else []:
            shutil.rmtree(old)
    rt.barrier()
    return final


@contextlib.contextmanager
def _single_process_is_meant() -> Iterator[None]:
    """Silence DCP's warning that it works "in a single process" without a process group: that is what we asked."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / CHECKPOINT_DIR).glob("step-*"))
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: Path, model: nn.Module, optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer], scheduler,
    rt: Runtime,
) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote (every rank); returns its `state` dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model_state, optimizer_state = _trained_state(model, optimizers)
    try:
        with _single_process_is_meant():
            dcp.load(
                {"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path, no_dist=not rt.distributed
            )
    except Exception as err:  # noqa: BLE001 - DCP raises several types for "this checkpoint is another model's"
        raise UserError(
            f"--resume: {path} does not fit this model and options (same model, --lora settings and number of "
            f"processes as the run that wrote it?): {first_line(err)}"
        ) from None
    # Not strict: frozen weights are not in a checkpoint.
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    set_state_dict(model, optimizers, model_state_dict=model_state, optim_state_dict=optimizer_state, options=options)
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    scheduler.load_state_dict(trainer["scheduler"])
    rng = trainer["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
