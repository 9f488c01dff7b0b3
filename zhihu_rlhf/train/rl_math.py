"""The math of the RL stages: rewards, advantages and losses of PPO, RLOO and GRPO, each written once.

Shapes: N = sequences in the rollout (prompts x samples per prompt), T = response length. Per-token tensors are
(N, T) over RESPONSE tokens, with `mask` (N, T) = 1 up to and including each response's end token.
Groups (RLOO, GRPO): the K samples of one prompt are K consecutive rows, so rewards.view(-1, K) is (prompts, K).

    PPO   kl_penalty_rewards -> gae_advantages (+ masked_whiten) -> clipped_policy_loss (token mean) + value_loss
    RLOO  rloo_advantages (sequence KL in the reward) -> sequence_clipped_loss (sequence mean)
    GRPO  grpo_advantages -> clipped_policy_loss + beta * k3_kl, aggregated as --loss-type says

Every loss returns a SUM and the count it is a mean over (loop.py's loss contract), so a minibatch cut into any
number of micro-batches, on any number of processes, gives the same gradient.
"""

from __future__ import annotations

import math

import torch

from zhihu_rlhf.train.prompts import score_positions
from zhihu_rlhf.train.runtime import Runtime

# ----------------------------------------------------------------------------------------------------------------
# Masked statistics, and the score penalty every stage applies


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1 (a scalar)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of `values` over the masked positions (a scalar)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    sum_sq = ((values - mean) ** 2 * mask).sum()
    return sum_sq / (count - 1).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance (and zero mean if shift_mean) over the masked positions; 0 elsewhere."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def penalize_missing_eos(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores (N,) less `penalty` (--missing-eos-penalty) for each response cut without an end token. (N,)"""
    return scores - penalty * (~ended).float()


# ----------------------------------------------------------------------------------------------------------------
# PPO (Ouyang et al. 2022, InstructGPT; Schulman et al. 2017): per-token KL penalty, GAE, clipped policy and value


def kl_penalty_rewards(
    scores: torch.Tensor,  # (N,) reward-model score of each whole response
    logprobs: torch.Tensor,  # (N, T) policy log-prob of each response token at rollout time
    ref_logprobs: torch.Tensor,  # (N, T) reference model log-prob of the same tokens
    mask: torch.Tensor,  # (N, T)
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * (log pi - log pi_ref), plus the RM score on the last response token
    (the token it was read at: prompts.score_positions).

    Returns (rewards, kl), both (N, T) and zero on padding. `kl` is the per-token estimate
    log pi(a_t) - log pi_ref(a_t); its sum over a response estimates KL(pi || pi_ref) for that prompt.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores)), score_positions(mask)] += scores
    return rewards, kl


def gae_advantages(
    rewards: torch.Tensor,  # (N, T)
    values: torch.Tensor,  # (N, T) value of the state before each response token
    mask: torch.Tensor,  # (N, T), 1 on a prefix of each row
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A beyond the
    last response token taken as 0 (the episode ends there). Returns (advantages, returns), both (N, T),
    returns = advantages + values, zero on padding.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,  # (N, T) current policy, with grad
    old_logprobs: torch.Tensor,  # (N, T) at rollout time
    advantages: torch.Tensor,  # (N, T), or (N, 1) one advantage per sequence (GRPO)
    mask: torch.Tensor,  # (N, T)
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), (N, T), zero on padding.

    Also returns the per-token clip indicator (clipped branch taken) and the k3 estimator ratio - 1 - log ratio
    of KL(old || new), which is >= 0 token by token; both (N, T) and masked.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    with torch.no_grad():
        stats = {"clip_frac": (clipped > unclipped).float() * mask, "approx_kl": (ratio - 1.0 - log_ratio) * mask}
    return torch.maximum(unclipped, clipped) * mask, stats


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate as a mean over the masked tokens; clip_frac and approx_kl likewise."""
    per_token, stats = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)
    n = mask.sum().clamp(min=1)
    return per_token.sum() / n, {k: v.sum() / n for k, v in stats.items()}


def value_loss(
    values: torch.Tensor,  # (N, T) current value model, with grad
    old_values: torch.Tensor,  # (N, T) at rollout time
    returns: torch.Tensor,  # (N, T) GAE returns
    mask: torch.Tensor,  # (N, T)
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)."""
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, {"value_clip_frac": clip_frac}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect value model, 0 = no better than a constant."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask) / var_returns).item()


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): move kl_coef so the measured KL tracks `target`.

    Each update multiplies the coefficient by 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon:
    too much KL -> larger penalty, too little -> smaller. With target None the coefficient stays fixed.
    """

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


class RunningMoments:
    """Running mean/std of reward-model scores (Chan et al. parallel update), to normalise rewards."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = 0

    def update(self, values: torch.Tensor, rt: Runtime | None = None) -> None:
        """Add a batch of scores; with `rt` under torchrun, every rank's batch, so all ranks keep the same moments."""
        reduce_sum = rt.all_reduce_sum if rt is not None else float
        values = values.double()
        n = reduce_sum(values.numel())
        batch_mean = reduce_sum(values.sum().item()) / n
        batch_var = reduce_sum(((values - batch_mean) ** 2).sum().item()) / n
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.count > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


