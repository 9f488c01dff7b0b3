"""Trainer options room: flags, defaults and help from the dataclass, the tiny profile, the dispatcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train import options
from zhihu_rlhf.train.__main__ import main as train_main
from zhihu_rlhf.train.ppo import PPOOptions
from zhihu_rlhf.train.sft import SFTOptions


def test_parse_options_maps_flags_defaults_and_help(capsys):
    opts = options.parse_options(
        SFTOptions, ["--model", "Qwen/Qwen2.5-0.5B", "--data", "d", "--out", "o", "--lr", "1e-4", "--grad-ckpt"], "sft", ""
    )
    assert opts.lr == 1e-4 and opts.grad_ckpt is True and opts.out == Path("o") and opts.batch_tokens == 16384
    with pytest.raises(SystemExit):
        options.parse_options(SFTOptions, ["--help"], "sft", "")
    help_text = capsys.readouterr().out
    for f in ("--batch-tokens", "--save-steps", "--resume", "--template", "--max-len", "--warmup-ratio"):
        assert f in help_text
    assert "(default: 16384)" in help_text
    with pytest.raises(SystemExit) as exit_info:
        options.parse_options(SFTOptions, ["--data", "d", "--out", "o"], "sft", "")  # --model missing
    assert exit_info.value.code == 2
    with pytest.raises(UserError, match="--batch-tokens .* must be >= --max-len"):
        options.parse_options(SFTOptions, ["--model", "m", "--data", "d", "--out", "o", "--max-len", "4096", "--batch-tokens", "1024"], "sft", "")


def test_tiny_model_takes_demo_defaults_only_for_unset_options():
    argv = ["--model", "tiny", "--data", "d", "--out", "o", "--max-len=512"]
    opts = options.parse_options(SFTOptions, argv, "sft", "")
    assert opts.max_len == 512  # given on the command line: kept
    assert opts.batch_tokens == SFTOptions.TINY_DEMO["batch_tokens"] != 16384
    assert opts.epochs == SFTOptions.TINY_DEMO["epochs"]
    real = options.parse_options(SFTOptions, ["--model", "m", "--data", "d", "--out", "o"], "sft", "")
    assert (real.batch_tokens, real.max_len, real.epochs) == (16384, 2048, 3.0)


def test_dispatcher_rejects_unknown_command_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(train_main, ["sfx"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unknown command 'sfx'; choose one of sft, rm, ppo, dpo, rloo, grpo\n"


def test_help_shows_the_default_and_the_tiny_default_side_by_side(capsys):
    with pytest.raises(SystemExit):
        options.parse_options(SFTOptions, ["--help"], "sft", "")
    help_text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "(default: 16384) (tiny: 2048)" in help_text  # --batch-tokens
    assert "(default: 2048) (tiny: 256)" in help_text  # --max-len
    assert "(default: 3.0) (tiny: 1.0)" in help_text  # --epochs
    assert "(default: 500)" in help_text and "(default: 500) (tiny" not in help_text  # --save-steps: no tiny value


def test_tiny_run_prints_one_line_naming_the_values_from_the_profile(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    options.parse_options(SFTOptions, ["--model", "tiny", "--data", "d", "--out", "o", "--max-len", "512"], "sft", "")
    assert capsys.readouterr().out.splitlines() == [
        "tiny profile, for options not given: --epochs 1.0 --batch-tokens 2048 --lr 0.001"
    ]
    options.parse_options(PPOOptions, ["--policy", "tiny", "--reward", "tiny", "--data", "d", "--out", "o"], "ppo", "")
    assert capsys.readouterr().out.splitlines() == [
        "tiny profile, for options not given: --max-new-tokens 32 --rollout-batch-size 16 --ppo-epochs 2"
        " --max-iterations 8 --lr 0.0001"
    ]
    options.parse_options(SFTOptions, ["--model", "m", "--data", "d", "--out", "o"], "sft", "")  # not tiny
    all_given = ["--epochs", "2", "--max-len", "64", "--batch-tokens", "64", "--lr", "0.1"]
    options.parse_options(SFTOptions, ["--model", "tiny", "--data", "d", "--out", "o", *all_given], "sft", "")
    monkeypatch.setenv("RANK", "1")  # torchrun: only rank 0 says it
    options.parse_options(SFTOptions, ["--model", "tiny", "--data", "d", "--out", "o"], "sft", "")
    assert capsys.readouterr().out == ""


def test_abbreviated_flags_are_refused_so_the_tiny_profile_cannot_override_them(capsys):
    # argparse would take --batch-tok for --batch-tokens, which the tiny profile's "given" check cannot see: the
    # user's 4096 would silently become the profile's 2048.
    argv = ["--model", "tiny", "--data", "d", "--out", "o"]
    with pytest.raises(SystemExit) as exit_info:
        options.parse_options(SFTOptions, [*argv, "--batch-tok", "4096"], "sft", "")
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --batch-tok 4096" in capsys.readouterr().err
    opts = options.parse_options(SFTOptions, [*argv, "--batch-tokens", "4096"], "sft", "")
    assert opts.batch_tokens == 4096


def test_every_sizing_flag_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        options.parse_options(PPOOptions, ["--help"], "ppo", "")
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--lora", "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets", "--load-in-4bit",
                 "--merge-lora", "--shard", "--save-dtype"):
        assert f"{flag} " in help_text, flag
    assert "(default: all-linear)" in help_text and "(default: bf16)" in help_text and "{bf16,fp16,fp32}" in help_text


def test_flash_attention_without_flash_attn_is_one_line(capsys, monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(train_main, ["sft", "--model", "tiny", "--data", "sample", "--out", "o", "--attn-impl", "flash_attention_2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flash-attention is not installed" in err


@pytest.mark.parametrize("command", ["rloo", "grpo"])
def test_critic_free_commands_refuse_a_group_of_one_in_one_line(capsys, command):
    # One sample per prompt leaves no other sample to be its baseline: every advantage would be 0 (or undefined).
    argv = [command, "--policy", "tiny", "--reward", "tiny", "--data", "sample", "--out", "o", "--num-generations", "1"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(train_main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-generations must be >= 2" in err
