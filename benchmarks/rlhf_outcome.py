"""Does cleaning pay off? Reward models and policies trained on each recipe's sets, measured against the truth.

A label is not a model: this trains the project's own trainer on pair sets built by different recipes from the
SAME synthetic world, and measures the models against what the text truly shows. The readable worlds (synth
worlds `readable`, `readable_popularity`) write every answer so that its text shows its latent quality through
features a model can learn, and give each author a visible style that follows their popularity, not their
quality; `zhihu_rlhf.synth.read_quality` reads the quality back from any text (the gold reader), generated text
included. On a world whose text shows no quality (`length`: votes grow with answer length) only what needs no
gold reader is measured (length_sensitivity).

Recipes (pair sets from one world file, built only from training questions):
    project       `build pairs` defaults: the vote model (full), today's rules, the 3,000 most confident pairs
    article       the article's rules (same question, created within 30 days, >= 2x votes, each response once),
                  3,000 drawn at random, no vote model (benchmarks/pair_quality.py)
    naive         per question the most- vs the least-upvoted answer, 3,000 drawn at random
    oracle        the project's pairs relabelled by the truth (latent quality): the ceiling
    project_10k   the project's recipe with --limit 10000
    project_all   the project's recipe with --limit 0 (every pair the rules allow)

Every model starts from the same small start (a small Llama with a BPE tokenizer trained on the world's own text,
built offline, random weights: see `build_start`), or from --model. Stages (`--stages`, any of):
    rm      `train rm` on each recipe's pairs. Measured on held-out questions that no training set touched:
            gold_accuracy       share of held-out answer pairs (same question, gold scores more than GOLD_MARGIN
                                apart) the RM orders like the gold reader
            style_sensitivity   mean |RM score change| when an answer's author style is swapped for another author's
                                (same sentences, same gold score), in units of the RM's score sd over held-out answers
            length_sensitivity  mean RM score change (signed) when an answer is padded with ASIDE_PAD neutral asides
                                the gold reader skips, in the same units; the RM reads the whole padded answer
    sft     `train sft` from the start on the training questions' instruct set built by the project's rule
            (`build instruct` defaults, its surest questions first) -> recipe `project`; and, as the comparison, on
            the same questions' most-upvoted answers (the article's rule) -> recipe `article`.
    dpo     `train dpo` on each recipe's pairs, from the project-rule SFT policy.
    ppo, rloo, grpo
            `train ppo|rloo|grpo` from the same SFT policy, the recipe's RM (same seed) as the reward, on the
            training questions' prompts; a checkpoint every `rl_eval_every` iterations is measured too, so proxy
            and gold can be drawn against KL (--plot). Asking for one of them trains the RMs (stage rm) too.
Every policy is measured on the same held-out prompts with the same sampling (temperature 1, the same seed):
    gold        mean gold score (read_quality) of its responses (a field added to the record)
    gold_gain   gold minus the SFT start's gold (same prompts, same sampling); for stage sft: minus the article-rule
                SFT's gold
    proxy       mean score of its responses under the recipe's RM (null where that RM was not trained)
    kl          mean per-response KL to the SFT start estimated on the policy's own samples:
                sum over response tokens of log pi - log pi_ref (0 for the start itself)
    length      mean response length in tokens (added)
    step        the RL iteration or DPO step a measured checkpoint was taken at (0: the SFT start under this
                recipe's RM; the last: the final policy); null for rm, sft, and dpo measured at its end only (added)

    python benchmarks/rlhf_outcome.py --worlds readable,readable_popularity --seeds 0,1,2 --stages rm \
        --json rm_table.json                     # the RM table (2-core CPU)
    python benchmarks/rlhf_outcome.py --worlds readable_popularity --recipes project,article,oracle \
        --stages rm,sft,dpo,ppo --json policies.json --plot curves.png      # the policy stages
    python benchmarks/rlhf_outcome.py --worlds readable_popularity --recipes oracle --seeds 0 --stages sft,dpo \
        --budget larger                          # can the policy stage learn at all? the ceiling at a larger start
    python benchmarks/rlhf_outcome.py --quick    # the learning check the tests run: oracle RM beats chance
    python benchmarks/rlhf_outcome.py --report a.json,b.json --plot curves.png   # the tables of earlier runs together
    python benchmarks/rlhf_outcome.py --model Qwen/Qwen2.5-0.5B --device cuda   # a real start on a GPU

Records (`--json FILE`): {world, recipe, size, seed, stage, step, label_right, gold_accuracy, gold, gold_gain, proxy,
kl, length, style_sensitivity, length_sensitivity}, null where a field does not apply (label_right: the share of the
recipe's pairs whose chosen answer is truly better). The printed tables give each recipe's
mean over seeds with a 95% t interval; for DPO measured along its run, also each recipe's gold_gain at one matched
KL (`print_matched_kl`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pair_quality.py, the article's and naive baselines

from pair_quality import article_pairs, naive_pairs  # noqa: E402

from zhihu_rlhf import synth  # noqa: E402
from zhihu_rlhf.dedupe import DedupeOptions  # noqa: E402
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, length_drop_reason, select_instruct  # noqa: E402
from zhihu_rlhf.pairs import PairOptions, select_pairs  # noqa: E402
from zhihu_rlhf.pipelines.answers import prepare_answers  # noqa: E402
from zhihu_rlhf.split import unit_hash  # noqa: E402
from zhihu_rlhf.votes import VoteModelOptions  # noqa: E402

RECIPES = ("project", "article", "naive", "oracle", "project_10k", "project_all")
STAGES = ("rm", "sft", "dpo", "ppo", "rloo", "grpo")
RL_STAGES = ("ppo", "rloo", "grpo")
PAIRS = 3_000
HELDOUT_FRACTION = 0.12
"""Question groups with unit_hash(question_group) below this are held out of every training set."""
GOLD_MARGIN = 0.5
"""Held-out pairs count only where the gold scores (-2 .. +2) are further apart than this."""
EVAL_PAIRS = 600
PROBE_ANSWERS = 120
"""Held-out answers whose style is swapped, and which are padded, for the sensitivities."""
ASIDE_PAD = 6
RECORD_FIELDS = (
    "world", "recipe", "size", "seed", "stage", "step", "label_right", "gold_accuracy", "gold", "gold_gain", "proxy",
    "kl", "length", "style_sensitivity", "length_sensitivity",
)


@dataclass(frozen=True)
class Budget:
    """How big the world and the runs are: the full benchmark, or the --quick learning check."""

    rows: int = 200_000
    mean_answer_chars: int = 100
    hidden: int = 64
    layers: int = 1
    vocab: int = 6_000
    rm_epochs: float = 1.0
    rm_lr: float = 3e-3
    rm_batch: int = 64
    max_len: int = 256
    """tokens of prompt + answer that RM, SFT and DPO training read: whole for ~98% of the answers (median 88), so
    the RM learns to read an answer to its end, where padding shows (the first RM table read 96 and cut the asides)"""
    eval_pairs: int = EVAL_PAIRS
    probe_answers: int = PROBE_ANSWERS
    sft_examples: int = 3_000
    """instruct rows SFT trains on: the first of the project's set (surest first), and the same questions' article rows"""
    sft_lr: float = 3e-3
    sft_epochs: float = 1.0
    sft_batch_tokens: int = 4_096
    dpo_lr: float = 5e-4
    dpo_beta: float = 0.1
    dpo_batch: int = 16
    dpo_pairs: int = 0
    """pairs DPO trains on: the set's first (0: the whole set)"""
    dpo_eval_every: int = 0
    """measure DPO's policy every N steps too (0: only the final one), for gold against KL along the run"""
    rl_lr: float = 3e-4
    rl_iterations: int = 30
    rl_prompts: int = 32
    """prompts per RL iteration (RLOO and GRPO: a quarter of them, 4 samples each, the same number of responses)"""
    rl_eval_every: int = 10
    eval_prompts: int = 128
    """held-out prompts every policy answers once, for gold, proxy, KL and length"""
    max_prompt_len: int = 64
    max_new_tokens: int = 128


