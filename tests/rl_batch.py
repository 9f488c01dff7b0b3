"""What the RLOO and GRPO tests share: one fixed RL batch for the TRL comparisons, and the tiny-model runs.

One fixed RL batch, fed both to our update and to TRL's RLOOTrainer / GRPOTrainer loss (TRL 1.x, a test extra).

What of TRL is called: the trainer is built as a user builds it (model, reward function, config, dataset), then its
own `_compute_loss(model, inputs)` (the method its `compute_loss` calls in training) runs on a batch we construct in
the layout its `_generate_and_score_completions` produces (prompt_ids/prompt_mask, completion_ids/completion_mask,
advantages, old log-probs, reference log-probs, num_items_in_batch), and `.backward()` gives its gradients. The
advantages are given to both sides: TRL computes them inside generation, which the advantage tests cover by hand.

Prompts have equal lengths: TRL's forward passes no position ids (positions then count padding), ours counts real
tokens only; with no left padding both are 0..L-1.

The tiny-model runs: 32 prompts, 4 per iteration x K = 4 samples, trained on the planted reward (test_train_ppo's
share of Latin letters); and the CLI run killed after iteration 5 then resumed from its checkpoint at 4.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.models import load_tokenizer
from zhihu_rlhf.train.prompts import response_mask
from zhihu_rlhf.train.report import read_metrics
from zhihu_rlhf.train.rollout import GroupOptions, Rollout, response_logprobs
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


# ----------------------------------------------------------------------------------------------------------------
# Runs on the tiny model


def write_prompts(folder: Path, n: int) -> None:
    """A pairs-shaped folder (train and test splits) of n short random questions: the RL runs' prompts."""
    rng = random.Random(0)
    rows = [
        {"prompt": "问题" + "".join(rng.choice("0123456789") for _ in range(6)), "chosen": "好", "rejected": "坏"}
        for _ in range(n)
    ]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        pl.DataFrame(rows).write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")


OptionsT = TypeVar("OptionsT", bound=GroupOptions)


def tiny_options(cls: type[OptionsT], tmp_path: Path, **overrides: object) -> OptionsT:
    """A tiny-policy run on 32 prompts (4 per iteration, K = 4), written to tmp_path/prompts; out: tmp_path/run."""
    data = tmp_path / "prompts"
    if not data.exists():
        write_prompts(data, 32)
    settings: dict = dict(
        policy="tiny", data=str(data), out=tmp_path / "run", device="cpu", max_new_tokens=16, num_generations=4,
        rollout_batch_size=4, micro_batch_size=16, grad_accum=1, lr=2e-2, save_steps=0,
    )
    return cls(**{**settings, **overrides})


def planted_reward_run(
    train: Callable[..., object], opts: GroupOptions, reward_fn: Callable, logged: tuple[str, ...]
) -> tuple[list[dict], float, float]:
    """Train on reward_fn (opts from tiny_options with epochs=2: 16 iterations); the train records, and the mean reward
    of the first and the last four iterations. Every record logs each of `logged`; the saved policy loads as a plain
    causal LM."""
    train(opts, reward_fn=reward_fn)
    records = [r for r in read_metrics(opts.out) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 17))
    for key in logged:
        assert all(r[key] is not None for r in records), key
    AutoModelForCausalLM.from_pretrained(opts.out)
    start = sum(r["reward_mean"] for r in records[:4]) / 4
    end = sum(r["reward_mean"] for r in records[-4:]) / 4
    return records, start, end


def resumable_args(command: str, tmp_path: Path, *extra: str) -> list[str]:
    """CLI arguments of a 6-iteration run (24 prompts, 4 per iteration, K = 4, 2 passes) checkpointed every 2."""
    write_prompts(tmp_path / "prompts", 24)
    return [
        command, "--policy", "tiny", "--reward", "tiny", "--data", str(tmp_path / "prompts"), "--device", "cpu",
        "--max-new-tokens", "8", "--rollout-batch-size", "4", "--num-generations", "4", "--micro-batch-size", "8",
        "--grad-accum", "1", "--ppo-epochs", "2", "--epochs", "1", *extra,
        "--save-steps", "2", "--save-limit", "10", "--keep-checkpoints",
    ]


def kill_after_iteration_5(whole: Path, cut: Path) -> None:
    """Make `cut` what the run in `whole` leaves when killed after iteration 5: its checkpoint at 4, and logs that
    ran on past it."""
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "step-00000004", cut / "checkpoints" / "step-00000004")
    for name in ("metrics.jsonl", "samples.jsonl"):
        lines = (whole / name).read_text().splitlines(keepends=True)
        (cut / name).write_text("".join(x for x in lines if json.loads(x).get("step", json.loads(x).get("iteration")) <= 5))


def assert_same_curve(whole: Path, cut: Path, keys: tuple[str, ...]) -> list[dict]:
    """The resumed run logged iterations 1-6 with the uninterrupted run's values; returns the whole run's records."""
    a, b = read_metrics(whole), read_metrics(cut)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    return a
