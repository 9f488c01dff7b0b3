"""GRPO: the formulas by hand, the loss against TRL's GRPOTrainer on one batch, then runs on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

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
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train.__main__ import main as train_main
from zhihu_rlhf.train.grpo import GRPOOptions, grpo_update, train
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.rl_math import aggregate, clipped_policy_loss, grpo_advantages, k3_kl
from zhihu_rlhf.train.rollout import response_logprobs


def test_grpo_advantages_by_hand() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0])  # two prompts, K = 3
    # Group 1: mean 2, unbiased std 1 -> (-1, 0, 1) / 1.0001; group 2: mean 16/3, std sqrt(1/3).
    expected_none = torch.tensor([-1.0, 0.0, 1.0, 2 / 3, -1 / 3, -1 / 3])
    torch.testing.assert_close(grpo_advantages(scores, 3, "none"), expected_none)
    std2 = (1 / 3) ** 0.5
    expected_group = torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, (2 / 3) / (std2 + 1e-4), (-1 / 3) / (std2 + 1e-4),
                                   (-1 / 3) / (std2 + 1e-4)])
    torch.testing.assert_close(grpo_advantages(scores, 3, "group"), expected_group)
    # A group whose rewards are all equal gives no signal either way.
    assert grpo_advantages(torch.tensor([4.0, 4.0, 1.0, 2.0]), 2, "group")[:2].tolist() == [0.0, 0.0]


def test_grpo_losses_by_hand() -> None:
    # Two responses of 2 and 1 tokens (T = 2); ratios 1.5, 0.9 | 1.1; A = (1, -2).
    old = torch.zeros(2, 2)
    logprobs = torch.tensor([[1.5, 0.9], [1.1, 1.0]]).log()
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    per_token, stats = clipped_policy_loss(logprobs, old, torch.tensor([[1.0], [-2.0]]), mask, clip_range=0.2)
    # max(-A r, -A clip(r)): 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); 0.9 -> -0.9; 1.1 (A=-2) -> 2.2.
    torch.testing.assert_close(per_token, torch.tensor([[-1.2, -0.9], [2.2, 0.0]]))
    assert stats["clip_frac"].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    loss, count = aggregate(per_token, mask, "dapo", max_new_tokens=4)
    assert (loss.item(), count) == pytest.approx((0.1, 3), rel=1e-5)  # the token mean 0.1 / 3 over the minibatch
    loss, count = aggregate(per_token, mask, "grpo", max_new_tokens=4)
    assert (loss.item(), count) == pytest.approx((-1.05 + 2.2, 2), rel=1e-5)  # mean of (-2.1 / 2, 2.2 / 1)
    loss, count = aggregate(per_token, mask, "dr_grpo", max_new_tokens=4)
    assert (loss.item(), count) == pytest.approx((0.1, 8), rel=1e-5)  # 2 responses x max_new_tokens 4
    # k3: exp(ref - logp) - (ref - logp) - 1; at ref - logp = log 2: 2 - log 2 - 1.
    kl = k3_kl(torch.zeros(1, 2), torch.tensor([[2.0, 1.0]]).log())
    torch.testing.assert_close(kl, torch.tensor([[1 - torch.log(torch.tensor(2.0)).item(), 0.0]]))


@pytest.mark.parametrize(("loss_type", "beta"), [("dapo", 0.0), ("dapo", 0.1), ("grpo", 0.0), ("grpo", 0.1), ("dr_grpo", 0.1)])
def test_grpo_loss_and_gradient_equal_trl_grpotrainer_on_one_batch(fixture_model_dir, tmp_path, loss_type, beta):
    from trl import GRPOConfig, GRPOTrainer

    model_dir = fixture_model_dir("qwen2.5")
    rollout, advantages = fixed_batch(model_dir)
    n = len(rollout.prompts)
    # Ours: one pass, the whole batch as one minibatch cut into micro-batches of 3 (their cut must not matter).
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    opts = GRPOOptions(policy="fixture", data="unused", out=tmp_path, num_generations=K, loss_type=loss_type, beta=beta,
                       max_new_tokens=T, rollout_batch_size=n // K, micro_batch_size=3, grad_accum=3, ppo_epochs=1,
                       max_grad_norm=0.0)  # TRL clips in its optimizer step, after the loss
    recorder = GradientRecorder(ours)
    stats = grpo_update(TokenLogProbs(ours), recorder, GradientRecorder(ours), rollout, advantages, opts, CPU, 0)
    our_loss = stats["policy_loss"] + beta * stats.get("kl_loss", 0.0)

    config = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to="none", bf16=False,
                        per_device_train_batch_size=n, num_generations=K, max_completion_length=T, beta=beta,
                        loss_type=loss_type, scale_rewards="group", epsilon=opts.clip_range, temperature=1.0)
    theirs = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=theirs, reward_funcs=[zero_reward], args=config, train_dataset=trl_dataset(),
                          processing_class=fixture_tokenizer(model_dir))
    trainer.current_gradient_accumulation_steps = 1
    theirs.train()
    inputs = {**trl_inputs(rollout), "advantages": advantages, "old_per_token_logps": rollout.logprobs,
              "num_items_in_batch": rollout.response_mask.sum()}
    if beta:
        inputs["ref_per_token_logps"] = rollout.ref_logprobs
    trl_loss = trainer._compute_loss(theirs, inputs)
    trl_loss.backward()

    assert our_loss == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    (our_grads,) = recorder.steps
    for name, param in theirs.named_parameters():
        torch.testing.assert_close(our_grads[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)


def fixture_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# ----------------------------------------------------------------------------------------------------------------
# Runs on the tiny model


def test_grpo_raises_planted_reward_with_bounded_kl(tmp_path: Path) -> None:
    opts = tiny_options(GRPOOptions, tmp_path, beta=0.3, epochs=2)  # 32 prompts / 4 = 8 iterations an epoch -> 16 iterations
    logged = ("group_reward_std", "equal_reward_groups", "entropy", "clip_frac", "kl_loss", "no_eos_frac")
    records, start, end = planted_reward_run(train, opts, latin_letter_share, logged)
    assert end > start + 0.07, (start, end)
    # The k3 loss term holds the policy near the reference (with beta 0.04 it passes 30 nats).
    assert records[0]["kl"] == 0.0 and max(r["kl"] for r in records) < 12.0
    assert 0 <= records[0]["equal_reward_groups"] <= 1 and records[0]["group_reward_std"] > 0


def test_grpo_cli_resumes_the_same_curve_and_refuses_changed_options(tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = resumable_args("grpo", tmp_path, "--lr", "1e-3", "--beta", "0.04")
    train_main([*args, "--out", str(whole)])
    kill_after_iteration_5(whole, cut)
    with pytest.raises(UserError, match=r"--lr 0.002 \(checkpoint: 0.001\).*--beta 0.1 \(checkpoint: 0.04\)"):
        train_main([*args, "--out", str(cut), "--resume", "--lr", "2e-3", "--beta", "0.1"])
    train_main([*args, "--out", str(cut), "--resume"])
    assert_same_curve(whole, cut, ("reward_mean", "kl", "policy_loss", "group_reward_std"))
    assert (whole / "samples.jsonl").read_text() == (cut / "samples.jsonl").read_text()


def test_one_step_rollouts_skip_the_policy_pass_and_get_the_same_update(fixture_model_dir, tmp_path):
    """With one optimizer step per rollout, the sampling-time log-probs are the update's own: skipping that pass
    (NaN placeholders filled in by the update) gives the gradient of the full path."""
    model_dir = fixture_model_dir("qwen2.5")
    rollout, advantages = fixed_batch(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        current, entropy = response_logprobs(TokenLogProbs(model), rollout.sequences, rollout.attention_mask, T, 1.0, True)
    opts = GRPOOptions(policy="fixture", data="unused", out=tmp_path, num_generations=K, beta=0.1, max_new_tokens=T,
                       rollout_batch_size=2, micro_batch_size=8, grad_accum=1, max_grad_norm=0.0)
    grads = []
    for on_policy in (False, True):
        rollout.logprobs = current.clone() if not on_policy else torch.full_like(current, float("nan"))
        recorder = GradientRecorder(model)
        grpo_update(TokenLogProbs(model), recorder, GradientRecorder(model), rollout, advantages, opts, CPU, 0, on_policy)
        grads.append(recorder.steps[0])
    torch.testing.assert_close(rollout.logprobs, current)  # filled in by the update
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
