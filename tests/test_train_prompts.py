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
