"""DPO: learn from chosen/rejected pairs directly, with no reward model (Rafailov et al. 2023).

The implicit reward of a response y is beta * (log pi(y|x) - log pi_ref(y|x)); the sigmoid loss pushes
the chosen response's implicit reward above the rejected one's. The reference log-probs come from the
frozen starting model and are computed once, before training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen_logps: torch.Tensor,  # (B,) sum of log pi over the chosen response tokens
    policy_rejected_logps: torch.Tensor,  # (B,)
    ref_chosen_logps: torch.Tensor,  # (B,) same under the frozen reference model
    ref_rejected_logps: torch.Tensor,  # (B,)
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over the batch.

    label_smoothing = eps > 0 is the conservative DPO variant: assume each label is flipped with
    probability eps. Returns (loss, chosen_rewards, rejected_rewards), the rewards (B,) detached.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
