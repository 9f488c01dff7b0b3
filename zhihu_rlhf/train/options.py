"""The options every training command shares, the argparse built from them, and the tiny profile.

    TrainOptions                   base dataclass (kw_only) with the flags every command has
    parse_options(cls, argv, prog, description) -> cls           argparse built from the dataclass fields' docs

The tiny profile: with `--model tiny` (or `--policy tiny`), options the user did not set take the command's
TINY_DEMO values (CPU-sized) instead of their defaults (GPU-sized). `--help` shows both defaults, and a run prints
one line naming the values that came from the profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train.batching import ATTN_IMPLS
from zhihu_rlhf.train.runtime import PRECISIONS
from zhihu_rlhf.train.versions import check_transformers

# The random 2-layer model every test and CPU demo uses (models.py builds it); its name turns on the tiny profile.
TINY_MODEL = "tiny"

# Every command imports this module before it does anything: an older transformers stops it here, with one line
# (the CLI imports the command inside cli_main), instead of an IndexError in the middle of training.
check_transformers()


@dataclass(kw_only=True)
class TrainOptions:
    """Flags every training command has. Each command subclasses this (kw_only) and adds its own fields.

    Every field carries metadata={"help": ...}; parse_options turns fields into --flags with that help and the default.
    """

    data: str = field(metadata={"help": "a folder built by zhihu_rlhf.build, a Hub dataset id, or 'sample'"})
    out: Path = field(metadata={"help": "output folder: final model, metrics.jsonl, curves.png, checkpoints/"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training split"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on matrices (not norms/biases)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of steps with linear warmup before cosine decay"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step (per process)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    seed: int = field(default=42, metadata={"help": "seed for init, data order and sampling"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cuda or cpu"})
    precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16 autocast on a GPU, fp32 on a CPU; bf16 (autocast, also on a CPU); fp32", "choices": PRECISIONS},
    )
    attn_impl: str = field(
        default="auto",
        metadata={
            "help": "attention kernel; auto: flash_attention_2 on a GPU when installed (packed rows), else sdpa "
            "(padded, length-bucketed batches); see train/batching.py",
            "choices": ATTN_IMPLS,
        },
    )
    grad_ckpt: bool = field(default=False, metadata={"help": "gradient (activation) checkpointing to save memory"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N optimizer steps (0 = never)"})
    save_limit: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep OUT/checkpoints after a finished run"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in OUT/checkpoints"})
    eval_steps: int = field(default=0, metadata={"help": "also evaluate every N steps (0 = only at epoch ends)"})

    # Sizes users run (7B-14B): adapters instead of every weight, a 4-bit frozen base, weights sharded over GPUs.
    lora: bool = field(
        default=False,
        metadata={"help": "train LoRA adapters (peft) on a frozen base instead of every weight (raise --lr: LoRA "
                  "usually takes ~1e-4)"},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scale numerator: updates are scaled by alpha / r"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_targets: str = field(
        default="all-linear",
        metadata={"help": "modules that get adapters: all-linear (every linear layer but the output head) or names, "
                  "comma-separated (e.g. q_proj,v_proj)"},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: keep the frozen base in 4-bit NF4 (bitsandbytes, CUDA only, pip install "
                  "'zhihu-rlhf[qlora]'); needs --lora"},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "save the base with the adapters merged in (a full model from_pretrained loads) instead of "
                  "the adapters alone"},
    )
    shard: bool = field(
        default=False,
        metadata={"help": "FSDP2 under torchrun: shard weights, gradients and optimizer states over the processes, "
                  "per transformer block (instead of a full copy on each, as data parallel keeps)"},
    )
    save_dtype: str = field(
        default="bf16",
        metadata={"help": "dtype of the saved model weights (LoRA adapters are saved as trained, in fp32)",
                  "choices": ("bf16", "fp16", "fp32")},
    )

    # The `tiny` model is for offline demos and tests on a CPU: options left unset take these values instead of
    # the defaults above (which suit 0.5B-7B models on a GPU), so a demo run takes seconds, not an hour.
    TINY_DEMO: ClassVar[dict[str, Any]] = {}

    def validate(self) -> None:
        """Raise UserError on values that cannot work. Subclasses extend this."""
        positive = {"epochs": self.epochs, "lr": self.lr, "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("save_steps", "save_limit", "eval_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.lora:
            if self.lora_r < 1 or not self.lora_alpha > 0:
                raise UserError(f"--lora-r must be >= 1 and --lora-alpha > 0, got {self.lora_r} and {self.lora_alpha}")
            if not 0 <= self.lora_dropout < 1:
                raise UserError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
            if not [name for name in self.lora_targets.split(",") if name.strip()]:
                raise UserError("--lora-targets is empty (give all-linear or module names, e.g. q_proj,v_proj)")
        for flag, given in (("--load-in-4bit", self.load_in_4bit), ("--merge-lora", self.merge_lora)):
            if given and not self.lora:
                raise UserError(f"{flag} only applies to LoRA training: add --lora")
        if self.attn_impl in ("flash_attention_2", "flash_attention_3"):
            from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

            available = is_flash_attn_2_available if self.attn_impl == "flash_attention_2" else is_flash_attn_3_available
            if not available():
                raise UserError(
                    f"--attn-impl {self.attn_impl}: flash-attention is not installed here (it needs a CUDA GPU and "
                    "pip install flash-attn); leave --attn-impl auto to use it where it is"
                )
        if self.load_in_4bit and self.shard:
            raise UserError("--load-in-4bit and --shard do not work together (FSDP2 cannot shard 4-bit weights)")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


OptionsT = TypeVar("OptionsT", bound=TrainOptions)


def parse_options(cls: type[OptionsT], argv: Sequence[str] | None, prog: str, description: str) -> OptionsT:
    """argparse from the dataclass: --snake-case flags, help text and defaults from the fields; then validate()."""
    # allow_abbrev=False: an abbreviated flag (--batch-tok) would be invisible to the tiny profile's "given" check.
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = _flag(f.name)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.name in cls.TINY_DEMO:
            # Both defaults side by side (argparse adds no "(default: ...)" of its own when the help already has one).
            kwargs["help"] += f" (default: %(default)s) (tiny: {cls.TINY_DEMO[f.name]})"
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value_type = _base_type(hints[f.name])
        if typing.get_origin(value_type) is list:  # --reward-fn a:f b:g
            kwargs["nargs"] = "+"
            value_type = typing.get_args(value_type)[0]
        if value_type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, type=value_type, **kwargs)
    if cls.TINY_DEMO:
        parser.epilog = "(tiny: ...) is the default with the tiny demo model, sized for a CPU"
    values = vars(parser.parse_args(argv))
    if TINY_MODEL in (values.get("model"), values.get("policy")):
        given = {arg.split("=", 1)[0] for arg in (sys.argv[1:] if argv is None else argv) if arg.startswith("--")}
        from_profile = {name: value for name, value in cls.TINY_DEMO.items() if _flag(name) not in given}
        values.update(from_profile)
        # Under torchrun every rank parses the options; one line is enough (RANK is what setup_runtime reads too).
        if from_profile and os.environ.get("RANK", "0") == "0":
            print("tiny profile, for options not given: " + " ".join(f"{_flag(n)} {v}" for n, v in from_profile.items()))
    opts = cls(**values)
    opts.validate()
    return opts


def _flag(name: str) -> str:
    """Field name -> its command-line flag: max_len -> --max-len."""
    return "--" + name.replace("_", "-")


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; plain types unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint
