"""Tokenizer and model loading, and the `tiny` model every test and CPU demo uses.

    TINY_MODEL = "tiny"
    load_tokenizer(name) -> tokenizer            pad token always set
    load_tokenizer_and_model(name, kind, *, attn_impl="sdpa" (or "auto"), grad_ckpt=False, dtype=fp32, device="cpu",
                             load_in_4bit=False) -> (tokenizer, model)
                                   kind "causal-lm" | "reward" (AutoModelForSequenceClassification, num_labels=1)
    disable_dropout(model)         dropout and layer drop off, for stages that compare against a frozen model
    load_for_training(name, kind, opts, rt) -> (tokenizer, model)   the model a stage trains, loaded for its size
    load_frozen(name, kind, opts, rt) -> (tokenizer, model)         an inference-only model (PPO's reference, RM)

Loading for size: weights go straight from the checkpoint onto their device in the dtype they are used in
(transformers' device_map loading: no fp32 copy on the host first). Trained weights are fp32 (AdamW's master copy;
bf16 compute comes from autocast); a frozen LoRA base and inference-only models are bf16 on CUDA (fp32 on CPU), or
4-bit NF4 with --load-in-4bit. Sharded (--shard): every rank builds the model on the meta device (no memory), shards
it, and only rank 0 reads the checkpoint, broadcasting it one tensor at a time (runtime.load_from_rank0).

A folder of LoRA adapters (a run saved without --merge-lora) loads as its base with the adapters merged in.

Attention: --attn-impl auto loads with transformers' default kernel (sdpa; eager for BLOOM) and upgrades to
flash-attention 2 on a GPU where it is installed and packing is verified (batching.choose_attention); the batch
layout (packed rows with their boundaries, or padded length buckets) follows from that kernel (batching.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from zhihu_rlhf.errors import UserError, first_line
from zhihu_rlhf.train.batching import choose_attention, loader_attn_impl
from zhihu_rlhf.train.data import looks_local, quiet_hub
from zhihu_rlhf.train.lora import add_adapters, describe, merge_adapters
from zhihu_rlhf.train.options import TINY_MODEL, TrainOptions
from zhihu_rlhf.train.runtime import Runtime, load_from_rank0, shard_model

# The tiny model's weights are random but the same in every process and run, so a run's saved LoRA adapters can be
# put back on the base they were trained on. 42: the weights the default --seed gave when the init drew from it.
TINY_SEED = 42

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
        with quiet_hub():
            tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load tokenizer for model {name!r}: {first_line(err)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"model {name!r}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer_and_model(
    name: str,
    kind: ModelKind,
    *,
    attn_impl: str = "sdpa",
    grad_ckpt: bool = False,
    dtype: torch.dtype | Literal["auto"] = torch.float32,
    device: torch.device | str = "cpu",
    load_in_4bit: bool = False,
) -> tuple[Any, nn.Module]:
    """`tiny` (random, offline), a Hub id, a local folder or a folder of LoRA adapters -> (tokenizer, model).

    The weights load straight onto `device` in `dtype` ("auto": as stored; 4-bit NF4 with bf16 compute when
    load_in_4bit). kind "reward" gives a
    one-output sequence classifier whose score is read at the last non-pad token.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind not in ("causal-lm", "reward"):
        raise ValueError(f"unknown model kind {kind!r}")
    tokenizer = load_tokenizer(name)
    auto_cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    adapters_base = lora_base_of(name)
    load_attn = loader_attn_impl(attn_impl)  # "auto": transformers' default (choose_attention may upgrade it)
    if name == TINY_MODEL:
        config = _tiny_config(tokenizer, kind)
        config._attn_implementation = load_attn
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = auto_cls.from_config(config, dtype=torch.float32 if dtype == "auto" else dtype).to(device)
    elif adapters_base is not None:
        if load_in_4bit:
            raise UserError(
                f"--load-in-4bit: {name} holds LoRA adapters, which cannot be merged into a 4-bit base; "
                "save that run with --merge-lora and start from it"
            )
        _, base = load_tokenizer_and_model(adapters_base, kind, attn_impl=attn_impl, dtype=dtype, device=device)
        model = merge_adapters(base, name)
    else:
        extra: dict[str, Any] = {"num_labels": 1} if kind == "reward" else {}
        if load_in_4bit:
            extra["quantization_config"] = _nf4_config()
        try:
            # use_kernels=False: transformers (5.25, the version seen) otherwise swaps layers (rotary, ...) for
            # kernels fetched from the Hub when the model lands on a GPU, which fails offline (seen on an H200 with
            # HF_HUB_OFFLINE=1) and runs code the user never chose; the attention kernel is --attn-impl's to pick.
            with quiet_hub():
                model = auto_cls.from_pretrained(
                    name, dtype=dtype, device_map=str(device), attn_implementation=load_attn, use_kernels=False, **extra
                )
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load model {name!r} as {kind}: {first_line(err)}") from None
    # The classifier reads its score at the last non-pad token; generation pads with this id too.
    model.config.pad_token_id = tokenizer.pad_token_id
    if grad_ckpt:
        _enable_grad_ckpt(model)
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


