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
from zhihu_rlhf.train.models import TINY_MODEL
from zhihu_rlhf.train.versions import check_transformers

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
    attn_impl: str = field(
        default="sdpa", metadata={"help": "attention kernel: sdpa, eager, flash_attention_2, flex_attention"}
    )
    grad_ckpt: bool = field(default=False, metadata={"help": "gradient (activation) checkpointing to save memory"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N optimizer steps (0 = never)"})
    save_limit: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep OUT/checkpoints after a finished run"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in OUT/checkpoints"})
    eval_steps: int = field(default=0, metadata={"help": "also evaluate every N steps (0 = only at epoch ends)"})

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
