"""DPO: `python -m zhihu_rlhf.train dpo --model M --data PAIRS --out OUT`.

Learn from chosen/rejected pairs directly, with no reward model (Rafailov et al. 2023).

The implicit reward of a response y is beta * (log pi(y|x) - log pi_ref(y|x)); the sigmoid loss pushes
the chosen response's implicit reward above the rejected one's. The reference log-probs come from the
frozen starting model and are computed once, before training (with --lora: the model with its adapters switched
off, so no second copy of the weights is ever held). Dropout is off in the trained policy too, so at step 0
(policy == reference) every pair's loss is exactly log 2 and no pair counts as ranked right.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.data import iter_chunks, load_split, pad_ids, shuffled_batches
from zhihu_rlhf.train.lora import WithoutAdapters, is_peft
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.loop import fit
from zhihu_rlhf.train.models import disable_dropout, load_for_training, require_positions
from zhihu_rlhf.train.options import TrainOptions, parse_options
from zhihu_rlhf.train.prompts import TEMPLATES, EncodedPair, encode_pairs, resolve_template
from zhihu_rlhf.train.report import ModelCardInfo, finish_run
from zhihu_rlhf.train.runtime import Runtime, gathered, training_runtime


@dataclass(kw_only=True)
class DPOOptions(TrainOptions):
    """`python -m zhihu_rlhf.train dpo` options. Defaults follow common DPO practice for 0.5B-7B SFT models."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {"max_len": 256, "grad_accum": 1, "lr": 1e-4}

    model: str = field(metadata={"help": "the SFT model to start from (also the frozen reference): folder, Hub id or 'tiny'"})
    template: str = field(
        default="auto", metadata={"help": "prompt format, as in SFT: auto, chat, plain", "choices": TEMPLATES}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the implicit KL constraint to the reference"})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "conservative DPO: assumed probability that a pair's label is flipped (0 = plain DPO)"}
    )
    max_len: int = field(default=1024, metadata={"help": "tokens per prompt + response, longer ones are cut"})
    drop_cut_answers: bool = field(
        default=False,
        metadata={"help": "drop pairs with an answer longer than --max-len allows (TRL drops them); kept by default, "
                  "cut without their end token"},
    )
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch (chosen and rejected in one forward)"})
    grad_accum: int = field(default=8, metadata={"help": "micro-batches per optimizer step (per process)"})
    lr: float = field(default=1e-6, metadata={"help": "peak learning rate (AdamW)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warmup before cosine decay"})

    def validate(self) -> None:
        super().validate()
        if not self.beta > 0:
            raise UserError(f"--beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_len < 8:
            raise UserError(f"--max-len must be >= 8, got {self.max_len}")


# ----------------------------------------------------------------------------------------------------------------
# Loss
def dpo_loss(
    policy_chosen_logps: torch.Tensor,  # (B,) sum of log pi over the chosen response tokens
    policy_rejected_logps: torch.Tensor,  # (B,)
    ref_chosen_logps: torch.Tensor,  # (B,) same under the frozen reference model
    ref_rejected_logps: torch.Tensor,  # (B,)
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) of each pair.

    label_smoothing = eps > 0 is the conservative DPO variant: assume each label is flipped with
    probability eps. Returns (losses, chosen_rewards, rejected_rewards), all (B,), the rewards detached.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# ----------------------------------------------------------------------------------------------------------------
# Sequence log-probs


def sequence_logps(
    scorer: nn.Module, examples: list[tuple[list[int], int]], pad_id: int, device: torch.device
) -> torch.Tensor:
    """(N,) sum of log p(token) over each example's response tokens (those after its prompt), one padded forward.

    scorer: a TokenLogProbs (or DDP around one). Only positions that predict a response token go through the LM
    head, a chunk at a time, so the [tokens, vocab] logits of prompts, padding and whole batches are never built.
    """
    input_ids, attention_mask = pad_ids([ids for ids, _ in examples], pad_id)  # [N, L]
    prompt_lens = torch.tensor([prompt_len for _, prompt_len in examples])  # [N]
    # [N, L]: token is a response token (past its prompt and not padding)
    targets_mask = attention_mask.bool() & (torch.arange(input_ids.shape[1]) >= prompt_lens[:, None])
    input_ids, attention_mask, targets_mask = input_ids.to(device), attention_mask.to(device), targets_mask.to(device)
    predict = F.pad(targets_mask[:, 1:], (0, 1), value=False)  # [N, L]: positions whose next token is a response token
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    token_logps, _ = scorer(inputs, predict, input_ids[:, 1:][targets_mask[:, 1:]])  # [K], row-major like predict
    rows = predict.nonzero()[:, 0]  # [K] which example each kept position belongs to
    return torch.zeros(len(examples), device=device).index_add(0, rows, token_logps)


def pair_logps(
    scorer: nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probs, each (B,), from ONE forward over the 2B sequences."""
    examples = [(p.chosen_ids, p.prompt_len) for p in pairs]
    examples += [(p.rejected_ids, p.prompt_len) for p in pairs]
    logps = sequence_logps(scorer, examples, pad_id, device)
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def reference_logps(
    scorer: nn.Module, pairs: list[EncodedPair], pad_id: int, rt: Runtime, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every pair under the starting model, computed once (it is the frozen reference).

    Every rank computes all pairs: it is one inference pass, and no rank then waits on another for its values.
    """
    scorer.eval()
    chosen, rejected = [], []
    with rt.autocast():
        for chunk in iter_chunks(pairs, batch_size * 2):
            c, r = pair_logps(scorer, list(chunk), pad_id, rt.device)
            chosen.append(c.float())
            rejected.append(r.float())
    return torch.cat(chosen), torch.cat(rejected)


# ----------------------------------------------------------------------------------------------------------------
# Training


def train(opts: DPOOptions) -> dict[str, float]:
    """Run DPO end to end; returns the final eval metrics (loss, accuracy, margin, ...). Writes OUT (rank 0)."""
    with training_runtime(opts.device, opts.precision, opts.seed) as rt:
        train_rows = load_split(opts.data, "train", "pairs")
        test_rows = load_split(opts.data, "test", "pairs")
        tokenizer, scorer = load_for_training(opts.model, "causal-lm", opts, rt, wrap=TokenLogProbs)
        require_positions(scorer.model, opts.model, opts.max_len, "--max-len")
        template = resolve_template(tokenizer, opts.template)
        train_pairs = encode_pairs(tokenizer, train_rows, template, opts.max_len, opts.drop_cut_answers, "train")
        test_pairs = encode_pairs(tokenizer, test_rows, template, opts.max_len, opts.drop_cut_answers, "test")
        # The reference log-probs are computed in eval mode; the policy trains in train mode, so without this
        # a config's dropout (OPT, GPT-2: 0.1) makes policy != reference at step 0 and the loss starts off log 2.
        disable_dropout(scorer)
        pad_id = tokenizer.pad_token_id
        if rt.is_main:
            print(f"dpo: {len(train_pairs)} train / {len(test_pairs)} test pairs, template={template}; reference log-probs ...")
        # The reference is the starting model; with LoRA, the same weights with the adapters switched off.
        reference = WithoutAdapters(scorer, scorer.model) if is_peft(scorer.model) else scorer
        with gathered(scorer):
            ref_train = reference_logps(reference, train_pairs, pad_id, rt, opts.batch_size)
            ref_test = reference_logps(reference, test_pairs, pad_id, rt, opts.batch_size)
        results = _fit(opts, rt, scorer, pad_id, train_pairs, test_pairs, ref_train, ref_test)
        finish_run(
            opts.out, scorer.model, tokenizer, _card(opts, template, results), rt, title=f"DPO {opts.model}",
            merge_lora=opts.merge_lora, dtype=opts.save_dtype,
        )
        return results


def _pair_metrics(
    model: nn.Module, pairs: list[EncodedPair], indices: list[int], ref: tuple[torch.Tensor, torch.Tensor],
    opts: DPOOptions, pad_id: int, device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed DPO loss over the pairs at `indices` and summed metrics (reward accuracy, margin, rewards)."""
    chosen_logps, rejected_logps = pair_logps(model, [pairs[i] for i in indices], pad_id, device)
    index = torch.tensor(indices, device=ref[0].device)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen_logps, rejected_logps, ref[0][index].to(device), ref[1][index].to(device), opts.beta, opts.label_smoothing
    )
    margins = chosen_rewards - rejected_rewards
    sums = {
        "accuracy": (margins > 0).float().sum().item(),
        "margin": margins.sum().item(),
        "chosen_reward": chosen_rewards.sum().item(),
        "rejected_reward": rejected_rewards.sum().item(),
    }
    return losses.sum(), sums


def _fit(
    opts: DPOOptions, rt: Runtime, model: nn.Module, pad_id: int, train_pairs: list[EncodedPair],
    test_pairs: list[EncodedPair], ref_train: tuple[torch.Tensor, torch.Tensor], ref_test: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, float]:
    def epoch_batches(epoch: int) -> list[list[int]]:
        return shuffled_batches(len(train_pairs), opts.batch_size, opts.seed, epoch)

    def loss_fn(m: nn.Module, indices: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        loss_sum, sums = _pair_metrics(m, train_pairs, indices, ref_train, opts, pad_id, rt.device)
        return loss_sum, len(indices), sums

    test_batches = [list(c) for c in iter_chunks(range(len(test_pairs)), opts.batch_size * 2)]

    def evaluate(m: nn.Module) -> dict[str, float]:
        totals = {"loss": 0.0}
        for indices in test_batches[rt.rank :: rt.world_size]:
            loss_sum, sums = _pair_metrics(m, test_pairs, indices, ref_test, opts, pad_id, rt.device)
            totals["loss"] += loss_sum.item()
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + v
        n = rt.all_reduce_sum(sum(len(b) for b in test_batches[rt.rank :: rt.world_size]))
        return {k: rt.all_reduce_sum(v) / max(n, 1.0) for k, v in totals.items()}

    return fit(
        opts,
        rt,
        model,
        epoch_batches=epoch_batches,
        loss_fn=loss_fn,
        evaluate=evaluate,
        batch_tokens=lambda idx: sum(len(train_pairs[i].chosen_ids) + len(train_pairs[i].rejected_ids) for i in idx),
        desc="dpo",
    )


def _card(opts: DPOOptions, template: str, results: dict[str, float]) -> ModelCardInfo:
    usage = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{opts.out}")
model = AutoModelForCausalLM.from_pretrained("{opts.out}")
# Prompt the model exactly as its SFT starting point (template: {template}); see that model's card.
"""
    return ModelCardInfo(
        task="dpo",
        base_model=opts.model,
        data=opts.data,
        options=opts.to_dict(),
        results={f"eval_{k}": v for k, v in results.items()},
        usage=usage,
        extra=(
            f"Trained with the sigmoid DPO loss (beta={opts.beta}) against the frozen starting model. "
            "eval_accuracy: share of held-out pairs whose chosen answer gets the higher implicit reward "
            "beta * log(pi / pi_ref); eval_margin: mean chosen minus rejected implicit reward."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(DPOOptions, argv, "python -m zhihu_rlhf.train dpo", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
