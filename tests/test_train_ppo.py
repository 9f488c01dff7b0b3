"""PPO: the math against hand-computed values, then an end-to-end run on the tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rl_batch import kill_after_iteration_5, write_prompts
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train.__main__ import main as train_main
from zhihu_rlhf.train.logprobs import TokenLogProbs, entropy_from_logits
from zhihu_rlhf.train.models import load_tokenizer_and_model
from zhihu_rlhf.train.prompts import render_prompt
from zhihu_rlhf.train.ppo import PPOOptions, ppo_update, rollout_values, train
from zhihu_rlhf.train.report import read_metrics
from zhihu_rlhf.train.rl import make_reference
from zhihu_rlhf.train.rl_math import (
    AdaptiveKLController,
    RunningMoments,
    explained_variance,
    gae_advantages,
    kl_penalty_rewards,
    masked_whiten,
    penalize_missing_eos,
    policy_loss,
    value_loss,
)
from zhihu_rlhf.train.rollout import generate_rollout
from zhihu_rlhf.train.runtime import Runtime
from zhihu_rlhf.train.scoring import TokenScorer


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


def test_missing_eos_penalty_hits_only_cut_responses() -> None:
    # PPO, RLOO and GRPO all take --missing-eos-penalty off the score of a response that never reached an end token.
    penalized = penalize_missing_eos(torch.tensor([2.0, 2.0, -1.0]), torch.tensor([True, False, False]), 0.5)
    torch.testing.assert_close(penalized, torch.tensor([2.0, 1.5, -1.5]))


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


# ----------------------------------------------------------------------------------------------------------------
# End to end on the tiny model

MAX_NEW_TOKENS = 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two threads on a shared 2-core machine spin against each other: tiny-model steps get ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def latin_letter_share(prompts: list[str], responses: list[str]) -> list[float]:
    """The planted preference: share of the response made of ASCII letters (a random byte model writes ~13%)."""
    return [sum(c.isascii() and c.isalpha() for c in r) / MAX_NEW_TOKENS for r in responses]


def _tiny_opts(tmp_path: Path, **overrides: object) -> PPOOptions:
    data = tmp_path / "prompts"
    if not data.exists():
        write_prompts(data, 64)
    settings: dict = dict(
        policy="tiny", data=str(data), out=tmp_path / "ppo", device="cpu", max_new_tokens=MAX_NEW_TOKENS,
        rollout_batch_size=32, micro_batch_size=16, grad_accum=1, ppo_epochs=4, lr=5e-3, value_lr=5e-3,
        save_steps=0, reward_norm=False,
    )
    settings.update(overrides)
    return PPOOptions(**settings)


def test_ppo_raises_planted_reward_with_bounded_kl(tmp_path: Path) -> None:
    # 16 epochs over 64 prompts = 32 iterations; adaptive KL towards 6 nats per response.
    opts = _tiny_opts(tmp_path, epochs=16, kl_coef=0.05, target_kl=6.0, kl_horizon=64)
    train(opts, reward_fn=latin_letter_share)

    records = [r for r in read_metrics(opts.out) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 33))
    start = sum(r["reward_mean"] for r in records[:4]) / 4
    end = sum(r["reward_mean"] for r in records[-4:]) / 4
    assert end > start + 0.15, (start, end)
    # The adaptive penalty holds the policy near the reference: KL per response stays around the target
    # instead of running away (with kl_coef 0.02 fixed it passes 13 nats in as many iterations).
    assert max(r["kl"] for r in records) < 2 * opts.target_kl
    assert all(r["kl_coef"] != opts.kl_coef for r in records[1:])  # the controller is acting
    for r in records:
        for key in ("entropy", "clip_frac", "approx_kl", "value_loss", "explained_variance", "response_length"):
            assert r[key] is not None and math.isfinite(r[key]), (key, r)
    samples = [json.loads(line) for line in (opts.out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 32 * opts.log_samples and {"prompt", "response", "score"} <= samples[0].keys()
    # The saved policy loads as a plain causal LM.
    assert (opts.out / "curves.png").exists() and "ppo" in (opts.out / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(opts.out)


def test_ppo_cli_with_reward_model_resumes_the_same_run(tmp_path: Path) -> None:
    # Full four-model path (tiny RM -> frozen scorer + value model) through the CLI.
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = [
        "ppo", "--policy", "tiny", "--reward", "tiny", "--data", _tiny_opts(tmp_path).data, "--device", "cpu",
        "--max-new-tokens", "8", "--rollout-batch-size", "16", "--micro-batch-size", "8", "--ppo-epochs", "2",
        "--epochs", "2", "--lr", "1e-3", "--save-steps", "2", "--save-limit", "10", "--keep-checkpoints",
    ]
    train_main([*args, "--out", str(whole)])
    assert [p.name for p in sorted((whole / "checkpoints").iterdir())] == ["step-00000002", "step-00000004", "step-00000006"]
    kill_after_iteration_5(whole, cut)
    train_main([*args, "--out", str(cut), "--resume"])

    whole_metrics, cut_metrics = read_metrics(whole), read_metrics(cut)
    assert [r["step"] for r in cut_metrics] == [r["step"] for r in whole_metrics] == list(range(1, 9))
    for a, b in zip(whole_metrics, cut_metrics, strict=True):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-4)
        assert a["value_loss"] == pytest.approx(b["value_loss"], rel=1e-4, abs=1e-6)
    assert (whole / "samples.jsonl").read_text() == (cut / "samples.jsonl").read_text()


def test_ppo_bad_arguments_give_one_clear_line(tmp_path: Path) -> None:
    data = _tiny_opts(tmp_path).data
    args = ["ppo", "--policy", "tiny", "--data", data, "--out", str(tmp_path / "o"), "--device", "cpu"]
    with pytest.raises(UserError, match="--reward"):
        train_main(args)
    with pytest.raises(UserError, match="fewer than one rollout batch"):
        train_main([*args, "--reward", "tiny", "--rollout-batch-size", "1000"])
    with pytest.raises(UserError, match="module:function"):
        train_main([*args, "--reward-fn", "no_colon_here"])
    with pytest.raises(UserError, match="does not exist"):
        train_main([*args, "--reward", "./no/such/rm"])


# ----------------------------------------------------------------------------------------------------------------
# Rollout and update on a fixture model (Qwen2.5 layout)


def _fixture_rollout(fixture_model_dir, tmp_path: Path, rt: Runtime, **overrides: object):
    """A 4-prompt rollout of the qwen2.5 fixture policy against itself as reference; returns (policy, value, rollout)."""
    tokenizer, policy = load_tokenizer_and_model(str(fixture_model_dir("qwen2.5")), "causal-lm")
    _, value_base = load_tokenizer_and_model(str(fixture_model_dir("qwen2.5", "reward")), "reward")
    opts = _tiny_opts(tmp_path, policy="fixture", max_new_tokens=12, rollout_batch_size=4, micro_batch_size=4, **overrides)
    prompts = [f"问题{i}：" + "为什么天空是蓝色的？" * (i + 1) for i in range(4)]
    prompt_ids = [tokenizer(render_prompt(tokenizer, p, "plain"), add_special_tokens=False)["input_ids"] for p in prompts]
    value_model = TokenScorer(value_base)
    torch.manual_seed(0)
    rollout = generate_rollout(
        policy, make_reference(policy, rt), lambda p, r: [0.0] * len(p), tokenizer, prompts, prompt_ids, opts.sampling, rt
    )
    return policy, value_model, rollout


def test_kl_is_exactly_zero_at_iteration_zero_under_bf16_autocast(fixture_model_dir, tmp_path: Path) -> None:
    # The GPU path's precision (fp32 weights, bf16 autocast), here on the CPU: reference and policy compute alike.
    rt = Runtime(device=torch.device("cpu"), autocast_dtype=torch.bfloat16)
    policy, _, rollout = _fixture_rollout(fixture_model_dir, tmp_path, rt)
    _, kl = kl_penalty_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.response_mask, 0.1)
    assert torch.equal(kl, torch.zeros_like(kl))
    assert next(make_reference(policy, rt).parameters()).dtype == next(policy.parameters()).dtype


class _GradientRecorder:
    """Stands in for the optimizer: records each step's gradients and leaves the weights alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.steps = model, []

    def step(self) -> None:
        self.steps.append([p.grad.clone() for p in self.model.parameters() if p.grad is not None])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)


