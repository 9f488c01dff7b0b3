"""Trainer models room: the tiny fixtures, loading errors, packed rows."""

from __future__ import annotations

import pytest
import torch

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train import models


@pytest.mark.parametrize("kind", ["causal-lm", "reward"])
def test_tiny_models_have_matching_vocab_and_pad(kind):
    tokenizer, model = models.load_tokenizer_and_model("tiny", kind)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id == model.config.pad_token_id == 0
    assert tokenizer.eos_token_id == 1
    out = model(torch.tensor([tokenizer("知乎", add_special_tokens=False)["input_ids"]])).logits
    assert out.shape[-1] == (len(tokenizer) if kind == "causal-lm" else 1)


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-model-here"):
        models.load_tokenizer_and_model(str(tmp_path / "no-model-here"), "causal-lm")


def test_packed_rows_do_not_attend_across_examples():
    torch.manual_seed(0)
    tokenizer, model = models.load_tokenizer_and_model("tiny", "causal-lm")
    a = tokenizer("第一个例子", add_special_tokens=False)["input_ids"]
    b = tokenizer("the second one", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        alone_b = model(torch.tensor([b])).logits[0]
        position_ids = torch.tensor([list(range(len(a))) + list(range(len(b)))])
        packed = model(torch.tensor([a + b]), position_ids=position_ids, use_cache=False).logits[0]
    assert torch.allclose(packed[len(a) :], alone_b, atol=1e-5)
