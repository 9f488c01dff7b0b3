"""Trainer models room: the tiny fixtures, loading errors, packed rows."""

from __future__ import annotations

import pytest
import torch

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train import models

from model_fixtures import ARCH_FAMILIES


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


def test_a_causal_lm_given_as_reward_or_value_model_is_refused(fixture_model_dir, tmp_path):
    from rl_batch import write_prompts
    from zhihu_rlhf.train import ppo

    write_prompts(tmp_path / "prompts", 8)
    policy = str(fixture_model_dir("qwen2.5"))
    with pytest.raises(UserError, match="not a reward model .*score head would be random"):
        models.require_score_head(policy, "--reward")
    models.require_score_head(str(fixture_model_dir("qwen2.5", "reward")), "--reward")  # an RM folder passes
    opts = ppo.PPOOptions(policy=policy, reward=policy, data=str(tmp_path / "prompts"), out=tmp_path / "o", device="cpu")
    with pytest.raises(UserError, match=f"--reward {policy}: a causal language model"):
        ppo.train(opts)
    opts = ppo.PPOOptions(policy=policy, reward_fn="math:fsum", value_model=policy, data=str(tmp_path / "prompts"),
                          out=tmp_path / "o2", device="cpu")
    with pytest.raises(UserError, match="--value-model .*: a causal language model"):
        ppo.train(opts)


def test_sft_on_a_reward_model_folder_is_refused(fixture_model_dir, tmp_path):
    from test_train_sft import doubling_rows, write_instruct
    from zhihu_rlhf.train import sft

    data = write_instruct(tmp_path / "instruct", doubling_rows(0, 4), doubling_rows(100, 2))
    rm_folder = str(fixture_model_dir("qwen2.5", "reward"))
    opts = sft.SFTOptions(model=rm_folder, data=str(data), out=tmp_path / "o", device="cpu")
    with pytest.raises(UserError, match="a reward model .*has no language-model head"):
        sft.train(opts)


@pytest.mark.parametrize("family", ["gpt2", "opt"])  # learned position tables of 1024 in the fixtures
def test_sequences_longer_than_a_learned_position_table_are_refused_before_training(fixture_model_dir, tmp_path, family):
    from rl_batch import write_prompts
    from test_train_sft import doubling_rows, write_instruct
    from zhihu_rlhf.train import ppo, sft

    data = write_instruct(tmp_path / "instruct", doubling_rows(0, 4), doubling_rows(100, 2))
    model = str(fixture_model_dir(family))
    # SFT's default --max-len is 2048: longer than the table, so a long example would fail inside the embedding
    with pytest.raises(UserError, match="1024 learned positions.*--max-len allow 2048 tokens: lower --max-len to 1024"):
        sft.train(sft.SFTOptions(model=model, data=str(data), out=tmp_path / "sft", device="cpu"))
    assert not (tmp_path / "sft").exists()
    write_prompts(tmp_path / "prompts", 8)
    with pytest.raises(UserError, match=r"--max-prompt-len \+ --max-new-tokens allow 1100 tokens"):
        ppo.train(ppo.PPOOptions(policy=model, reward_fn="math:fsum", data=str(tmp_path / "prompts"), out=tmp_path / "o",
                                 device="cpu", max_prompt_len=1000, max_new_tokens=100))


def test_rotary_and_alibi_models_have_no_position_wall(fixture_model_dir):
    for family in ("qwen2.5", "bloom", "gpt-neox"):
        _, model = models.load_tokenizer_and_model(str(fixture_model_dir(family)), "causal-lm", attn_impl="eager")
        models.require_positions(model, family, 100_000, "--max-len")  # nothing to refuse


def test_a_missing_local_model_path_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="does not exist"):
        models.load_tokenizer("runs/sft_typo")


@pytest.mark.parametrize("family", ARCH_FAMILIES)
@pytest.mark.parametrize("kind", ["causal-lm", "reward"])
def test_a_saved_model_loads_without_hub_kernels(fixture_model_dir, family, kind):
    """transformers' default swaps layers for kernels fetched from the Hub once a model is on a GPU: on an H200 with
    HF_HUB_OFFLINE=1 every trainer's model load failed ("kernels-community/rotary ... offline mode"). The trainer
    loads the model's own torch code, as on this CPU, wherever it runs, for every architecture."""
    _, model = models.load_tokenizer_and_model(str(fixture_model_dir(family, kind)), kind, attn_impl="auto")
    assert model.use_kernels is False
