"""Offline look-alikes of the models users train: tokenizers with their special-token layouts, tiny random models.

The trainer's behaviour depends on exactly the things real models disagree on: whether pad == EOS, whether a BOS
is prepended, which token ends a chat turn, which ids generation stops on, how the architecture takes positions.
The `tiny` model of the CLI has one layout (ByT5, pad != EOS, no template); these fixtures reproduce seven more,
following /work/shared/reference/formats.md ("Tokenizer and model layouts users bring"):

    family             arch       BOS added     EOS               pad                end of turn   template
    qwen2.5            qwen2      -             <|endoftext|>     <|endoftext|>      <|im_end|>    ChatML
    qwen2.5-instruct   qwen2      -             <|im_end|>        <|endoftext|>      <|im_end|>    ChatML
    llama3             llama      <|begin_of_text|>  <|end_of_text|>  none           <|eot_id|>    Llama-3
    opt                opt        </s> (id 2)   </s> (id 2)       <pad> (id 1)       -             none
    bloom              bloom      -             </s> (id 2)       <pad> (id 3)       -             none
    gpt2               gpt2       -             <|endoftext|>     none               -             none
    gpt-neox           gpt_neox   -             <|endoftext|>     none               -             none

Special tokens sit where the real vocabularies put them: OPT, BLOOM and GPT-NeoX at the start, Qwen2.5, Llama 3 and
GPT-2 after the byte-level BPE vocabulary. Models get the real families' habit of an embedding matrix padded past
the tokenizer (Qwen2.5, OPT, BLOOM, GPT-NeoX), so code must not assume len(tokenizer) == vocab_size.

The BPE vocabulary is trained once per process on a few hundred generated Chinese + ASCII lines (deterministic,
well under a second); every family shares its merges, only the special tokens and their ids differ.

    make_tokenizer(family)                    -> a fresh PreTrainedTokenizerFast (or its model-specific subclass)
    make_model(family, kind, attn_impl=...)   -> a tiny random model, "causal-lm" or "reward" (one-label classifier)
    generation_config(family)                 -> the GenerationConfig the family ships (end tokens, pad, bos)
    save_model(family, kind, path)            -> a folder `from_pretrained` / the trainer's --model accept
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BloomConfig,
    GenerationConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.gpt2.tokenization_gpt2 import GPT2Tokenizer
from transformers.models.gpt_neox.tokenization_gpt_neox import GPTNeoXTokenizer
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

ModelKind = Literal["causal-lm", "reward"]

# Qwen2.5's template, tools left out: a default system turn when the conversation has none, then ChatML turns.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Meta-Llama-3-8B-Instruct's template: the BOS is written by the template itself (and added again by the tokenizer
# when the text is encoded with special tokens, as with the real model).
LLAMA3_TEMPLATE = (
    "{%- set loop_messages = messages %}"
    "{%- for message in loop_messages %}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{%- if loop.index0 == 0 %}{%- set content = bos_token + content %}{%- endif %}"
    "{{- content }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Llama 3's tiktoken-style split (digits in groups of at most three), applied before the byte-level mapping.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Family:
    """One family's tokenizer and model layout."""

    name: str
    model_type: str  # transformers' config model_type
    leading_specials: tuple[str, ...]  # ids 0, 1, ... before the BPE vocabulary
    trailing_specials: tuple[str, ...]  # ids right after the BPE vocabulary
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    add_bos: bool  # the tokenizer prepends BOS when encoding with special tokens
    chat_template: str | None
    end_of_turn: str | None  # what closes an assistant turn in the template
    generation_eos: tuple[str, ...]  # generation_config.eos_token_id, in the order the real file lists them
    config_bos: str | None  # config.json's bos_token_id
    config_eos: str  # config.json's eos_token_id
    config_pad: str | None  # config.json's pad_token_id
    vocab_multiple: int  # the model's embedding rows are len(tokenizer) rounded up to this
    tie_word_embeddings: bool


LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",  # begin_of_text + 9, as 128009 = 128000 + 9
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2.5",
            model_type="qwen2",
            leading_specials=(),
            trailing_specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            bos=None,
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            unk=None,
            add_bos=False,
            chat_template=CHATML_TEMPLATE,
            end_of_turn="<|im_end|>",
            generation_eos=("<|endoftext|>",),
            config_bos="<|endoftext|>",
            config_eos="<|endoftext|>",
            config_pad=None,
            vocab_multiple=64,
            tie_word_embeddings=True,
        ),
        Family(
            name="qwen2.5-instruct",
            model_type="qwen2",
            leading_specials=(),
            trailing_specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            unk=None,
            add_bos=False,
            chat_template=CHATML_TEMPLATE,
            end_of_turn="<|im_end|>",
            generation_eos=("<|im_end|>", "<|endoftext|>"),
            config_bos="<|endoftext|>",
            config_eos="<|im_end|>",
            config_pad=None,
            vocab_multiple=64,
            tie_word_embeddings=True,
        ),
        Family(
            name="llama3",
            model_type="llama",
            leading_specials=(),
            trailing_specials=LLAMA3_SPECIALS,
            bos="<|begin_of_text|>",
            eos="<|end_of_text|>",
            pad=None,
            unk=None,
            add_bos=True,
            chat_template=LLAMA3_TEMPLATE,
            end_of_turn="<|eot_id|>",
            generation_eos=("<|end_of_text|>", "<|eot_id|>"),
            config_bos="<|begin_of_text|>",
            config_eos="<|end_of_text|>",
            config_pad=None,
            vocab_multiple=1,
            tie_word_embeddings=False,
        ),
        Family(
            name="opt",
            model_type="opt",
            leading_specials=("<s>", "<pad>", "</s>", "<unk>"),
            trailing_specials=(),
            bos="</s>",
            eos="</s>",
            pad="<pad>",
            unk="</s>",
            add_bos=True,
            chat_template=None,
            end_of_turn=None,
            generation_eos=("</s>",),
            config_bos="</s>",
            config_eos="</s>",
            config_pad="<pad>",
            vocab_multiple=8,
            tie_word_embeddings=True,
        ),
        Family(
            name="bloom",
            model_type="bloom",
            leading_specials=("<unk>", "<s>", "</s>", "<pad>"),
            trailing_specials=(),
            bos="<s>",
            eos="</s>",
            pad="<pad>",
            unk="<unk>",
            add_bos=False,
            chat_template=None,
            end_of_turn=None,
            generation_eos=("</s>",),
            config_bos="<s>",
            config_eos="</s>",
            config_pad="<pad>",
            vocab_multiple=128,
            tie_word_embeddings=True,
        ),
        Family(
            name="gpt2",
            model_type="gpt2",
            leading_specials=(),
            trailing_specials=("<|endoftext|>",),
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            pad=None,
            unk="<|endoftext|>",
            add_bos=False,
            chat_template=None,
            end_of_turn=None,
            generation_eos=("<|endoftext|>",),
            config_bos="<|endoftext|>",
            config_eos="<|endoftext|>",
            config_pad=None,
            vocab_multiple=1,
            tie_word_embeddings=True,
        ),
        Family(
            name="gpt-neox",
            model_type="gpt_neox",
            leading_specials=("<|endoftext|>", "<|padding|>"),
            trailing_specials=(),
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            pad=None,
            unk="<|endoftext|>",
            add_bos=False,
            chat_template=None,
            end_of_turn=None,
            generation_eos=("<|endoftext|>",),
            config_bos="<|endoftext|>",
            config_eos="<|endoftext|>",
            config_pad=None,
            vocab_multiple=128,
            tie_word_embeddings=False,
        ),
    )
}

FAMILY_NAMES = tuple(FAMILIES)
# One family per architecture, for tests that vary the model rather than the tokenizer.
ARCH_FAMILIES = ("qwen2.5", "llama3", "opt", "bloom", "gpt2", "gpt-neox")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers

_ZH = (
    "如何评价这部电影？", "为什么天空是蓝色的？", "我觉得这个问题很有意思。", "学习编程需要多长时间？",
    "北京的冬天很冷，但是很美。", "谢谢你的回答！", "机器学习和深度学习有什么区别？", "这本书值得一读。",
    "知乎上有很多高质量的回答。", "奖励模型给回答打分。",
)
_EN = (
    "How do I learn Python?", "The quick brown fox jumps over the lazy dog.", "Reward models score answers.",
    "def main():\n    return 0", "Thanks for the answer!", "Human: hi\n\nAssistant: hello",
)
BPE_VOCAB_SIZE = 600  # byte alphabet (256) + merges; large enough for real merges, small enough for a tiny model


def training_lines() -> list[str]:
    """A few hundred lines mixing Chinese, English, code and digits, the same in every process."""
    return [f"{_ZH[i % len(_ZH)]} {_EN[(i * 7) % len(_EN)]} {i}" for i in range(300)]


