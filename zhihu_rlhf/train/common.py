"""What `python -m zhihu_rlhf.train sft|rm|ppo|dpo` share: runtime, models, data, prompts, options, the loop, outputs.

Public API (each command imports what it needs from here):

Runtime (device, precision, torchrun data parallel)
    Runtime                        device, autocast dtype, rank/world size; .autocast(), .is_main, .all_reduce_sum(x),
                                   .no_sync(model, sync), .barrier()
    setup_runtime(device) -> Runtime     "auto" | "cuda" | "cpu"; inits the process group when WORLD_SIZE > 1
    wrap_ddp(model, rt) / unwrap(model)  DistributedDataParallel wrapper when world_size > 1, and back
    shutdown_runtime(rt)
    seed_everything(seed)

Models
    TINY_MODEL = "tiny"
    load_tokenizer(name) -> tokenizer            pad token always set
    load_tokenizer_and_model(name, kind, *, attn_impl="sdpa", grad_ckpt=False) -> (tokenizer, model)
                                   kind "causal-lm" | "reward" (AutoModelForSequenceClassification, num_labels=1)
    Packed (padding-free) rows: call model(input_ids, position_ids=..., use_cache=False) with NO attention_mask and
    position ids restarting at 0 per example; transformers (masking_utils.find_packed_sequence_indices) then keeps
    attention inside each example (block-diagonal causal mask on sdpa/eager, varlen on flash-attention). With a
    cache (use_cache=True) that detection is skipped, so the examples would attend to each other.

Data
    INSTRUCT_COLUMNS, PAIRS_COLUMNS
    load_split(data, split, kind) -> list[dict[str, str]]      folder we built | Hub dataset id | "sample"
    pad_ids(seqs, value, side="right") -> (ids, attention_mask)  [N, longest] torch.long, on the CPU

Prompts (one format for every stage, so RM scores and PPO generations see what SFT trained on)
    PLAIN_TEMPLATE, TEMPLATES
    resolve_template(tokenizer, template) -> "chat" | "plain"
    render_prompt(tokenizer, prompt, template) -> str           text the model continues from
    render_completion(tokenizer, prompt, completion, template) -> str   text after the prompt, incl. end of turn
    encode_example(tokenizer, prompt, completion, template, max_len) -> (input_ids, prompt_len)

Options and CLI
    TrainOptions                   base dataclass (kw_only) with the flags every command has
    parse_options(cls, argv, prog, description) -> cls           argparse built from the dataclass fields' docs

The shared loop (SFT, RM and DPO plug a loss into it; PPO drives its own loop with the same pieces)
    fit(opts, rt, model, *, epoch_batches, loss_fn, evaluate, batch_tokens, out) -> dict
    epoch_permutation(n, seed, epoch) -> np.ndarray             deterministic data order per epoch
    shuffled_batches(n, batch_size, seed, epoch) -> list[list[int]]   that order cut into fixed-size batches
    step_plan(n_batches, grad_accum, world_size) -> list[list[int]]
    make_optimizer(model, opts) / make_scheduler(optimizer, opts, total_steps)

Bookkeeping
    MetricsLogger(out, rt, resume_step)   OUT/metrics.jsonl (+ TensorBoard when installed)
    plot_metrics(out) -> Path              OUT/curves.png
    save_checkpoint / latest_checkpoint / load_checkpoint   OUT/checkpoints/step-XXXXXXXX
    save_final(out, model, tokenizer, card) -> Path          HF-format model + tokenizer + README.md model card
    ModelCardInfo
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zhihu_rlhf.errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# Runtime: device, precision, data parallel


@dataclass
class Runtime:
    """Where and how this process trains."""

    device: torch.device
    # bf16 autocast on CUDA; None (plain fp32) on CPU.
    autocast_dtype: torch.dtype | None
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def all_reduce_sum(self, value: float) -> float:
        """Sum a scalar over all ranks (identity on one process)."""
        if not self.distributed:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on accumulation micro-steps; sync on the last one."""
        if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group, one GPU per local rank."""
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available (use --device cpu or auto)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        # TF32 matmuls for whatever runs outside autocast (optimizer, fp32 reductions).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(
        device=dev,
        autocast_dtype=torch.bfloat16 if use_cuda else None,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if not rt.distributed:
        return model
    device_ids = [rt.local_rank] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ----------------------------------------------------------------------------------------------------------------
# Models

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
        raise UserError(f"cannot load tokenizer for model {name!r}: {_first_line(err)}") from None
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
            raise UserError(f"cannot load model {name!r} as {kind}: {_first_line(err)}") from None
    # The classifier reads its score at the last non-pad token; generation pads with this id too.
    model.config.pad_token_id = tokenizer.pad_token_id
    if grad_ckpt:
        model.config.use_cache = False
        model.activation_checkpointing_enable({"use_reentrant": False})
    return tokenizer, model


def _check_model_name(name: str) -> None:
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path and not Path(name).expanduser().exists():
        raise UserError(f"model path {name!r} does not exist (give a Hub id, a local folder or 'tiny')")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------------------------
# Data

INSTRUCT_COLUMNS = ("prompt", "completion")
PAIRS_COLUMNS = ("prompt", "chosen", "rejected")
DataKind = Literal["instruct", "pairs"]


def load_split(data: str, split: str, kind: DataKind) -> list[dict[str, str]]:
    """Rows of one split with the text columns the trainers need.

    data: a folder written by `python -m zhihu_rlhf.build` (OUT/data/<split>-*.parquet), a Hub dataset id
    (datasets.load_dataset), or "sample" (the embedded sample, built on the fly into a temporary folder).
    """
    columns = INSTRUCT_COLUMNS if kind == "instruct" else PAIRS_COLUMNS
    if data == "sample":
        return load_split(str(_sample_folder(kind)), split, kind)
    folder = Path(data).expanduser()
    if folder.exists():
        return _load_folder_split(folder, split, kind, columns)
    if data.startswith((".", "/", "~")):
        raise UserError(f"--data {data!r}: no such folder")
    return _load_hub_split(data, split, columns)


def _load_folder_split(folder: Path, split: str, kind: str, columns: Sequence[str]) -> list[dict[str, str]]:
    import polars as pl

    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise UserError(
            f"{folder}: no data/{split}-*.parquet (expected a {kind} folder built by `python -m zhihu_rlhf.build`)"
        )
    rows: list[dict[str, str]] = []
    for file in files:
        try:
            schema = pl.read_parquet_schema(file)
        except Exception as err:  # noqa: BLE001 - any unreadable parquet is the user's file problem
            raise UserError(f"{file}: not a readable parquet file ({_first_line(err)})") from None
        for col in columns:
            if col not in schema:
                raise UserError(f"{file}: missing column {col!r} ({kind} data needs {', '.join(columns)})")
        frame = pl.read_parquet(file, columns=list(columns))
        rows.extend(_checked_rows(frame.to_dicts(), str(file), columns))
    if not rows:
        raise UserError(f"{folder}: split {split!r} is empty ({', '.join(str(f) for f in files)})")
    return rows


def _load_hub_split(dataset_id: str, split: str, columns: Sequence[str]) -> list[dict[str, str]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not found / no such split"
        raise UserError(f"cannot load Hub dataset {dataset_id!r} split {split!r}: {_first_line(err)}") from None
    for col in columns:
        if col not in ds.column_names:
            raise UserError(f"Hub dataset {dataset_id!r} split {split!r}: missing column {col!r}")
    rows = _checked_rows(ds.select_columns(list(columns)).to_list(), f"{dataset_id}[{split}]", columns)
    if not rows:
        raise UserError(f"Hub dataset {dataset_id!r}: split {split!r} is empty")
    return rows


def _checked_rows(rows: list[dict], where: str, columns: Sequence[str]) -> list[dict[str, str]]:
    for i, row in enumerate(rows):
        for col in columns:
            if not isinstance(row[col], str) or not row[col].strip():
                raise UserError(f"{where}: row {i}: column {col!r} is empty or not text")
    return rows


@lru_cache(maxsize=None)
def _sample_root() -> Path:
    """Build both sets from the embedded sample once per process into a temporary folder."""
    from zhihu_rlhf.build import BuildOptions, build

    root = Path(tempfile.mkdtemp(prefix="zhihu-rlhf-sample-"))
    build("all", BuildOptions(source="sample", out=root))
    return root


def _sample_folder(kind: str) -> Path:
    return _sample_root() / kind


def pad_ids(
    seqs: Sequence[Sequence[int]], value: int, side: Literal["right", "left"] = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> [N, longest] ids filled with `value` on `side`, and the attention mask (1 on real tokens).

    Both torch.long on the CPU (callers move them). The mask comes from the lengths, never from `value`: the pad
    id is often the eos id, which also appears as a real token. Left padding right-aligns the rows, so generated
    tokens all start at the same column (PPO prompts).
    """
    ids = [torch.tensor(s, dtype=torch.long) for s in seqs]
    ones = [torch.ones(len(s), dtype=torch.long) for s in seqs]
    padded = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=value, padding_side=side)
    mask = torch.nn.utils.rnn.pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side)
    return padded, mask


# ----------------------------------------------------------------------------------------------------------------
# Prompt format

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


# ----------------------------------------------------------------------------------------------------------------
# Options and CLI


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
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
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
        parser.epilog = "with the tiny demo model, unset options default to: " + ", ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in cls.TINY_DEMO.items()
        )
    values = vars(parser.parse_args(argv))
    if TINY_MODEL in (values.get("model"), values.get("policy")):
        given = {arg.split("=", 1)[0] for arg in (sys.argv[1:] if argv is None else argv) if arg.startswith("--")}
        for name, value in cls.TINY_DEMO.items():
            if "--" + name.replace("_", "-") not in given:
                values[name] = value
    opts = cls(**values)
    opts.validate()
    return opts


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; plain types unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


# ----------------------------------------------------------------------------------------------------------------
# Metrics, plots


class MetricsLogger:
    """Appends one JSON object per record to OUT/metrics.jsonl (rank 0 only); mirrors to TensorBoard if installed.

    On resume, records after the checkpoint's step are dropped first so the curve continues without a fork.
    """

    def __init__(self, out: Path, rt: Runtime, resume_step: int | None = None) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = rt.is_main
        self._tb = None
        if not self.enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None  # noqa: N806
        if SummaryWriter is not None:
            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, step: int, split: str, **metrics: float) -> None:
        """One record: {"step", "split" ("train" | "eval" | ...), metric: value ...}."""
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _json_number(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _json_number(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# Bookkeeping columns not worth a panel.
_NOT_PLOTTED = {"step", "split", "epoch", "lr", "tokens_per_s", "tokens"}


def plot_metrics(out: Path, title: str = "") -> Path | None:
    """OUT/curves.png: one panel per metric, train and eval lines against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(out)
    keys = sorted({k for r in records for k, v in r.items() if k not in _NOT_PLOTTED and isinstance(v, (int, float))})
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for split in sorted({r["split"] for r in records}):
            pts = [(r["step"], r[key]) for r in records if r["split"] == split and isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=split)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Optimizer, schedule, data order


def make_optimizer(model: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (embeddings, linear weights), not on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    warmup = int(round(opts.warmup_ratio * total_steps))
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of n examples in an epoch: a pure function of (seed, epoch), so a resumed run sees the same."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's micro-batches of example indices: epoch_permutation cut into batch_size pieces (last may be short)."""
    order = epoch_permutation(n, seed, epoch).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def step_plan(n_batches: int, grad_accum: int, world_size: int) -> list[list[int]]:
    """Group an epoch's micro-batches into optimizer steps: grad_accum * world_size each.

    Rank r runs plan[step][r::world_size]. On one process the last step may be short; with several, a short last
    step is dropped so every rank runs the same number of backward passes (DDP requires it).
    """
    per_step = grad_accum * world_size
    plan = [list(range(i, min(i + per_step, n_batches))) for i in range(0, n_batches, per_step)]
    if world_size > 1 and plan and len(plan[-1]) < per_step:
        plan.pop()
    return plan


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and final outputs

CHECKPOINT_DIR = "checkpoints"


def save_checkpoint(
    out: Path, rt: Runtime, model: nn.Module, optimizer, scheduler, state: dict[str, Any], save_limit: int
) -> Path | None:
    """OUT/checkpoints/step-XXXXXXXX: weights, optimizer, scheduler, RNG states and `state` (step, data position).

    Written to a temporary folder and renamed, so a kill mid-save never leaves a half checkpoint.
    """
    if not rt.is_main:
        rt.barrier()
        return None
    root = out / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['global_step']:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    torch.save(unwrap(model).state_dict(), tmp / "model.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-save_limit] if save_limit > 0 else []:
        shutil.rmtree(old)
    rt.barrier()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / CHECKPOINT_DIR).glob("step-*"))
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, rt: Runtime) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote; returns its `state` dict."""
    unwrap(model).load_state_dict(torch.load(path / "model.pt", map_location=rt.device))
    opt_state = torch.load(path / "optimizer.pt", map_location=rt.device, weights_only=False)
    optimizer.load_state_dict(opt_state["optimizer"])
    scheduler.load_state_dict(opt_state["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


@dataclass
class ModelCardInfo:
    """What the README.md model card says about a run."""

    task: str  # "sft" | "rm" | "ppo" | "dpo"
    base_model: str
    data: str
    options: dict[str, Any]
    results: dict[str, Any]
    usage: str  # a short Python snippet showing how to load and use the model
    extra: str = ""  # free markdown (e.g. the prompt format)


def _model_card(info: ModelCardInfo):
    from huggingface_hub import ModelCard, ModelCardData

    is_local = info.base_model == TINY_MODEL or Path(info.base_model).exists()
    card_data = ModelCardData(
        library_name="transformers",
        base_model=None if is_local else info.base_model,
        datasets=None if Path(info.data).exists() or info.data == "sample" else [info.data],
        tags=["zhihu-rlhf", info.task],
        language=["zh"],
    )
    opts = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(info.options.items()))
    results = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in info.results.items())
    content = f"""---
{card_data.to_yaml()}
---

