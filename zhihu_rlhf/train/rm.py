"""Reward model: `python -m zhihu_rlhf.train rm --model M --data PAIRS --out OUT`.

A one-output AutoModelForSequenceClassification gives a scalar reward for prompt + response (same prompt format as
SFT, see prompts.render_prompt), read where prompts.score_positions says: the last real token, the end token of a
finished answer. scoring.TokenScorer keeps the score head's output at every position so that RM training, `score` and
PPO (reward and value) all read the same way; the classifier's own pooled output is at the last non-pad token,
one token earlier when pad == EOS. Each micro-batch puts the chosen and the rejected responses of its pairs in ONE
forward pass ([2B, T]: chosen rows first), then

    loss = -log sigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2

The optional margin asks for a minimum gap; the centering term (Eisenstein et al., 2023) keeps rewards near zero,
which PPO's value model and reward clipping like. Eval: pairwise accuracy and mean margin on the test split.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.data import iter_chunks, load_split, pad_ids, shuffled_batches
from zhihu_rlhf.train.loop import fit
from zhihu_rlhf.train.models import load_for_training, require_positions
from zhihu_rlhf.train.options import TrainOptions, parse_options
from zhihu_rlhf.train.prompts import TEMPLATES, EncodedPair, encode_example, encode_pairs, resolve_template
from zhihu_rlhf.train.scoring import TokenScorer, sequence_scores
from zhihu_rlhf.train.report import ModelCardInfo, finish_run
from zhihu_rlhf.train.runtime import Runtime, training_runtime


@dataclass(kw_only=True)
class RMOptions(TrainOptions):
    """`python -m zhihu_rlhf.train rm` options. Defaults suit 0.5B-7B models on one 80 GB GPU."""

    TINY_DEMO: ClassVar[dict[str, Any]] = {"max_len": 256, "lr": 1e-4}

    model: str = field(metadata={"help": "base model (usually the SFT output): Hub id, local folder, or 'tiny'"})
    template: str = field(
        default="auto", metadata={"help": "prompt format: auto (chat template if any), chat, plain", "choices": TEMPLATES}
    )
    max_len: int = field(default=1024, metadata={"help": "tokens per prompt + response, longer ones are cut"})
    drop_cut_answers: bool = field(
        default=False,
        metadata={"help": "drop pairs with an answer longer than --max-len allows (TRL drops them); kept by default, "
                  "cut without their end token, so the RM learns to score them mid-answer"},
    )
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch (2x sequences in the forward pass)"})
    margin: float = field(default=0.0, metadata={"help": "required reward gap: -log sigmoid(r_c - r_r - margin)"})
    center_coef: float = field(
        default=0.0, metadata={"help": "reward-centering weight on (r_c + r_r)^2 (e.g. 0.01; 0 = off)"}
    )
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})

    def validate(self) -> None:
        super().validate()
        if self.max_len < 8:
            raise UserError(f"--max-len must be >= 8, got {self.max_len}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.center_coef < 0:
            raise UserError(f"--center-coef must be >= 0, got {self.center_coef}")


def collate_sequences(seqs: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """[N, longest] right-padded ids + attention_mask."""
    input_ids, attention_mask = pad_ids(seqs, pad_id)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def pair_rewards(
    scorer: nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and rejected sides, [B] each, from one forward pass over [2B, T]. scorer: a TokenScorer."""
    batch = collate_sequences([p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs], pad_id, device)
    rewards = sequence_scores(scorer, batch["input_ids"], batch["attention_mask"])  # [2B]
    return rewards[: len(pairs)], rewards[len(pairs) :]


def pairwise_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0, center_coef: float = 0.0
) -> torch.Tensor:
    """Summed over pairs: -log sigmoid(r_c - r_r - margin) + center_coef * (r_c + r_r)^2."""
    loss = -F.logsigmoid(r_chosen - r_rejected - margin)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss.sum()


