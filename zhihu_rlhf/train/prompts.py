"""The one prompt format every stage uses, and the one rule for where a response ends and where it is scored.

    PLAIN_TEMPLATE, TEMPLATES
    resolve_template(tokenizer, template) -> "chat" | "plain"
    render_prompt(tokenizer, prompt, template) -> str           text the model continues from
    render_completion(tokenizer, prompt, completion, template) -> str   the answer, ending on an end token
    prompt_ids_within(tokenizer, prompt, template, max_tokens) -> ids   the rendered prompt, its question cut to fit
    encode_example(tokenizer, prompt, completion, template, max_len) -> (input_ids, prompt_len)
    encode_pair(tokenizer, prompt, chosen, rejected, template, max_len) -> EncodedPair   (RM and DPO)
    encode_pairs(tokenizer, rows, template, max_len, drop_cut, what) -> list[EncodedPair]
    end_of_turn(tokenizer) -> str | None        the special token that closes an assistant turn in the chat template
    end_token_ids(tokenizer, generation_config=None) -> list[int]   every token a response may end on
    response_mask(responses, end_ids) -> (B, T) mask    1 up to and including the first end token
    score_positions(attention_mask) -> (B,)     where a sequence's score is read: its last real token

What ends a response: the tokenizer's EOS, the chat template's end-of-turn (<|im_end|> for ChatML, <|eot_id|> for
Llama 3) and every id of the model's generation_config.eos_token_id. SFT targets end on one of them (the template's
end-of-turn, or EOS), so generation (PPO, the model card's `generate`) stops exactly where SFT's targets stopped.

Where a score is read (RM training, rm.score, PPO's reward): the last real token of prompt + response, i.e. the end
token itself for a finished response, found from the attention mask and never from the pad id. transformers'
sequence classifier reads "the last token that is not pad" instead, which is one token earlier whenever pad == EOS
(Qwen2.5 base, Llama 3 and GPT-2 after load_tokenizer's fallback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from zhihu_rlhf.errors import UserError

# DeepSpeed-Chat's format (the reference article's pipeline), used when the tokenizer has no chat template.
PLAIN_TEMPLATE = "Human: {prompt}\n\nAssistant: "
TEMPLATES = ("auto", "chat", "plain")
# An answer no template changes (no spaces to trim), to find what a template writes after an answer.
_PROBE_ANSWER = "zhihuRlhfProbeAnswer"


def resolve_template(tokenizer, template: str) -> Literal["chat", "plain"]:
    """auto -> the tokenizer's chat template when it has one, else the plain template."""
    if template not in TEMPLATES:
        raise UserError(f"--template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise UserError("--template chat: this tokenizer has no chat template (use --template plain or auto)")
    if template == "auto":
        return "chat" if has_chat else "plain"
    return template  # type: ignore[return-value]


def render_prompt(tokenizer, prompt: str, template: str) -> str:
    """The text a model continues from to answer `prompt`."""
    if resolve_template(tokenizer, template) == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    bos = tokenizer.bos_token or ""
    return bos + PLAIN_TEMPLATE.format(prompt=prompt)


def _chat_answer_text(tokenizer, prompt: str, completion: str) -> str | None:
    """What the chat template writes after the generation prompt for this answer, or None if it is not a suffix."""
    head = render_prompt(tokenizer, prompt, "chat")
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
    )
    return full[len(head) :] if full.startswith(head) else None


def end_of_turn(tokenizer) -> str | None:
    """The first special token the chat template writes after an answer (<|im_end|>, <|eot_id|>); None without one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = _chat_answer_text(tokenizer, "q", _PROBE_ANSWER)
    if text is None or _PROBE_ANSWER not in text:
        return None
    after = text[text.index(_PROBE_ANSWER) + len(_PROBE_ANSWER) :]
    special = set(tokenizer.all_special_ids)
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    return None


def render_completion(tokenizer, prompt: str, completion: str, template: str) -> str:
    """The text after the prompt: the answer, ending on the template's end-of-turn (chat) or the EOS token.

    The template's text after its end-of-turn (ChatML's "\\n") is left out: the model should learn to stop on a
    token generation stops on. A template whose turns end without a special token gets the EOS appended.
    """
    eos = tokenizer.eos_token or ""
    if resolve_template(tokenizer, template) == "plain":
        return completion + eos
    text = _chat_answer_text(tokenizer, prompt, completion)
    if text is None:
        return completion + eos
    marker = end_of_turn(tokenizer)
    if marker is not None and marker in text:
        return text[: text.rindex(marker) + len(marker)]
    return text + eos


def end_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token id a response may end on: EOS, the chat template's end-of-turn, generation_config's eos list."""
    ids: list[int | None] = [tokenizer.eos_token_id]
    marker = end_of_turn(tokenizer)
    if marker is not None:
        ids.append(tokenizer.convert_tokens_to_ids(marker))
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def response_mask(responses: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """(B, T) sampled tokens -> (B, T) float mask: 1 up to and including the first end token, 0 after it."""
    is_end = torch.isin(responses, torch.tensor(end_ids, device=responses.device)).long()
    # Number of end tokens strictly before each position; a token belongs to the response while it is 0.
    return (is_end.cumsum(dim=1) - is_end == 0).float()


def score_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) attention mask -> (B,) index of each row's last real token, where its score is read (0 if none)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def prompt_ids_within(tokenizer, prompt: str, template: str, max_tokens: int) -> list[int]:
    """Token ids of the rendered prompt, at most max_tokens: an over-long question loses its start, as text.

    The question is cut, never the templated tokens: cutting rendered tokens from the left would drop the template's
    opening (Qwen's system turn, Llama 3's <|begin_of_text|> header) and could split a UTF-8 character into bytes.
    The end of the question is kept (closest to the answer), cut at a character boundary: the longest tail of the
    question whose rendered prompt fits (a binary search over its length in characters).
    """
    ids = _prompt_ids(tokenizer, prompt, template)
    if len(ids) <= max_tokens:
        return ids
    empty = _prompt_ids(tokenizer, "", template)
    if len(empty) > max_tokens:
        raise UserError(
            f"the prompt template alone is {len(empty)} tokens, more than the {max_tokens} a prompt may have here: "
            "raise --max-len (or --max-prompt-len)"
        )
    low, high = 0, len(prompt)  # the last `low` characters fit, the last `high` do not
    best = empty
    while high - low > 1:
        middle = (low + high) // 2
        candidate = _prompt_ids(tokenizer, prompt[len(prompt) - middle :], template)
        if len(candidate) <= max_tokens:
            low, best = middle, candidate
        else:
            high = middle
    return best


