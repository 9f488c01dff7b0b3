"""Where a response ends and where it is scored, on the layouts that differ: pad == EOS (Qwen2.5 base, Llama 3) and
chat templates whose end-of-turn is not the EOS (ChatML, Llama 3).

A scripted policy writes SFT's target for the answer and then keeps writing: generation (PPO's rollout, the model
card's `generate`) must stop exactly where the target ended, and PPO must read the reward model at the same token
as `rm.score` (what RM training optimises) on the same text.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_fixtures import token_id
from zhihu_rlhf.train import ppo, rm, sft
from zhihu_rlhf.train.models import load_tokenizer_and_model
from zhihu_rlhf.train.prompts import encode_example, render_prompt
from zhihu_rlhf.train.rollout import generate_rollout
from zhihu_rlhf.train.scoring import TokenScorer
from zhihu_rlhf.train.runtime import Runtime

QUESTIONS = ("如何评价这部电影？", "为什么天空是蓝色的？我觉得这个问题很有意思。")
ANSWER = "我觉得这部电影值得一看。"
# (family, template, the token SFT's target must end on), written from formats.md's layouts, not from the code.
CASES = [
    ("qwen2.5", "plain", "<|endoftext|>"),  # pad == EOS after load_tokenizer's fallback
    ("qwen2.5", "chat", "<|im_end|>"),  # ChatML turn end, EOS is <|endoftext|>
    ("qwen2.5-instruct", "chat", "<|im_end|>"),
    ("llama3", "chat", "<|eot_id|>"),  # no pad (falls back to EOS <|end_of_text|>), turn end <|eot_id|>
]
CASE_IDS = [f"{family}-{template}" for family, template, _ in CASES]


class Script:
    """Forces a causal LM's next token: `tokens[k]` at the k-th generation step, then `filler` forever.

    Hooks the LM head; a generation step is a call whose logits cover one position (prefill included, as generate
    keeps only the last position's logits), so the full-sequence passes of log-prob computation are left alone.
    """

    def __init__(self, model: torch.nn.Module, tokens: list[int], filler: int) -> None:
        self.tokens, self.filler, self.step = tokens, filler, 0
        self.handle = model.get_output_embeddings().register_forward_hook(self._force)

    def _force(self, module, args, logits: torch.Tensor) -> torch.Tensor | None:
        if logits.shape[1] != 1:
            return None
        token = self.tokens[self.step] if self.step < len(self.tokens) else self.filler
        self.step += 1
        forced = torch.full_like(logits, -1e4)
        forced[..., token] = 0.0
        return forced


def sft_target(tokenizer, template: str) -> list[int]:
    ids, prompt_len = encode_example(tokenizer, QUESTIONS[0], ANSWER, template, 1024)
    return ids[prompt_len:]


@pytest.mark.parametrize(("family", "template", "end_token"), CASES, ids=CASE_IDS)
def test_sft_target_ends_on_the_turn_end_token(fixture_model_dir, family, template, end_token):
    tokenizer, _ = load_tokenizer_and_model(str(fixture_model_dir(family)), "causal-lm")
    target = sft_target(tokenizer, template)
    assert target[-1] == token_id(family, end_token)
    assert token_id(family, end_token) not in target[:-1]


@pytest.mark.parametrize(("family", "template", "end_token"), CASES, ids=CASE_IDS)
def test_ppo_response_ends_where_sft_target_ended_and_reward_equals_rm_score(
    fixture_model_dir, tmp_path, family, template, end_token
):
    tokenizer, policy = load_tokenizer_and_model(str(fixture_model_dir(family)), "causal-lm")
    _, reward_model = load_tokenizer_and_model(str(fixture_model_dir(family, "reward")), "reward")
    policy.eval(), reward_model.eval()
    target = sft_target(tokenizer, template)
    filler = tokenizer("好", add_special_tokens=False)["input_ids"][0]
    opts = ppo.PPOOptions(
        policy="fixture", data="unused", out=tmp_path, max_new_tokens=len(target) + 8, rollout_batch_size=2,
        micro_batch_size=2,
    )
    # Two prompts of different lengths: the shorter one is left-padded, as in every real rollout.
    prompt_ids = [tokenizer(render_prompt(tokenizer, q, template), add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    Script(policy, target, filler)
    rollout = generate_rollout(
        policy, policy, TokenScorer(reward_model), tokenizer, list(QUESTIONS), prompt_ids, opts.sampling,
        Runtime(device=torch.device("cpu"), autocast_dtype=None),
    )

    responses = rollout.sequences[:, -rollout.response_len :]
    for row in range(len(QUESTIONS)):
        length = int(rollout.response_mask[row].sum())
        assert responses[row, :length].tolist() == target  # stopped on the target's last token, nothing more
    assert rollout.ended.tolist() == [True, True]
    as_trained = rm.score(reward_model, tokenizer, list(QUESTIONS), rollout.responses, template=template)
    assert rollout.scores.tolist() == pytest.approx(as_trained.tolist(), abs=1e-5)


def write_instruct(folder: Path, rows: list[tuple[str, str]]) -> Path:
    (folder / "data").mkdir(parents=True)
    for split in ("train", "test"):
        frame = pl.DataFrame({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})
        frame.write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize("family", ["qwen2.5", "qwen2.5-instruct"])
def test_model_card_generate_stops_where_sft_target_ended(fixture_model_dir, tmp_path, family):
    data = write_instruct(tmp_path / "instruct", [(QUESTIONS[0], ANSWER), (QUESTIONS[1], ANSWER)])
    opts = sft.SFTOptions(
        model=str(fixture_model_dir(family)), data=str(data), out=tmp_path / "sft", device="cpu", epochs=1,
        max_len=128, batch_tokens=256, grad_accum=1, lr=1e-4, save_steps=0,
    )
    sft.train(opts)
    # As the card's usage snippet does it: from_pretrained, the chat prompt, plain generate().
    tokenizer = AutoTokenizer.from_pretrained(opts.out)
    model = AutoModelForCausalLM.from_pretrained(opts.out).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    target = sft_target(tokenizer, "chat")
    Script(model, target, filler=tokenizer("好", add_special_tokens=False)["input_ids"][0])
    generated = model.generate(**ids, max_new_tokens=len(target) + 8)[0, ids["input_ids"].shape[1] :]
    assert generated.tolist() == target
