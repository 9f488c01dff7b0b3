"""PPO with a reward model: `python -m zhihu_rlhf.train ppo --policy SFT --reward RM --data D --out OUT`.

The RLHF step after SFT and RM (Ouyang et al. 2022, InstructGPT; DeepSpeed-Chat in the reference article). Four
models: the policy (from SFT, trained), a frozen reference copy of it, a value model (initialised from the RM,
trained) and the frozen RM. With --lora, the reference is the policy's base and the RM the value model's base,
each with its adapters switched off: two sets of weights instead of four.

One iteration, N = B prompts x 1 sample, T = response tokens (rl_math.py writes each formula once):
    rollout     sample, log pi_old, log pi_ref, RM score s                                   (rollout.py)
    values      V_t of the state before each response token                                 (N, T)
    rewards     r_t = -kl_coef (log pi_old - log pi_ref)_t, + s (normalised, clipped) on the last token
    advantages  GAE(gamma, lambda) on r and V, whitened; returns R = A + V
    losses      --ppo-epochs passes of minibatch steps on the token mean of
                max(-A ratio, -A clip(ratio, 1 +- eps)) + 0.5 max((V - R)^2, (V_clipped - R)^2)
    kl_coef     adapted so the KL per response tracks --target-kl (Ziegler et al. 2019)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.data import iter_chunks
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.lora import WithoutAdapters, is_peft
from zhihu_rlhf.train.loop import make_optimizer, make_scheduler
from zhihu_rlhf.train.models import disable_dropout, load_for_training, require_score_head
from zhihu_rlhf.train.options import parse_options
from zhihu_rlhf.train.rl import (
    check_reward_model,
    load_policy,
    load_reward,
    optimizer_steps,
    plan_iterations,
    process_mean,
    require_rl_positions,
    reward_functions,
    run_iterations,
    update_passes,
)
from zhihu_rlhf.train.rl_math import (
    AdaptiveKLController,
    RunningMoments,
    explained_variance,
    gae_advantages,
    kl_penalty_rewards,
    masked_whiten,
    penalize_missing_eos,
    policy_loss,
    value_loss,
)
from zhihu_rlhf.train.rollout import RLOptions, Rollout, encode_prompts, load_prompts, response_logprobs
from zhihu_rlhf.train.runtime import Runtime, training_runtime, wrap_ddp
from zhihu_rlhf.train.scoring import RewardFn, TokenScorer


@dataclass(kw_only=True)
class PPOOptions(RLOptions):
    """`python -m zhihu_rlhf.train ppo` options. Defaults follow InstructGPT / DeepSpeed-Chat practice for 0.5B-7B models."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {
        "max_new_tokens": 32, "rollout_batch_size": 16, "ppo_epochs": 2, "max_iterations": 8, "lr": 1e-4,
    }

    value_model: str | None = field(
        default=None,
        metadata={"help": "initial value model (sequence classifier); default the reward model, or the policy with --reward-fn"},
    )
    value_lr: float = field(default=1e-5, metadata={"help": "value model peak learning rate"})
    kl_coef: float = field(default=0.05, metadata={"help": "initial weight of the per-token KL penalty against the reference"})
    target_kl: float = field(
        default=6.0,
        metadata={"help": "adapt --kl-coef so KL(policy || reference) per response tracks this many nats (0 = fixed coef)"},
    )
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL: responses over which the coefficient may change by ~20%%"})
    gamma: float = field(default=1.0, metadata={"help": "discount over response tokens"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    clip_range_value: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    reward_norm: bool = field(default=True, metadata={"help": "normalise RM scores by their running mean and std"})
    reward_clip: float = field(default=5.0, metadata={"help": "clip the (normalised) score to +-this (0 = off)"})

    def validate(self) -> None:
        super().validate()
        if self.kl_horizon < 1:
            raise UserError(f"--kl-horizon must be >= 1, got {self.kl_horizon}")
        if min(self.kl_coef, self.target_kl, self.reward_clip) < 0:
            raise UserError("--kl-coef, --target-kl and --reward-clip must be >= 0")


class _Both:
    """The policy's and the value model's optimizers (or schedulers) stepped as one; the schedulers also
    checkpointed as one (the optimizers go to save_checkpoint as a list, for torch.distributed.checkpoint)."""

    def __init__(self, policy: Any, value: Any) -> None:
        self.parts = {"policy": policy, "value": value}

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


@torch.no_grad()
def rollout_values(value_model: nn.Module, rollout: Rollout, micro_batch_size: int, rt: Runtime) -> torch.Tensor:
    """(N, T) value of the state before each response token: position P - 1 + t, one micro-batch at a time."""
    T = rollout.response_len
    values = []
    with rt.autocast():
        for rows in iter_chunks(range(len(rollout.prompts)), micro_batch_size):
            rows = list(rows)
            values.append(value_model(rollout.sequences[rows], rollout.attention_mask[rows])[:, -T - 1 : -1].float())
    return torch.cat(values)


def shaped_scores(
    scores: torch.Tensor, ended: torch.Tensor, moments: RunningMoments, opts: PPOOptions, rt: Runtime
) -> torch.Tensor:
    """Raw scores (N,) -> the terminal reward: normalised by running stats over all ranks, cut responses penalised,
    clipped. (N,)"""
    if opts.reward_norm:
        moments.update(scores, rt)
        scores = (scores - moments.mean) / max(moments.std, 1e-6)
    scores = penalize_missing_eos(scores, ended, opts.missing_eos_penalty)
    if opts.reward_clip > 0:
        scores = scores.clamp(-opts.reward_clip, opts.reward_clip)
    return scores


def ppo_update(
    policy: nn.Module,  # TokenLogProbs around the policy (or DDP around one)
    value_model: nn.Module,  # TokenScorer (or DDP around one)
    optimizer: Any,
    scheduler: Any,
    rollout: Rollout,
    values: torch.Tensor,  # (N, T) at rollout time
    advantages: torch.Tensor,  # (N, T) whitened
    returns: torch.Tensor,  # (N, T)
    opts: PPOOptions,
    rt: Runtime,
    iteration: int,
) -> dict[str, float]:
    """--ppo-epochs passes of minibatch steps on the token mean of policy loss + value loss (rl.update_passes)."""
    T = rollout.response_len

    def micro_loss(rows: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        seq, attn, mask = rollout.sequences[rows], rollout.attention_mask[rows], rollout.response_mask[rows]
        logprobs, entropy = response_logprobs(policy, seq, attn, T, opts.temperature, with_entropy=True)
        pg_loss, pg_stats = policy_loss(logprobs, rollout.logprobs[rows], advantages[rows], mask, opts.clip_range)
        new_values = value_model(seq, attn)[:, -T - 1 : -1]
        vf_loss, vf_stats = value_loss(new_values, values[rows], returns[rows], mask, opts.clip_range_value)
        n = mask.sum().item()  # token means -> token sums (the loss contract)
        stats = {"policy_loss": pg_loss, "value_loss": vf_loss, "entropy": (entropy * mask).sum() / max(n, 1), **pg_stats, **vf_stats}
        return (pg_loss + vf_loss) * n, n, {k: v.item() * n for k, v in stats.items()}

    params = [[p for p in m.parameters() if p.requires_grad] for m in (policy, value_model)]
    return update_passes([policy, value_model], params, optimizer, scheduler, len(rollout.prompts), opts, rt, iteration, micro_loss)


def train(opts: PPOOptions, reward_fn: RewardFn | None = None) -> dict[str, float]:
    """Run PPO end to end; returns the last iteration's metrics. Writes OUT (rank 0).

    reward_fn: a programmatic reward for library callers (the CLI's --reward-fn imports one by name).
    """
    with training_runtime(opts.device, opts.precision, opts.seed) as rt:
        reward_fn = reward_fn or reward_functions(opts)
        if reward_fn is None and opts.reward is None:
            raise UserError("no reward: give --reward (a reward model) or --reward-fn (module:function)")
        prompts = load_prompts(opts.data, opts.data_kind)
        tokenizer, template, policy, reference = load_policy(opts, rt)
        prompt_ids = encode_prompts(tokenizer, prompts, template, opts.max_prompt_len)
        if opts.value_model is not None:
            require_score_head(opts.value_model, "--value-model")
        value_source = opts.value_model or (opts.policy if reward_fn is not None else check_reward_model(opts, tokenizer))
        _, value_model = load_for_training(value_source, "reward", opts, rt, wrap=TokenScorer)
        require_rl_positions(value_model.model, value_source, opts)
        if reward_fn is None and is_peft(value_model.model) and opts.value_model is None:
            # The value model is the RM plus adapters: with them off it is the frozen RM, no second copy.
            reward: nn.Module | RewardFn = WithoutAdapters(value_model, value_model.model)
        else:
            reward = load_reward(opts, rt, tokenizer, reward_fn)
        disable_dropout(value_model)

        plan = plan_iterations(len(prompts), opts, rt)
        steps = optimizer_steps(plan, opts, k=1)
        policy_params = [p for p in policy.parameters() if p.requires_grad]
        value_params = [p for p in value_model.parameters() if p.requires_grad]
        optimizer = make_optimizer(policy_params, opts.lr, opts.weight_decay)
        value_optimizer = make_optimizer(value_params, opts.value_lr, opts.weight_decay)
        scheduler = _Both(make_scheduler(optimizer, opts.warmup_ratio, steps), make_scheduler(value_optimizer, opts.warmup_ratio, steps))
        kl_ctl = AdaptiveKLController(opts.kl_coef, opts.target_kl or None, opts.kl_horizon)
        moments = RunningMoments()
        policy_ddp, value_ddp = wrap_ddp(TokenLogProbs(policy), rt), wrap_ddp(value_model, rt)
        both_optimizers = _Both(optimizer, value_optimizer)

        def update(iteration: int, rollout: Rollout) -> dict[str, float]:
            mask = rollout.response_mask
            values = rollout_values(value_model, rollout, opts.micro_batch_size, rt)
            # Rewards: shaped RM score on the last token, KL penalty on every token.
            scores = shaped_scores(rollout.scores, rollout.ended, moments, opts, rt)
            rewards, kl = kl_penalty_rewards(scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_ctl.value)
            advantages, returns = gae_advantages(rewards, values, mask, opts.gamma, opts.lam)
            advantages = masked_whiten(advantages, mask)
            stats = ppo_update(
                policy_ddp, value_ddp, both_optimizers, scheduler, rollout, values, advantages,
                returns, opts, rt, iteration,
            )
            # The KL controller sees the mean KL per response of this iteration.
            kl_per_response = process_mean(kl.sum(dim=1).mean(), rt)
            kl_ctl.update(kl_per_response, n_steps=plan.per_iteration)
            return {
                "shaped_score_mean": process_mean(scores.mean(), rt), "kl": kl_per_response, "kl_coef": kl_ctl.value,
                **stats, "explained_variance": process_mean(explained_variance(values, returns, mask), rt),
            }

        def restore(state: dict[str, Any]) -> None:
            kl_ctl.value = state["kl_coef"]
            moments.load_state_dict(state["reward_moments"])

        return run_iterations(
            opts, rt, name="ppo", tokenizer=tokenizer, template=template, prompts=prompts, prompt_ids=prompt_ids,
            policy=policy, reference=reference, reward=reward, k=1, plan=plan,
            trained=nn.ModuleDict({"policy": policy, "value": value_model}), optimizers=[optimizer, value_optimizer],
            scheduler=scheduler, update=update, restore=restore,
            state=lambda: {"kl_coef": kl_ctl.value, "reward_moments": moments.state_dict()},
            card_extra=f"A per-token KL penalty to the frozen starting model (initial coefficient {opts.kl_coef}, "
            f"target KL {opts.target_kl}) and a value model trained alongside (GAE).",
        )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(PPOOptions, argv, "python -m zhihu_rlhf.train ppo", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