# ----------------------------------------------------------------------------------------------------------------
# RLOO (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019): leave-one-out baseline, sequence-level


def rloo_advantages(
    scores: torch.Tensor,  # (N,) reward of each response, N = prompts x K
    sequence_kl: torch.Tensor,  # (N,) sum over the response of log pi_old - log pi_ref
    kl_coef: float,
    k: int,
) -> torch.Tensor:
    """A_i = r_i - mean_{j != i} r_j within each prompt's K samples, where r = score - kl_coef * KL(response).

    The KL penalty sits in the reward, as one number per response (the paper's sequence-level form). (N,)
    """
    rewards = (scores - kl_coef * sequence_kl).view(-1, k)  # (prompts, K)
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return (rewards - baseline).reshape(-1)


def sequence_clipped_loss(
    logprobs: torch.Tensor,  # (N, T) current policy, with grad
    old_logprobs: torch.Tensor,  # (N, T) at rollout time
    advantages: torch.Tensor,  # (N,)
    mask: torch.Tensor,  # (N, T)
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO's loss: the clipped surrogate on the ratio of whole-response probabilities, summed over the N responses.

    ratio_i = exp(sum_t log pi - sum_t log pi_old); loss_i = max(-A_i ratio_i, -A_i clip(ratio_i, 1 - eps, 1 + eps)).
    (Every ratio is 1 in the first update of a rollout, where this is REINFORCE with the leave-one-out baseline.)
    Returns (sum of loss_i, per-sequence stats summed: clip_frac).
    """
    log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    with torch.no_grad():
        stats = {"clip_frac": (clipped > unclipped).float().sum(), "approx_kl": (ratio - 1.0 - log_ratio).sum()}
    return torch.maximum(unclipped, clipped).sum(), stats


# ----------------------------------------------------------------------------------------------------------------
# GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, k3 KL as a loss term;
# Dr. GRPO (Liu et al. 2025): no std scaling, no length normalisation; DAPO (Yu et al. 2025): token-level mean.

SCALE_REWARDS = ("group", "none")
LOSS_TYPES = ("dapo", "grpo", "dr_grpo")


def grpo_advantages(scores: torch.Tensor, k: int, scale_rewards: str) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + 1e-4) with scale "group" (std unbiased, as TRL), r_i - mean_group with
    "none" (Dr. GRPO: the std scaling weights prompts by how much their rewards happen to vary). (N,)"""
    grouped = scores.view(-1, k)  # (prompts, K)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0. (N, T)"""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_new_tokens: int) -> tuple[torch.Tensor, float]:
    """(N, T) per-token losses -> (sum, count) whose ratio over a whole minibatch is the loss --loss-type names:

        dapo     sum of every token's loss / tokens in the minibatch (DAPO: each token weighs the same)
        grpo     mean over responses of each response's token mean (GRPO paper: short responses weigh more per token)
        dr_grpo  sum of every token's loss / (responses x --max-new-tokens) (Dr. GRPO: a constant, no length bias)
    """
    if loss_type == "dapo":
        return (per_token * mask).sum(), mask.sum().item()
    if loss_type == "grpo":
        return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum(), float(len(mask))
    if loss_type == "dr_grpo":
        return (per_token * mask).sum(), float(len(mask) * max_new_tokens)
    raise ValueError(f"unknown loss type {loss_type!r}")
