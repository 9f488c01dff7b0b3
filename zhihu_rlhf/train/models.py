"""Tokenizer and model loading, and the `tiny` model every test and CPU demo uses.

    TINY_MODEL = "tiny"
    load_tokenizer(name) -> tokenizer            pad token always set
    load_tokenizer_and_model(name, kind, *, attn_impl="sdpa", grad_ckpt=False) -> (tokenizer, model)
                                   kind "causal-lm" | "reward" (AutoModelForSequenceClassification, num_labels=1)
    disable_dropout(model)         dropout and layer drop off, for stages that compare against a frozen model

Packed (padding-free) rows: call model(input_ids, position_ids=..., use_cache=False) with NO attention_mask and
position ids restarting at 0 per example; transformers (masking_utils.find_packed_sequence_indices) then keeps
attention inside each example (block-diagonal causal mask on sdpa/eager, varlen on flash-attention). With a
cache (use_cache=True) that detection is skipped, so the examples would attend to each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from zhihu_rlhf.errors import UserError, first_line

TINY_MODEL = "tiny"

ModelKind = Literal["causal-lm", "reward"]


def _tiny_tokenizer():
    # Byte-level: every UTF-8 string (Chinese included) encodes without a vocabulary file. pad=0, eos=1.
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def _tiny_config(tokenizer, kind: ModelKind):
    """A 2-layer, 64-wide Llama: trains in seconds on a CPU, same code paths as the real models.

    Llama rather than Qwen2: AutoTokenizer honours the saved `tokenizer_class` (ByT5Tokenizer) for llama, while for
    qwen2 it forces Qwen2Tokenizer, so a saved tiny run would not reload with its tokenizer.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        num_labels=1,
    )


def load_tokenizer(name: str):
    """The tokenizer of a model, with a pad token (falls back to eos, as most causal LMs have none)."""
    if name == TINY_MODEL:
        return _tiny_tokenizer()
    from transformers import AutoTokenizer

    _check_model_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load tokenizer for model {name!r}: {first_line(err)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"model {name!r}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer_and_model(
    name: str, kind: ModelKind, *, attn_impl: str = "sdpa", grad_ckpt: bool = False
) -> tuple[Any, nn.Module]:
    """`tiny` (random, offline), a Hub id or a local folder -> (tokenizer, fp32 model on CPU).

    kind "reward" gives a one-output sequence classifier whose score is read at the last non-pad token.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind not in ("causal-lm", "reward"):
        raise ValueError(f"unknown model kind {kind!r}")
    tokenizer = load_tokenizer(name)
    auto_cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    if name == TINY_MODEL:
        config = _tiny_config(tokenizer, kind)
        config._attn_implementation = attn_impl
        model = auto_cls.from_config(config, dtype=torch.float32)
    else:
        extra = {"num_labels": 1} if kind == "reward" else {}
        try:
            model = auto_cls.from_pretrained(name, dtype=torch.float32, attn_implementation=attn_impl, **extra)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load model {name!r} as {kind}: {first_line(err)}") from None
    # The classifier reads its score at the last non-pad token; generation pads with this id too.
    model.config.pad_token_id = tokenizer.pad_token_id
    if grad_ckpt:
        model.config.use_cache = False
        model.activation_checkpointing_enable({"use_reentrant": False})
    return tokenizer, model


def disable_dropout(model: nn.Module) -> None:
    """Turn off every dropout in `model`, also in train mode: its outputs then match an eval-mode copy of it.

    DPO and PPO compare the trained model with a frozen copy run in eval mode (DPO's reference log-probs, PPO's
    rollout log-probs and reference); with dropout on, the two differ at step 0 although the weights are equal.
    Besides nn.Dropout modules, architectures keep rates as float attributes read in forward (OPT's `dropout` and
    `layerdrop`, BLOOM's `hidden_dropout`, Llama's `attention_dropout`): any float attribute named *drop* is zeroed.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "drop" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def _check_model_name(name: str) -> None:
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path and not Path(name).expanduser().exists():
        raise UserError(f"model path {name!r} does not exist (give a Hub id, a local folder or 'tiny')")
