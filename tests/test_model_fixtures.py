"""The fixture matrix reproduces the layouts documented in /work/shared/reference/formats.md.

Every expectation below is written from that document ("Tokenizer and model layouts users bring"), not read back
from model_fixtures: special tokens by their text, ids where the document gives them, template output by its shape.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_fixtures import ARCH_FAMILIES, FAMILY_NAMES, generation_config, make_model, make_tokenizer

TEXT = "如何评价知乎上的回答？Thanks 123 🙂"


def ids_of(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def single_id(tokenizer, token: str) -> int:
    """The id of `token`, checking it encodes as exactly one token (a real special, not a string of bytes)."""
    ids = ids_of(tokenizer, token, special=False)
    assert len(ids) == 1, f"{token!r} encodes as {ids}"
    return ids[0]


def chat(tokenizer, question: str, answer: str | None) -> str:
    messages = [{"role": "user", "content": question}]
    if answer is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": answer})
    return tokenizer.apply_chat_template(messages, tokenize=False)


def generation_eos(family: str) -> list[int]:
    eos = generation_config(family).eos_token_id
    return eos if isinstance(eos, list) else [eos]


# ----------------------------------------------------------------------------------------------------------------
# Every family


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_byte_level_round_trip(family):
    """Byte-level BPE: any text (Chinese, emoji) encodes without unknown tokens and decodes back exactly."""
    tok = make_tokenizer(family)
    ids = ids_of(tok, TEXT, special=False)
    assert tok.decode(ids) == TEXT
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges were learned: fewer tokens than bytes


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tokenizer_is_fresh_and_deterministic(family):
    """Each call gives an equal, independent tokenizer: one test setting a pad token cannot leak into another."""
    first, second = make_tokenizer(family), make_tokenizer(family)
    assert first.get_vocab() == second.get_vocab()
    first.pad_token = first.eos_token
    assert second.pad_token_id == make_tokenizer(family).pad_token_id


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("kind", ["causal-lm", "reward"])
def test_models_run_on_every_token_id(family, kind):
    """Forward works on the tokenizer's ids up to the last special; the embedding covers the whole tokenizer."""
    tok = make_tokenizer(family)
    model = make_model(family, kind)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    ids = ids_of(tok, TEXT, special=True) + [len(tok) - 1]
    # One row: like the real configs, most have no pad_token_id, and a classifier then refuses batches > 1.
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    if kind == "causal-lm":
        assert logits.shape == (1, len(ids), model.config.vocab_size)
    else:
        assert logits.shape == (1, 1)
    assert torch.isfinite(logits).all()
    assert sum(p.numel() for p in model.parameters()) < 200_000  # tiny: the whole matrix builds in seconds


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_same_seed_same_weights(family):
    a, b = make_model(family, seed=3), make_model(family, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.get_input_embeddings().weight, make_model(family, seed=4).get_input_embeddings().weight)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_saved_folder_reloads_the_same_layout(family, fixture_model_dir):
    """What a user downloads: AutoTokenizer/AutoModel on the folder give the same ids, specials and logits."""
    folder = fixture_model_dir(family, "causal-lm")
    original, reloaded = make_tokenizer(family), AutoTokenizer.from_pretrained(folder)
    probe = TEXT + (original.eos_token or "")
    assert ids_of(reloaded, probe, special=True) == ids_of(original, probe, special=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "chat_template"):
        assert getattr(reloaded, attr) == getattr(original, attr), attr
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert generation_eos(family) == (
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    ids = torch.tensor([ids_of(original, TEXT, special=True)])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, make_model(family)(input_ids=ids).logits)


# ----------------------------------------------------------------------------------------------------------------
# Qwen2.5: byte-level BPE, ChatML, no BOS; base EOS == pad == <|endoftext|>; instruct EOS <|im_end|>


