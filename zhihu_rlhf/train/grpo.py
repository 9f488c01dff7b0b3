"""GRPO: `python -m zhihu_rlhf.train grpo --policy SFT --reward-fn m:f (or --reward RM) --data D --out OUT`.

Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning
in Open Language Models"), with the corrections of Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
Training: A Critical Perspective") and DAPO (Yu et al. 2025) as options. No value model: each prompt's group of K
samples is its own baseline. The reference is loaded only when --beta > 0 (with --lora: the adapters switched off).

One iteration, B prompts x K samples = N responses (rl_math.py writes each formula once):
    rollout     K samples per prompt, log pi_old (per token), score r_i                       (rollout.py)
    advantage   A_i = (r_i - mean_group r) / (std_group r + 1e-4)      --scale-rewards group (GRPO)
                A_i =  r_i - mean_group r                              --scale-rewards none  (Dr. GRPO)
                the same A_i on every token of response i
    loss        l_{i,t} = max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps)) + beta * rho_{i,t} k3_{i,t}
                rho = pi / pi_old per token; k3 = pi_ref/pi - log(pi_ref/pi) - 1 (KL to the reference as a loss
                term, Schulman's k3 estimator, as the paper), weighted by rho because the tokens were sampled
                from pi_old (TRL's use_bias_correction_kl, its default)
    aggregate   --loss-type dapo     sum_{i,t} l / tokens in the minibatch (DAPO; TRL's default)
                --loss-type grpo     mean_i (1/|y_i|) sum_t l_{i,t}      (the GRPO paper)
                --loss-type dr_grpo  sum_{i,t} l / (responses x --max-new-tokens)   (Dr. GRPO)
The names and meanings are TRL GRPOTrainer's loss_type and scale_rewards; its loss on the same batch equals this
one (tests/test_train_grpo.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.loop import make_optimizer, make_scheduler
from zhihu_rlhf.train.options import parse_options
from zhihu_rlhf.train.rl import (
    load_policy,
    load_reward,
    optimizer_steps,
    plan_iterations,
    process_mean,
    run_iterations,
    update_passes,
)
from zhihu_rlhf.train.rl_math import (
    LOSS_TYPES,
    SCALE_REWARDS,
    aggregate,
    clipped_policy_loss,
    grpo_advantages,
    k3_kl,
    penalize_missing_eos,
)
from zhihu_rlhf.train.rollout import GroupOptions, Rollout, encode_prompts, load_prompts, response_logprobs
from zhihu_rlhf.train.runtime import Runtime, training_runtime, wrap_ddp
from zhihu_rlhf.train.scoring import RewardFn


@dataclass(kw_only=True)
class GRPOOptions(GroupOptions):
    """`python -m zhihu_rlhf.train grpo` options. Defaults follow TRL's GRPOTrainer where it has one."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {
        "max_new_tokens": 32, "rollout_batch_size": 8, "max_iterations": 8, "lr": 1e-4,
    }

    scale_rewards: str = field(
        default="group",
        metadata={"help": "group: divide advantages by the group's reward std (GRPO); none: do not (Dr. GRPO)",
                  "choices": SCALE_REWARDS},
    )
    loss_type: str = field(
        default="dapo",
        metadata={"help": "aggregation over tokens: dapo (token mean over the minibatch), grpo (mean of per-response "
                  "token means), dr_grpo (token sum / (responses x --max-new-tokens))", "choices": LOSS_TYPES},
    )
    beta: float = field(
        default=0.0,
        metadata={"help": "weight of the k3 KL(policy || reference) loss term (0 = no reference model; DeepSeek-R1 used 0.001)"},
    )

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise UserError(f"--beta must be >= 0, got {self.beta}")


