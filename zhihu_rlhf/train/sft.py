"""Supervised fine-tuning: `python -m zhihu_rlhf.train sft --model M --data D --out OUT`.

Each instruct row (prompt, completion) becomes prompt tokens + completion tokens in the prompt format of
prompts.render_prompt (the tokenizer's chat template, else "Human: {prompt}\\n\\nAssistant: " + completion + eos).
The loss is the mean cross-entropy over completion tokens only.

Batching (batching.py): with flash-attention on an architecture whose packing is verified, examples are packed
padding-free, one row of at most --batch-tokens tokens per micro-batch, each example's boundaries passed to the
kernel so attention never crosses examples. Otherwise (sdpa/eager, the CPU default) micro-batches are padded and
length-bucketed: at most --batch-tokens tokens counting padding. A run prints one line saying which and why.
--batch-size N instead pads N examples per micro-batch, in data order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.batching import Layout, batch_layout, length_buckets, pack, varlen_kwargs
from zhihu_rlhf.train.data import epoch_permutation, load_split, pad_ids
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.loop import fit
from zhihu_rlhf.train.models import load_for_training, require_positions
from zhihu_rlhf.train.options import TrainOptions, parse_options
from zhihu_rlhf.train.prompts import TEMPLATES, encode_example, resolve_template
from zhihu_rlhf.train.report import ModelCardInfo, finish_run
from zhihu_rlhf.train.runtime import Runtime, training_runtime

IGNORE = -100  # label of tokens the loss skips (prompt, padding)


@dataclass(kw_only=True)
class SFTOptions(TrainOptions):
    """`python -m zhihu_rlhf.train sft` options. Defaults suit 0.5B-7B models on one 80 GB GPU."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {"epochs": 1.0, "max_len": 256, "batch_tokens": 2048, "lr": 1e-3}

    model: str = field(metadata={"help": "causal LM: Hub id, local folder, or 'tiny' (random, offline)"})
    template: str = field(
        default="auto", metadata={"help": "prompt format: auto (chat template if any), chat, plain", "choices": TEMPLATES}
    )
    max_len: int = field(default=2048, metadata={"help": "tokens per example (prompt + completion), longer ones are cut"})
    batch_tokens: int = field(
        default=16384,
        metadata={"help": "tokens per micro-batch: one packed row, or padded rows x their longest (see batching.py)"},
    )
    batch_size: int = field(
        default=0, metadata={"help": "if > 0: padded micro-batches of this many examples instead of packing"}
    )
    epochs: float = field(default=3.0, metadata={"help": "passes over the training split"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate (AdamW)"})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches per optimizer step (per process)"})

    def validate(self) -> None:
        super().validate()
        if self.max_len < 8:
            raise UserError(f"--max-len must be >= 8, got {self.max_len}")
        if self.batch_size < 0:
            raise UserError(f"--batch-size must be >= 0, got {self.batch_size}")
        if self.batch_size == 0 and self.batch_tokens < self.max_len:
            raise UserError(f"--batch-tokens ({self.batch_tokens}) must be >= --max-len ({self.max_len})")


@dataclass
class Example:
    """One tokenized instruct row: the loss covers input_ids[prompt_len:]."""

    input_ids: list[int]
    prompt_len: int


def encode_rows(tokenizer, rows: list[dict[str, str]], template: str, max_len: int) -> list[Example]:
    return [Example(*encode_example(tokenizer, r["prompt"], r["completion"], template, max_len)) for r in rows]


# ----------------------------------------------------------------------------------------------------------------
# Batches: a micro-batch is a list of example indices; collate turns it into tensors.