Wrap = Callable[[nn.Module], nn.Module]


def load_for_training(
    name: str, kind: ModelKind, opts: TrainOptions, rt: Runtime, *, wrap: Wrap | None = None
) -> tuple[Any, nn.Module]:
    """The model a stage trains, loaded for its size (module docstring), with LoRA adapters when opts.lora.

    Full fine-tuning: fp32 weights straight onto rt.device. --lora: the frozen base in bf16 on CUDA (4-bit with
    --load-in-4bit), adapters (and an RM's score head) trainable in fp32. --shard: sharded over the processes.
    wrap: a module put around the model before sharding, whose forward is then the one every call goes through
    (scoring.TokenScorer returns what the loss uses; a sharded model's backward starts from its root's outputs).
    """
    if kind == "causal-lm":
        require_causal_lm(name, "model")
    if opts.shard:
        return _load_sharded(name, kind, opts, rt, wrap=wrap)
    if opts.load_in_4bit:
        _check_4bit_possible(rt)
    tokenizer, model = load_tokenizer_and_model(
        name, kind, attn_impl=opts.attn_impl, grad_ckpt=opts.grad_ckpt, dtype=_weights_dtype(rt, frozen=opts.lora),
        device=rt.device, load_in_4bit=opts.load_in_4bit,
    )
    choose_attention(model, opts.attn_impl, rt.device)
    if opts.lora:
        model = _with_adapters(model, kind, opts, name)
        if rt.is_main:
            print(f"{name}: {describe(model)}")
    return tokenizer, wrap(model) if wrap else model


def load_frozen(
    name: str, kind: ModelKind, opts: TrainOptions, rt: Runtime, *, wrap: Wrap | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Any, nn.Module]:
    """An inference-only model (no grads, eval mode), sharded like the trained ones.

    dtype: bf16 on CUDA and fp32 on the CPU unless given (the RL reference takes the policy's, see rl.make_reference).
    """
    dtype = dtype or _weights_dtype(rt, frozen=True)
    if opts.shard:
        tokenizer, model = _load_sharded(name, kind, opts, rt, wrap=wrap, trained=False, dtype=dtype)
    else:
        tokenizer, model = load_tokenizer_and_model(name, kind, attn_impl=opts.attn_impl, dtype=dtype, device=rt.device)
        choose_attention(model, opts.attn_impl, rt.device)
        model = wrap(model) if wrap else model
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model


def _load_sharded(
    name: str, kind: ModelKind, opts: TrainOptions, rt: Runtime, *, wrap: Wrap | None, trained: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[Any, nn.Module]:
    """Meta-device skeleton on every rank, sharded; rank 0 alone loads the checkpoint (in its stored dtype, on the
    host) and broadcasts it into the shards (fp32 trained weights, bf16 frozen ones on CUDA). LoRA adapters are added
    before sharding, so FSDP2 shards and reduces them like any weight; rank 0's adapter initialisation is the one
    every rank gets.

    (transformers' own load-time sharding, from_pretrained(distributed_config=...), shards before peft can add
    adapters, which then stay unsharded and unsynchronised across ranks.)
    """
    def build(model: nn.Module) -> nn.Module:
        choose_attention(model, opts.attn_impl, rt.device)
        if trained and opts.grad_ckpt:
            _enable_grad_ckpt(model)
        if trained and opts.lora:
            model = _with_adapters(model, kind, opts, name)
        return wrap(model) if wrap else model

    tokenizer = load_tokenizer(name)
    source = None
    if rt.is_main:
        source = build(load_tokenizer_and_model(name, kind, attn_impl=opts.attn_impl, dtype="auto", device="cpu")[1])
    dtype = dtype or _weights_dtype(rt, frozen=opts.lora or not trained)
    model = build(_skeleton(name, kind, tokenizer, opts.attn_impl, dtype))
    shard_model(model, rt)
    load_from_rank0(model, source, rt)
    if rt.is_main and trained and opts.lora:
        print(f"{name}: {describe(source)}")
    return tokenizer, model


def _with_adapters(model: nn.Module, kind: ModelKind, opts: TrainOptions, name: str) -> nn.Module:
    return add_adapters(
        model, kind, r=opts.lora_r, alpha=opts.lora_alpha, dropout=opts.lora_dropout, targets=opts.lora_targets,
        base_name=name,
    )


def _weights_dtype(rt: Runtime, *, frozen: bool) -> torch.dtype:
    """bf16 on CUDA for weights nothing updates (a frozen model, a LoRA base); fp32 for trained weights (AdamW's
    master copy; compute is bf16 through autocast) and for everything on the CPU."""
    return torch.bfloat16 if frozen and rt.device.type == "cuda" else torch.float32


def _skeleton(name: str, kind: ModelKind, tokenizer, attn_impl: str, dtype: torch.dtype) -> nn.Module:
    """The model's modules on the meta device, parameters in `dtype`: shapes only, no memory, nothing read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto_cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    while (base := lora_base_of(name)) is not None:  # merged adapters leave the base's shapes
        name = base
    if name == TINY_MODEL:
        config = _tiny_config(tokenizer, kind)
    else:
        config = AutoConfig.from_pretrained(name, **({"num_labels": 1} if kind == "reward" else {}))
    with torch.device("meta"):
        model = auto_cls.from_config(config, dtype=dtype, attn_implementation=loader_attn_impl(attn_impl))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _enable_grad_ckpt(model: nn.Module) -> None:
    model.config.use_cache = False
    model.activation_checkpointing_enable({"use_reentrant": False})


def _check_4bit_possible(rt: Runtime) -> None:
    if rt.device.type != "cuda":
        raise UserError("--load-in-4bit needs a CUDA GPU (bitsandbytes NF4); this run is on the CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("--load-in-4bit needs bitsandbytes: pip install 'zhihu-rlhf[qlora]'") from None


def _nf4_config():
    """QLoRA's quantisation (Dettmers et al. 2023): NF4 weights, double-quantised constants, bf16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_base_of(name: str) -> str | None:
    """The base model a folder of LoRA adapters was trained on, or None when `name` is not such a folder."""
    config = Path(name).expanduser() / "adapter_config.json"
    if name == TINY_MODEL or not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config}: no base_model_name_or_path, so the base these adapters belong to is unknown")
    return base


