"""What PPO, RLOO and GRPO share around their own math: models, the iteration plan, update passes, logs, the save.

    load_policy(opts, rt) -> (tokenizer, template, policy, reference)    reference = adapters off with --lora
    load_reward(opts, rt, tokenizer, reward_fn) -> TokenScorer over the RM (frozen) or a RewardFn
    plan_iterations(n_prompts, opts, rt) -> IterationPlan
    optimizer_steps(plan, opts, k) -> the run's optimizer steps (what the learning-rate schedule spans)
    update_passes(ddp_models, param_groups, optimizer, scheduler, n_rows, opts, rt, iteration, micro_loss) -> stats
    process_mean(value, rt) -> float       a per-process statistic averaged over the processes (the logged metrics)
    run_iterations(opts, rt, name, ..., update) -> last metrics     loop.run_steps over the iterations, then the save

One iteration: this process's rollout_batch_size prompts (an epoch is one pass over the prompts, in a per-epoch
order) -> rollout.generate_rollout (K samples each) -> the algorithm's `update(iteration, rollout)` (advantages and
its --ppo-epochs passes of minibatch steps) -> one metrics record and OUT/samples.jsonl lines. Iterations run in
loop.run_steps, so checkpoints, --resume and logging are those of every other command.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train.data import epoch_permutation, iter_chunks
from zhihu_rlhf.train.lora import WithoutAdapters, is_peft
from zhihu_rlhf.train.loop import accumulate_step, run_steps
from zhihu_rlhf.train.models import (
    disable_dropout,
    load_for_training,
    load_frozen,
    load_tokenizer,
    require_positions,
    require_score_head,
)
from zhihu_rlhf.train.prompts import end_token_ids, resolve_template
from zhihu_rlhf.train.report import ModelCardInfo, finish_run
from zhihu_rlhf.train.rollout import RLOptions, Rollout, generate_rollout
from zhihu_rlhf.train.runtime import Runtime, is_sharded
from zhihu_rlhf.train.scoring import RewardFn, TokenScorer, WeightedRewards, load_reward_fn

# ----------------------------------------------------------------------------------------------------------------
# Models


def load_policy(opts: RLOptions, rt: Runtime, with_reference: bool = True) -> tuple[Any, str, nn.Module, nn.Module | None]:
    """(tokenizer, template, the trained policy, its frozen reference or None without one)."""
    tokenizer, policy = load_for_training(opts.policy, "causal-lm", opts, rt)
    require_rl_positions(policy, opts.policy, opts)
    if not end_token_ids(tokenizer, policy.generation_config):
        raise UserError(f"policy {opts.policy!r}: no eos or end-of-turn token, so responses could never end")
    template = resolve_template(tokenizer, opts.template)
    # The update needs the same log-probs (train mode) as sampling computed (eval mode).
    disable_dropout(policy)
    if not with_reference:
        reference = None
    elif is_peft(policy):  # the starting policy is the same weights with the adapters off: no copy
        reference = WithoutAdapters(policy, policy)
    elif is_sharded(policy):  # loaded sharded like the policy, in its dtype (see make_reference)
        reference = load_frozen(opts.policy, "causal-lm", opts, rt, dtype=next(policy.parameters()).dtype)[1]
    else:
        reference = make_reference(policy, rt)
    return tokenizer, template, policy, reference


def make_reference(policy: nn.Module, rt: Runtime) -> nn.Module:
    """The frozen reference: a copy of the starting policy that computes exactly as the policy does.

    Same weights dtype as the policy (fp32) under the same autocast: with policy == reference, KL is exactly 0
    at iteration 0. (A bf16 copy under the policy's fp32 + bf16-autocast path reads a KL of its own rounding.)
    """
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    return reference.to(rt.device, dtype=next(policy.parameters()).dtype)


def reward_functions(opts: RLOptions) -> RewardFn | None:
    """--reward-fn (one or several, weighted) as one RewardFn; None without any."""
    if not opts.reward_fn:
        return None
    fns = [load_reward_fn(spec) for spec in opts.reward_fn]
    if len(fns) == 1 and not opts.reward_weights:
        return fns[0]
    return WeightedRewards(fns, opts.reward_weights or [1.0] * len(fns), opts.reward_fn)


def check_reward_model(opts: RLOptions, tokenizer: Any) -> str:
    """The reward model's name, after checking it can score this policy's tokens and was trained as a scorer."""
    if opts.reward is None:
        raise UserError("no reward: give --reward (a reward model) or --reward-fn (module:function)")
    if load_tokenizer(opts.reward).get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"reward model {opts.reward!r} uses another tokenizer than policy {opts.policy!r}: the RM scores the "
            "policy's tokens directly, so train the RM from the same base model"
        )
    require_score_head(opts.reward, "--reward")
    return opts.reward


def load_reward(opts: RLOptions, rt: Runtime, tokenizer: Any, reward_fn: RewardFn | None) -> nn.Module | RewardFn:
    """The library caller's reward_fn, else --reward-fn, else the frozen RM (bf16 on a GPU: it is only read)."""
    reward_fn = reward_fn or reward_functions(opts)
    if reward_fn is not None:
        return reward_fn
    reward_model = load_frozen(check_reward_model(opts, tokenizer), "reward", opts, rt, wrap=TokenScorer)[1]
    require_rl_positions(reward_model.model, opts.reward, opts)
    return reward_model


def require_rl_positions(model: nn.Module, name: str, opts: RLOptions) -> None:
    """Every RL model reads a prompt and its response: refuse a learned position table shorter than the two."""
    require_positions(model, name, opts.max_prompt_len + opts.max_new_tokens, "--max-prompt-len + --max-new-tokens")


# ----------------------------------------------------------------------------------------------------------------
# Iterations


@dataclass
class IterationPlan:
    n_prompts: int
    per_iteration: int  # prompts per iteration, all processes together
    iterations_per_epoch: int
    n_iterations: int

    def rows(self, iteration: int, seed: int, rank: int, batch: int) -> list[int]:
        """The prompt indices process `rank` samples from at `iteration` (a fresh order every epoch)."""
        epoch, position = divmod(iteration, self.iterations_per_epoch)
        first = position * self.per_iteration + rank * batch
        return epoch_permutation(self.n_prompts, seed, epoch)[first : first + batch].tolist()


def plan_iterations(n_prompts: int, opts: RLOptions, rt: Runtime) -> IterationPlan:
    per_iteration = opts.rollout_batch_size * rt.world_size
    iterations_per_epoch = n_prompts // per_iteration
    if iterations_per_epoch == 0:
        raise UserError(
            f"{opts.data}: {n_prompts} distinct prompts, fewer than one rollout batch "
            f"({opts.rollout_batch_size} x {rt.world_size} processes): lower --rollout-batch-size"
        )
    n_iterations = max(1, math.ceil(opts.epochs * iterations_per_epoch))
    if opts.max_iterations:
        n_iterations = min(n_iterations, opts.max_iterations)
    return IterationPlan(n_prompts, per_iteration, iterations_per_epoch, n_iterations)


def optimizer_steps(plan: IterationPlan, opts: RLOptions, k: int) -> int:
    """The run's optimizer steps (the learning-rate schedule's length): each iteration, update_passes takes
    --ppo-epochs passes over its B x K sequences in minibatches of --micro-batch-size x --grad-accum."""
    return plan.n_iterations * opts.ppo_epochs * -(-opts.rollout_batch_size * k // opts.minibatch_size)


MicroLoss = Callable[[list[int]], tuple[torch.Tensor, float, dict[str, float]]]


def update_passes(
    ddp_models: Sequence[nn.Module],
    param_groups: Sequence[list[nn.Parameter]],
    optimizer: Any,
    scheduler: Any,
    n_rows: int,
    opts: RLOptions,
    rt: Runtime,
    iteration: int,
    micro_loss: MicroLoss,
) -> dict[str, float]:
    """--ppo-epochs passes over the rollout's n_rows sequences in shuffled minibatches, one optimizer step each.

    micro_loss(rows) -> (loss sum, count, extras sums) of those rollout rows (loop.py's loss contract), so a step's
    loss is the mean over its whole minibatch on all ranks, however it is cut into micro-batches. Returns each
    logged quantity averaged over the steps.
    """
    for m in ddp_models:
        m.train()
    generator = torch.Generator().manual_seed(opts.seed * 1_000_003 + iteration)  # same order on resume
    totals: dict[str, float] = {}
    n_steps = 0
    for _ in range(opts.ppo_epochs):
        order = torch.randperm(n_rows, generator=generator).tolist()
        for minibatch in iter_chunks(order, opts.minibatch_size):
            micro = [lambda rows=list(rows): micro_loss(rows) for rows in iter_chunks(minibatch, opts.micro_batch_size)]
            result = accumulate_step(ddp_models, param_groups, micro, optimizer, scheduler, opts.max_grad_norm, rt)
            for key, value in {**result.extras, "grad_norm": result.grad_norm}.items():
                totals[key] = totals.get(key, 0.0) + value
            n_steps += 1
    for m in ddp_models:
        m.eval()
    return {k: v / max(n_steps, 1) for k, v in totals.items()}


def process_mean(value: torch.Tensor | float, rt: Runtime) -> float:
    """A statistic of this process's rollout averaged over the processes: what each iteration logs."""
    return rt.all_reduce_sum(float(value)) / rt.world_size


def rollout_metrics(rollout: Rollout, k: int, rt: Runtime) -> dict[str, float]:
    """What every RL stage logs about its rollout, averaged over the processes."""
    mean = lambda x: process_mean(x, rt)  # noqa: E731
    mask = rollout.response_mask
    metrics = {
        "reward_mean": mean(rollout.scores.mean()),
        "reward_std": mean(rollout.scores.std()) if len(rollout.scores) > 1 else 0.0,
        "rollout_entropy": mean((rollout.entropy * mask).sum() / mask.sum().clamp(min=1)),
        "response_length": mean(mask.sum(dim=1).mean()),
        # Responses cut at --max-new-tokens without an end token (EOS or end-of-turn).
        "no_eos_frac": mean((~rollout.ended).float().mean()),
    }
    if k > 1:
        groups = rollout.scores.view(-1, k)
        # A group whose K rewards are all equal has zero advantage everywhere: no learning signal from that prompt.
        metrics["group_reward_std"] = mean(groups.std(dim=1).mean())
        metrics["equal_reward_groups"] = mean((groups == groups[:, :1]).all(dim=1).float().mean())
    return metrics


def run_iterations(
    opts: RLOptions,
    rt: Runtime,
    *,
    name: str,
    tokenizer: Any,
    template: str,
    prompts: list[str],
    prompt_ids: list[list[int]],
    policy: nn.Module,
    reference: nn.Module | None,
    reward: nn.Module | RewardFn,
    k: int,
    plan: IterationPlan,
    trained: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    scheduler: Any,
    update: Callable[[int, Rollout], dict[str, float]],
    card_extra: str,
    policy_pass: bool = True,
    state: Callable[[], dict[str, Any]] = dict,
    restore: Callable[[dict[str, Any]], None] = lambda _state: None,
) -> dict[str, float]:
    """Run the iterations through loop.run_steps, then save the policy (rank 0 writes OUT). Returns the last metrics.

    update(iteration, rollout) -> the algorithm's metrics (kl, losses, ...); it runs the optimizer steps.
    policy_pass: see rollout.generate_rollout (False: `update` fills in the rollout's log-probs and entropy).
    """
    samples_path = opts.out / "samples.jsonl"
    last: dict[str, float] = {}
    if rt.is_main:
        print(
            f"{name}: {len(prompts)} prompts, {plan.n_iterations} iterations x {plan.per_iteration} prompts x {k} "
            f"samples, template={template}"
        )

    def step(iteration: int) -> dict[str, dict[str, float]]:
        nonlocal last
        rows = plan.rows(iteration, opts.seed, rt.rank, opts.rollout_batch_size)
        t0 = time.perf_counter()
        rollout = generate_rollout(
            policy, reference, reward, tokenizer, [prompts[i] for i in rows], [prompt_ids[i] for i in rows],
            opts.sampling, rt, k, policy_pass,
        )
        t_rollout = time.perf_counter() - t0
        t1 = time.perf_counter()
        update_metrics = update(iteration, rollout)
        t_update = time.perf_counter() - t1
        response_tokens = rt.all_reduce_sum(rollout.response_mask.sum().item())
        trained_tokens = rt.all_reduce_sum(rollout.attention_mask.sum().item() * opts.ppo_epochs)
        last = {
            "epoch": (iteration + 1) / plan.iterations_per_epoch,
            **rollout_metrics(rollout, k, rt),
            **update_metrics,
            "lr": optimizers[0].param_groups[0]["lr"],
            # Throughput: response tokens sampled (+ scored) per second; tokens through the update per second.
            "response_tokens": response_tokens,
            "trained_tokens": trained_tokens,
            "rollout_tokens_per_s": response_tokens / t_rollout,
            "train_tokens_per_s": trained_tokens / t_update,
        }
        if isinstance(reward, WeightedRewards):
            last.update({f"reward_{n}": sum(v) / len(v) for n, v in reward.last_parts.items()})
        if rt.is_main:
            _write_samples(samples_path, iteration + 1, rollout, opts.log_samples)
        return {"train": last}

    def truncate_samples(first: int) -> None:
        if rt.is_main:
            _truncate_samples(samples_path, first)

    run_steps(
        opts, rt, plan.n_iterations, step, model=trained, optimizers=optimizers, scheduler=scheduler, out=opts.out,
        desc=name, state=state, restore=restore, on_start=truncate_samples,
        postfix=("reward_mean", "kl", "response_length"),
    )
    card = _card(opts, name, template, last, card_extra)
    finish_run(
        opts.out, policy, tokenizer, card, rt, title=f"{name.upper()} {opts.policy}", merge_lora=opts.merge_lora,
        dtype=opts.save_dtype,
    )
    return last


def _truncate_samples(path: Path, first: int) -> None:
    """Keep the records of iterations up to `first` (those a resumed checkpoint had done); none on a fresh run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["iteration"] <= first]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _write_samples(path: Path, iteration: int, rollout: Rollout, n: int) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for i in range(min(n, len(rollout.prompts))):
            record = {"iteration": iteration, "prompt": rollout.prompts[i], "response": rollout.responses[i], "score": rollout.scores[i].item()}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _card(opts: RLOptions, name: str, template: str, metrics: dict[str, float], extra: str) -> ModelCardInfo:
    reward = f"reward model `{opts.reward}`" if opts.reward else f"reward function(s) `{', '.join(opts.reward_fn) or '(library callable)'}`"
    usage = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{opts.out}")
model = AutoModelForCausalLM.from_pretrained("{opts.out}")
# Prompt it exactly as its SFT starting point (template: {template}); see that model's card.
"""
    return ModelCardInfo(
        task=name,
        base_model=opts.policy,
        data=opts.data,
        options=opts.to_dict(),
        results={f"last_{k}": v for k, v in metrics.items() if not k.endswith(("_per_s", "_tokens")) and k not in ("lr", "epoch")},
        usage=usage,
        extra=f"Policy optimised with {name.upper()} against the {reward}. {extra} `samples.jsonl` holds generations "
        "from every iteration.",
    )
