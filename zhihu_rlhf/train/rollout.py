"""Experience for the RL stages (PPO, RLOO, GRPO): prompts in, sampled and scored responses out. No value model.

    RLOptions                   the options PPO, RLOO and GRPO share (each command subclasses it)
    GroupOptions                what RLOO and GRPO add: K samples per prompt, the group as baseline (no value model)
    load_prompts(data, kind) -> prompts      distinct prompts of the training split
    encode_prompts(tokenizer, prompts, template, max_prompt_len) -> ids    the question cut to fit, never the template
    Sampling                    how responses are sampled (the values generate and the log-probs use)
    generate_rollout(policy, reference, reward, tokenizer, prompts, prompt_ids, sampling, rt, k) -> Rollout
    response_logprobs(scorer, sequences, attention_mask, T, temperature) -> (N, T) log-probs [, entropy]

A rollout is N = B prompts x K samples: each prompt repeated K times in consecutive rows, left-padded so every
response starts at column P, then the sampled responses (padded after their end token). Generation stops on every
end token (prompts.end_token_ids), so a response ends where SFT's targets ended. Position ids count real tokens
only, as `generate` numbers them for left-padded prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train.data import iter_chunks, load_split, pad_ids, position_ids_from
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.lora import WithoutAdapters
from zhihu_rlhf.train.options import TrainOptions
from zhihu_rlhf.train.prompts import TEMPLATES, end_token_ids, prompt_ids_within, response_mask, score_positions
from zhihu_rlhf.train.runtime import Runtime, gathered, unwrap
from zhihu_rlhf.train.scoring import RewardFn, sequence_scores


@dataclass(kw_only=True)
class RLOptions(TrainOptions):
    """Options PPO, RLOO and GRPO share: where prompts and rewards come from, sampling, batch sizes, iterations."""

    policy: str = field(metadata={"help": "the SFT model to start from (also the frozen reference): folder, Hub id or 'tiny'"})
    reward: str | None = field(
        default=None, metadata={"help": "the reward model (from `train rm`): folder, Hub id or 'tiny'; or use --reward-fn"}
    )
    reward_fn: list[str] = field(
        default_factory=list,
        metadata={"help": "instead of --reward: Python functions module:name(prompts, responses) -> scores (rule-based "
                  "rewards); several are summed, weighted by --reward-weights"},
    )
    reward_weights: list[float] = field(
        default_factory=list, metadata={"help": "one weight per --reward-fn (default: 1 each)"}
    )
    data_kind: str = field(
        default="pairs", metadata={"help": "what --data holds; its `prompt` column is used", "choices": ("pairs", "instruct")}
    )
    template: str = field(default="auto", metadata={"help": "prompt format, as in SFT: auto, chat, plain", "choices": TEMPLATES})
    max_prompt_len: int = field(
        default=256, metadata={"help": "prompt tokens kept: a longer question loses its start (the template stays whole)"}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "response length limit"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (log-probs use the same scaling)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; < 1 makes samples slightly off-policy"})
    rollout_batch_size: int = field(default=64, metadata={"help": "prompts generated per iteration (per process)"})
    micro_batch_size: int = field(default=8, metadata={"help": "sequences per forward/backward pass"})
    grad_accum: int = field(default=2, metadata={"help": "micro-batches per optimizer step: minibatch = micro-batch x this"})
    ppo_epochs: int = field(default=4, metadata={"help": "optimisation passes over each rollout (TRL: num_iterations)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the prompts"})
    max_iterations: int = field(default=0, metadata={"help": "stop after this many iterations (0 = as many as --epochs gives)"})
    lr: float = field(default=1e-6, metadata={"help": "policy peak learning rate (AdamW)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps with linear warmup before cosine decay"})
    clip_range: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    missing_eos_penalty: float = field(
        default=0.0,
        metadata={"help": "subtract this from the score of responses cut at --max-new-tokens without an end token"},
    )
    log_samples: int = field(default=4, metadata={"help": "generations per iteration written to OUT/samples.jsonl"})
    save_steps: int = field(default=20, metadata={"help": "checkpoint every N iterations (0 = never)"})

    def __post_init__(self) -> None:
        if isinstance(self.reward_fn, str):  # a library caller's single function
            self.reward_fn = [self.reward_fn]

    def validate(self) -> None:
        super().validate()
        if self.reward is not None and self.reward_fn:
            raise UserError("give one of --reward (a reward model) or --reward-fn (module:function), not both")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_fn):
            raise UserError(f"--reward-weights: {len(self.reward_weights)} weights for {len(self.reward_fn)} --reward-fn")
        positive = ("max_prompt_len", "max_new_tokens", "rollout_batch_size", "micro_batch_size", "ppo_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if min(self.max_iterations, self.clip_range) < 0:
            raise UserError("--max-iterations and --clip-range must be >= 0")

    @property
    def minibatch_size(self) -> int:
        """Sequences per optimizer step (per process)."""
        return self.micro_batch_size * self.grad_accum

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.micro_batch_size)


@dataclass(kw_only=True)
class GroupOptions(RLOptions):
    """Options RLOO and GRPO share: K samples per prompt, each prompt's group its own baseline (no value model), and
    their update sizes (one pass per rollout, minibatches of 8 x 8 sequences)."""

    num_generations: int = field(default=8, metadata={"help": "K: samples per prompt (the group), >= 2"})
    ppo_epochs: int = field(default=1, metadata={"help": "optimisation passes over each rollout (TRL: num_iterations)"})
    micro_batch_size: int = field(default=8, metadata={"help": "sequences per forward/backward pass"})
    grad_accum: int = field(default=8, metadata={"help": "micro-batches per optimizer step: minibatch = micro-batch x this"})

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise UserError(
                f"--num-generations must be >= 2 (a sample's baseline is the others of its group), got {self.num_generations}"
            )


# ----------------------------------------------------------------------------------------------------------------
# Prompts


def load_prompts(data: str, data_kind: str) -> list[str]:
    """Distinct prompts of the training split, in first-seen order (pairs repeat a question's prompt)."""
    rows = load_split(data, "train", data_kind)  # type: ignore[arg-type]
    return list(dict.fromkeys(row["prompt"] for row in rows))


def encode_prompts(tokenizer, prompts: list[str], template: str, max_prompt_len: int) -> list[list[int]]:
    """Each prompt rendered and tokenized, at most max_prompt_len tokens (prompts.prompt_ids_within)."""
    return [prompt_ids_within(tokenizer, p, template, max_prompt_len) for p in prompts]


# ----------------------------------------------------------------------------------------------------------------
# Rollout


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    micro_batch_size: int  # sequences per scoring forward pass


@dataclass
class Rollout:
    """One iteration's experience. N = prompts x K samples, P = padded prompt length, T = longest response."""

    sequences: torch.Tensor  # (N, P + T) left-padded prompt + response (pad after its end token)
    attention_mask: torch.Tensor  # (N, P + T)
    response_mask: torch.Tensor  # (N, T) float
    ended: torch.Tensor  # (N,) bool: the response stopped on an end token, not at --max-new-tokens
    logprobs: torch.Tensor  # (N, T) policy at sampling time
    ref_logprobs: torch.Tensor  # (N, T)
    scores: torch.Tensor  # (N,) raw RM / reward-function scores
    entropy: torch.Tensor  # (N, T)
    prompts: list[str]  # (N,)
    responses: list[str]  # (N,)

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]

    @property
    def sequence_kl(self) -> torch.Tensor:
        """(N,) KL(policy || reference) of each response at sampling time: the sum of log pi_old - log pi_ref over
        its tokens."""
        return ((self.logprobs - self.ref_logprobs) * self.response_mask).sum(dim=1)