def _check_model_name(name: str) -> None:
    if looks_local(name) and not Path(name).expanduser().exists():
        raise UserError(f"model path {name!r} does not exist (give a Hub id org/name, a local folder or 'tiny')")


def _is_classifier(name: str) -> bool | None:
    """Whether `name` was saved as a sequence classifier (an RM) rather than a causal LM; None if unknown (`tiny`).

    A folder of LoRA adapters says so in its task type; a model in its config's `architectures`.
    """
    if name == TINY_MODEL:
        return None
    adapter_config = Path(name).expanduser() / "adapter_config.json"
    if adapter_config.is_file():
        return json.loads(adapter_config.read_text(encoding="utf-8")).get("task_type") == "SEQ_CLS"
    from transformers import AutoConfig

    _check_model_name(name)
    try:
        with quiet_hub():
            architectures = AutoConfig.from_pretrained(name).architectures or []
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {name!r}: {first_line(err)}") from None
    if not architectures:
        return None
    return all(a.endswith("ForSequenceClassification") for a in architectures)


def require_score_head(name: str, flag: str) -> None:
    """Refuse a reward/value model whose score head would not come from its checkpoint.

    A causal LM (an SFT or DPO output) loads as a sequence classifier with a randomly initialised head, and RL would
    then train on random rewards without any error.
    """
    if _is_classifier(name) is False:
        raise UserError(
            f"{flag} {name}: a causal language model, not a reward model (its score head would be random): give the "
            "output of `train rm`"
        )


def require_causal_lm(name: str, flag: str) -> None:
    """Refuse a reward model folder where a causal LM is expected (SFT's --model, DPO's, RL's --policy)."""
    if _is_classifier(name):
        raise UserError(
            f"{flag} {name}: a reward model (sequence classifier) has no language-model head to generate with; "
            "give a causal LM (a base model or an SFT output)"
        )


# Architectures whose positions are a learned table (the config field holding its size): a longer sequence fails deep
# inside the embedding lookup. Rotary (Llama, Qwen2, GPT-NeoX) and ALiBi (BLOOM) models have no such wall. The ones
# listed are those the fixture matrix runs (tests/test_train_models.py).
LEARNED_POSITION_TABLES = {"gpt2": "n_positions", "opt": "max_position_embeddings"}


def position_limit(config: Any) -> int | None:
    """The most tokens a sequence may hold on a model with a learned position table; None: no such wall."""
    field = LEARNED_POSITION_TABLES.get(config.model_type)
    return getattr(config, field, None) if field else None


def require_positions(model: nn.Module, name: str, tokens: int, flags: str) -> None:
    """Refuse sequences of up to `tokens` (set by `flags`) on a model whose learned position table is shorter."""
    limit = position_limit(model.config)
    if limit is not None and tokens > limit:
        raise UserError(
            f"{name}: a {model.config.model_type} model has {limit} learned positions, so no sequence may be longer, "
            f"but {flags} allow {tokens} tokens: lower {flags} to {limit} in all"
        )