REAL_MODEL = Budget(rm_lr=1e-5, rm_batch=16, max_len=512, sft_lr=2e-5, dpo_lr=1e-6, rl_lr=1e-6, max_prompt_len=256,
                    max_new_tokens=512)
"""With --model (a pretrained start): the learning rates and lengths a 0.5B-7B model trains with."""
LARGER = Budget(hidden=128, layers=2, sft_epochs=2.0, dpo_lr=1e-4, dpo_beta=0.3, dpo_eval_every=47)
"""--budget larger: can the policy stage learn at all? A start that may write sentences (2 layers, 128 wide, SFT
twice over its rows) and a smaller DPO step (the default's DPO drifted 27-62 nats and lost gold even on truth).
DPO is also measured at every quarter of its 188 steps, to compare recipes at a matched KL (checkpoints do not change
what is trained)."""
BUDGETS = {"default": Budget(), "larger": LARGER}
QUICK = Budget(rows=12_000, rm_epochs=2.0, rm_lr=2e-3, rm_batch=32, max_len=128, eval_pairs=300, probe_answers=60,
               sft_examples=200, dpo_pairs=96, dpo_eval_every=3, rl_iterations=2, rl_prompts=8, rl_eval_every=1, eval_prompts=16, max_new_tokens=32)


# ---------------------------------------------------------------------------------------------------------------
# The world and its pair sets


@dataclass
class World:
    name: str
    answers: pl.DataFrame  # canonical answers with the default vote model's quality columns
    truth: pl.DataFrame  # answer_id, quality (latent), gold (what the text shows)
    heldout: pl.Series  # question groups no training set touches
    readable: bool  # whether the text shows quality (the gold reader means something)

    def training_answers(self) -> pl.DataFrame:
        return self.answers.filter(~pl.col("question_group").is_in(self.heldout.implode()))

    def heldout_answers(self) -> pl.DataFrame:
        return self.answers.filter(pl.col("question_group").is_in(self.heldout.implode()))


def load_world(name: str, budget: Budget, folder: Path, seed: int = 1) -> World:
    data, truth_path = synth.write(budget.rows, folder / f"{name}.parquet", seed, world=name,
                                   mean_answer_chars=budget.mean_answer_chars)
    answers, _ = prepare_answers(str(data), DedupeOptions(), VoteModelOptions())
    truth = pl.read_parquet(truth_path).select("answer_id", "quality").drop_nulls("answer_id").unique("answer_id")
    gold = answers.select("answer_id", gold=pl.Series(synth.read_quality(answers["answer"])))
    truth = truth.join(gold, on="answer_id")
    groups = answers["question_group"].unique()
    heldout = groups.filter(unit_hash(groups) < HELDOUT_FRACTION)
    return World(name, answers, truth, heldout, synth.world_named(name).text_quality > 0)