def test_ppo_loss_is_a_token_mean_over_the_minibatch(fixture_model_dir, tmp_path: Path) -> None:
    rt = Runtime(device=torch.device("cpu"), autocast_dtype=None)
    policy, value_model, rollout = _fixture_rollout(fixture_model_dir, tmp_path, rt)
    # Responses of 2, 3, 7 and 12 tokens: micro-batch token means weighted per sequence would differ from this.
    for row, length in enumerate((2, 3, 7, 12)):
        rollout.response_mask[row, length:] = 0
    rollout.attention_mask[:, -rollout.response_len :] = rollout.response_mask.long()
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(rollout.response_mask.shape, generator=generator) * rollout.response_mask
    returns = torch.randn(rollout.response_mask.shape, generator=generator) * rollout.response_mask
    both = torch.nn.ModuleDict({"policy": policy, "value": value_model})
    gradients = []
    for micro_batch_size, grad_accum in ((4, 1), (1, 4), (2, 2)):
        opts = _tiny_opts(tmp_path, micro_batch_size=micro_batch_size, grad_accum=grad_accum, ppo_epochs=1, max_grad_norm=0.0)
        recorder = _GradientRecorder(both)
        values = rollout_values(value_model, rollout, micro_batch_size, rt)
        ppo_update(
            TokenLogProbs(policy), value_model, recorder, _GradientRecorder(both), rollout, values, advantages, returns,
            opts, rt, 0,
        )
        (step,) = recorder.steps
        gradients.append(step)
    for other in gradients[1:]:
        for whole, split in zip(gradients[0], other, strict=True):
            torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-7)


def test_reward_statistics_are_reduced_over_torchrun_ranks(tmp_path: Path) -> None:
    """Two gloo processes with different scores keep the same running moments: those of all scores together."""
    script = tmp_path / "moments.py"
    script.write_text(
        "import json, sys, torch\n"
        "from zhihu_rlhf.train.rl_math import RunningMoments\n"
        "from zhihu_rlhf.train.runtime import setup_runtime, shutdown_runtime\n"
        "rt = setup_runtime('cpu')\n"
        "moments = RunningMoments()\n"
        "for batch in range(2):\n"
        "    scores = torch.arange(3 + rt.rank, dtype=torch.float32) * (rt.rank + 1) + 10 * batch\n"
        "    moments.update(scores, rt)\n"
        "out = {'mean': moments.mean, 'std': moments.std, 'count': moments.count}\n"
        "open(sys.argv[1] + f'/rank{rt.rank}.json', 'w').write(json.dumps(out))\n"
        "shutdown_runtime(rt)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
         str(script), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    everything = np.array(
        [i * (rank + 1) + 10 * batch for batch in range(2) for rank in range(2) for i in range(3 + rank)], dtype=float
    )
    for rank in range(2):
        moments = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert moments["count"] == everything.size
        assert moments["mean"] == pytest.approx(everything.mean())
        assert moments["std"] == pytest.approx(everything.std())
