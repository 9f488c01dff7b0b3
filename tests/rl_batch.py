"""One fixed RL batch, fed both to our update and to TRL's RLOOTrainer / GRPOTrainer loss (TRL 1.x, a test extra).

What of TRL is called: the trainer is built as a user builds it (model, reward function, config, dataset), then its
own `_compute_loss(model, inputs)` (the method its `compute_loss` calls in training) runs on a batch we construct in
the layout its `_generate_and_score_completions` produces (prompt_ids/prompt_mask, completion_ids/completion_mask,
advantages, old log-probs, reference log-probs, num_items_in_batch), and `.backward()` gives its gradients. The
advantages are given to both sides: TRL computes them inside generation, which the advantage tests cover by hand.

Prompts have equal lengths: TRL's forward passes no position ids (positions then count padding), ours counts real
tokens only; with no left padding both are 0..L-1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.models import load_tokenizer
from zhihu_rlhf.train.prompts import response_mask
from zhihu_rlhf.train.rollout import Rollout, response_logprobs
from zhihu_rlhf.train.runtime import Runtime

K = 4  # samples per prompt
PROMPTS = 2
PROMPT_LEN = 6
T = 8  # response tokens (max_new_tokens)
CPU = Runtime(device=torch.device("cpu"), autocast_dtype=None)


class GradientRecorder:
    """Stands in for the optimizer (and scheduler): records each step's gradients, leaves the weights alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.steps = model, []

    def step(self) -> None:
        self.steps.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)


def fixed_batch(model_dir: Path) -> tuple[Rollout, torch.Tensor]:
    """A rollout of PROMPTS x K responses of different lengths from the fixture model, with old log-probs moved off
    the current ones (so ratios differ from 1 and some clip) and a reference that differs too; plus advantages (N,)."""
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    n = PROMPTS * K
    prompt_ids = torch.randint(10, 200, (PROMPTS, PROMPT_LEN), generator=generator).repeat_interleave(K, dim=0)
    responses = torch.randint(10, 200, (n, T), generator=generator)
    end = tokenizer.eos_token_id
    for row, length in enumerate((2, 8, 5, 3, 8, 1, 6, 4)):  # an end token at `length`, or none (8: cut)
        if length < T:
            responses[row, length - 1] = end
    mask = response_mask(responses, [end])
    responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)
    sequences = torch.cat([prompt_ids, responses], dim=1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), mask.long()], dim=1)
    with torch.no_grad():
        current, _ = response_logprobs(TokenLogProbs(model), sequences, attention_mask, T, 1.0)
    old = (current + 0.3 * torch.randn(current.shape, generator=generator)) * mask
    ref = (current + 0.5 * torch.randn(current.shape, generator=generator)) * mask
    rollout = Rollout(
        sequences=sequences, attention_mask=attention_mask, response_mask=mask, ended=torch.ones(n, dtype=torch.bool),
        logprobs=old, ref_logprobs=ref, scores=torch.zeros(n), entropy=torch.zeros(n, T), prompts=["q"] * n,
        responses=[""] * n,
    )
    advantages = torch.randn(n, generator=generator)
    return rollout, advantages


def trl_inputs(rollout: Rollout) -> dict[str, torch.Tensor]:
    """The batch in TRL's layout (its _generate_and_score_completions output)."""
    prompt_ids = rollout.sequences[:, :PROMPT_LEN]
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": rollout.sequences[:, PROMPT_LEN:],
        "completion_mask": rollout.response_mask.long(),
    }


def zero_reward(prompts, completions, **kwargs) -> list[float]:
    return [0.0] * len(prompts)


def trl_dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["a question"] * 8})