def make_batches(examples: list[Example], order: list[int], opts: SFTOptions, layout: Layout) -> list[list[int]]:
    if opts.batch_size > 0:
        return [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    lengths = [len(e.input_ids) for e in examples]
    if layout.kind == "packed":
        return pack(order, lengths, opts.batch_tokens)
    return length_buckets(order, lengths, opts.batch_tokens)


def labels_for(example: Example) -> list[int]:
    """Prompt tokens -> IGNORE; completion tokens keep their id (the target the previous position predicts)."""
    return [IGNORE] * example.prompt_len + example.input_ids[example.prompt_len :]


def collate_packed(examples: list[Example], device: torch.device) -> dict[str, torch.Tensor | int]:
    """One row [1, sum of lengths]: no padding, no attention_mask; position ids restart per example and the
    boundaries go to the varlen kernel (batching.varlen_kwargs)."""
    input_ids, labels = [], []
    for ex in examples:
        input_ids += ex.input_ids
        labels += labels_for(ex)
    as_row = lambda xs: torch.tensor([xs], dtype=torch.long, device=device)  # noqa: E731
    boundaries = varlen_kwargs([len(ex.input_ids) for ex in examples], device)
    return {"input_ids": as_row(input_ids), "labels": as_row(labels), **boundaries}


def collate_padded(examples: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """[batch, longest] right-padded, with attention_mask; labels are IGNORE on padding."""
    input_ids, attention_mask = pad_ids([ex.input_ids for ex in examples], pad_id)
    labels, _ = pad_ids([labels_for(ex) for ex in examples], IGNORE)  # same lengths, so the same mask
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention_mask.to(device)}


def completion_loss(scorer: nn.Module, batch: dict[str, torch.Tensor | int]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over completion tokens and their count. scorer: a TokenLogProbs (or DDP around one).

    Position t predicts token t+1, so the positions that matter are those whose next label is not IGNORE; only
    their hidden states go through the LM head, a chunk at a time (logprobs.py).
    """
    labels = batch["labels"]  # [B, T]
    targets_mask = labels[:, 1:] != IGNORE  # [B, T-1]
    predict = F.pad(targets_mask, (0, 1), value=False)  # [B, T]: positions whose next token is a target
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logps, _ = scorer(inputs, predict, labels[:, 1:][targets_mask])
    return -logps.sum(), int(targets_mask.sum())


# ----------------------------------------------------------------------------------------------------------------
# Training


def train(opts: SFTOptions) -> dict[str, float]:
    """Run SFT end to end; returns the final eval metrics ({"loss", "ppl"}). Writes OUT (rank 0)."""
    with training_runtime(opts.device, opts.precision, opts.seed) as rt:
        # Data before model: bad data fails in a second, not after loading 7B weights.
        train_rows = load_split(opts.data, "train", "instruct")
        test_rows = load_split(opts.data, "test", "instruct")
        tokenizer, scorer = load_for_training(opts.model, "causal-lm", opts, rt, wrap=TokenLogProbs)
        require_positions(scorer.model, opts.model, opts.max_len, "--max-len")
        attn = scorer.model.config._attn_implementation
        layout = batch_layout(scorer.model)
        template = resolve_template(tokenizer, opts.template)
        train_examples = encode_rows(tokenizer, train_rows, template, opts.max_len)
        test_examples = encode_rows(tokenizer, test_rows, template, opts.max_len)
        if rt.is_main:
            n_tokens = sum(len(e.input_ids) for e in train_examples)
            n_cut = sum(len(e.input_ids) == opts.max_len for e in train_examples)
            print(
                f"sft: {len(train_examples)} train / {len(test_examples)} test examples, {n_tokens:,} train tokens, "
                f"{n_cut} at --max-len {opts.max_len}, template={template}"
            )
            if opts.batch_size > 0:
                print(f"sft: batches: {opts.batch_size} padded examples each (--batch-size), {attn} attention")
            else:
                print(f"sft: batches: {layout.kind}, {layout.reason}")
        results = _fit(opts, rt, scorer, layout, tokenizer.pad_token_id, train_examples, test_examples)
        finish_run(
            opts.out, scorer.model, tokenizer, _card(opts, template, results), rt, title=f"SFT {opts.model}",
            merge_lora=opts.merge_lora, dtype=opts.save_dtype,
        )
        return results


def _fit(
    opts: SFTOptions, rt: Runtime, scorer: TokenLogProbs, layout: Layout, pad_id: int, train_ex: list[Example],
    test_ex: list[Example],
) -> dict[str, float]:
    packed = opts.batch_size == 0 and layout.kind == "packed"

    def collate(indices: list[int], examples: list[Example]) -> dict[str, torch.Tensor | int]:
        chosen = [examples[i] for i in indices]
        return collate_packed(chosen, rt.device) if packed else collate_padded(chosen, pad_id, rt.device)

    def epoch_batches(epoch: int) -> list[list[int]]:
        return make_batches(train_ex, epoch_permutation(len(train_ex), opts.seed, epoch).tolist(), opts, layout)

    def loss_fn(m: nn.Module, indices: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        loss, n = completion_loss(m, collate(indices, train_ex))
        return loss, n, {}

    test_batches = make_batches(test_ex, list(range(len(test_ex))), opts, layout)

    def evaluate(m: nn.Module) -> dict[str, float]:
        loss_sum, count = 0.0, 0
        for indices in test_batches[rt.rank :: rt.world_size]:
            loss, n = completion_loss(m, collate(indices, test_ex))
            loss_sum += loss.item()
            count += n
        mean = rt.all_reduce_sum(loss_sum) / max(rt.all_reduce_sum(count), 1.0)
        return {"loss": mean, "ppl": math.exp(min(mean, 50.0))}

    return fit(
        opts,
        rt,
        scorer,
        epoch_batches=epoch_batches,
        loss_fn=loss_fn,
        evaluate=evaluate,
        batch_tokens=lambda indices: sum(len(train_ex[i].input_ids) for i in indices),
        desc="sft",
    )


def _card(opts: SFTOptions, template: str, results: dict[str, float]) -> ModelCardInfo:
    if template == "chat":
        fmt = "Prompts use the tokenizer's chat template (one user turn, then the assistant's answer)."
        build_prompt = (
            'text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, '
            "add_generation_prompt=True)"
        )
    else:
        fmt = 'Prompt format: `"Human: {prompt}\\n\\nAssistant: "`, the answer, then the eos token.'
        build_prompt = 'text = (tok.bos_token or "") + f"Human: {question}\\n\\nAssistant: "'
    usage = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{opts.out}")
model = AutoModelForCausalLM.from_pretrained("{opts.out}")
question = "如何评价……？"
{build_prompt}
ids = tok(text, return_tensors="pt", add_special_tokens=False)
print(tok.decode(model.generate(**ids, max_new_tokens=256)[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
"""
    return ModelCardInfo(
        task="sft",
        base_model=opts.model,
        data=opts.data,
        options=opts.to_dict(),
        results={f"eval_{k}": v for k, v in results.items()},
        usage=usage,
        extra=fmt + " The loss covers answer tokens only.",
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(SFTOptions, argv, "python -m zhihu_rlhf.train sft", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