@lru_cache(maxsize=1)
def _bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Byte-level BPE trained once: (tokens in id order, merges)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(training_lines(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = tuple(sorted(model["vocab"], key=model["vocab"].__getitem__))
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return tokens, merges


def _vocab(family: Family) -> dict[str, int]:
    tokens, _ = _bpe()
    ordered = family.leading_specials + tokens + family.trailing_specials
    return {token: i for i, token in enumerate(ordered)}


def _named_specials(family: Family) -> dict[str, str | None]:
    return {"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad, "unk_token": family.unk}


def _extra_specials(family: Family) -> list[str]:
    named = set(_named_specials(family).values())
    return [t for t in family.leading_specials + family.trailing_specials if t not in named]


@lru_cache(maxsize=None)
def _build_tokenizer(name: str):
    family = FAMILIES[name]
    _, merges = _bpe()
    vocab = _vocab(family)
    kwargs = {
        **_named_specials(family),
        "extra_special_tokens": _extra_specials(family),
        "add_bos_token": family.add_bos,
        "model_max_length": 4096,
    }
    # The class AutoTokenizer picks for the model type, so a saved fixture reloads to the same tokenizer.
    if family.model_type == "qwen2":
        tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(merges), **kwargs)
    elif family.model_type in ("gpt2", "opt"):
        tokenizer = GPT2Tokenizer(vocab=vocab, merges=list(merges), **kwargs)
    elif family.model_type == "gpt_neox":
        tokenizer = GPTNeoXTokenizer(vocab=vocab, merges=list(merges), **kwargs)
    else:  # llama (Llama 3 ships a plain tokenizer.json) and bloom
        backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family.model_type != "llama")
        if family.model_type == "llama":
            split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
            backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tokenizer.chat_template = family.chat_template
    return tokenizer


def make_tokenizer(family: str):
    """A fresh tokenizer of `family` (a copy: callers may set pad tokens or padding sides on it)."""
    return copy.deepcopy(_build_tokenizer(family))


def token_id(family: str, token: str) -> int:
    """Id of a special token in the family's vocabulary."""
    return _vocab(FAMILIES[family])[token]


# ----------------------------------------------------------------------------------------------------------------
# Models


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def make_config(family: str, attn_impl: str | None = None) -> PretrainedConfig:
    """A 2-layer, 32-wide config of the family's architecture with its special ids.

    attn_impl None lets transformers choose (sdpa where the architecture has it; BLOOM has only eager).
    """
    spec = FAMILIES[family]
    tokenizer = _build_tokenizer(family)
    ids = {
        "vocab_size": _round_up(len(tokenizer), spec.vocab_multiple),
        "bos_token_id": None if spec.config_bos is None else token_id(family, spec.config_bos),
        "eos_token_id": token_id(family, spec.config_eos),
        "pad_token_id": None if spec.config_pad is None else token_id(family, spec.config_pad),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "num_labels": 1,
    }
    width = {"num_hidden_layers": 2, "num_attention_heads": 4}
    if spec.model_type in ("qwen2", "llama"):
        config = (Qwen2Config if spec.model_type == "qwen2" else LlamaConfig)(
            hidden_size=32, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=1024, **width, **ids
        )
    elif spec.model_type == "opt":
        config = OPTConfig(
            hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=1024, **width, **ids
        )
    elif spec.model_type == "bloom":
        config = BloomConfig(hidden_size=32, n_layer=2, n_head=4, **ids)
    elif spec.model_type == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, **ids)
    elif spec.model_type == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=32, intermediate_size=64, max_position_embeddings=1024, **width, **ids)
    else:
        raise ValueError(f"no config for model type {spec.model_type!r}")
    if attn_impl is not None:
        config._attn_implementation = attn_impl
    return config


def make_model(
    family: str, kind: ModelKind = "causal-lm", *, attn_impl: str | None = None, seed: int = 0
) -> torch.nn.Module:
    """A tiny random fp32 model of the family in eval mode, the same weights for the same (family, kind, seed)."""
    config = make_config(family, attn_impl)
    auto_cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    torch.manual_seed(seed)
    model = auto_cls.from_config(config, dtype=torch.float32)
    if kind == "causal-lm":
        model.generation_config = generation_config(family)
    return model.eval()


def generation_config(family: str) -> GenerationConfig:
    """The family's generation_config.json: every end token it stops on, its pad and bos."""
    spec = FAMILIES[family]
    eos = [token_id(family, t) for t in spec.generation_eos]
    return GenerationConfig(
        bos_token_id=None if spec.config_bos is None else token_id(family, spec.config_bos),
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=None if spec.pad is None else token_id(family, spec.pad),
    )


def save_model(family: str, kind: ModelKind, path: Path, *, seed: int = 0) -> Path:
    """Write model + tokenizer (+ generation_config) to `path`, as a Hub download would look; returns path."""
    model = make_model(family, kind, seed=seed)
    model.save_pretrained(path)
    make_tokenizer(family).save_pretrained(path)
    return path