def _with_texts(pairs: pl.DataFrame, answers: pl.DataFrame) -> pl.DataFrame:
    """prompt, chosen, rejected (and ids) of pairs given by answer ids."""
    texts = answers.select("answer_id", "question", "answer")
    return (
        pairs.select("chosen_answer_id", "rejected_answer_id")
        .join(texts.rename({"answer_id": "chosen_answer_id", "question": "prompt", "answer": "chosen"}), on="chosen_answer_id", maintain_order="left")
        .join(texts.select(rejected_answer_id="answer_id", rejected="answer"), on="rejected_answer_id", maintain_order="left")
    )


def relabel_by_truth(pairs: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """The same pairs with chosen and rejected swapped wherever the latent quality says the other is better."""
    q = truth.select("answer_id", "quality")
    joined = pairs.join(q.rename({"answer_id": "chosen_answer_id", "quality": "qc"}), on="chosen_answer_id", maintain_order="left").join(
        q.rename({"answer_id": "rejected_answer_id", "quality": "qr"}), on="rejected_answer_id", maintain_order="left"
    )
    wrong = pl.col("qc") < pl.col("qr")
    return joined.select(
        "prompt",
        chosen=pl.when(wrong).then("rejected").otherwise("chosen"),
        rejected=pl.when(wrong).then("chosen").otherwise("rejected"),
        chosen_answer_id=pl.when(wrong).then("rejected_answer_id").otherwise("chosen_answer_id"),
        rejected_answer_id=pl.when(wrong).then("chosen_answer_id").otherwise("rejected_answer_id"),
    )


def pair_sets(world: World, recipes: list[str], seed: int = 0) -> dict[str, pl.DataFrame]:
    """Each recipe's pairs (prompt, chosen, rejected, chosen/rejected_answer_id) from the training questions only."""
    train = world.training_answers()
    columns = ["prompt", "chosen", "rejected", "chosen_answer_id", "rejected_answer_id"]
    sets: dict[str, pl.DataFrame] = {}
    every_project = select_pairs(train, PairOptions(limit=0))[0].select(columns)  # best first
    for recipe in recipes:
        if recipe == "project":
            sets[recipe] = every_project.head(PairOptions().limit)
        elif recipe == "project_10k":
            sets[recipe] = every_project.head(10_000)
        elif recipe == "project_all":
            sets[recipe] = every_project
        elif recipe == "oracle":
            sets[recipe] = relabel_by_truth(every_project.head(PairOptions().limit), world.truth)
        elif recipe == "article":
            sets[recipe] = _with_texts(article_pairs(train, seed).head(PAIRS), train)
        elif recipe == "naive":
            drawn = naive_pairs(train, LengthFilter()).sample(fraction=1.0, shuffle=True, seed=seed).head(PAIRS)
            sets[recipe] = _with_texts(drawn, train)
        else:
            raise ValueError(f"unknown recipe {recipe!r}")
    return sets


def instruct_sets(world: World, size: int) -> dict[str, pl.DataFrame]:
    """prompt, completion for SFT, on the same training questions: the project's rule (`build instruct` defaults,
    its `size` surest questions) and the article's rule (each of those questions' most-upvoted usable answer)."""
    train = world.training_answers()
    project = select_instruct(train, InstructOptions())[0].head(size)
    by, descending = ["upvotes", "answer_id"], [True, False]
    most_upvoted = (
        train.filter(length_drop_reason(LengthFilter()).is_null())
        .sort(by, descending=descending)
        .group_by("question_group", maintain_order=True)
        .first()
        .select("question_group", prompt="question", completion="answer")
    )
    article = project.select("question_group").join(most_upvoted, on="question_group", maintain_order="left")
    return {"project": project.select("prompt", "completion"), "article": article.select("prompt", "completion")}


def label_accuracy(pairs: pl.DataFrame, truth: pl.DataFrame) -> tuple[float, float]:
    """(share of pairs whose chosen has the higher latent quality, ... the higher gold score)."""
    joined = pairs.join(truth.rename({"answer_id": "chosen_answer_id", "quality": "qc", "gold": "gc"}), on="chosen_answer_id").join(
        truth.rename({"answer_id": "rejected_answer_id", "quality": "qr", "gold": "gr"}), on="rejected_answer_id"
    )
    return float((joined["qc"] > joined["qr"]).mean()), float((joined["gc"] > joined["gr"]).mean())


@dataclass
class Probes:
    """Held-out material every model is measured on."""

    pairs: pl.DataFrame  # prompt, better, worse: gold scores more than GOLD_MARGIN apart (latent quality where the
    # text shows none: only the RM's own test split then)
    prompts: list[str]  # PROBE_ANSWERS held-out answers (in a readable style where the world has styles), their question ...
    answers: list[str]  # ... the answer as written
    swapped: list[str] | None  # ... in another author's style (None: the world has no styles)
    padded: list[str]  # ... padded with neutral asides
    policy_prompts: list[str]  # held-out questions every policy answers


def make_probes(world: World, budget: Budget, seed: int = 0) -> Probes:
    # Sorted before every seeded draw: the joins' row order differs between processes, and with it what a seed draws.
    held = world.heldout_answers().join(world.truth.select("answer_id", "quality", "gold"), on="answer_id").sort("answer_id")
    by = "gold" if world.readable else "quality"
    a = held.select("question_group", "question", "answer_id", "answer", score=by)
    pairs = (
        a.join(a.select("question_group", other_id="answer_id", other="answer", other_score="score"), on="question_group")
        .filter((pl.col("score") - pl.col("other_score") > GOLD_MARGIN))
        .sort("answer_id", "other_id")
        .sample(fraction=1.0, shuffle=True, seed=seed)
        .filter(pl.int_range(pl.len()).over("question_group") < 3)  # a few per question, so no question dominates
        .head(budget.eval_pairs)
        .select(prompt="question", better="answer", worse="other")
    )
    rng = np.random.default_rng(seed)
    if world.readable:
        styled = held.filter(pl.col("answer").map_elements(lambda t: synth.style_of(t) is not None, return_dtype=pl.Boolean))
        probe = styled.sample(n=min(budget.probe_answers, styled.height), seed=seed)
        swapped = []
        for text in probe["answer"]:
            own = synth.style_of(text)
            other = int(rng.integers(synth.readable.N_STYLES - 1))
            swapped.append(synth.swap_style(text, other + (other >= own)))
    else:
        probe, swapped = held.sample(n=min(budget.probe_answers, held.height), seed=seed), None
    answers = probe["answer"].to_list()
    padded = [synth.pad_with_asides(t, ASIDE_PAD) for t in answers]
    questions = held.select("question").unique(maintain_order=True).sample(fraction=1.0, shuffle=True, seed=seed)
    return Probes(pairs, probe["question"].to_list(), answers, swapped, padded,
                  questions["question"].head(budget.eval_prompts).to_list())


# ---------------------------------------------------------------------------------------------------------------
# The small model every run starts from


def build_start(texts: list[str], folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    """A BPE tokenizer trained on `texts` and a small random Llama with it, saved where `train` can load them."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_split(train: pl.DataFrame, test: pl.DataFrame, columns: list[str], folder: Path) -> Path:
    """A data folder as `train` reads it (OUT/data/{train,test}-*.parquet)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    train.select(columns).write_parquet(folder / "data" / "train-00000.parquet")
    test.select(columns).write_parquet(folder / "data" / "test-00000.parquet")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Stage rm


def train_rm(start: str, pairs_folder: Path, folder: Path, seed: int, budget: Budget, device: str) -> Path:
    from zhihu_rlhf.train.rm import RMOptions, train

    options = RMOptions(
        data=str(pairs_folder), out=folder / "rm", model=start, max_len=budget.max_len, lr=budget.rm_lr,
        epochs=budget.rm_epochs, batch_size=budget.rm_batch, seed=seed, save_steps=0, device=device, warmup_ratio=0.05,
        save_dtype="fp32",
    )
    options.validate()
    train(options)
    return folder / "rm"


WHOLE_TEXT = 1 << 20
"""A window no probe reaches: probes are scored on their whole prompt + answer, padding included."""


def rm_scores(rm_folder: Path, prompts: list[str], responses: list[str], device: str) -> np.ndarray:
    """RM scores of whole prompt + response texts, read where training and PPO read them (the end token). A model
    with a learned position table (GPT-2, OPT) reads at most that many tokens of each."""
    from zhihu_rlhf.train.models import load_tokenizer, position_limit
    from zhihu_rlhf.train.rm import score

    tokenizer = load_tokenizer(str(rm_folder))
    model = load_reward_model(rm_folder).to(device).eval()
    window = min(WHOLE_TEXT, position_limit(model.config) or WHOLE_TEXT)
    return score(model, tokenizer, prompts, responses, max_len=window, batch_size=32).numpy()


def measure_rm(rm_folder: Path, probes: Probes, readable: bool, device: str) -> dict[str, float | None]:
    n = probes.pairs.height
    p = probes.pairs
    pair_scores = rm_scores(rm_folder, [*p["prompt"], *p["prompt"]], [*p["better"], *p["worse"]], device)
    k = len(probes.answers)
    variants = [probes.answers, probes.padded] + ([probes.swapped] if probes.swapped is not None else [])
    probe_scores = rm_scores(rm_folder, probes.prompts * len(variants), [t for v in variants for t in v], device)
    plain, padded = probe_scores[:k], probe_scores[k : 2 * k]
    spread = float(np.std(np.r_[pair_scores, plain])) or 1.0
    return {
        "gold_accuracy": float(np.mean(pair_scores[:n] > pair_scores[n:])) if readable else None,
        "style_sensitivity": float(np.mean(np.abs(probe_scores[2 * k :] - plain)) / spread) if probes.swapped is not None else None,
        "length_sensitivity": float(np.mean(padded - plain) / spread),
    }


# ---------------------------------------------------------------------------------------------------------------
# Policy stages: sft, dpo, ppo, rloo, grpo


def train_sft(start: str, data: Path, folder: Path, seed: int, budget: Budget, device: str) -> Path:
    from zhihu_rlhf.train.sft import SFTOptions, train

    options = SFTOptions(
        data=str(data), out=folder, model=start, max_len=budget.max_len, batch_tokens=max(budget.sft_batch_tokens, budget.max_len),
        epochs=budget.sft_epochs, lr=budget.sft_lr, grad_accum=1, seed=seed, save_steps=0, device=device, warmup_ratio=0.05,
        save_dtype="fp32",
    )
    options.validate()
    train(options)
    return folder


def train_dpo(sft: Path, pairs_folder: Path, folder: Path, seed: int, budget: Budget, device: str) -> Path:
    from zhihu_rlhf.train.dpo import DPOOptions, train

    options = DPOOptions(
        data=str(pairs_folder), out=folder, model=str(sft), beta=budget.dpo_beta, max_len=budget.max_len,
        batch_size=budget.dpo_batch, grad_accum=1, lr=budget.dpo_lr, epochs=1.0, seed=seed,
        save_steps=budget.dpo_eval_every, save_limit=0, keep_checkpoints=bool(budget.dpo_eval_every), device=device,
        save_dtype="fp32",
    )
    options.validate()
    train(options)
    return folder


def train_rl(stage: str, sft: Path, rm: Path, prompts: Path, folder: Path, seed: int, budget: Budget, device: str) -> Path:
    """`train ppo|rloo|grpo` with the trainer's defaults for the algorithm (KL coefficient and target, clipping,
    K, loss) and the budget's sizes; a checkpoint every rl_eval_every iterations is kept for the curve."""
    from zhihu_rlhf.train import grpo, ppo, rloo

    common = dict(
        data=str(prompts), data_kind="instruct", out=folder, policy=str(sft), reward=str(rm),
        max_prompt_len=budget.max_prompt_len, max_new_tokens=budget.max_new_tokens, lr=budget.rl_lr,
        max_iterations=budget.rl_iterations, epochs=1e6, seed=seed, save_steps=budget.rl_eval_every, save_limit=0,
        keep_checkpoints=True, device=device, save_dtype="fp32", log_samples=2,
    )
    if stage == "ppo":
        options = ppo.PPOOptions(**common, rollout_batch_size=budget.rl_prompts, micro_batch_size=8, grad_accum=2,
                                 ppo_epochs=2, value_lr=budget.rl_lr)
    elif stage == "rloo":
        options = rloo.RLOOOptions(**common, rollout_batch_size=max(budget.rl_prompts // 4, 2), num_generations=4,
                                   micro_batch_size=8, grad_accum=max(budget.rl_prompts // 8, 1))
    else:
        options = grpo.GRPOOptions(**common, rollout_batch_size=max(budget.rl_prompts // 4, 2), num_generations=4,
                                   micro_batch_size=8, grad_accum=max(budget.rl_prompts // 8, 1))
    options.validate()
    {"ppo": ppo.train, "rloo": rloo.train, "grpo": grpo.train}[stage](options)
    return folder


def checkpoint_policies(run: Path, work: Path):
    """(step, policy) of every checkpoint a DPO or RL run kept, the policy weights read back into the final model."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        dcp_to_torch_save(ckpt, work / "checkpoint.pt")
        weights = torch.load(work / "checkpoint.pt", weights_only=False)["model"]
        policy = load_causal_lm(run)
        # RLOO and GRPO checkpoints hold the policy alone; PPO's {"policy": ..., "value": ...}; DPO's its wrapper's "model".
        names = set(policy.state_dict())
        prefix = next((p for p in ("", "policy.", "model.") if any(k.startswith(p) and k[len(p):] in names for k in weights)), None)
        assert prefix is not None, f"{ckpt}: no policy weights under a known prefix"
        result = policy.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result  # lm_head is tied
        yield json.loads((ckpt / "state.json").read_text())["global_step"], policy


def measure_policy(policy, reference, tokenizer, rm: Path | None, prompts: list[str], budget: Budget,
                   device: str) -> dict[str, float | None]:
    """gold, proxy, kl, length of one policy's responses to `prompts`: one sample each, temperature 1, seed 0 (the
    same prompts and random stream for every policy). Generated and scored by the trainer's own rollout."""
    import torch

    from zhihu_rlhf.train.prompts import resolve_template
    from zhihu_rlhf.train.rollout import Sampling, encode_prompts, generate_rollout
    from zhihu_rlhf.train.runtime import setup_runtime
    from zhihu_rlhf.train.scoring import TokenScorer

    rt = setup_runtime(device, "fp32")
    if rm is not None:
        reward = TokenScorer(load_reward_model(rm).to(rt.device).eval())
    else:
        reward = lambda _prompts, responses: [0.0] * len(responses)  # noqa: E731 - no RM: proxy is null
    policy, reference = policy.to(rt.device).eval(), reference.to(rt.device).eval()
    ids = encode_prompts(tokenizer, prompts, resolve_template(tokenizer, "auto"), budget.max_prompt_len)
    torch.manual_seed(0)
    sampling = Sampling(budget.max_new_tokens, temperature=1.0, top_p=1.0, micro_batch_size=32)
    gold, proxy, kl, length = [], [], [], []
    for i in range(0, len(prompts), 64):
        r = generate_rollout(policy, reference, reward, tokenizer, prompts[i : i + 64], ids[i : i + 64], sampling, rt)
        gold += synth.read_quality(r.responses).tolist()
        proxy += r.scores.tolist()
        kl += ((r.logprobs - r.ref_logprobs) * r.response_mask).sum(dim=1).tolist()
        length += r.response_mask.sum(dim=1).tolist()
    return {"gold": float(np.mean(gold)), "proxy": float(np.mean(proxy)) if rm is not None else None,
            "kl": float(np.mean(kl)), "length": float(np.mean(length))}


def load_causal_lm(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, use_kernels=False)  # no Hub kernels, as the trainer loads


def load_reward_model(folder: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder, use_kernels=False)


# ---------------------------------------------------------------------------------------------------------------
# Records, tables and the plot


def record(world: str, recipe: str, size: int, seed: int, stage: str, **values: float | None) -> dict:
    row = dict.fromkeys(RECORD_FIELDS)
    row.update(world=world, recipe=recipe, size=size, seed=seed, stage=stage, **values)
    return row


def interval(values: list[float]) -> str:
    """mean ± half-width of the 95% t interval (n - 1 degrees of freedom)."""
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.3f}"
    half = t95.get(len(values) - 1, 2.0) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return f"{mean:.3f} ± {half:.3f}"


def final_records(records: list[dict]) -> list[dict]:
    """Each run's final measurement: checkpoints along a DPO or RL run are left out (they are the curve's points)."""
    last: dict[tuple, int] = {}
    for r in records:
        key = (r["world"], r["recipe"], r["seed"], r["stage"])
        last[key] = max(last.get(key, -1), r["step"] if r["step"] is not None else -1)
    return [r for r in records if (r["step"] if r["step"] is not None else -1) == last[(r["world"], r["recipe"], r["seed"], r["stage"])]]


def print_table(records: list[dict], stage: str, fields: list[str]) -> None:
    rows = [r for r in final_records(records) if r["stage"] == stage]
    if not rows:
        return
    print(f"\n{stage}\n| world | recipe | size | label right (latent) | {' | '.join(fields)} | seeds |")
    print("|---|---|---:|---:|" + "---:|" * len(fields) + "---:|")
    keys = list(dict.fromkeys((r["world"], r["recipe"]) for r in rows))
    for world, recipe in keys:
        group = [r for r in rows if r["world"] == world and r["recipe"] == recipe]
        cells = [interval([r[f] for r in group]) if group[0][f] is not None else "–" for f in fields]
        right = group[0].get("label_right")
        right_cell = f"{right:.3f}" if right is not None else "–"
        print(f"| {world} | {recipe} | {group[0]['size']:,} | {right_cell} | {' | '.join(cells)} | {len(group)} |")


def gain_at_kl(curve: list[dict], kl: float) -> float | None:
    """gold_gain where one run's measurements (in step order) first reach `kl`, linear between measured points;
    None if the run never gets that far."""
    for a, b in itertools.pairwise(curve):
        if a["kl"] <= kl <= b["kl"]:
            weight = 0.0 if b["kl"] == a["kl"] else (kl - a["kl"]) / (b["kl"] - a["kl"])
            return a["gold_gain"] + weight * (b["gold_gain"] - a["gold_gain"])
    return None


def print_matched_kl(records: list[dict], stage: str) -> None:
    """Recipes compared at the same distance from the start: each run's gold_gain at the smallest final KL of any
    run of the world (so every complete run reaches it), and each recipe minus the first one, paired by seed. A
    recipe whose pairs are easier to fit moves further at the same beta and lr; this asks what it gained by the time
    it had moved as far as the other. Runs measured at fewer than two points (a records file cut short) are left out."""
    curves: dict[tuple, list[dict]] = {}
    for r in records:
        if r["stage"] == stage and r["step"] is not None:
            curves.setdefault((r["world"], r["recipe"], r["seed"]), []).append(r)
    for world in dict.fromkeys(w for w, _, _ in curves):
        runs = {(recipe, seed): sorted(c, key=lambda r: r["step"])
                for (w, recipe, seed), c in curves.items() if w == world and len(c) >= 2}
        if not runs:
            continue
        kl = max(0.0, min(c[-1]["kl"] for c in runs.values()))  # a KL estimate of a run that barely moved can be < 0
        gains = {key: gain for key, c in runs.items() if (gain := gain_at_kl(c, kl)) is not None}
        recipes = list(dict.fromkeys(recipe for recipe, _ in runs))
        print(f"\n{stage} on {world} at a matched KL of {kl:.2f} nats (the smallest final KL of its runs)")
        print(f"| recipe | final kl | gold_gain at {kl:.2f} nats | minus {recipes[0]}, paired by seed | seeds |")
        print("|---|---:|---:|---:|---:|")
        for recipe in recipes:
            seeds = [seed for r, seed in runs if r == recipe]
            reached = [gains[recipe, s] for s in seeds if (recipe, s) in gains]
            paired = [gains[recipe, s] - gains[recipes[0], s] for s in seeds if (recipe, s) in gains and (recipes[0], s) in gains]
            print(f"| {recipe} | {interval([runs[recipe, s][-1]['kl'] for s in seeds])} | "
                  f"{interval(reached) if reached else '–'} | {interval(paired) if paired and recipe != recipes[0] else '–'} | "
                  f"{len(reached)} of {len(seeds)} |")


def plot_curves(records: list[dict], path: Path) -> None:
    """Proxy gain (the RM's score minus the start's) and gold gain against KL, one panel per world and stage measured
    along its run (RL, and DPO with checkpoints), one line per recipe (mean over seeds at each measured step); proxy
    only where the recipe's RM scored the responses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    along = {(r["world"], r["recipe"], r["seed"], r["stage"]) for r in records if r["step"]}
    measured = [r for r in records if (r["world"], r["recipe"], r["seed"], r["stage"]) in along]
    panels = list(dict.fromkeys((r["world"], r["stage"]) for r in measured))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (world, stage) in zip(axes[0], panels, strict=True):
        runs = [r for r in measured if r["world"] == world and r["stage"] == stage]
        for i, recipe in enumerate(dict.fromkeys(r["recipe"] for r in runs)):
            ofrecipe = [r for r in runs if r["recipe"] == recipe]
            start = {r["seed"]: r["proxy"] for r in ofrecipe if r["step"] == 0}
            steps = sorted({r["step"] for r in ofrecipe})
            at = lambda s, f: float(np.mean([f(r) for r in ofrecipe if r["step"] == s]))  # noqa: E731
            kl = [at(s, lambda r: r["kl"]) for s in steps]
            color = f"C{i}"
            if all(r["proxy"] is not None for r in ofrecipe):
                ax.plot(kl, [at(s, lambda r: r["proxy"] - start[r["seed"]]) for s in steps], "--o", color=color, label=f"{recipe}: proxy gain")
            ax.plot(kl, [at(s, lambda r: r["gold_gain"]) for s in steps], "-s", color=color, label=f"{recipe}: gold gain")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(title=f"{stage.upper()} on {world}", xlabel="KL to the SFT start (nats per response)", ylabel="gain over the SFT start")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------


def run(worlds: list[str], recipes: list[str], seeds: list[int], stages: list[str], budget: Budget, model: str | None,
        device: str, workdir: Path, on_record=lambda records: None) -> list[dict]:
    """Every world, then every seed (all recipes of one seed before the next, so a cut-short run has whole seeds):
    the RMs, then the policies. on_record(records) runs after each new record."""
    records: list[dict] = []

    def add(row: dict, line: str) -> None:
        records.append(row)
        on_record(records)
        print(line, flush=True)

    for world_name in worlds:
        started = time.perf_counter()
        world = load_world(world_name, budget, workdir)
        sets = pair_sets(world, recipes)
        probes = make_probes(world, budget)
        train_texts = world.training_answers()
        start = model or str(build_start(
            [*train_texts["answer"], *train_texts["question"].unique()], workdir / f"start-{world_name}",
            budget.hidden, budget.layers, budget.vocab,
        ))
        print(f"{world_name}: {world.answers.height:,} answers, {probes.pairs.height:,} held-out pairs, "
              f"sets {', '.join(f'{k} {v.height:,}' for k, v in sets.items())} [{time.perf_counter() - started:.0f}s]", flush=True)
        test_pairs = probes.pairs.head(200).select("prompt", chosen="better", rejected="worse")
        pair_folders = {
            r: _write_split(p, test_pairs, ["prompt", "chosen", "rejected"], workdir / f"{world_name}-{r}-pairs")
            for r, p in sets.items()
        }
        rights = {}
        for recipe, pairs in sets.items():
            rights[recipe], right_gold = label_accuracy(pairs, world.truth)
            print(f"  {recipe}: {pairs.height:,} pairs, chosen truly better {rights[recipe]:.3f} (gold reader {right_gold:.3f})")
        policy = bool(set(stages) & {"sft", "dpo", *RL_STAGES})
        if policy:
            sft, sft_records = sft_stage(world, probes, start, budget, device, workdir)
            for row in sft_records:
                add(row, f"  sft {row['recipe']} rule: {row['size']:,} rows: gold {row['gold']:.3f}, length {row['length']:.1f}")
        for seed in seeds:
            rms: dict[str, Path] = {}
            if "rm" in stages:
                for recipe, pairs in sets.items():
                    began = time.perf_counter()
                    rms[recipe] = train_rm(start, pair_folders[recipe], workdir / f"{world_name}-{recipe}-{seed}", seed, budget, device)
                    measured = measure_rm(rms[recipe], probes, world.readable, device)
                    add(record(world_name, recipe, pairs.height, seed, "rm", label_right=rights[recipe], **measured),
                        f"  {recipe} rm seed {seed}: {json.dumps(measured)} [{time.perf_counter() - began:.0f}s]")
            if not policy:
                continue
            for recipe, pairs in sets.items():
                dpo_pairs = pair_folders[recipe]
                if budget.dpo_pairs:
                    dpo_pairs = _write_split(pairs.head(budget.dpo_pairs), test_pairs, ["prompt", "chosen", "rejected"],
                                             workdir / f"{world_name}-{recipe}-dpo-pairs")
                for row in policy_runs(world.name, recipe, seed, dpo_pairs, rms.get(recipe), sft, probes, stages,
                                       budget, device, workdir / f"{world_name}-{recipe}-{seed}"):
                    seconds = row.pop("seconds")
                    step = "" if row["step"] is None else f" step {row['step']}"
                    proxy = "–" if row["proxy"] is None else f"{row['proxy']:.3f}"
                    add({**row, "size": pairs.height, "label_right": rights[recipe]},
                        f"  {recipe} {row['stage']} seed {seed}{step}: gold_gain {row['gold_gain']:+.3f}, proxy {proxy}, "
                        f"kl {row['kl']:.3f}, length {row['length']:.1f} [{seconds:.0f}s]")
    return records


def sft_stage(world: World, probes: Probes, start: str, budget: Budget, device: str,
              workdir: Path) -> tuple[dict[str, dict], list[dict]]:
    """SFT on the project's and the article's instruct rule (seed 0; the same questions): {rule: {"folder",
    "gold"}}, and their records (gold_gain: minus the article rule's gold)."""
    from zhihu_rlhf.train.models import load_tokenizer

    test = probes.pairs.head(100).select("prompt", completion="better")
    sft: dict[str, dict] = {}
    for rule, rows in instruct_sets(world, budget.sft_examples).items():
        data = _write_split(rows, test, ["prompt", "completion"], workdir / f"{world.name}-instruct-{rule}")
        folder = train_sft(start, data, workdir / f"{world.name}-sft-{rule}", 0, budget, device)
        start_model = load_causal_lm(folder)
        measured = measure_policy(start_model, start_model, load_tokenizer(start), None, probes.policy_prompts, budget, device)
        sft[rule] = {"folder": folder, "data": data, "rows": rows.height, **measured}
    records = [
        record(world.name, rule, s["rows"], 0, "sft", gold=s["gold"], gold_gain=s["gold"] - sft["article"]["gold"],
               kl=s["kl"], length=s["length"])
        for rule, s in sft.items()
    ]
    return sft, records


def policy_runs(world: str, recipe: str, seed: int, pairs: Path, rm: Path | None, sft: dict[str, dict], probes: Probes,
                stages: list[str], budget: Budget, device: str, folder: Path):
    """DPO on the recipe's pairs and RL with its RM, from the project-rule SFT policy: one record per measured
    policy (RL: the start, each kept checkpoint, the final policy), with `seconds` since the run began."""
    from zhihu_rlhf.train.models import load_tokenizer

    start = sft["project"]
    reference, tokenizer = load_causal_lm(start["folder"]), load_tokenizer(str(start["folder"]))

    def measured(stage: str, policy, began: float, step: int | None = None) -> dict:
        m = measure_policy(policy, reference, tokenizer, rm, probes.policy_prompts, budget, device)
        return {**record(world, recipe, 0, seed, stage, step=step, gold_gain=m["gold"] - start["gold"], **m),
                "seconds": time.perf_counter() - began}

    if "dpo" in stages:
        began = time.perf_counter()
        out = train_dpo(start["folder"], pairs, folder / "dpo", seed, budget, device)
        if budget.dpo_eval_every:  # the curve: the start, each kept checkpoint, the final policy at its last step
            last_step = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
            for step, policy in [(0, reference), *checkpoint_policies(out, folder), (last_step, load_causal_lm(out))]:
                yield measured("dpo", policy, began, step)
        else:
            yield measured("dpo", load_causal_lm(out), began)
    for stage in [s for s in RL_STAGES if s in stages]:
        began = time.perf_counter()
        assert rm is not None, "the RL stages need the recipe's RM (stage rm)"
        out = train_rl(stage, start["folder"], rm, start["data"], folder / stage, seed, budget, device)
        for step, policy in [(0, reference), *checkpoint_policies(out, folder), (budget.rl_iterations, load_causal_lm(out))]:
            yield measured(stage, policy, began, step)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="readable,readable_popularity", help="comma-separated synth worlds")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (the world is the same)")
    parser.add_argument("--stages", default="rm", help=f"comma-separated, of {', '.join(STAGES)} (ppo, rloo and grpo "
                        "train the RMs too: they are the reward)")
    parser.add_argument("--rows", type=int, default=Budget().rows, help="rows of each synthetic world")
    parser.add_argument("--budget", default="default", choices=list(BUDGETS),
                        help="the small start's sizes: default, or larger (2 layers, 128 wide, SFT 2 epochs, DPO beta "
                        "0.3 lr 1e-4)")
    parser.add_argument("--dpo-beta", type=float, help="DPO's beta instead of the budget's: a larger beta keeps the "
                        "policy nearer its start, to compare recipes at a matched KL")
    parser.add_argument("--model", default=None, help="start from this model (Hub id or folder) instead of the small one")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="the learning check: readable, oracle pairs, one seed, small")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--plot", type=Path, help="draw proxy and gold gain against KL of the stages measured along "
                        "their run (RL; DPO with checkpoints) here (png)")
    parser.add_argument("--workdir", type=Path, help="keep models and sets here (default: a temporary folder)")
    parser.add_argument("--report", help="comma-separated record files (--json) of earlier runs of one budget: print "
                        "their tables together (and --plot), train nothing")
    args = parser.parse_args(argv)
    if args.report:
        records = read_records(args.report.split(","))
        report(records, args.plot)
        return records
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"--stages: unknown {', '.join(unknown)} (choose from {', '.join(STAGES)})")
    if args.budget != "default" and (args.model or args.quick):
        parser.error("--budget sizes the small start: not with --model or --quick")
    if set(stages) & set(RL_STAGES) and "rm" not in stages:
        stages.insert(0, "rm")

    budget = QUICK if args.quick else dataclasses.replace(REAL_MODEL if args.model else BUDGETS[args.budget], rows=args.rows)
    if args.dpo_beta is not None:
        budget = dataclasses.replace(budget, dpo_beta=args.dpo_beta)
    worlds = ["readable"] if args.quick else args.worlds.split(",")
    recipes = ["oracle"] if args.quick else args.recipes.split(",")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()
        def save(records: list[dict]) -> None:  # after every record, so a run cut short keeps what it measured
            if args.json:
                args.json.write_text(json.dumps([{k: r[k] for k in RECORD_FIELDS} for r in records], indent=1))

        records = run(worlds, recipes, seeds, stages, budget, args.model, args.device, workdir, save)
        print(f"\n{len(records)} records in {time.perf_counter() - started:.0f}s (2-core machine shared with other agents)")
    report(records, args.plot)
    return records


def read_records(paths: list[str]) -> list[dict]:
    """The records of several runs, each measurement once: every run of a world records the same SFT starts (seed
    0), and a run repeated in two files counts as one (the first file's)."""
    records, seen = [], set()
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            key = (r["world"], r["recipe"], r["seed"], r["stage"], r["step"])
            if key not in seen:
                seen.add(key)
                records.append({**dict.fromkeys(RECORD_FIELDS), **r})
    return records


def report(records: list[dict], plot: Path | None) -> None:
    print_table(records, "rm", ["gold_accuracy", "style_sensitivity", "length_sensitivity"])
    print_table(records, "sft", ["gold", "gold_gain", "length"])
    for stage in ("dpo", *RL_STAGES):
        print_table(records, stage, ["gold_gain", "proxy", "kl", "length"])
    print_matched_kl(records, "dpo")
    if plot:
        plot_curves(records, plot)


if __name__ == "__main__":
    main()
