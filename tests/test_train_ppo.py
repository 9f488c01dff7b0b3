"""PPO: the math against hand-computed values, then an end-to-end run on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from zhihu_rlhf.train.ppo import (
    AdaptiveKLController,
    RunningMoments,
    entropy_from_logits,
    explained_variance,
    gae_advantages,
    kl_penalty_rewards,
    masked_whiten,
    policy_loss,
    value_loss,
)


def test_gae_matches_hand_computed_example() -> None:
    # gamma = 0.9, lambda = 0.8 -> gamma * lambda = 0.72. Row 2 ends after two tokens; the third
    # position is padding whose reward/value garbage must not leak into the advantages.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 1: delta_2 = 1 - 0.4 = 0.6; delta_1 = 0.9*0.4 - 0.2 = 0.16; delta_0 = 0.9*0.2 - 0.5 = -0.32
    #        A_2 = 0.6; A_1 = 0.16 + 0.72*0.6 = 0.592; A_0 = -0.32 + 0.72*0.592 = 0.10624
    # Row 2: delta_1 = 2 - 0.5 = 1.5; delta_0 = 0.9*0.5 - 1.0 = -0.55; A_1 = 1.5; A_0 = -0.55 + 0.72*1.5 = 0.53
    expected_adv = torch.tensor([[0.10624, 0.592, 0.6], [0.53, 1.5, 0.0]])
    expected_ret = torch.tensor([[0.60624, 0.792, 1.0], [1.53, 2.0, 0.0]])
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[0.3, -0.2, 0.0, 1.5]])
    values = torch.tensor([[0.1, 0.7, -0.4, 0.2]])
    mask = torch.ones(1, 4)
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = torch.tensor([[1.6, 1.3, 1.5, 1.5]])
    torch.testing.assert_close(advantages, reward_to_go - values)
    torch.testing.assert_close(returns, reward_to_go)


def test_kl_penalty_rewards_put_score_on_last_response_token() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = kl_penalty_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    # -0.1 * kl everywhere, the score added on the last unmasked token (index 2 and index 0).
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.1 - 1.0, 0.0, 0.0]]))


def test_policy_loss_matches_clipped_formula() -> None:
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    old_logprobs = torch.full((1, 4), -2.0)
    logprobs = (old_logprobs + ratio.log()).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    # max(-A r, -A clip(r)): 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); 0.5 -> max(-0.5, -0.8) = -0.5;
    # 1.1 -> 1.1 (inside the range); 0.7 -> max(0.7, 0.8) = 0.8 (clipped).
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1, 0.7)) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    # Clipped tokens get no gradient; the others get d(-A r)/d log p = -A r / n_tokens.
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 1.1 / 4, 0.0]]))

    # Padding is excluded from the mean and from the clip fraction.
    loss_masked, stats_masked = policy_loss(
        logprobs.detach(), old_logprobs, advantages, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), clip_range=0.2
    )
    assert loss_masked.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert stats_masked["clip_frac"].item() == pytest.approx(1 / 3)


def test_value_loss_matches_clipped_formula() -> None:
    old_values = torch.zeros(1, 3)
    values = torch.tensor([[0.5, -0.1, 0.3]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = value_loss(values, old_values, returns, torch.ones(1, 3), clip_range_value=0.2)
    # 0.5 -> clipped to 0.2: max(0.25, 0.64) = 0.64; -0.1 inside: 1.21; 0.3 -> 0.2: max(1.69, 1.44) = 1.69
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 1.69) / 3)
    assert stats["value_clip_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dV 0.5 (V - R)^2 / 3 on the unclipped branches; 0 where the clipped branch (constant in V) won.
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, (-0.1 - 1.0) / 3, (0.3 + 1.0) / 3]]))


def test_entropy_explained_variance_and_whitening() -> None:
    uniform = torch.zeros(2, 8)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2,), math.log(8)))
    peaked = torch.tensor([[50.0, 0.0, 0.0]])
    assert entropy_from_logits(peaked).item() < 1e-6

    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.5), returns, mask) == pytest.approx(0.0)

    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    whitened = masked_whiten(values, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(whitened, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-5, rtol=0)


def test_kl_controller_moves_coefficient_towards_target() -> None:
    too_far = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    too_far.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2 -> x(1 + 0.2 * 100/1000)
    assert too_far.value == pytest.approx(0.1 * 1.02)

    too_close = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    too_close.update(current_kl=4.5, n_steps=100)  # error -0.25 clipped to -0.2
    assert too_close.value == pytest.approx(0.1 * 0.98)
    slightly_close = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    slightly_close.update(current_kl=5.4, n_steps=100)  # error -0.1, inside the clip
    assert slightly_close.value == pytest.approx(0.1 * 0.99)

    fixed = AdaptiveKLController(0.1, target=None, horizon=1000)
    fixed.update(current_kl=50.0, n_steps=100)
    assert fixed.value == 0.1


def test_running_moments_match_numpy_over_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=generator) * 3 + 1 for n in (5, 17, 8)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches).double()
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std(unbiased=False).item())