@torch.no_grad()
def score(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    responses: list[str],
    *,
    template: str = "auto",
    max_len: int = 1024,
    batch_size: int = 16,
) -> torch.Tensor:
    """Rewards [N] for (prompt, response) pairs, formatted and read exactly as in training.

    model: the saved reward model (AutoModelForSequenceClassification).
    """
    device = next(model.parameters()).device
    scorer = TokenScorer(model)
    seqs = [encode_example(tokenizer, p, r, template, max_len)[0] for p, r in zip(prompts, responses, strict=True)]
    out = []
    for chunk in iter_chunks(seqs, batch_size):
        batch = collate_sequences(list(chunk), tokenizer.pad_token_id, device)
        out.append(sequence_scores(scorer, batch["input_ids"], batch["attention_mask"]).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# Training


def train(opts: RMOptions) -> dict[str, float]:
    """Train the reward model; returns the final eval metrics ({"loss", "accuracy", "margin"}). Writes OUT (rank 0)."""
    with training_runtime(opts.device, opts.precision, opts.seed) as rt:
        train_rows = load_split(opts.data, "train", "pairs")
        test_rows = load_split(opts.data, "test", "pairs")
        tokenizer, scorer = load_for_training(opts.model, "reward", opts, rt, wrap=TokenScorer)
        require_positions(scorer.model, opts.model, opts.max_len, "--max-len")
        template = resolve_template(tokenizer, opts.template)
        train_pairs = encode_pairs(tokenizer, train_rows, template, opts.max_len, opts.drop_cut_answers, "train")
        test_pairs = encode_pairs(tokenizer, test_rows, template, opts.max_len, opts.drop_cut_answers, "test")
        if rt.is_main:
            print(f"rm: {len(train_pairs)} train / {len(test_pairs)} test pairs, template={template}")
        # Trained through the scorer, so training reads the reward where `score` and PPO read it.
        results = _fit(opts, rt, scorer, tokenizer.pad_token_id, train_pairs, test_pairs)
        finish_run(
            opts.out, scorer.model, tokenizer, _card(opts, template, results), rt, title=f"Reward model {opts.model}",
            merge_lora=opts.merge_lora, dtype=opts.save_dtype,
        )
        return results


def _fit(
    opts: RMOptions, rt: Runtime, scorer: TokenScorer, pad_id: int, train_pairs: list[EncodedPair], test_pairs: list[EncodedPair]
) -> dict[str, float]:
    def epoch_batches(epoch: int) -> list[list[int]]:
        return shuffled_batches(len(train_pairs), opts.batch_size, opts.seed, epoch)

    def loss_fn(m: nn.Module, indices: list[int]) -> tuple[torch.Tensor, float, dict[str, float]]:
        r_c, r_r = pair_rewards(m, [train_pairs[i] for i in indices], pad_id, rt.device)
        loss = pairwise_loss(r_c, r_r, opts.margin, opts.center_coef)
        gap = (r_c - r_r).detach()
        return loss, len(indices), {"accuracy": (gap > 0).sum().item(), "margin": gap.sum().item()}

    test_chunks = list(iter_chunks(test_pairs, opts.batch_size))

    def evaluate(m: nn.Module) -> dict[str, float]:
        loss_sum, correct, gap_sum, count = 0.0, 0.0, 0.0, 0
        for chunk in test_chunks[rt.rank :: rt.world_size]:
            r_c, r_r = pair_rewards(m, list(chunk), pad_id, rt.device)
            loss_sum += pairwise_loss(r_c, r_r, opts.margin, opts.center_coef).item()
            correct += (r_c > r_r).sum().item()
            gap_sum += (r_c - r_r).sum().item()
            count += len(chunk)
        n = max(rt.all_reduce_sum(count), 1.0)
        return {
            "loss": rt.all_reduce_sum(loss_sum) / n,
            "accuracy": rt.all_reduce_sum(correct) / n,
            "margin": rt.all_reduce_sum(gap_sum) / n,
        }

    return fit(
        opts,
        rt,
        scorer,
        epoch_batches=epoch_batches,
        loss_fn=loss_fn,
        evaluate=evaluate,
        batch_tokens=lambda idx: sum(len(train_pairs[i].chosen_ids) + len(train_pairs[i].rejected_ids) for i in idx),
        desc="rm",
    )


def _card(opts: RMOptions, template: str, results: dict[str, float]) -> ModelCardInfo:
    fmt = (
        "Inputs use the tokenizer's chat template (user turn = question, assistant turn = answer, ending on the"
        " turn's end token)."
        if template == "chat"
        else 'Input format: `"Human: {question}\\n\\nAssistant: {answer}"` followed by the eos token.'
    )
    usage = f"""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from zhihu_rlhf.train.rm import score   # formats the text exactly as in training
tok = AutoTokenizer.from_pretrained("{opts.out}")
rm = AutoModelForSequenceClassification.from_pretrained("{opts.out}")
print(score(rm, tok, ["问题……"], ["回答……"], template="{template}"))   # higher = more preferred
"""
    return ModelCardInfo(
        task="rm",
        base_model=opts.model,
        data=opts.data,
        options=opts.to_dict(),
        results={f"eval_{k}": v for k, v in results.items()},
        usage=usage,
        extra=fmt
        + " The scalar reward is read at the last token of prompt + answer (the end token), as `score` does; a plain"
        " classifier forward reads at the last non-pad token instead, one token earlier when pad == eos. Trained"
        " on chosen/rejected pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected); `eval_accuracy` is the share of held-out pairs ranked right.",
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(RMOptions, argv, "python -m zhihu_rlhf.train rm", __doc__.splitlines()[0])
    train(opts)
    return 0


if __name__ == "__main__":
    cli_main(main)
