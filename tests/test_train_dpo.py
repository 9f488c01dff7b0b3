"""DPO: the loss against its formula, then training on the tiny model raises held-out preference accuracy."""

from __future__ import annotations

import math

import random
from pathlib import Path

import polars as pl
import pytest
import torch

from zhihu_rlhf.train.data import load_split
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.models import load_tokenizer_and_model
from zhihu_rlhf.train.report import read_metrics
from zhihu_rlhf.train.runtime import seed_everything
from zhihu_rlhf.train.dpo import DPOOptions, dpo_loss, pair_logps, train
from zhihu_rlhf.train.prompts import encode_pairs, render_prompt


def test_dpo_loss_matches_sigmoid_formula() -> None:
    policy_chosen = torch.tensor([-10.0, -20.0], requires_grad=True)
    policy_rejected = torch.tensor([-12.0, -15.0])
    ref_chosen = torch.tensor([-11.0, -18.0])
    ref_rejected = torch.tensor([-11.0, -16.0])
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5
    )
    loss = losses.mean()
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
    smoothed = smoothed.mean()
    expected_smoothed = sum(
        0.9 * neg_log_sigmoid(x) + 0.1 * neg_log_sigmoid(-x) for x in (1.0, -1.5)
    ) / 2
    assert smoothed.item() == pytest.approx(expected_smoothed)


# ----------------------------------------------------------------------------------------------------------------
# End to end on the tiny model


def _write_pairs(folder: Path, split: str, n: int, seed: int) -> None:
    """Pairs with a planted, learnable preference: the chosen answer is made of letters a-m, the rejected
    one of letters n-z, both the same length, so a random model has no preference to start with."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(12, 20)
        rows.append(
            {
                "prompt": "问题" + "".join(rng.choice("0123456789") for _ in range(4)),
                "chosen": "".join(rng.choice("abcdefghijklm") for _ in range(length)),
                "rejected": "".join(rng.choice("nopqrstuvwxyz") for _ in range(length)),
            }
        )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")


def _policy_preference_accuracy(model, tokenizer, folder: Path) -> float:
    """Share of held-out pairs where the model itself gives the chosen answer the higher log-probability."""
    pairs = encode_pairs(tokenizer, load_split(str(folder), "test", "pairs"), "plain", 256, drop_cut=False, what="test")
    with torch.no_grad():
        chosen, rejected = pair_logps(TokenLogProbs(model.eval()), pairs, tokenizer.pad_token_id, torch.device("cpu"))
    return (chosen > rejected).float().mean().item()


def test_dpo_raises_preference_accuracy_on_held_out_pairs(tmp_path: Path) -> None:
    data = tmp_path / "pairs"
    _write_pairs(data, "train", 64, seed=1)
    _write_pairs(data, "test", 32, seed=2)
    opts = DPOOptions(
        model="tiny", data=str(data), out=tmp_path / "dpo", device="cpu", epochs=3, lr=2e-3, beta=0.1,
        batch_size=8, grad_accum=1, warmup_ratio=0.0, save_steps=0, max_len=128,
    )
    seed_everything(opts.seed)  # train() seeds the same way, so this is the model training starts from
    tokenizer, start_model = load_tokenizer_and_model("tiny", "causal-lm")
    before = _policy_preference_accuracy(start_model, tokenizer, data)

    results = train(opts)

    tokenizer, trained = load_tokenizer_and_model(str(opts.out), "causal-lm")
    after = _policy_preference_accuracy(trained, tokenizer, data)
    assert before < 0.75, before  # no preference planted in the random model
    assert after >= 0.9, (before, after)
    # The logged implicit-reward metrics agree: held-out chosen answers get the higher reward.
    assert results["accuracy"] >= 0.9 and results["margin"] > 0
    evals = [r for r in read_metrics(opts.out) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [8, 16, 24]
    assert evals[-1]["loss"] < math.log(2)  # below the loss of a policy equal to its reference
    card = (opts.out / "README.md").read_text()
    assert "dpo" in card and "beta" in card
    assert (opts.out / "curves.png").exists()


@pytest.mark.parametrize("family", ["opt", "gpt2"])  # configs that ship dropout 0.1, as the real ones do
def test_step_zero_loss_is_log_2_when_policy_equals_reference(fixture_model_dir, tmp_path: Path, family) -> None:
    data = tmp_path / "pairs"
    _write_pairs(data, "train", 16, seed=1)
    _write_pairs(data, "test", 4, seed=2)
    # A fraction of an epoch: one optimizer step, whose logged loss is computed before the weights move.
    opts = DPOOptions(
        model=str(fixture_model_dir(family)), data=str(data), out=tmp_path / "dpo", device="cpu", epochs=0.01,
        batch_size=8, grad_accum=2, warmup_ratio=0.0, save_steps=0, max_len=64, template="plain",
    )
    train(opts)
    first = next(r for r in read_metrics(opts.out) if r["split"] == "train")
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # No pair is ranked by dropout noise: every implicit-reward margin is 0 up to float rounding.
    assert abs(first["margin"]) < 1e-5 and abs(first["chosen_reward"]) < 1e-5


def test_chosen_and_rejected_keep_the_identical_prompt_when_cut(fixture_model_dir) -> None:
    tokenizer, _ = load_tokenizer_and_model(str(fixture_model_dir("qwen2.5")), "causal-lm")
    row = {"prompt": "如何评价这部电影？" * 30, "chosen": "好。", "rejected": "这本书值得一读。" * 150}
    (pair,) = encode_pairs(tokenizer, [row], "chat", 256, drop_cut=False, what="train")
    prompt = pair.chosen_ids[: pair.prompt_len]
    assert pair.rejected_ids[: pair.prompt_len] == prompt
    assert len(pair.chosen_ids) <= 256 and len(pair.rejected_ids) == 256
    # The kept prompt is the template around the end of the question (closest to the answer), at most max_len / 2 (256).
    assert prompt[:3] == tokenizer(render_prompt(tokenizer, "", "chat"), add_special_tokens=False)["input_ids"][:3]
    assert "�" not in tokenizer.decode(prompt) and row["prompt"][-20:] in tokenizer.decode(prompt)
    assert 120 < len(prompt) <= 128