# {info.task.upper()} model trained with zhihu-rlhf

- **Base model:** `{info.base_model}`
- **Training data:** `{info.data}`
- **Trained with:** `python -m zhihu_rlhf.train {info.task}` ([zhihu-rlhf](https://github.com/))

{info.extra}

## Results

| metric | value |
|---|---|
{results}

Training curves: `curves.png`; every logged step: `metrics.jsonl`.

## Usage

```python
{info.usage.strip()}
```

## Hyper-parameters

| option | value |
|---|---|
{opts}
"""
    return ModelCard(content)


def save_final(out: Path, model: nn.Module, tokenizer, card: ModelCardInfo) -> Path:
    """Final model + tokenizer in HF format and README.md, into OUT (written beside, then moved in)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        unwrap(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _model_card(card).save(tmp / "README.md")
        for item in tmp.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The shared loop

Batch = Any  # whatever a command's loss_fn understands (e.g. a list of example indices)
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, float, dict[str, float]]]


def fit(
    opts: TrainOptions,
    rt: Runtime,
    model: nn.Module,
    *,
    epoch_batches: Callable[[int], Sequence[Batch]],
    loss_fn: LossFn,
    evaluate: Callable[[nn.Module], dict[str, float]],
    batch_tokens: Callable[[Batch], int],
    out: Path | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """Train `model` (already on rt.device) and return the last eval metrics.

    epoch_batches(epoch) -> the epoch's micro-batches in order (deterministic in epoch: resume relies on it).
    loss_fn(model, batch) -> (summed loss, count it sums over, summed extra metrics). Summing, not averaging, lets a
      step normalise by the count over all its micro-batches and ranks: a token-mean over the whole step, whatever
      the packing or padding.
    evaluate(model) -> metrics on the test split (called on every rank; only rank 0 logs them).
    batch_tokens(batch) -> tokens the batch feeds the model (throughput).
    """
    out = out or opts.out
    # Step plans for every epoch up front: the scheduler needs the total, resume needs the positions.
    # A fractional --epochs runs the first part of the last epoch.
    n_epochs = math.ceil(opts.epochs)
    plans = [step_plan(len(epoch_batches(e)), opts.grad_accum, rt.world_size) for e in range(n_epochs)]
    last_fraction = opts.epochs - (n_epochs - 1)
    plans[-1] = plans[-1][: max(1, math.ceil(len(plans[-1]) * last_fraction))]
    total_steps = sum(len(p) for p in plans)
    if total_steps == 0:
        raise UserError("the training split gives no optimizer step (too few examples for the batch settings)")

    ddp_model = wrap_ddp(model, rt)
    optimizer = make_optimizer(model, opts)
    scheduler = make_scheduler(optimizer, opts, total_steps)

    global_step, start_epoch, start_step_in_epoch, tokens_seen = 0, 0, 0, 0
    resume_step: int | None = None
    ckpt = latest_checkpoint(out)
    if opts.resume:
        if ckpt is None:
            raise UserError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}")
        state = load_checkpoint(ckpt, model, optimizer, scheduler, rt)
        global_step, start_epoch = state["global_step"], state["epoch"]
        start_step_in_epoch, tokens_seen = state["step_in_epoch"], state["tokens_seen"]
        resume_step = global_step
    elif ckpt is not None:
        raise UserError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")

    logger = MetricsLogger(out, rt, resume_step)
    params = [p for p in model.parameters() if p.requires_grad]
    eval_metrics: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=global_step, desc=desc, disable=not rt.is_main, dynamic_ncols=True)
    for epoch in range(start_epoch, n_epochs):
        batches = epoch_batches(epoch)
        first = start_step_in_epoch if epoch == start_epoch else 0
        for step_in_epoch in range(first, len(plans[epoch])):
            t0 = time.perf_counter()
            ddp_model.train()
            my_batches = [batches[i] for i in plans[epoch][step_in_epoch][rt.rank :: rt.world_size]]
            loss_sum, count, extra_sums, step_tokens = 0.0, 0.0, {}, 0
            for i, batch in enumerate(my_batches):
                with rt.no_sync(ddp_model, sync=i == len(my_batches) - 1), rt.autocast():
                    loss, n, extras = loss_fn(ddp_model, batch)
                loss.backward()
                loss_sum += loss.item()
                count += n
                step_tokens += batch_tokens(batch)
                for k, v in extras.items():
                    extra_sums[k] = extra_sums.get(k, 0.0) + v
            # Gradients hold sum-over-count of this rank; DDP averaged them over ranks. Scale to a mean over
            # everything the step saw on all ranks.
            total_count = rt.all_reduce_sum(count)
            scale = rt.world_size / max(total_count, 1.0)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(scale)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm).item() if opts.max_grad_norm > 0 else 0.0
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1

            step_loss = rt.all_reduce_sum(loss_sum) / max(total_count, 1.0)
            step_tokens = int(rt.all_reduce_sum(step_tokens))
            tokens_seen += step_tokens
            tokens_per_s = step_tokens / (time.perf_counter() - t0)
            extras_mean = {k: rt.all_reduce_sum(v) / max(total_count, 1.0) for k, v in sorted(extra_sums.items())}
            logger.log(
                global_step,
                "train",
                epoch=epoch + (step_in_epoch + 1) / len(plans[epoch]),
                loss=step_loss,
                **extras_mean,
                lr=scheduler.get_last_lr()[0],
                grad_norm=grad_norm,
                tokens=tokens_seen,
                tokens_per_s=tokens_per_s,
            )
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", epoch=epoch)

            at_epoch_end = step_in_epoch == len(plans[epoch]) - 1
            if at_epoch_end or (opts.eval_steps and global_step % opts.eval_steps == 0):
                ddp_model.eval()
                with torch.no_grad(), rt.autocast():
                    eval_metrics = evaluate(model)
                logger.log(global_step, "eval", epoch=epoch + (step_in_epoch + 1) / len(plans[epoch]), **eval_metrics)
                if rt.is_main:
                    bar.write(f"step {global_step} eval " + " ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
            if opts.save_steps and global_step % opts.save_steps == 0 and global_step < total_steps:
                position = {"epoch": epoch, "step_in_epoch": step_in_epoch + 1}
                if at_epoch_end:
                    position = {"epoch": epoch + 1, "step_in_epoch": 0}
                state = {"global_step": global_step, "tokens_seen": tokens_seen, **position}
                save_checkpoint(out, rt, model, optimizer, scheduler, state, opts.save_limit)
    bar.close()
    logger.close()
    if rt.is_main and not opts.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return eval_metrics


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items (evaluation batches)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
