"""What a run leaves behind: metrics.jsonl (+ TensorBoard), curves.png, the model card and the final save.

    MetricsLogger(out, rt, resume_step)   OUT/metrics.jsonl (+ TensorBoard when installed)
    read_metrics(out) -> list[dict]
    plot_metrics(out) -> Path              OUT/curves.png
    save_final(out, model, tokenizer, card, rt, *, merge_lora, dtype) -> Path
                                   HF-format model (or LoRA adapters) + tokenizer + README.md model card
    finish_run(out, model, tokenizer, card, rt, *, title, merge_lora, dtype)   save_final, curves.png, barrier
    ModelCardInfo
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zhihu_rlhf.train.models import TINY_MODEL, load_tokenizer_and_model
from zhihu_rlhf.train.prompts import end_token_ids
from zhihu_rlhf.train.runtime import Runtime, unwrap


# ----------------------------------------------------------------------------------------------------------------
# metrics.jsonl, TensorBoard, curves.png


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
# Model card and the final save


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


SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def finish_run(
    out: Path, model: nn.Module, tokenizer, card: ModelCardInfo, rt: Runtime, *, title: str, merge_lora: bool, dtype: str
) -> None:
    """How every train() ends: the final save (every rank takes part), OUT/curves.png (rank 0), then every rank waits
    for rank 0's writes."""
    save_final(out, model, tokenizer, card, rt, merge_lora=merge_lora, dtype=dtype)
    if rt.is_main:
        plot_metrics(out, title=title)
    rt.barrier()


def save_final(
    out: Path, model: nn.Module, tokenizer, card: ModelCardInfo, rt: Runtime | None = None, *,
    merge_lora: bool = False, dtype: str = "bf16",
) -> Path:
    """Final model + tokenizer in HF format and README.md, into OUT (written beside, then moved in).

    Call on every rank (rt None: one process): a sharded model is gathered to rank 0 one tensor at a time, and
    only rank 0 writes. Full weights are saved in `dtype` (bf16 by default). A LoRA model saves its adapters
    (fp32, as trained; the folder's adapter_config.json names the base), or with merge_lora the base reloaded in
    `dtype` with the adapters merged in: a full model `from_pretrained` loads. The model card says which.
    """
    from zhihu_rlhf.train import lora

    rt = rt or Runtime(device=torch.device("cpu"), autocast_dtype=None)
    plain = unwrap(model)
    peft = lora.is_peft(plain)
    save_dtype = SAVE_DTYPES[dtype]
    # A LoRA run needs only its trained tensors (adapters, score head); a full run needs everything.
    weights = _state_on_rank0(plain, rt, trainable_only=peft, dtype=torch.float32 if peft else save_dtype)
    if not rt.is_main:
        return out
    if peft and merge_lora:
        card.extra += f"\n\nFine-tuned with {lora.describe(plain)}; the adapters are merged into the weights here."
    elif peft:
        base = plain.peft_config["default"].base_model_name_or_path
        card.extra += (
            f"\n\nThis folder holds LoRA adapters ({lora.describe(plain)}), not full weights. Base model: `{base}`. "
            "Load with `peft.AutoPeftModelForCausalLM.from_pretrained(folder)` (a reward model: "
            "`AutoPeftModelForSequenceClassification`), or pass the folder as `--model`/`--policy`/`--reward` to "
            "the next stage, which merges them into the base. `--merge-lora` saves merged full weights instead."
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        if peft and merge_lora:
            config = plain.peft_config["default"]
            kind = "reward" if config.task_type == "SEQ_CLS" else "causal-lm"
            base = load_tokenizer_and_model(config.base_model_name_or_path, kind, dtype=save_dtype, device="cpu")[1]
            merged = lora.merged_copy(plain, weights, base)
            _stop_on_end_tokens(merged, tokenizer)
            merged.save_pretrained(tmp)
        elif peft:
            # save_embedding_layers=False: embeddings never get adapters here, and "auto" would look up the base
            # model's config on the Hub.
            plain.save_pretrained(tmp, state_dict=weights, save_embedding_layers=False)
            # Loading the adapters onto their base (peft, vLLM) reads generation settings from the folder too: the base's
            # own may not stop on the template's end-of-turn (Qwen2.5 base: <|endoftext|> only, not <|im_end|>).
            base_model = plain.get_base_model()
            if base_model.can_generate():
                _stop_on_end_tokens(base_model, tokenizer)
                base_model.generation_config.save_pretrained(tmp)
        else:
            _stop_on_end_tokens(plain, tokenizer)
            plain.save_pretrained(tmp, state_dict=weights)
            # save_pretrained records the live model's dtype (the fp32 master weights); the file holds save_dtype.
            config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            config["dtype"] = str(save_dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(tmp)
        _model_card(card).save(tmp / "README.md")
        for item in tmp.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stop_on_end_tokens(model: nn.Module, tokenizer) -> None:
    """`generate` with the saved config (the card's snippet) stops on every end token, where SFT targets ended."""
    if model.can_generate():
        model.generation_config.eos_token_id = end_token_ids(tokenizer, model.generation_config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _state_on_rank0(
    model: nn.Module, rt: Runtime, *, trainable_only: bool, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The model's state dict as CPU tensors in `dtype` (floating ones) on rank 0, {} elsewhere.

    Sharded tensors are all-gathered one at a time (every rank takes part), so rank 0 holds the saved copy and
    one full fp32 tensor at most. Tensors shared under two names (tied embeddings) stay shared.
    """
    from torch.distributed.tensor import DTensor

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # keep_vars: the Parameter objects themselves, so a tensor under two names is recognised (and gathered) once.
    copies: dict[int, torch.Tensor | None] = {}
    weights: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if trainable_only and name not in trainable:
            continue
        if id(value) not in copies:
            full = value.full_tensor() if isinstance(value, DTensor) else value
            cast = dtype if full.is_floating_point() else full.dtype
            copies[id(value)] = full.detach().to("cpu", dtype=cast) if rt.is_main else None
        if rt.is_main:
            weights[name] = copies[id(value)]
    return weights