def log_probs_of(model: nn.Module) -> nn.Module:
    """TokenLogProbs of a causal LM; for LoRA's reference (the policy with its adapters off) the same switch around it."""
    if isinstance(model, WithoutAdapters):
        return WithoutAdapters(TokenLogProbs(model.model), model.model)
    return TokenLogProbs(model)


def response_logprobs(
    scorer: nn.Module,  # TokenLogProbs around the policy (or DDP around one)
    sequences: torch.Tensor,  # (N, P + T)
    attention_mask: torch.Tensor,  # (N, P + T)
    response_len: int,  # T
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the response tokens, from logits / temperature as sampled.

    Position P - 1 + t predicts response token t; only those T positions go through the LM head, a chunk of tokens
    at a time (logprobs.py). With `with_entropy`, also the per-token entropy (N, T) of that distribution.
    """
    batch_size = sequences.shape[0]
    predict = torch.zeros_like(attention_mask, dtype=torch.bool)
    predict[:, -response_len - 1 : -1] = True
    inputs = {"input_ids": sequences, "attention_mask": attention_mask, "position_ids": position_ids_from(attention_mask)}
    targets = sequences[:, -response_len:].reshape(-1)
    logprobs, entropy = scorer(inputs, predict, targets, temperature=temperature, with_entropy=with_entropy)
    entropy = None if entropy is None else entropy.view(batch_size, response_len)
    return logprobs.view(batch_size, response_len), entropy


@torch.no_grad()
def generate_rollout(
    policy: nn.Module,
    reference: nn.Module | None,  # None: no KL to measure (GRPO with --beta 0); ref_logprobs are then the policy's
    reward: nn.Module | RewardFn,  # TokenScorer over the RM, or a programmatic reward
    tokenizer: Any,
    prompts: list[str],  # (B,)
    prompt_ids: list[list[int]],  # (B,)
    sampling: Sampling,
    rt: Runtime,
    k: int = 1,
    policy_pass: bool = True,
) -> Rollout:
    """Sample k responses per prompt, then their log-probs (policy, reference), entropy and scores.

    policy_pass False: skip the policy's log-probs and entropy (left NaN), for an update that takes exactly one
    optimizer step on the rollout and so sees the sampling-time policy itself (it fills them in: GRPO, as TRL).
    """
    end_ids = end_token_ids(tokenizer, unwrap(policy).generation_config)
    input_ids, prompt_mask = pad_ids(prompt_ids, tokenizer.pad_token_id, side="left")  # (B, P)
    input_ids = input_ids.to(rt.device).repeat_interleave(k, dim=0)  # (N, P)
    prompt_mask = prompt_mask.to(rt.device).repeat_interleave(k, dim=0)
    prompts = [p for p in prompts for _ in range(k)]
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
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_ids,
            use_cache=True,
        )
    responses = sequences[:, prompt_len:]  # (N, T)
    mask = response_mask(responses, end_ids)
    last = score_positions(mask)  # (N,) the end token, or the last token of a cut response
    ended = torch.isin(responses[torch.arange(len(responses)), last], torch.tensor(end_ids, device=responses.device))
    responses = torch.where(mask.bool(), responses, tokenizer.pad_token_id)
    sequences = torch.cat([input_ids, responses], dim=1)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    T = responses.shape[1]

    unknown = torch.full((len(prompts), T), float("nan"), device=rt.device)
    logprobs, ref_logprobs, entropy, model_scores = [], [], [], []
    with rt.autocast():
        for rows in iter_chunks(range(len(prompts)), sampling.micro_batch_size):
            rows = list(rows)
            seq, seq_mask = sequences[rows], attention_mask[rows]
            if policy_pass:
                lp, ent = response_logprobs(TokenLogProbs(policy), seq, seq_mask, T, sampling.temperature, with_entropy=True)
            else:
                lp, ent = unknown[rows], unknown[rows]
            logprobs.append(lp)
            entropy.append(ent)
            if reference is not None:
                ref_logprobs.append(response_logprobs(log_probs_of(reference), seq, seq_mask, T, sampling.temperature)[0])
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
        ref_logprobs=torch.cat(ref_logprobs).float() if reference is not None else torch.cat(logprobs).float(),
        scores=scores.float(),
        entropy=torch.cat(entropy).float(),
        prompts=prompts,
        responses=texts,
    )

