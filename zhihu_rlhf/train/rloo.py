"""RLOO: `python -m zhihu_rlhf.train rloo --policy SFT --reward RM (or --reward-fn m:f) --data D --out OUT`.

REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs"; Kool et al. 2019). No value model: the other samples of the
same prompt are the baseline. Two models, or one with --lora (the reference is the policy with its adapters off),
plus the frozen RM.

One iteration, B prompts x K samples = N responses (rl_math.py writes each formula once):
    rollout     K samples per prompt, log pi_old, log pi_ref (per token), score s_i             (rollout.py)
    reward      r_i = s_i - kl_coef * sum_t (log pi_old - log pi_ref)    the KL as a penalty in the reward,
                one number per response (the paper's sequence-level form)
    advantage   A_i = r_i - 1/(K-1) sum_{j != i, same prompt} r_j
    loss        mean over responses of max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps)),
                rho_i = pi(y_i) / pi_old(y_i), the whole response's probability ratio: 1 in the first pass,
                clipped when one rollout serves --ppo-epochs > 1 updates
As TRL's RLOOTrainer (1.x), whose loss this matches on the same batch (tests/test_train_rloo.py).
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
from zhihu_rlhf.train.rl_math import penalize_missing_eos, rloo_advantages, sequence_clipped_loss
from zhihu_rlhf.train.rollout import GroupOptions, Rollout, encode_prompts, load_prompts, response_logprobs
from zhihu_rlhf.train.runtime import Runtime, training_runtime, wrap_ddp
from zhihu_rlhf.train.scoring import RewardFn


@dataclass(kw_only=True)
class RLOOOptions(GroupOptions):
    """`python -m zhihu_rlhf.train rloo` options. Defaults follow TRL's RLOOTrainer (--kl-coef = its beta 0.05, one
    pass per rollout) except K = 4 where TRL takes 2."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {
        "max_new_tokens": 32, "rollout_batch_size": 8, "max_iterations": 8, "lr": 1e-4,
    }

    num_generations: int = field(default=4, metadata={"help": "K: samples per prompt (the leave-one-out group), >= 2"})
    kl_coef: float = field(default=0.05, metadata={"help": "weight of KL(policy || reference) per response, subtracted from its reward"})

    def validate(self) -> None:
        super().validate()
        if self.kl_coef < 0:
            raise UserError(f"--kl-coef must be >= 0, got {self.kl_coef}")


def rloo_update(
    policy: torch.nn.Module,  # TokenLogProbs around the policy (or DDP around one)
    optimizer: Any,
    scheduler: Any,
    rollout: Rollout,
    advantages: torch.Tensor,  # (N,)
    opts: RLOOOptions,
    rt: Runtime,
    iteration: int,
) -> dict[str, float]:
    """--ppo-epochs passes of minibatch steps on the mean over responses of the clipped sequence loss."""
    T = rollout.response_len

    def micro_loss(rows: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        seq, attn, mask = rollout.sequences[rows], rollout.attention_mask[rows], rollout.response_mask[rows]
        logprobs, entropy = response_logprobs(policy, seq, attn, T, opts.temperature, with_entropy=True)
        loss, stats = sequence_clipped_loss(logprobs, rollout.logprobs[rows], advantages[rows], mask, opts.clip_range)
        # Entropy: each response's token mean, summed over responses like the loss.
        entropy_sum = ((entropy * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
        return loss, float(len(rows)), {"policy_loss": loss.item(), "entropy": entropy_sum.item(), **{k: v.item() for k, v in stats.items()}}

    params = [[p for p in policy.parameters() if p.requires_grad]]
    return update_passes([policy], params, optimizer, scheduler, len(rollout.prompts), opts, rt, iteration, micro_loss)


def train(opts: RLOOOptions, reward_fn: RewardFn | None = None) -> dict[str, float]:
    """Run RLOO end to end; returns the last iteration's metrics. Writes OUT (rank 0).

    reward_fn: a programmatic reward for library callers (the CLI's --reward-fn imports them by name).
    """
    with training_runtime(opts.device, opts.precision, opts.seed) as rt:
        prompts = load_prompts(opts.data, opts.data_kind)
        tokenizer, template, policy, reference = load_policy(opts, rt)
        reward = load_reward(opts, rt, tokenizer, reward_fn)
        prompt_ids = encode_prompts(tokenizer, prompts, template, opts.max_prompt_len)
        k = opts.num_generations
        plan = plan_iterations(len(prompts), opts, rt)
        steps = optimizer_steps(plan, opts, k)
        optimizer = make_optimizer([p for p in policy.parameters() if p.requires_grad], opts.lr, opts.weight_decay)
        scheduler = make_scheduler(optimizer, opts.warmup_ratio, steps)
        policy_ddp = wrap_ddp(TokenLogProbs(policy), rt)

        def update(iteration: int, rollout: Rollout) -> dict[str, float]:
            sequence_kl = rollout.sequence_kl  # (N,)
            scores = penalize_missing_eos(rollout.scores, rollout.ended, opts.missing_eos_penalty)
            advantages = rloo_advantages(scores, sequence_kl, opts.kl_coef, k)
            stats = rloo_update(policy_ddp, optimizer, scheduler, rollout, advantages, opts, rt, iteration)
            return {
                "kl": process_mean(sequence_kl.mean(), rt), "advantage_abs_mean": process_mean(advantages.abs().mean(), rt),
                **stats,
            }

        return run_iterations(
            opts, rt, name="rloo", tokenizer=tokenizer, template=template, prompts=prompts, prompt_ids=prompt_ids,
            policy=policy, reference=reference, reward=reward, k=k, plan=plan, trained=policy, optimizers=[optimizer],
            scheduler=scheduler, update=update,
            card_extra=f"{k} samples per prompt, each baselined by the mean reward of the other {k - 1}; the KL to the "
            f"frozen starting model is subtracted from each response's reward (coefficient {opts.kl_coef}).",
        )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(RLOOOptions, argv, "python -m zhihu_rlhf.train rloo", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
