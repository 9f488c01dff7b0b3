"""The one prompt format every stage uses, so RM scores and PPO generations see what SFT trained on.

    PLAIN_TEMPLATE, TEMPLATES
    resolve_template(tokenizer, template) -> "chat" | "plain"
    render_prompt(tokenizer, prompt, template) -> str           text the model continues from
    render_completion(tokenizer, prompt, completion, template) -> str   text after the prompt, incl. end of turn
    encode_example(tokenizer, prompt, completion, template, max_len) -> (input_ids, prompt_len)

A response ends at the end-of-turn marker of the chat template, or at the tokenizer's eos token (plain).
"""

from __future__ import annotations

from typing import Literal

from zhihu_rlhf.errors import UserError

# DeepSpeed-Chat's format (the reference article's pipeline), used when the tokenizer has no chat template.
PLAIN_TEMPLATE = "Human: {prompt}\n\nAssistant: "
TEMPLATES = ("auto", "chat", "plain")


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


def render_completion(tokenizer, prompt: str, completion: str, template: str) -> str:
    """The text after the prompt: the answer and its end-of-turn marker (chat) or the eos token (plain)."""
    if resolve_template(tokenizer, template) == "chat":
        head = render_prompt(tokenizer, prompt, "chat")
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
        )
        if full.startswith(head):
            return full[len(head) :]
    return completion + (tokenizer.eos_token or "")


def encode_example(
    tokenizer, prompt: str, completion: str, template: str, max_len: int
) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the prompt's length in them, at most max_len tokens.

    Over-long examples keep the end of the prompt (closest to the answer) and the start of the completion;
    the prompt keeps at least half of max_len when the completion is long.
    """
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt, template), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(
        render_completion(tokenizer, prompt, completion, template), add_special_tokens=False
    )["input_ids"]
    if len(prompt_ids) + len(completion_ids) > max_len:
        keep_prompt = min(len(prompt_ids), max(max_len // 2, max_len - len(completion_ids)))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        completion_ids = completion_ids[: max_len - keep_prompt]
    return prompt_ids + completion_ids, len(prompt_ids)
