"""RLOO: the formulas by hand, the loss against TRL's RLOOTrainer on one batch, then runs on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl_batch import (
    CPU,
    K,
    T,
    GradientRecorder,
    assert_same_curve,
    fixed_batch,
    kill_after_iteration_5,
    planted_reward_run,
    resumable_args,
    tiny_options,
    trl_dataset,
    trl_inputs,
    zero_reward,
)
from test_train_ppo import latin_letter_share
from zhihu_rlhf.train.__main__ import main as train_main
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.rl_math import rloo_advantages, sequence_clipped_loss
from zhihu_rlhf.train.rloo import RLOOOptions, rloo_update, train


def test_rloo_advantages_by_hand() -> None:
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 4.0])  # two prompts, K = 3
    kl = torch.tensor([0.0, 10.0, 0.0, 2.0, 0.0, 0.0])
    # kl_coef 0.1 -> rewards (1, 1, 6 | -0.2, 4, 4); each minus the mean of the other two.
    expected = torch.tensor([1 - 3.5, 1 - 3.5, 6 - 1.0, -0.2 - 4.0, 4 - 1.9, 4 - 1.9])
    torch.testing.assert_close(rloo_advantages(scores, kl, kl_coef=0.1, k=3), expected)
    # K = 2: each sample's baseline is the other one, so the advantages are +-(r1 - r2).
    torch.testing.assert_close(rloo_advantages(torch.tensor([3.0, 1.0]), torch.zeros(2), 0.0, 2), torch.tensor([2.0, -2.0]))


def test_rloo_sequence_loss_by_hand() -> None:
    # Response 1: tokens with log-ratios log 1.5 and log 0.9 -> rho = 1.35; response 2: one token, rho = 0.7.
    old = torch.zeros(2, 2)
    logprobs = torch.tensor([[1.5, 0.9], [0.7, 5.0]]).log()  # 5.0 sits on padding and must not count
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = sequence_clipped_loss(logprobs, old, torch.tensor([1.0, -1.0]), mask, clip_range=0.2)
    # max(-A rho, -A clip(rho)): 1.35 -> max(-1.35, -1.2) = -1.2 (clipped); 0.7 (A=-1) -> max(0.7, 0.8) = 0.8.
    assert loss.item() == pytest.approx(-1.2 + 0.8, rel=1e-5)
    assert stats["clip_frac"].item() == 2.0  # both sequences took the clipped branch


def test_rloo_loss_and_gradient_equal_trl_rlootrainer_on_one_batch(fixture_model_dir, tmp_path):
    from trl import RLOOConfig, RLOOTrainer

    model_dir = fixture_model_dir("qwen2.5")
    rollout, advantages = fixed_batch(model_dir)
    n = len(rollout.prompts)
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    opts = RLOOOptions(policy="fixture", data="unused", out=tmp_path, num_generations=K, max_new_tokens=T,
                       rollout_batch_size=n // K, micro_batch_size=3, grad_accum=3, ppo_epochs=1, max_grad_norm=0.0)
    recorder = GradientRecorder(ours)
    stats = rloo_update(TokenLogProbs(ours), recorder, GradientRecorder(ours), rollout, advantages, opts, CPU, 0)

    config = RLOOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to="none", bf16=False,
                        per_device_train_batch_size=n, num_generations=K, max_completion_length=T,
                        epsilon=opts.clip_range, temperature=1.0)
    theirs = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = RLOOTrainer(model=theirs, reward_funcs=[zero_reward], args=config, train_dataset=trl_dataset(),
                          processing_class=AutoTokenizer.from_pretrained(model_dir))
    theirs.train()
    old_logps = (rollout.logprobs * rollout.response_mask).sum(dim=1)
    trl_loss = trainer._compute_loss(theirs, {**trl_inputs(rollout), "advantages": advantages, "old_logps": old_logps})
    trl_loss.backward()

    assert stats["policy_loss"] == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    (our_grads,) = recorder.steps
    for name, param in theirs.named_parameters():
        # fp32 sums taken in another order (micro-batches of 3 against one batch of 8): ~1e-7 apart.
        torch.testing.assert_close(our_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Runs on the tiny model


def ten_times_letter_share(prompts: list[str], responses: list[str]) -> list[float]:
    """The planted reward on a 0-10 scale: RLOO's advantages are in reward units (GRPO divides by the group std)."""
    return [10 * share for share in latin_letter_share(prompts, responses)]


def test_rloo_raises_planted_reward_with_bounded_kl(tmp_path: Path) -> None:
    opts = tiny_options(RLOOOptions, tmp_path, kl_coef=0.3, epochs=2)  # 32 prompts / 4 = 8 iterations an epoch -> 16 iterations
    logged = ("group_reward_std", "equal_reward_groups", "entropy", "clip_frac", "no_eos_frac", "response_length")
    records, start, end = planted_reward_run(train, opts, ten_times_letter_share, logged)
    assert end > start + 0.7, (start, end)
    # The KL penalty in the reward holds the policy near the reference (with kl_coef 0.05 it passes 40 nats).
    assert records[0]["kl"] == 0.0 and max(r["kl"] for r in records) < 12.0


def test_rloo_cli_with_lora_resumes_the_same_curve(tmp_path: Path) -> None:
    """LoRA: the reference is the policy with its adapters off (KL exactly 0 at first); kill + --resume: same curve."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = resumable_args("rloo", tmp_path, "--lr", "1e-2", "--lora", "--lora-dropout", "0")
    train_main([*args, "--out", str(whole)])
    kill_after_iteration_5(whole, cut)
    train_main([*args, "--out", str(cut), "--resume"])
    a = assert_same_curve(whole, cut, ("reward_mean", "kl", "policy_loss", "group_reward_std"))
    assert a[0]["kl"] == 0.0 and max(r["kl"] for r in a) > 0  # adapters start at zero, then move the policy
    # The adapters folder carries the generation settings (stop on every end token) for whoever loads them.
    assert (whole / "adapter_model.safetensors").exists() and (whole / "generation_config.json").exists()
