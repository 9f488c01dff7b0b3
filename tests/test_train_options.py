"""Trainer options room: flags, defaults and help from the dataclass, the tiny profile, the dispatcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train import options
from zhihu_rlhf.train.__main__ import main as train_main
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
    assert capsys.readouterr().err == "error: unknown command 'sfx'; choose one of sft, rm, ppo, dpo\n"

