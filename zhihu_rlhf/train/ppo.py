"""PPO with a reward model: `python -m zhihu_rlhf.train ppo --policy SFT --reward RM --data D --out OUT`.

The RLHF step after SFT and RM (InstructGPT; DeepSpeed-Chat in the reference article). Four models:
the policy (from SFT, trained), a frozen reference copy of it, a value model (initialised from the RM,
trained) and the frozen RM. With --lora, the reference is the policy's base and the RM the value model's base,
each with its adapters switched off: two sets of weights instead of four. Each iteration samples prompts,
generates responses, scores them, and runs a few PPO epochs over minibatches of that rollout.

Shapes: B = rollout batch, T = response length (max new tokens), P = padded prompt length.
All per-token tensors below are over RESPONSE tokens only, (B, T), with `mask` (B, T) = 1 on the
response tokens up to and including the first end token, 0 on padding after it. What ends a response (EOS, the
template's end-of-turn, generation_config's eos list) and where the RM is read are decided in prompts.py, the
same rules SFT's targets and RM training follow.

The math follows the order of one iteration:
rollout -> rewards (RM score + per-token KL penalty) -> advantages (GAE, whitened) -> losses (clipped).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.data import epoch_permutation, iter_chunks, load_split, pad_ids, position_ids_from
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.loop import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
)
from zhihu_rlhf.train.lora import WithoutAdapters, is_peft
from zhihu_rlhf.train.models import disable_dropout, load_for_training, load_frozen, load_tokenizer
from zhihu_rlhf.train.options import TrainOptions, parse_options
from zhihu_rlhf.train.prompts import (
    TEMPLATES,
    end_token_ids,
    render_prompt,
    resolve_template,
    response_mask,
    score_positions,
)
from zhihu_rlhf.train.report import MetricsLogger, ModelCardInfo, plot_metrics, save_final
from zhihu_rlhf.train.rm import TokenScorer, sequence_scores
from zhihu_rlhf.train.runtime import (
    Runtime,
    gathered,
    is_sharded,
    seed_everything,
    setup_runtime,
    shutdown_runtime,
    unwrap,
    wrap_ddp,
)

# A programmatic reward: (prompts, responses) -> one score per response (rule-based rewards: format, length, ...).
RewardFn = Callable[[list[str], list[str]], Sequence[float]]

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
    """Per-token rewards r_t = -kl_coef * (log pi - log pi_ref), plus the RM score on the last response token
    (the token it was read at: prompts.score_positions).

    Returns (rewards, kl), both (B, T) and zero on padding. `kl` is the per-token estimate
    log pi(a_t) - log pi_ref(a_t); its sum over a response estimates KL(pi || pi_ref) for that prompt.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores)), score_positions(mask)] += scores
    return rewards, kl


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


# ----------------------------------------------------------------------------------------------
# Model passes over (prompt + response) sequences
#
# A rollout batch is `sequences` (B, P + T): left-padded prompts followed by the sampled responses
# (right-padded after the end token). `attention_mask` (B, P + T) is the prompt mask followed by the response
# mask. Position ids count real tokens only, exactly as `generate` numbers them for left-padded prompts.


def log_probs_of(model: nn.Module) -> nn.Module:
    """TokenLogProbs of a causal LM; for LoRA's reference (the policy with its adapters off) the same switch around it."""
    if isinstance(model, WithoutAdapters):
        return WithoutAdapters(TokenLogProbs(model.model), model.model)
    return TokenLogProbs(model)


