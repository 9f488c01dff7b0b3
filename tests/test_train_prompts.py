"""Trainer prompts room: the plain and chat prompt formats."""

from __future__ import annotations

import pytest

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train import models, prompts


def test_prompt_format_plain_and_chat():
    tokenizer = models.load_tokenizer("tiny")
    assert prompts.resolve_template(tokenizer, "auto") == "plain"
    assert prompts.render_prompt(tokenizer, "问题", "auto") == "Human: 问题\n\nAssistant: "
    assert prompts.render_completion(tokenizer, "问题", "回答", "plain") == "回答</s>"
    with pytest.raises(UserError, match="no chat template"):
        prompts.resolve_template(tokenizer, "chat")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert prompts.render_prompt(tokenizer, "问题", "auto") == "<|user|>问题<|end|><|assistant|>"
    # "<|end|>" is plain text to this tokenizer, not a token generation could stop on: the EOS follows it.
    assert prompts.render_completion(tokenizer, "问题", "回答", "auto") == "回答<|end|></s>"


def test_a_long_prompt_loses_the_start_of_its_question_not_the_template_nor_half_a_character():
    tokenizer = models.load_tokenizer("tiny")  # byte-level: a Chinese character is 3 tokens
    question = "合" * 40 + "结尾的问题？"
    ids = prompts.prompt_ids_within(tokenizer, question, "plain", 40)
    text = tokenizer.decode(ids)
    assert len(ids) <= 40 and "\ufffd" not in text
    assert text.startswith("Human: ") and text.endswith("结尾的问题？\n\nAssistant: ")
    # Cutting the rendered tokens instead would have kept the last 40 bytes: no "Human: ", a split character.
    rendered = tokenizer(prompts.render_prompt(tokenizer, question, "plain"), add_special_tokens=False)["input_ids"]
    assert not tokenizer.decode(rendered[-40:]).startswith("Human: ")
    with pytest.raises(UserError, match="the prompt template alone"):
        prompts.prompt_ids_within(tokenizer, question, "plain", 10)


def test_pairs_whose_answer_is_cut_are_counted_and_dropped_on_request(capsys):
    tokenizer = models.load_tokenizer("tiny")
    rows = [
        {"prompt": "问题", "chosen": "短", "rejected": "也短"},
        {"prompt": "问题", "chosen": "短", "rejected": "很长的回答" * 20},  # 300 bytes: cut at max_len 64
    ]
    kept = prompts.encode_pairs(tokenizer, rows, "plain", 64, drop_cut=False, what="train")
    assert [p.answer_cut for p in kept] == [False, True]
    assert capsys.readouterr().out == (
        "train: 1 of 2 pairs have an answer cut at --max-len 64: kept without their end token "
        "(--drop-cut-answers drops them)\n"
    )
    assert kept[1].rejected_ids[-1] != tokenizer.eos_token_id and kept[0].rejected_ids[-1] == tokenizer.eos_token_id
    dropped = prompts.encode_pairs(tokenizer, rows, "plain", 64, drop_cut=True, what="train")
    assert len(dropped) == 1 and "dropped" in capsys.readouterr().out


def test_drop_cut_answers_default_is_stated_in_help(capsys):
    from zhihu_rlhf.train import options, rm

    with pytest.raises(SystemExit):
        options.parse_options(rm.RMOptions, ["--help"], "rm", "")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--drop-cut-answers" in help_text and "kept by default" in help_text and "(default: False)" in help_text
