"""SFT on the tiny model (CPU): masking by hand, packing == padding, the loss falls, kill-and-resume, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from zhihu_rlhf.errors import cli_main
from zhihu_rlhf.train import batching, loop, models, prompts, report, sft
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.sft import (
    IGNORE,
    Example,
    SFTOptions,
    collate_packed,
    collate_padded,
    completion_loss,
    labels_for,
)


def write_instruct(root: Path, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> Path:
    """An instruct folder in the contract's layout (OUT/data/<split>-00000-of-00001.parquet)."""
    (root / "data").mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        pl.DataFrame(
            {
                "question_id": list(range(len(rows))),
                "answer_id": list(range(len(rows))),
                "prompt": [p for p, _ in rows],
                "completion": [c for _, c in rows],
                "upvotes": [10] * len(rows),
            }
        ).write_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def doubling_rows(start: int, n: int) -> list[tuple[str, str]]:
    return [(f"问题{i}：{i}的两倍是多少？", f"答：{2 * i}。因为{i}加{i}等于{2 * i}。") for i in range(start, start + n)]


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory) -> Path:
    return write_instruct(tmp_path_factory.mktemp("instruct"), doubling_rows(0, 16), doubling_rows(100, 6))


def small_opts(data: Path, out: Path, **overrides) -> SFTOptions:
    base = dict(
        model="tiny", data=str(data), out=out, lr=3e-3, epochs=4, batch_tokens=256, max_len=128,
        grad_accum=1, device="cpu", warmup_ratio=0.0,
    )
    return SFTOptions(**{**base, **overrides})


def byt5_ids(text: str) -> list[int]:
    # ByT5: id = UTF-8 byte + 3 (0 pad, 1 eos, 2 unk come first).
    return [b + 3 for b in text.encode("utf-8")]


def test_completion_only_masking_by_hand():
    torch.manual_seed(0)
    tokenizer, model = models.load_tokenizer_and_model("tiny", "causal-lm")
    ids, prompt_len = prompts.encode_example(tokenizer, "天空为什么是蓝的？", "因为散射。", "plain", 256)

    prompt_ids = byt5_ids("Human: 天空为什么是蓝的？\n\nAssistant: ")
    completion_ids = byt5_ids("因为散射。") + [1]  # + eos
    assert ids == prompt_ids + completion_ids
    assert prompt_len == len(prompt_ids)
    example = Example(ids, prompt_len)
    assert labels_for(example) == [IGNORE] * len(prompt_ids) + completion_ids

    # The loss is the cross-entropy of exactly the completion tokens, each predicted from the previous position.
    loss_sum, count = completion_loss(TokenLogProbs(model), collate_packed([example], torch.device("cpu")))
    logits = model(torch.tensor([ids])).logits[0]
    by_hand = sum(
        F.cross_entropy(logits[t - 1], torch.tensor(ids[t]), reduction="sum") for t in range(prompt_len, len(ids))
    )
    assert count == len(completion_ids)
    assert loss_sum.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_truncation_keeps_prompt_end_and_completion_start():
    tokenizer = models.load_tokenizer("tiny")
    ids, prompt_len = prompts.encode_example(tokenizer, "甲" * 40, "乙" * 40, "plain", 64)
    assert len(ids) == 64 and prompt_len == 32
    assert ids[prompt_len - len(byt5_ids("Assistant: ")) : prompt_len] == byt5_ids("Assistant: ")
    assert ids[prompt_len : prompt_len + 3] == byt5_ids("乙")


def test_packed_and_padded_batches_give_the_same_loss():
    torch.manual_seed(0)
    tokenizer, model = models.load_tokenizer_and_model("tiny", "causal-lm")
    rows = [("短", "好。"), ("一个长一点的问题，关于知乎？", "一个更长的回答" * 3), ("问", "答" * 7), ("为什么", "因为")]
    examples = [Example(*prompts.encode_example(tokenizer, p, c, "plain", 256)) for p, c in rows]
    cpu = torch.device("cpu")
    with torch.no_grad():
        packed_sum, packed_n = completion_loss(TokenLogProbs(model), collate_packed(examples, cpu))
        padded_sum, padded_n = completion_loss(TokenLogProbs(model), collate_padded(examples, tokenizer.pad_token_id, cpu))
        alone = [completion_loss(TokenLogProbs(model), collate_packed([e], cpu)) for e in examples]
        # Control: the same row without per-example position ids lets examples attend to each other.
        leaky = collate_packed(examples, cpu)
        leaky.pop("position_ids")
        leaky_sum, _ = completion_loss(TokenLogProbs(model), leaky)
    assert packed_n == padded_n == sum(n for _, n in alone)
    assert packed_sum.item() == pytest.approx(padded_sum.item(), rel=1e-5)
    assert packed_sum.item() == pytest.approx(sum(s.item() for s, _ in alone), rel=1e-5)
    assert abs(leaky_sum.item() - packed_sum.item()) > 1e-3


def test_packing_fills_rows_without_exceeding_batch_tokens():
    lengths = [5, 3, 4, 8, 1, 2]
    rows = batching.pack(list(range(6)), lengths, batch_tokens=8)
    assert rows == [[0, 1], [2], [3], [4, 5]]
    assert sorted(i for r in rows for i in r) == list(range(6))


@pytest.fixture(scope="module")
def finished_run(instruct_dir, tmp_path_factory) -> tuple[SFTOptions, dict]:
    opts = small_opts(instruct_dir, tmp_path_factory.mktemp("run") / "sft", save_steps=5)
    results = sft.train(opts)
    return opts, results