def grpo_update(
    policy: torch.nn.Module,  # TokenLogProbs around the policy (or DDP around one)
    optimizer: Any,
    scheduler: Any,
    rollout: Rollout,
    advantages: torch.Tensor,  # (N,)
    opts: GRPOOptions,
    rt: Runtime,
    iteration: int,
    on_policy: bool = False,
) -> dict[str, float]:
    """--ppo-epochs passes of minibatch steps on the --loss-type aggregate of the clipped loss + beta * k3.

    on_policy: the rollout gets one optimizer step (single_step), so the policy here is still the sampling-time one
    and its log-probs are the old ones (ratio 1, as TRL does for num_iterations=1): the rollout skipped that pass
    and they are filled in here.
    """
    T = rollout.response_len

    def micro_loss(rows: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        seq, attn, mask = rollout.sequences[rows], rollout.attention_mask[rows], rollout.response_mask[rows]
        logprobs, entropy = response_logprobs(policy, seq, attn, T, opts.temperature, with_entropy=True)
        if on_policy:
            rollout.logprobs[rows], rollout.entropy[rows] = logprobs.detach().float(), entropy.detach().float()
        old = rollout.logprobs[rows]
        per_token, stats = clipped_policy_loss(logprobs, old, advantages[rows, None], mask, opts.clip_range)
        extras = {"policy_loss": aggregate(per_token, mask, opts.loss_type, opts.max_new_tokens)[0].item()}
        if opts.beta > 0:
            # k3 at tokens sampled from pi_old, weighted by rho = pi / pi_old: an unbiased estimate under pi.
            kl = k3_kl(logprobs, rollout.ref_logprobs[rows]) * torch.exp(logprobs - old)
            per_token = per_token + opts.beta * kl
            extras["kl_loss"] = aggregate(kl.detach(), mask, opts.loss_type, opts.max_new_tokens)[0].item()
        loss, count = aggregate(per_token, mask, opts.loss_type, opts.max_new_tokens)
        for name, values in {"entropy": entropy.detach(), **stats}.items():
            extras[name] = aggregate(values, mask, opts.loss_type, opts.max_new_tokens)[0].item()
        return loss, count, extras

    params = [[p for p in policy.parameters() if p.requires_grad]]
    return update_passes([policy], params, optimizer, scheduler, len(rollout.prompts), opts, rt, iteration, micro_loss)


def single_step(opts: GRPOOptions) -> bool:
    """Whether each rollout gets exactly one optimizer step (one pass, one minibatch on every process)."""
    return opts.ppo_epochs == 1 and opts.rollout_batch_size * opts.num_generations <= opts.minibatch_size


def train(opts: GRPOOptions, reward_fn: RewardFn | None = None) -> dict[str, float]:
    """Run GRPO end to end; returns the last iteration's metrics. Writes OUT (rank 0).

    reward_fn: a programmatic reward for library callers (the CLI's --reward-fn imports them by name).
    """
    with training_runtime(opts.device, opts.precision, opts.seed) as rt:
        prompts = load_prompts(opts.data, opts.data_kind)
        tokenizer, template, policy, reference = load_policy(opts, rt, with_reference=opts.beta > 0)
        reward = load_reward(opts, rt, tokenizer, reward_fn)
        prompt_ids = encode_prompts(tokenizer, prompts, template, opts.max_prompt_len)
        k = opts.num_generations
        plan = plan_iterations(len(prompts), opts, rt)
        steps = optimizer_steps(plan, opts, k)
        optimizer = make_optimizer([p for p in policy.parameters() if p.requires_grad], opts.lr, opts.weight_decay)
        scheduler = make_scheduler(optimizer, opts.warmup_ratio, steps)
        policy_ddp = wrap_ddp(TokenLogProbs(policy), rt)

        def update(iteration: int, rollout: Rollout) -> dict[str, float]:
            scores = penalize_missing_eos(rollout.scores, rollout.ended, opts.missing_eos_penalty)
            advantages = grpo_advantages(scores, k, opts.scale_rewards)
            stats = grpo_update(policy_ddp, optimizer, scheduler, rollout, advantages, opts, rt, iteration, single_step(opts))
            metrics = {"advantage_abs_mean": process_mean(advantages.abs().mean(), rt), **stats}
            if reference is not None:  # KL(policy || reference) per response at sampling time, as PPO and RLOO log it
                metrics["kl"] = process_mean(rollout.sequence_kl.mean(), rt)
            return metrics

        return run_iterations(
            opts, rt, name="grpo", tokenizer=tokenizer, template=template, prompts=prompts, prompt_ids=prompt_ids,
            policy=policy, reference=reference, reward=reward, k=k, plan=plan, trained=policy, optimizers=[optimizer],
            scheduler=scheduler, update=update, policy_pass=not single_step(opts),
            card_extra=f"{k} samples per prompt, advantages relative to their group (scale_rewards={opts.scale_rewards}), "
            f"loss aggregated as {opts.loss_type}, k3 KL to the frozen starting model weighted by beta={opts.beta}.",
        )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(GRPOOptions, argv, "python -m zhihu_rlhf.train grpo", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
