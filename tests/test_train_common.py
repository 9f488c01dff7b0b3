"""Shared trainer pieces: data loading and its errors, options/CLI, models, data order, metrics, checkpoints."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train import common
from zhihu_rlhf.train.__main__ import main as train_main
from zhihu_rlhf.train.sft import SFTOptions


def write_split(root: Path, split: str, frame: pl.DataFrame) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    path = root / "data" / f"{split}-00000-of-00001.parquet"
    frame.write_parquet(path)
    return path


# ---------------------------------------------------------------- data


def test_load_split_reads_the_contract_folder(tmp_path):
    write_split(tmp_path, "train", pl.DataFrame({"question_id": [1, 2], "prompt": ["问1", "问2"], "completion": ["答1", "答2"]}))
    assert common.load_split(str(tmp_path), "train", "instruct") == [
        {"prompt": "问1", "completion": "答1"},
        {"prompt": "问2", "completion": "答2"},
    ]


def test_load_split_errors_name_the_file_and_column(tmp_path):
    path = write_split(tmp_path, "train", pl.DataFrame({"prompt": ["问"], "chosen": ["好"], "reject": ["坏"]}))
    with pytest.raises(UserError, match=r"train-00000-of-00001\.parquet: missing column 'rejected'"):
        common.load_split(str(tmp_path), "train", "pairs")

    write_split(tmp_path, "test", pl.DataFrame({"prompt": ["问", "问"], "completion": ["答", None]}))
    with pytest.raises(UserError, match=r"test-00000-of-00001\.parquet: row 1: column 'completion'"):
        common.load_split(str(tmp_path), "test", "instruct")

    write_split(tmp_path, "test", pl.DataFrame({"prompt": [], "completion": []}, schema={"prompt": pl.String, "completion": pl.String}))
    with pytest.raises(UserError, match="split 'test' is empty"):
        common.load_split(str(tmp_path), "test", "instruct")

    with pytest.raises(UserError, match=r"no data/validation-\*\.parquet"):
        common.load_split(str(tmp_path), "validation", "instruct")
    with pytest.raises(UserError, match="no such folder"):
        common.load_split(str(tmp_path / "missing"), "train", "instruct")
    path.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="not a readable parquet"):
        common.load_split(str(tmp_path), "train", "pairs")


# ---------------------------------------------------------------- options and CLI


def test_parse_options_maps_flags_defaults_and_help(capsys):
    opts = common.parse_options(
        SFTOptions, ["--model", "Qwen/Qwen2.5-0.5B", "--data", "d", "--out", "o", "--lr", "1e-4", "--grad-ckpt"], "sft", ""
    )
    assert opts.lr == 1e-4 and opts.grad_ckpt is True and opts.out == Path("o") and opts.batch_tokens == 16384
    with pytest.raises(SystemExit):
        common.parse_options(SFTOptions, ["--help"], "sft", "")
    help_text = capsys.readouterr().out
    for f in ("--batch-tokens", "--save-steps", "--resume", "--template", "--max-len", "--warmup-ratio"):
        assert f in help_text
    assert "(default: 16384)" in help_text
    with pytest.raises(SystemExit) as exit_info:
        common.parse_options(SFTOptions, ["--data", "d", "--out", "o"], "sft", "")  # --model missing
    assert exit_info.value.code == 2
    with pytest.raises(UserError, match="--batch-tokens .* must be >= --max-len"):
        common.parse_options(SFTOptions, ["--model", "m", "--data", "d", "--out", "o", "--max-len", "4096", "--batch-tokens", "1024"], "sft", "")


def test_tiny_model_takes_demo_defaults_only_for_unset_options():
    argv = ["--model", "tiny", "--data", "d", "--out", "o", "--max-len=512"]
    opts = common.parse_options(SFTOptions, argv, "sft", "")
    assert opts.max_len == 512  # given on the command line: kept
    assert opts.batch_tokens == SFTOptions.TINY_DEMO["batch_tokens"] != 16384
    assert opts.epochs == SFTOptions.TINY_DEMO["epochs"]
    real = common.parse_options(SFTOptions, ["--model", "m", "--data", "d", "--out", "o"], "sft", "")
    assert (real.batch_tokens, real.max_len, real.epochs) == (16384, 2048, 3.0)


def test_dispatcher_rejects_unknown_command_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(train_main, ["sfx"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unknown command 'sfx'; choose one of sft, rm, ppo, dpo\n"


def test_python_m_entry_point_gives_one_line_and_exit_2_for_missing_cuda(tmp_path):
    # Runs the real `python -m zhihu_rlhf.train` process; CUDA is hidden so the check is the same on any machine.
    result = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.train", "sft", "--model", "tiny", "--data", str(tmp_path),
         "--out", str(tmp_path / "o"), "--device", "cuda"],
        capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""}, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda was asked for but no CUDA GPU is available (use --device cpu or auto)"
    ]


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("kind", ["causal-lm", "reward"])
def test_tiny_models_have_matching_vocab_and_pad(kind):
    tokenizer, model = common.load_tokenizer_and_model("tiny", kind)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id == model.config.pad_token_id == 0
    assert tokenizer.eos_token_id == 1
    out = model(torch.tensor([tokenizer("知乎", add_special_tokens=False)["input_ids"]])).logits
    assert out.shape[-1] == (len(tokenizer) if kind == "causal-lm" else 1)


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-model-here"):
        common.load_tokenizer_and_model(str(tmp_path / "no-model-here"), "causal-lm")


def test_packed_rows_do_not_attend_across_examples():
    torch.manual_seed(0)
    tokenizer, model = common.load_tokenizer_and_model("tiny", "causal-lm")
    a = tokenizer("第一个例子", add_special_tokens=False)["input_ids"]
    b = tokenizer("the second one", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        alone_b = model(torch.tensor([b])).logits[0]
        position_ids = torch.tensor([list(range(len(a))) + list(range(len(b)))])
        packed = model(torch.tensor([a + b]), position_ids=position_ids, use_cache=False).logits[0]
    assert torch.allclose(packed[len(a) :], alone_b, atol=1e-5)


def test_prompt_format_plain_and_chat():
    tokenizer = common.load_tokenizer("tiny")
    assert common.resolve_template(tokenizer, "auto") == "plain"
    assert common.render_prompt(tokenizer, "问题", "auto") == "Human: 问题\n\nAssistant: "
    assert common.render_completion(tokenizer, "问题", "回答", "plain") == "回答</s>"
    with pytest.raises(UserError, match="no chat template"):
        common.resolve_template(tokenizer, "chat")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert common.render_prompt(tokenizer, "问题", "auto") == "<|user|>问题<|end|><|assistant|>"
    assert common.render_completion(tokenizer, "问题", "回答", "auto") == "回答<|end|>"


def test_pad_ids_pads_either_side_and_masks_by_length_not_by_pad_value():
    # pad id 1 is also a real token here (pad = eos in most causal LMs): the mask must still count it.
    ids, mask = common.pad_ids([[5, 1], [7], [8, 9, 1]], 1)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 1, 1], [7, 1, 1], [8, 9, 1]]
    assert mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    ids, mask = common.pad_ids([[5, 1], [7], [8, 9, 1]], -100, side="left")
    assert ids.tolist() == [[-100, 5, 1], [-100, -100, 7], [8, 9, 1]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]


# ---------------------------------------------------------------- data order


def test_step_plan_groups_micro_batches_and_keeps_ranks_even():
    assert common.step_plan(7, grad_accum=2, world_size=1) == [[0, 1], [2, 3], [4, 5], [6]]
    assert common.step_plan(7, grad_accum=1, world_size=2) == [[0, 1], [2, 3], [4, 5]]  # short last step dropped
    assert common.step_plan(8, grad_accum=2, world_size=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    first = common.epoch_permutation(50, seed=3, epoch=0)
    np.random.seed(123)  # global RNG state must not matter
    assert (common.epoch_permutation(50, seed=3, epoch=0) == first).all()
    assert sorted(first.tolist()) == list(range(50))
    assert not (common.epoch_permutation(50, seed=3, epoch=1) == first).all()


def test_shuffled_batches_cut_the_epoch_order_into_fixed_sizes():
    batches = common.shuffled_batches(10, 4, seed=3, epoch=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sum(batches, []) == common.epoch_permutation(10, seed=3, epoch=1).tolist()
    assert common.shuffled_batches(10, 4, seed=3, epoch=2) != batches


# ---------------------------------------------------------------- metrics and checkpoints


def test_metrics_resume_drops_records_after_the_checkpoint_and_plots(tmp_path):
    rt = common.Runtime(device=torch.device("cpu"), autocast_dtype=None)
    logger = common.MetricsLogger(tmp_path, rt)
    for step in range(1, 6):
        logger.log(step, "train", loss=1.0 / step)
    logger.log(5, "eval", loss=0.5, accuracy=0.75)
    common.MetricsLogger(tmp_path, rt, resume_step=3)
    assert [(r["step"], r["split"]) for r in common.read_metrics(tmp_path)] == [(1, "train"), (2, "train"), (3, "train")]
    path = common.plot_metrics(tmp_path)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    rt = common.Runtime(device=torch.device("cpu"), autocast_dtype=None)
    opts = SFTOptions(model="tiny", data="d", out=tmp_path, lr=1e-2)
    torch.manual_seed(0)
    _, model = common.load_tokenizer_and_model("tiny", "causal-lm")
    optimizer = common.make_optimizer(model, opts)
    scheduler = common.make_scheduler(optimizer, opts, total_steps=10)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    for step in (1, 2, 3):
        common.save_checkpoint(tmp_path, rt, model, optimizer, scheduler, {"global_step": step, "epoch": 0}, save_limit=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step-*"))] == ["step-00000002", "step-00000003"]
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(99)
    _, fresh = common.load_tokenizer_and_model("tiny", "causal-lm")
    fresh_opt = common.make_optimizer(fresh, opts)
    fresh_sched = common.make_scheduler(fresh_opt, opts, total_steps=10)
    state = common.load_checkpoint(common.latest_checkpoint(tmp_path), fresh, fresh_opt, fresh_sched, rt)
    assert state == {"global_step": 3, "epoch": 0}
    assert all(torch.equal(v, saved_weights[k]) for k, v in fresh.state_dict().items())
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert len(fresh_opt.state) == len(optimizer.state) > 0
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws


def test_model_card_names_base_model_data_and_hyper_parameters(tmp_path):
    tokenizer, model = common.load_tokenizer_and_model("tiny", "causal-lm")
    card = common.ModelCardInfo(
        task="sft", base_model="Qwen/Qwen2.5-0.5B", data="someone/zhihu-instruct",
        options={"lr": 2e-5, "epochs": 3}, results={"eval_loss": 1.2345}, usage="print('hi')",
    )
    common.save_final(tmp_path, model, tokenizer, card)
    text = (tmp_path / "README.md").read_text()
    assert "base_model: Qwen/Qwen2.5-0.5B" in text and "- someone/zhihu-instruct" in text
    assert "| `lr` | `2e-05` |" in text and "| eval_loss | 1.234 |" in text
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    assert not list(tmp_path.glob(".final-*"))


def test_hub_dataset_id_loads_through_datasets_and_errors_are_one_line(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(dataset_id, split):
        calls.append((dataset_id, split))
        if dataset_id == "someone/missing":
            raise FileNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub")
        return datasets.Dataset.from_dict({"prompt": ["问？"], "chosen": ["好"], "rejected": ["差"], "extra": [1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert common.load_split("liyucheng/zhihu_rlhf_3k", "train", "pairs") == [{"prompt": "问？", "chosen": "好", "rejected": "差"}]
    assert calls == [("liyucheng/zhihu_rlhf_3k", "train")]
    with pytest.raises(UserError, match="cannot load Hub dataset 'someone/missing' split 'train'"):
        common.load_split("someone/missing", "train", "pairs")
    with pytest.raises(UserError, match="missing column 'completion'"):
        common.load_split("liyucheng/zhihu_rlhf_3k", "train", "instruct")
