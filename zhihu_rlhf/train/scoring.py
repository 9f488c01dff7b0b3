"""Where a response gets its score: a reward model read at every position, or Python reward functions.

    TokenScorer(model)        a one-label sequence classifier (RM, value model) read at every position -> (B, L)
    sequence_scores(scorer, input_ids, attention_mask) -> (B,)   read at each row's last real token
    RewardFn                  (prompts, responses) -> one score per response (rule-based rewards)
    load_reward_fn("module:function") -> RewardFn
    WeightedRewards(fns, weights, names)   several reward functions summed with weights, itself a RewardFn

The RM is read where prompts.score_positions says (the last real token of prompt + response: the end token of a
finished answer), in RM training, rm.score and every RL stage alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train.data import position_ids_from
from zhihu_rlhf.train.prompts import score_positions

# A programmatic reward: (prompts, responses) -> one score per response (rule-based rewards: format, length, ...).
RewardFn = Callable[[list[str], list[str]], Sequence[float]]


class TokenScorer(nn.Module):
    """A one-label sequence classifier (RM or value model) read at EVERY position: forward -> (B, L) scores.

    AutoModelForSequenceClassification only returns the score at the last non-pad token; PPO needs the value of
    every prefix, and every stage must read the RM at prompts.score_positions. The classifier's own forward runs (so
    DDP, FSDP2 and peft wrappers all see it) and a hook on its `score` head keeps the head's per-position output.
    A module (not a function) so DistributedDataParallel sees the forward, and so it can be the root a sharded
    model's backward starts from (models.load_for_training's `wrap`). Position ids count real tokens only, so
    left-padded (RL rollouts) and right-padded (RM) rows of the same text get the same scores.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(model, "score", None), nn.Module):
            raise UserError(
                f"{type(model).__name__} has no `score` head: the reward and value models must be decoder sequence "
                "classifiers (Llama, Qwen2, Mistral, GPT-2, OPT, ... AutoModelForSequenceClassification)"
            )
        self.model = model

    def forward(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        per_position: list[torch.Tensor] = []
        hook = self.model.score.register_forward_hook(lambda _module, _inputs, output: per_position.append(output))
        try:
            self.model(
                input_ids=sequences,
                attention_mask=attention_mask,
                position_ids=position_ids_from(attention_mask),
                use_cache=False,
            )
        finally:
            hook.remove()
        return per_position[0].squeeze(-1).float()


def sequence_scores(scorer: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) score of each row, read at its last real token (prompts.score_positions). scorer: a TokenScorer."""
    scores = scorer(input_ids, attention_mask)  # (B, L)
    return scores[torch.arange(len(scores), device=scores.device), score_positions(attention_mask)]


def load_reward_fn(spec: str) -> RewardFn:
    """"package.module:function" -> the function."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--reward-fn {spec!r}: expected module:function, e.g. my_rewards:length_penalty")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"--reward-fn {spec!r}: cannot import it ({err})") from None
    if not callable(fn):
        raise UserError(f"--reward-fn {spec!r} is not callable")
    return fn


class WeightedRewards:
    """Several reward functions as one: score = sum_i weight_i * fn_i(prompts, responses) (TRL's reward_weights).

    `last_parts` keeps each function's scores of the latest call, for logging them one by one.
    """

    def __init__(self, fns: Sequence[RewardFn], weights: Sequence[float], names: Sequence[str]) -> None:
        if len(weights) != len(fns):
            raise UserError(f"--reward-weights: {len(weights)} weights for {len(fns)} reward functions")
        self.fns, self.weights, self.names = list(fns), list(weights), list(names)
        self.last_parts: dict[str, list[float]] = {}

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for fn, weight, name in zip(self.fns, self.weights, self.names, strict=True):
            scores = [float(s) for s in fn(prompts, responses)]
            if len(scores) != len(responses):
                raise UserError(f"--reward-fn {name} returned {len(scores)} scores for {len(responses)} responses")
            self.last_parts[name] = scores
            total = [t + weight * s for t, s in zip(total, scores, strict=True)]
        return total