def response_logprobs(
    scorer: nn.Module,  # TokenLogProbs around the policy (or DDP around one)
    sequences: torch.Tensor,  # (B, P + T)
    attention_mask: torch.Tensor,  # (B, P + T)
    response_len: int,  # T
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the response tokens, from logits / temperature as sampled.

    Position P - 1 + t predicts response token t; only those T positions go through the LM head, a chunk of tokens
    at a time (logprobs.py). With `with_entropy`, also the per-token entropy (B, T) of that distribution.
    """
    batch_size = sequences.shape[0]
    predict = torch.zeros_like(attention_mask, dtype=torch.bool)
    predict[:, -response_len - 1 : -1] = True
    inputs = {
        "input_ids": sequences,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from(attention_mask),
    }
    targets = sequences[:, -response_len:].reshape(-1)
    logprobs, entropy = scorer(inputs, predict, targets, temperature=temperature, with_entropy=with_entropy)
    entropy = None if entropy is None else entropy.view(batch_size, response_len)
    return logprobs.view(batch_size, response_len), entropy


# ----------------------------------------------------------------------------------------------------------------
# Options


@dataclass(kw_only=True)
class PPOOptions(TrainOptions):
    """`python -m zhihu_rlhf.train ppo` options. Defaults follow InstructGPT / DeepSpeed-Chat practice for 0.5B-7B models."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {
        "max_new_tokens": 32, "rollout_batch_size": 16, "ppo_epochs": 2, "max_iterations": 8, "lr": 1e-4,
    }

    policy: str = field(metadata={"help": "the SFT model to start from (also the frozen reference): folder, Hub id or 'tiny'"})
    reward: str | None = field(
        default=None, metadata={"help": "the reward model (from `train rm`): folder, Hub id or 'tiny'; or use --reward-fn"}
    )
    reward_fn: str | None = field(
        default=None,
        metadata={"help": "instead of --reward: a Python function module:name(prompts, responses) -> scores (rule-based reward)"},
    )
    value_model: str | None = field(
        default=None,
        metadata={"help": "initial value model (sequence classifier); default the reward model, or the policy with --reward-fn"},
    )
    data_kind: str = field(
        default="pairs", metadata={"help": "what --data holds; its `prompt` column is used", "choices": ("pairs", "instruct")}
    )
    template: str = field(default="auto", metadata={"help": "prompt format, as in SFT: auto, chat, plain", "choices": TEMPLATES})
    max_prompt_len: int = field(default=256, metadata={"help": "prompt tokens kept (the end of longer prompts)"})
    max_new_tokens: int = field(default=256, metadata={"help": "response length limit"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (log-probs use the same scaling)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; < 1 makes samples slightly off-policy"})
    rollout_batch_size: int = field(default=64, metadata={"help": "prompts generated per iteration (per process)"})
    micro_batch_size: int = field(default=8, metadata={"help": "sequences per forward/backward pass"})
    grad_accum: int = field(default=2, metadata={"help": "micro-batches per optimizer step: minibatch = micro-batch x this"})
    ppo_epochs: int = field(default=4, metadata={"help": "optimisation passes over each rollout"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the prompts"})
    max_iterations: int = field(default=0, metadata={"help": "stop after this many iterations (0 = as many as --epochs gives)"})
    lr: float = field(default=1e-6, metadata={"help": "policy peak learning rate (AdamW)"})
    value_lr: float = field(default=1e-5, metadata={"help": "value model peak learning rate"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps with linear warmup before cosine decay"})
    kl_coef: float = field(default=0.05, metadata={"help": "initial weight of the per-token KL penalty against the reference"})
    target_kl: float = field(
        default=6.0,
        metadata={"help": "adapt --kl-coef so KL(policy || reference) per response tracks this many nats (0 = fixed coef)"},
    )
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL: responses over which the coefficient may change by ~20%%"})
    gamma: float = field(default=1.0, metadata={"help": "discount over response tokens"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    clip_range: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    clip_range_value: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    reward_norm: bool = field(default=True, metadata={"help": "normalise RM scores by their running mean and std"})
    reward_clip: float = field(default=5.0, metadata={"help": "clip the (normalised) score to +-this (0 = off)"})
    missing_eos_penalty: float = field(
        default=0.0,
        metadata={"help": "subtract this from the score of responses cut at --max-new-tokens without an end token"},
    )
    log_samples: int = field(default=4, metadata={"help": "generations per iteration written to OUT/samples.jsonl"})
    save_steps: int = field(default=20, metadata={"help": "checkpoint every N iterations (0 = never)"})

    def validate(self) -> None:
        super().validate()
        if self.reward is not None and self.reward_fn is not None:
            raise UserError("give one of --reward (a reward model) or --reward-fn (module:function), not both")
        positive = ("max_prompt_len", "max_new_tokens", "rollout_batch_size", "micro_batch_size", "ppo_epochs", "kl_horizon")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if min(self.max_iterations, self.kl_coef, self.target_kl, self.reward_clip) < 0:
            raise UserError("--max-iterations, --kl-coef, --target-kl and --reward-clip must be >= 0")

    @property
    def minibatch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum


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


# ----------------------------------------------------------------------------------------------------------------
# Rollout: generate, then score every response token


@dataclass
class Rollout:
    """One iteration's experience. P = padded prompt length, T = longest response, B = prompts."""

    sequences: torch.Tensor  # (B, P + T) left-padded prompt + response (pad after its end token)
    attention_mask: torch.Tensor  # (B, P + T)
    response_mask: torch.Tensor  # (B, T) float
    ended: torch.Tensor  # (B,) bool: the response stopped on an end token, not at --max-new-tokens
    logprobs: torch.Tensor  # (B, T) policy at sampling time
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) raw RM / reward-function scores
    entropy: torch.Tensor  # (B, T)
    prompts: list[str]
    responses: list[str]

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]


def left_pad(prompt_ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned (B, P) so every response starts at column P; with its attention mask."""
    input_ids, attention_mask = pad_ids(prompt_ids, pad_id, side="left")
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def generate_rollout(
    policy: nn.Module,
    ref_policy: nn.Module,
    value_model: nn.Module,  # TokenScorer
    reward: nn.Module | RewardFn,  # TokenScorer over the RM, or a programmatic reward
    tokenizer: Any,
    prompts: list[str],
    prompt_ids: list[list[int]],
    opts: PPOOptions,
    rt: Runtime,
) -> Rollout:
    """Sample one response per prompt, then compute log-probs (policy, reference), values and scores.

    Generation stops on every end token (prompts.end_token_ids), so a response ends where SFT's targets ended.
    """
    end_ids = end_token_ids(tokenizer, unwrap(policy).generation_config)
    input_ids, prompt_mask = left_pad(prompt_ids, tokenizer.pad_token_id, rt.device)
    prompt_len = input_ids.shape[1]
    policy.eval()
    # gathered: ranks stop generating at different lengths, and a sharded policy cannot run uneven forwards.
    with rt.autocast(), gathered(policy):
        # Every sampling knob is set explicitly: a model's generation_config may carry top_k or a
        # repetition penalty, and then the sampled distribution would not be the one we compute log-probs of.
        sequences = policy.generate(
            input_ids=input_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            temperature=opts.temperature,
            top_p=opts.top_p,
            top_k=0,
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_new_tokens=opts.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_ids,
            use_cache=True,
        )
    responses = sequences[:, prompt_len:]  # (B, T)
    mask = response_mask(responses, end_ids)
    last = score_positions(mask)  # (B,) the end token, or the last token of a cut response
    ended = torch.isin(responses[torch.arange(len(responses)), last], torch.tensor(end_ids, device=responses.device))
    responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)
    sequences = torch.cat([input_ids, responses], dim=1)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    T = responses.shape[1]

    logprobs, ref_logprobs, values, entropy, model_scores = [], [], [], [], []
    with rt.autocast():
        for rows in iter_chunks(range(len(prompts)), opts.micro_batch_size):
            rows = list(rows)
            seq, seq_mask = sequences[rows], attention_mask[rows]
            lp, ent = response_logprobs(TokenLogProbs(policy), seq, seq_mask, T, opts.temperature, with_entropy=True)
            logprobs.append(lp)
            entropy.append(ent)
            ref_logprobs.append(response_logprobs(log_probs_of(ref_policy), seq, seq_mask, T, opts.temperature)[0])
            # Position P - 1 + t is the state before response token t.
            values.append(value_model(seq, seq_mask)[:, prompt_len - 1 : -1])
            if isinstance(reward, nn.Module):
                # The RM read where RM training and rm.score read it: the last token of prompt + response.
                model_scores.append(sequence_scores(reward, seq, seq_mask))
    # Models often pad their embedding matrix past the tokenizer (Qwen2.5: 151,936 rows for 151,665 tokens);
    # an id sampled from that padding has no text.
    n_tokens = len(tokenizer)
    texts = [
        tokenizer.decode([t for t in responses[i, : int(mask[i].sum())].tolist() if t < n_tokens], skip_special_tokens=True)
        for i in range(len(prompts))
    ]
    if isinstance(reward, nn.Module):
        scores = torch.cat(model_scores)
    else:
        scores = torch.tensor([float(s) for s in reward(prompts, texts)], device=rt.device)
        if scores.shape != (len(prompts),):
            raise UserError(f"--reward-fn returned {scores.numel()} scores for {len(prompts)} responses")
    return Rollout(
        sequences=sequences,
        attention_mask=attention_mask,
        response_mask=mask,
        ended=ended,
        logprobs=torch.cat(logprobs).float(),
        ref_logprobs=torch.cat(ref_logprobs).float(),
        values=torch.cat(values).float(),
        scores=scores.float(),
        entropy=torch.cat(entropy).float(),
        prompts=prompts,
        responses=texts,
    )


def shaped_scores(rollout: Rollout, moments: RunningMoments, opts: PPOOptions, rt: Runtime) -> torch.Tensor:
    """Raw scores -> the terminal reward: normalised by running stats over all ranks, cut responses penalised,
    clipped. (B,)"""
    scores = rollout.scores
    if opts.reward_norm:
        moments.update(scores, rt)
        scores = (scores - moments.mean) / max(moments.std, 1e-6)
    scores = scores - opts.missing_eos_penalty * (~rollout.ended).float()
    if opts.reward_clip > 0:
        scores = scores.clamp(-opts.reward_clip, opts.reward_clip)
    return scores


# ----------------------------------------------------------------------------------------------------------------
# One PPO update over a rollout


def ppo_update(
    policy: nn.Module,  # TokenLogProbs around the policy (or DDP around one)
    value_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rollout: Rollout,
    advantages: torch.Tensor,  # (B, T) whitened
    returns: torch.Tensor,  # (B, T)
    opts: PPOOptions,
    rt: Runtime,
    iteration: int,
) -> dict[str, float]:
    """--ppo-epochs passes over the rollout in shuffled minibatches; one optimizer step per minibatch.

    The loss of a step is the token mean over its whole minibatch (on all ranks): each micro-batch adds its token
    sum divided by the minibatch's token count, so how a minibatch is cut into micro-batches does not change the
    gradient. Returns the mean of each loss/statistic over all micro-batches.
    """
    policy.train()
    value_model.train()
    T = rollout.response_len
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    value_params = [p for p in value_model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(opts.seed * 1_000_003 + iteration)  # same order on resume
    sums: dict[str, float] = {}
    n_micro = 0
    for _ in range(opts.ppo_epochs):
        order = torch.randperm(len(rollout.prompts), generator=generator).tolist()
        for minibatch in iter_chunks(order, opts.minibatch_size):
            micro_batches = list(iter_chunks(minibatch, opts.micro_batch_size))
            # Token mean over the minibatch of every rank; DDP then averages the ranks' gradients, hence world_size.
            minibatch_tokens = rt.all_reduce_sum(rollout.response_mask[list(minibatch)].sum().item())
            token_weight = rt.world_size / max(minibatch_tokens, 1.0)
            for i, rows in enumerate(micro_batches):
                rows = list(rows)
                seq, attn, mask = rollout.sequences[rows], rollout.attention_mask[rows], rollout.response_mask[rows]
                sync = i == len(micro_batches) - 1
                with rt.no_sync(policy, sync), rt.no_sync(value_model, sync), rt.autocast():
                    logprobs, entropy = response_logprobs(policy, seq, attn, T, opts.temperature, with_entropy=True)
                    pg_loss, pg_stats = policy_loss(logprobs, rollout.logprobs[rows], advantages[rows], mask, opts.clip_range)
                    values = value_model(seq, attn)[:, -T - 1 : -1]
                    vf_loss, vf_stats = value_loss(values, rollout.values[rows], returns[rows], mask, opts.clip_range_value)
                    # The micro-batch's token means -> its token sums over the minibatch's token count.
                    ((pg_loss + vf_loss) * mask.sum() * token_weight).backward()
                step_stats = {
                    "policy_loss": pg_loss.item(),
                    "value_loss": vf_loss.item(),
                    "entropy": masked_mean(entropy, mask).item(),
                    **{k: v.item() for k, v in {**pg_stats, **vf_stats}.items()},
                }
                for k, v in step_stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_micro += 1
            if opts.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(policy_params, opts.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(value_params, opts.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    policy.eval()
    value_model.eval()
    return {k: v / max(n_micro, 1) for k, v in sums.items()}


# ----------------------------------------------------------------------------------------------------------------
# Training


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


def _frozen(model: nn.Module, rt: Runtime, dtype: torch.dtype) -> nn.Module:
    """Inference-only: no grads, eval mode, weights in `dtype` on the runtime's device."""
    model.requires_grad_(False)
    model.eval()
    return model.to(rt.device, dtype=dtype)


def make_reference(policy: nn.Module, rt: Runtime) -> nn.Module:
    """The frozen reference: a copy of the starting policy that computes exactly as the policy does.

    Same weights dtype as the policy (fp32) under the same autocast: with policy == reference, KL is exactly 0
    at iteration 0. (A bf16 copy under the policy's fp32 + bf16-autocast path reads a KL of its own rounding.)
    """
    return _frozen(copy.deepcopy(policy), rt, next(policy.parameters()).dtype)


def load_prompts(opts: PPOOptions) -> list[str]:
    """Distinct prompts of the training split, in first-seen order (pairs repeat a question's prompt)."""
    rows = load_split(opts.data, "train", opts.data_kind)  # type: ignore[arg-type]
    return list(dict.fromkeys(row["prompt"] for row in rows))


def train(opts: PPOOptions, reward_fn: RewardFn | None = None) -> dict[str, float]:
    """Run PPO end to end; returns the last iteration's metrics. Writes OUT (rank 0).

    reward_fn: a programmatic reward for library callers (the CLI's --reward-fn imports one by name).
    """
    rt = setup_runtime(opts.device, opts.precision)
    seed_everything(opts.seed)
    try:
        if reward_fn is None and opts.reward_fn is not None:
            reward_fn = load_reward_fn(opts.reward_fn)
        if reward_fn is None and opts.reward is None:
            raise UserError("no reward: give --reward (a reward model) or --reward-fn (module:function)")
        prompts = load_prompts(opts)
        tokenizer, policy = load_for_training(opts.policy, "causal-lm", opts, rt)
        if not end_token_ids(tokenizer, policy.generation_config):
            raise UserError(f"policy {opts.policy!r}: no eos or end-of-turn token, so responses could never end")
        template = resolve_template(tokenizer, opts.template)
        prompt_ids = [
            tokenizer(render_prompt(tokenizer, p, template), add_special_tokens=False)["input_ids"][-opts.max_prompt_len :]
            for p in prompts
        ]
        # PPO needs the same log-probs in the update (train mode) as at sampling time (eval mode).
        disable_dropout(policy)
        if is_peft(policy):  # the starting policy is the same weights with the adapters off: no copy
            ref_policy = WithoutAdapters(policy, policy)
        elif is_sharded(policy):  # loaded sharded like the policy, in its dtype (see make_reference)
            ref_policy = load_frozen(opts.policy, "causal-lm", opts, rt, dtype=next(policy.parameters()).dtype)[1]
        else:
            ref_policy = make_reference(policy, rt)

        reward: nn.Module | RewardFn
        if reward_fn is not None:
            reward = reward_fn
            _, value_model = load_for_training(opts.value_model or opts.policy, "reward", opts, rt, wrap=TokenScorer)
        else:
            if load_tokenizer(opts.reward).get_vocab() != tokenizer.get_vocab():
                raise UserError(
                    f"reward model {opts.reward!r} uses another tokenizer than policy {opts.policy!r}: PPO scores the "
                    "policy's tokens directly, so train the RM from the same base model"
                )
            _, value_model = load_for_training(opts.value_model or opts.reward, "reward", opts, rt, wrap=TokenScorer)
            if is_peft(value_model.model) and opts.value_model is None:
                # The value model is the RM plus adapters: with them off it is the frozen RM, no second copy.
                reward = WithoutAdapters(value_model, value_model.model)
            else:
                # The RM is only read, never compared with itself: bf16 weights on a GPU halve its memory.
                reward = load_frozen(opts.reward, "reward", opts, rt, wrap=TokenScorer)[1]
        disable_dropout(value_model)
        return _ppo_loop(opts, rt, tokenizer, template, prompts, prompt_ids, policy, ref_policy, value_model, reward)
    finally:
        shutdown_runtime(rt)


def _ppo_loop(
    opts: PPOOptions,
    rt: Runtime,
    tokenizer: Any,
    template: str,
    prompts: list[str],
    prompt_ids: list[list[int]],
    policy: nn.Module,
    ref_policy: nn.Module,
    value_model: TokenScorer,
    reward: nn.Module | RewardFn,
) -> dict[str, float]:
    # Each iteration takes rollout_batch_size prompts per process; an epoch is one pass over the prompts.
    per_iteration = opts.rollout_batch_size * rt.world_size
    iterations_per_epoch = len(prompts) // per_iteration
    if iterations_per_epoch == 0:
        raise UserError(
            f"{opts.data}: {len(prompts)} distinct prompts, fewer than one rollout batch "
            f"({opts.rollout_batch_size} x {rt.world_size} processes): lower --rollout-batch-size"
        )
    n_iterations = max(1, math.ceil(opts.epochs * iterations_per_epoch))
    if opts.max_iterations:
        n_iterations = min(n_iterations, opts.max_iterations)
    steps_per_iteration = opts.ppo_epochs * math.ceil(opts.rollout_batch_size / opts.minibatch_size)

    optimizer = make_optimizer(policy, opts)
    value_optimizer = make_optimizer(value_model, dataclasses.replace(opts, lr=opts.value_lr))
    scheduler = make_scheduler(optimizer, opts, n_iterations * steps_per_iteration)
    value_scheduler = make_scheduler(value_optimizer, opts, n_iterations * steps_per_iteration)
    optimizers, schedulers = _Both(optimizer, value_optimizer), _Both(scheduler, value_scheduler)
    trained = nn.ModuleDict({"policy": policy, "value": value_model})
    kl_ctl = AdaptiveKLController(opts.kl_coef, opts.target_kl or None, opts.kl_horizon)
    moments = RunningMoments()

    start, resume_step = 0, None
    ckpt = latest_checkpoint(opts.out)
    if opts.resume:
        if ckpt is None:
            raise UserError(f"--resume: no checkpoint in {opts.out / CHECKPOINT_DIR}")
        state = load_checkpoint(ckpt, trained, [optimizer, value_optimizer], schedulers, rt)
        start = resume_step = state["global_step"]
        kl_ctl.value = state["kl_coef"]
        moments.load_state_dict(state["reward_moments"])
    elif ckpt is not None:
        raise UserError(f"{opts.out} already holds checkpoints: pass --resume to continue, or choose another --out")
    logger = MetricsLogger(opts.out, rt, resume_step)
    samples_path = opts.out / "samples.jsonl"
    if rt.is_main:
        _truncate_samples(samples_path, resume_step)
        print(
            f"ppo: {len(prompts)} prompts, {n_iterations} iterations x {per_iteration} rollouts, "
            f"{steps_per_iteration} optimizer steps each, template={template}"
        )

    policy_ddp, value_ddp = wrap_ddp(TokenLogProbs(policy), rt), wrap_ddp(value_model, rt)
    metrics: dict[str, float] = {}
    bar = tqdm(total=n_iterations, initial=start, desc="ppo", disable=not rt.is_main, dynamic_ncols=True)
    for iteration in range(start, n_iterations):
        # 1. Rollout: this process's share of the iteration's prompts, in a per-epoch order.
        epoch, position = divmod(iteration, iterations_per_epoch)
        order = epoch_permutation(len(prompts), opts.seed, epoch)
        first = position * per_iteration + rt.rank * opts.rollout_batch_size
        rows = order[first : first + opts.rollout_batch_size].tolist()
        t0 = time.perf_counter()
        rollout = generate_rollout(
            policy, ref_policy, value_model, reward, tokenizer,
            [prompts[i] for i in rows], [prompt_ids[i] for i in rows], opts, rt,
        )
        t_rollout = time.perf_counter() - t0

        # 2. Rewards: shaped RM score on the last token, KL penalty on every token.
        scores = shaped_scores(rollout, moments, opts, rt)
        rewards, kl = kl_penalty_rewards(scores, rollout.logprobs, rollout.ref_logprobs, rollout.response_mask, kl_ctl.value)

        # 3. Advantages.
        advantages, returns = gae_advantages(rewards, rollout.values, rollout.response_mask, opts.gamma, opts.lam)
        advantages = masked_whiten(advantages, rollout.response_mask)

        # 4. PPO epochs over minibatches.
        t1 = time.perf_counter()
        update_stats = ppo_update(
            policy_ddp, value_ddp, optimizers, schedulers, rollout, advantages, returns, opts, rt, iteration
        )
        t_update = time.perf_counter() - t1

        # 5. Bookkeeping: the KL controller sees the mean KL per response of this iteration.
        mask = rollout.response_mask
        mean = lambda x: rt.all_reduce_sum(float(x)) / rt.world_size  # noqa: E731
        kl_per_response = mean(kl.sum(dim=1).mean())
        kl_ctl.update(kl_per_response, n_steps=per_iteration)
        response_tokens = mask.sum().item()
        metrics = {
            "reward_mean": mean(rollout.scores.mean()),
            "reward_std": mean(rollout.scores.std()) if len(rows) > 1 else 0.0,
            "shaped_score_mean": mean(scores.mean()),
            "kl": kl_per_response,
            "kl_coef": kl_ctl.value,
            "rollout_entropy": mean(masked_mean(rollout.entropy, mask)),
            **{k: mean(v) for k, v in update_stats.items()},
            "explained_variance": mean(explained_variance(rollout.values, returns, mask)),
            "response_length": mean(mask.sum(dim=1).mean()),
            # Responses cut at --max-new-tokens without an end token (EOS or end-of-turn).
            "no_eos_frac": mean((~rollout.ended).float().mean()),
            "lr": optimizer.param_groups[0]["lr"],
            # Throughput: response tokens sampled (+ scored) per second; tokens through the update per second.
            "rollout_tokens_per_s": rt.all_reduce_sum(response_tokens) / t_rollout,
            "train_tokens_per_s": rt.all_reduce_sum(rollout.attention_mask.sum().item() * opts.ppo_epochs) / t_update,
        }
        logger.log(iteration + 1, "train", epoch=(iteration + 1) / iterations_per_epoch, **metrics)
        if rt.is_main:
            _write_samples(samples_path, iteration + 1, rollout, opts.log_samples)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{kl_per_response:.2f}", len=f"{metrics['response_length']:.0f}")
        if opts.save_steps and (iteration + 1) % opts.save_steps == 0 and iteration + 1 < n_iterations:
            state = {"global_step": iteration + 1, "kl_coef": kl_ctl.value, "reward_moments": moments.state_dict()}
            save_checkpoint(opts.out, rt, trained, [optimizer, value_optimizer], schedulers, state, opts.save_limit)
    bar.close()
    logger.close()
    save_final(
        opts.out, policy, tokenizer, _card(opts, template, metrics), rt, merge_lora=opts.merge_lora,
        dtype=opts.save_dtype,
    )
    if rt.is_main:
        plot_metrics(opts.out, title=f"PPO {opts.policy}")
        if not opts.keep_checkpoints:
            shutil.rmtree(opts.out / CHECKPOINT_DIR, ignore_errors=True)
    rt.barrier()
    return metrics


def _truncate_samples(path: Path, resume_step: int | None) -> None:
    """Start OUT/samples.jsonl afresh, or on resume keep the records up to the checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if resume_step is not None and path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["iteration"] <= resume_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _write_samples(path: Path, iteration: int, rollout: Rollout, n: int) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for i in range(min(n, len(rollout.prompts))):
            record = {"iteration": iteration, "prompt": rollout.prompts[i], "response": rollout.responses[i], "score": rollout.scores[i].item()}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _card(opts: PPOOptions, template: str, metrics: dict[str, float]) -> ModelCardInfo:
    reward = f"reward model `{opts.reward}`" if opts.reward else f"reward function `{opts.reward_fn or '(library callable)'}`"
    usage = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{opts.out}")
model = AutoModelForCausalLM.from_pretrained("{opts.out}")
# Prompt it exactly as its SFT starting point (template: {template}); see that model's card.
"""
    return ModelCardInfo(
        task="ppo",
        base_model=opts.policy,
        data=opts.data,
        options=opts.to_dict(),
        results={f"last_{k}": v for k, v in metrics.items() if not k.endswith("_per_s") and k != "lr"},
        usage=usage,
        extra=(
            f"Policy optimised with PPO against the {reward}, with a per-token KL penalty to the frozen starting "
            f"model (initial coefficient {opts.kl_coef}, target KL {opts.target_kl}). `samples.jsonl` holds "
            "generations from every iteration."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(PPOOptions, argv, "python -m zhihu_rlhf.train ppo", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
