"""PPO with a reward model: the RLHF step after SFT and RM.

Shapes: B = rollout batch, T = response length (max new tokens), P = padded prompt length.
All per-token tensors below are over RESPONSE tokens only, (B, T), with `mask` (B, T) = 1 on the
response tokens up to and including the first EOS, 0 on padding after it.

The math follows the order of one iteration:
rollout -> rewards (RM score + per-token KL penalty) -> advantages (GAE, whitened) -> losses (clipped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Masked statistics


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


# ----------------------------------------------------------------------------------------------
# Rewards


def kl_penalty_rewards(
    scores: torch.Tensor,  # (B,) reward-model score of each whole response
    logprobs: torch.Tensor,  # (B, T) policy log-prob of each response token at rollout time
    ref_logprobs: torch.Tensor,  # (B, T) reference model log-prob of the same tokens
    mask: torch.Tensor,  # (B, T)
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * (log pi - log pi_ref), plus the RM score on the last response token.

    Returns (rewards, kl), both (B, T) and zero on padding. `kl` is the per-token estimate
    log pi(a_t) - log pi_ref(a_t); its sum over a response estimates KL(pi || pi_ref) for that prompt.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = last_token_index(mask)  # (B,)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last 1 in each row (0 for an all-zero row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.long()).argmax(dim=1)


class RunningMoments:
    """Running mean/std of reward-model scores (Chan et al. parallel update), to normalise rewards."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        n = values.numel()
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
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


# ----------------------------------------------------------------------------------------------
# Advantages


def gae_advantages(
    rewards: torch.Tensor,  # (B, T)
    values: torch.Tensor,  # (B, T) value of the state before each response token
    mask: torch.Tensor,  # (B, T), 1 on a prefix of each row
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A beyond the
    last response token taken as 0 (the episode ends there). Returns (advantages, returns), both (B, T),
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


# ----------------------------------------------------------------------------------------------
# Losses


def policy_loss(
    logprobs: torch.Tensor,  # (B, T) current policy, with grad
    old_logprobs: torch.Tensor,  # (B, T) at rollout time
    advantages: torch.Tensor,  # (B, T) whitened
    mask: torch.Tensor,  # (B, T)
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Also returns clip_frac (share of tokens where the clipped branch was taken) and approx_kl, the
    k3 estimator mean(ratio - 1 - log ratio) of KL(old || new), which is >= 0 token by token.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return loss, {"clip_frac": clip_frac, "approx_kl": approx_kl}


def value_loss(
    values: torch.Tensor,  # (B, T) current value model, with grad
    old_values: torch.Tensor,  # (B, T) at rollout time
    returns: torch.Tensor,  # (B, T) GAE returns
    mask: torch.Tensor,  # (B, T)
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


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropy of softmax(logits): logsumexp(z) - sum softmax(z) * z."""
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect value model, 0 = no better than a constant."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask) / var_returns).item()


# ----------------------------------------------------------------------------------------------
# KL coefficient


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