def _prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    return tokenizer(render_prompt(tokenizer, prompt, template), add_special_tokens=False)["input_ids"]


def _completion_ids(tokenizer, prompt: str, completion: str, template: str) -> list[int]:
    return tokenizer(render_completion(tokenizer, prompt, completion, template), add_special_tokens=False)["input_ids"]


def _prompt_tokens_kept(tokenizer, prompt_ids: list[int], n_completion: int, template: str, max_len: int) -> int:
    """Over-long examples keep the end of the question: the prompt keeps at least half of max_len when the completion
    is long, and always the whole template (the rest of max_len goes to the completion)."""
    n_prompt = len(prompt_ids)
    if n_prompt + n_completion <= max_len:
        return n_prompt
    n_template = len(_prompt_ids(tokenizer, "", template))
    if n_template >= max_len:
        raise UserError(f"--max-len {max_len} leaves no room for an answer: the prompt template alone is {n_template} tokens")
    return min(n_prompt, max(max_len // 2, max_len - n_completion, n_template))


def encode_example(
    tokenizer, prompt: str, completion: str, template: str, max_len: int
) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the prompt's length in them, at most max_len tokens.

    Over-long examples keep the end of the question (prompt_ids_within) and the start of the completion;
    the prompt keeps at least half of max_len when the completion is long, and always its whole template.
    """
    prompt_ids = _prompt_ids(tokenizer, prompt, template)
    completion_ids = _completion_ids(tokenizer, prompt, completion, template)
    keep = _prompt_tokens_kept(tokenizer, prompt_ids, len(completion_ids), template, max_len)
    if keep < len(prompt_ids):
        prompt_ids = prompt_ids_within(tokenizer, prompt, template, keep)
    return prompt_ids + completion_ids[: max_len - len(prompt_ids)], len(prompt_ids)


@dataclass
class EncodedPair:
    """One chosen/rejected pair as two token sequences with the identical prompt (its first prompt_len tokens).

    answer_cut: an answer did not fit in max_len, so it lost its end token (the RM would score it mid-answer).
    """

    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_len: int
    answer_cut: bool


def encode_pair(tokenizer, prompt: str, chosen: str, rejected: str, template: str, max_len: int) -> EncodedPair:
    """Chosen and rejected examples cut like encode_example, with ONE cut of the prompt for both sides.

    The prompt is cut for the longer answer, so both sides see the identical prompt tokens: a preference between
    them is then about the answers, not about how much of the question each side was shown.
    """
    prompt_ids = _prompt_ids(tokenizer, prompt, template)
    chosen_ids = _completion_ids(tokenizer, prompt, chosen, template)
    rejected_ids = _completion_ids(tokenizer, prompt, rejected, template)
    longer = max(len(chosen_ids), len(rejected_ids))
    keep = _prompt_tokens_kept(tokenizer, prompt_ids, longer, template, max_len)
    if keep < len(prompt_ids):
        prompt_ids = prompt_ids_within(tokenizer, prompt, template, keep)
    room = max_len - len(prompt_ids)
    return EncodedPair(prompt_ids + chosen_ids[:room], prompt_ids + rejected_ids[:room], len(prompt_ids), longer > room)


def encode_pairs(
    tokenizer, rows: list[dict[str, str]], template: str, max_len: int, drop_cut: bool, what: str
) -> list[EncodedPair]:
    """Every row's pair (encode_pair); pairs with an answer cut at max_len are dropped when drop_cut.

    Prints how many pairs had an answer cut, and whether they were kept. what: "train" or "test", for that line.
    """
    pairs = [encode_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], template, max_len) for r in rows]
    n_cut = sum(p.answer_cut for p in pairs)
    if n_cut and os.environ.get("RANK", "0") == "0":
        action = "dropped" if drop_cut else "kept without their end token (--drop-cut-answers drops them)"
        print(f"{what}: {n_cut} of {len(pairs)} pairs have an answer cut at --max-len {max_len}: {action}")
    return [p for p in pairs if not (drop_cut and p.answer_cut)]