def test_loss_falls_well_below_its_start(finished_run):
    opts, results = finished_run
    train = [r for r in report.read_metrics(opts.out) if r["split"] == "train"]
    evals = [r for r in report.read_metrics(opts.out) if r["split"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert evals[-1]["loss"] < 0.6 * evals[0]["loss"] + 0.4 * train[0]["loss"]  # held-out loss falls too
    assert results["loss"] == pytest.approx(evals[-1]["loss"])


def test_run_writes_hf_model_card_and_curves(finished_run):
    opts, _ = finished_run
    out = opts.out
    assert (out / "curves.png").stat().st_size > 1000
    assert not (out / loop.CHECKPOINT_DIR).exists()  # removed after a finished run
    card = (out / "README.md").read_text()
    assert "Base model:** `tiny`" in card and str(opts.data) in card and "| `lr` | `0.003` |" in card
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids, prompt_len = prompts.encode_example(tokenizer, "问题3：3的两倍是多少？", "答：6。因为3加3等于6。", "plain", 128)
    example = Example(ids, prompt_len)
    with torch.no_grad():
        loss, n = completion_loss(TokenLogProbs(model), collate_packed([example], torch.device("cpu")))
    train = [r for r in report.read_metrics(out) if r["split"] == "train"]
    assert loss.item() / n < train[0]["loss"]  # the reloaded weights are the trained ones


class Killed(Exception):
    pass


def test_kill_and_resume_reproduces_the_uninterrupted_run(instruct_dir, tmp_path, monkeypatch):
    kw = dict(save_steps=4, epochs=3, batch_tokens=200)
    full = sft.train(small_opts(instruct_dir, tmp_path / "full", **kw))
    full_train = [r for r in report.read_metrics(tmp_path / "full") if r["split"] == "train"]

    # Crash at step 7, after the checkpoint at step 4 and after the epoch boundary checkpoint state.
    original_log = report.MetricsLogger.log

    def log_then_die(self, step, split, **metrics):
        original_log(self, step, split, **metrics)
        if step == 7 and split == "train":
            raise Killed()

    monkeypatch.setattr(report.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        sft.train(small_opts(instruct_dir, tmp_path / "resumed", **kw))
    monkeypatch.setattr(report.MetricsLogger, "log", original_log)
    assert loop.latest_checkpoint(tmp_path / "resumed").name == "step-00000004"

    resumed = sft.train(small_opts(instruct_dir, tmp_path / "resumed", resume=True, keep_checkpoints=True, **kw))
    resumed_train = [r for r in report.read_metrics(tmp_path / "resumed") if r["split"] == "train"]
    assert [r["step"] for r in resumed_train] == [r["step"] for r in full_train]  # one curve, no fork
    assert resumed_train[-1]["loss"] == pytest.approx(full_train[-1]["loss"], abs=1e-5)
    assert resumed["loss"] == pytest.approx(full["loss"], abs=1e-5)
    # Checkpoints written after the resume carry their own step (a second kill would resume from there).
    later = sorted((tmp_path / "resumed" / "checkpoints").glob("step-*"))
    assert later and later[-1].name > "step-00000004"
    for ckpt in later:
        assert json.loads((ckpt / "state.json").read_text())["global_step"] == int(ckpt.name.removeprefix("step-"))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(sft.main, argv)
    return exit_info.value.code, capsys.readouterr().err


def test_bad_data_gives_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    pl.DataFrame({"prompt": ["问"], "answer": ["答"]}).write_parquet(bad / "data" / "train-00000-of-00001.parquet")
    code, err = run_cli(["--model", "tiny", "--data", str(bad), "--out", str(tmp_path / "o1"), "--device", "cpu"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "train-00000-of-00001.parquet" in err and "'completion'" in err
    assert not (tmp_path / "o1").exists()

    empty = write_instruct(tmp_path / "empty", doubling_rows(0, 4), [])
    code, err = run_cli(["--model", "tiny", "--data", str(empty), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "split 'test' is empty" in err and err.count("\n") == 1


def test_bad_model_and_device_give_one_clear_line(instruct_dir, tmp_path, capsys, monkeypatch):
    code, err = run_cli(["--model", str(tmp_path / "no-such-model"), "--data", str(instruct_dir), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no-such-model" in err and err.count("\n") == 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(["--model", "tiny", "--data", str(instruct_dir), "--out", str(tmp_path / "o"), "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_torchrun_two_processes_match_one_process_with_accumulation(instruct_dir, tmp_path):
    """Data parallel on CPU (gloo): 2 ranks x 1 micro-batch == 1 rank x 2 accumulated micro-batches."""
    common_args = ["--model", "tiny", "--data", str(instruct_dir), "--lr", "3e-3", "--epochs", "1",
                   "--batch-tokens", "200", "--max-len", "128", "--device", "cpu", "--warmup-ratio", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.train", "sft", *common_args, "--grad-accum", "2", "--out", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
         "-m", "zhihu_rlhf.train", "sft", *common_args, "--grad-accum", "1", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one = [r for r in report.read_metrics(tmp_path / "one") if r["split"] == "train"]
    two = [r for r in report.read_metrics(tmp_path / "two") if r["split"] == "train"]
    # 16 examples of ~90 tokens packed 2 per row -> 8 micro-batches -> 4 steps of 2 micro-batches in both runs.
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_hidden_layers"] == 2