@pytest.mark.parametrize("family", ["qwen2.5", "qwen2.5-instruct"])
def test_qwen_specials_and_chatml(family):
    tok = make_tokenizer(family)
    endoftext, im_start, im_end = (single_id(tok, t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    assert tok.bos_token is None
    assert ids_of(tok, "你好", special=True) == ids_of(tok, "你好", special=False)  # nothing prepended or appended
    assert tok.pad_token_id == endoftext
    prompt = chat(tok, "问题", None)
    full = chat(tok, "问题", "回答")
    assert prompt.endswith("<|im_start|>user\n问题<|im_end|>\n<|im_start|>assistant\n")
    assert full == prompt + "回答<|im_end|>\n"
    assert ids_of(tok, full, special=False).count(im_start) == ids_of(tok, full, special=False).count(im_end)
    if family == "qwen2.5":
        assert tok.eos_token_id == endoftext
        assert generation_eos(family) == [endoftext]
    else:
        assert tok.eos_token_id == im_end
        assert set(generation_eos(family)) == {im_end, endoftext}
        assert generation_config(family).pad_token_id == endoftext


def test_qwen_model_embeddings_padded_past_tokenizer():
    """Qwen2.5's embedding has more rows than its tokenizer has tokens (151,936 for 151,665)."""
    assert make_model("qwen2.5").get_input_embeddings().weight.shape[0] > len(make_tokenizer("qwen2.5"))


# ----------------------------------------------------------------------------------------------------------------
# Llama 3: BOS added, EOS <|end_of_text|>, turns end with <|eot_id|>, no pad


def test_llama3_layout():
    tok = make_tokenizer("llama3")
    bos, eos, eot = (single_id(tok, t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
    assert ids_of(tok, "你好", special=True) == [bos] + ids_of(tok, "你好", special=False)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token) == (bos, eos, None)
    full = chat(tok, "问题", "回答")
    assert full.startswith("<|begin_of_text|>")
    assert full.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n回答<|eot_id|>")
    assert chat(tok, "问题", None).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert set(generation_eos("llama3")) == {eos, eot}


# ----------------------------------------------------------------------------------------------------------------
# OPT, BLOOM, GPT-2, GPT-NeoX


def test_opt_layout():
    tok = make_tokenizer("opt")
    assert single_id(tok, "</s>") == 2
    assert tok.bos_token == tok.eos_token == "</s>"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 2, 1)
    assert ids_of(tok, "你好", special=True) == [2] + ids_of(tok, "你好", special=False)  # </s> prepended
    assert ids_of(tok, "ab cd", special=True)[0] == 2
    assert not tok.chat_template
    model = make_model("opt")
    # Learned positions offset by 2: the table has two rows more than the positions it serves.
    positions = model.model.decoder.embed_positions.weight.shape[0]
    assert positions == model.config.max_position_embeddings + 2
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (2, 2, 1)


def test_bloom_layout():
    tok = make_tokenizer("bloom")
    assert [single_id(tok, t) for t in ("<s>", "</s>", "<pad>")] == [1, 2, 3]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 3)
    assert not tok.chat_template
    # ALiBi: no position embedding anywhere in the model.
    assert not [name for name in make_model("bloom").state_dict() if "position" in name or "wpe" in name]


@pytest.mark.parametrize("family", ["gpt2", "gpt-neox"])
def test_gpt2_and_neox_endoftext_is_bos_and_eos_without_pad(family):
    tok = make_tokenizer(family)
    endoftext = single_id(tok, "<|endoftext|>")
    assert tok.bos_token_id == tok.eos_token_id == endoftext
    assert tok.pad_token is None
    assert ids_of(tok, "你好", special=True) == ids_of(tok, "你好", special=False)
    if family == "gpt2":
        assert endoftext == len(tok) - 1  # 50256: the last id of GPT-2's vocabulary


# ----------------------------------------------------------------------------------------------------------------
# Sequence classifiers: the score is read at the last token that is not the pad id


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_classifier_reads_last_non_pad_token(family):
    """With pad == EOS (what the trainer falls back to), a trailing EOS is skipped: the score is the token before."""
    tok = make_tokenizer(family)
    model = make_model(family, "reward")
    model.config.pad_token_id = tok.eos_token_id
    ids = ids_of(tok, TEXT, special=True)
    with torch.no_grad():
        with_eos = model(input_ids=torch.tensor([ids + [tok.eos_token_id]])).logits[0, 0]
        backbone = getattr(model, model.base_model_prefix)
        hidden = backbone(input_ids=torch.tensor([ids + [tok.eos_token_id]])).last_hidden_state
        per_token = model.score(hidden)[0, :, 0]
    torch.testing.assert_close(with_eos, per_token[-2])  # the last text token
    assert not torch.isclose(with_eos, per_token[-1])  # not the EOS itself
