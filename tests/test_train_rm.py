"""Reward model on the tiny model (CPU): the loss formula, one forward pass, learning a planted preference."""

from __future__ import annotations

import math
import random
from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from zhihu_rlhf.errors import cli_main
from zhihu_rlhf.train import models, report, rm
from zhihu_rlhf.train.prompts import EncodedPair, encode_example, encode_pairs, render_prompt
from zhihu_rlhf.train.rm import RMOptions, pair_rewards, pairwise_loss
from zhihu_rlhf.train.scoring import TokenScorer


def write_pairs(root: Path, train: list[tuple[str, str, str]], test: list[tuple[str, str, str]]) -> Path:
    (root / "data").mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        pl.DataFrame(
            {
                "question_id": list(range(len(rows))),
                "prompt": [p for p, _, _ in rows],
                "chosen": [c for _, c, _ in rows],
                "rejected": [r for _, _, r in rows],
                "upvote_ratio": [3.0] * len(rows),
            }
        ).write_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


CHARS = "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会"


def planted_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Random answers; the chosen one carries a learnable signal (it ends with a thank-you line)."""
    rng = random.Random(seed)
    text = lambda k: "".join(rng.choice(CHARS) for _ in range(k))  # noqa: E731
    return [(f"问题：{text(6)}？", text(rng.randint(8, 20)) + "。谢谢邀请！", text(rng.randint(8, 20)) + "。") for _ in range(n)]


def test_pairwise_loss_matches_formula():
    r_c = torch.tensor([2.0, -1.0, 0.5])
    r_r = torch.tensor([1.0, 0.0, 0.5])
    expected = sum(-math.log(1 / (1 + math.exp(-(c - r - 0.3)))) for c, r in zip(r_c.tolist(), r_r.tolist(), strict=True))
    assert pairwise_loss(r_c, r_r, margin=0.3).item() == pytest.approx(expected, rel=1e-6)
    centered = expected + 0.1 * sum((c + r) ** 2 for c, r in zip(r_c.tolist(), r_r.tolist(), strict=True))
    assert pairwise_loss(r_c, r_r, margin=0.3, center_coef=0.1).item() == pytest.approx(centered, rel=1e-6)


def test_chosen_and_rejected_share_one_forward_pass_and_padding_does_not_change_rewards():
    torch.manual_seed(0)
    tokenizer, model = models.load_tokenizer_and_model("tiny", "reward")
    model.eval()
    pairs = [
        EncodedPair(encode_example(tokenizer, p, c, "plain", 128)[0], encode_example(tokenizer, p, r, "plain", 128)[0], 0, False)
        for p, c, r in planted_pairs(3, seed=1)
    ]
    calls = []
    model.model.register_forward_hook(lambda module, args, output: calls.append(output.last_hidden_state.shape[0]))
    with torch.no_grad():
        r_c, r_r = pair_rewards(TokenScorer(model), pairs, tokenizer.pad_token_id, torch.device("cpu"))
        assert calls == [6]
        calls.clear()
        alone = [model(torch.tensor([s])).logits[0, 0].item() for p in pairs for s in (p.chosen_ids, p.rejected_ids)]
    assert r_c.tolist() == pytest.approx(alone[0::2], abs=1e-5)
    assert r_r.tolist() == pytest.approx(alone[1::2], abs=1e-5)


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory) -> tuple[RMOptions, dict, list[tuple[str, str, str]]]:
    root = tmp_path_factory.mktemp("rm")
    test_rows = planted_pairs(32, seed=2)
    data = write_pairs(root / "pairs", planted_pairs(48, seed=1), test_rows)
    opts = RMOptions(
        model="tiny", data=str(data), out=root / "rm", lr=3e-3, epochs=2, batch_size=8, max_len=128,
        device="cpu", warmup_ratio=0.0, center_coef=0.01,
    )
    return opts, rm.train(opts), test_rows


def test_rm_learns_the_planted_preference(trained_rm):
    opts, results, _ = trained_rm
    evals = [r for r in report.read_metrics(opts.out) if r["split"] == "eval"]
    assert len(evals) == 2  # one evaluation per epoch
    assert results["accuracy"] >= 0.9
    assert results["margin"] > 0
    assert evals[-1]["loss"] < evals[0]["loss"]


def test_saved_rm_loads_with_from_pretrained_and_scores_text(trained_rm):
    opts, results, test_rows = trained_rm
    tokenizer = AutoTokenizer.from_pretrained(opts.out)
    model = AutoModelForSequenceClassification.from_pretrained(opts.out)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    prompts = [p for p, _, _ in test_rows]
    chosen = rm.score(model, tokenizer, prompts, [c for _, c, _ in test_rows], template="plain")
    rejected = rm.score(model, tokenizer, prompts, [r for _, _, r in test_rows], template="plain")
    assert (chosen > rejected).float().mean().item() == pytest.approx(results["accuracy"])
    card = (opts.out / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "eval_accuracy" in card


def test_pairs_without_rejected_column_give_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    pl.DataFrame({"prompt": ["问"], "chosen": ["好"]}).write_parquet(bad / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(rm.main, ["--model", "tiny", "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "'rejected'" in err and "train-00000-of-00001.parquet" in err
    assert not (tmp_path / "o").exists()


def test_bad_option_value_gives_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(rm.main, ["--model", "tiny", "--data", "x", "--out", str(tmp_path), "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --batch-size must be >= 1, got 0\n"


def test_chosen_and_rejected_keep_the_identical_prompt_when_cut(fixture_model_dir):
    tokenizer, _ = models.load_tokenizer_and_model(str(fixture_model_dir("qwen2.5", "reward")), "reward")
    row = {"prompt": "如何评价这部电影？" * 30, "chosen": "好。", "rejected": "这本书值得一读。" * 150}
    (pair,) = encode_pairs(tokenizer, [row], "chat", 256, drop_cut=False, what="train")
    prompt = pair.chosen_ids[: pair.prompt_len]
    assert pair.rejected_ids[: pair.prompt_len] == prompt and pair.answer_cut
    # The prompt is the whole template around the question's last characters, at most half of max_len (256).
    kept = next(n for n in range(len(row["prompt"]), -1, -1) if prompt == tokenizer(
        render_prompt(tokenizer, row["prompt"][len(row["prompt"]) - n :], "chat"), add_special_tokens=False)["input_ids"])
    assert 0 < kept < len(row["prompt"]) and 120 < len(prompt) <= 128
    assert pair.chosen_ids[pair.prompt_len :] == tokenizer("好。<|im_end|>", add_special_tokens=False)["input_ids"]
