"""Does cleaning pay off? Reward models (and policies) trained on each recipe's pairs, measured against the truth.

A label is not a model: this trains the project's own trainer on pair sets built by different recipes from the
SAME synthetic world, and measures the models against what the text truly shows. The readable worlds (synth
worlds `readable`, `readable_popularity`) write every answer so that its text shows its latent quality through
features a model can learn, and give each author a visible style that follows their popularity, not their
quality; `zhihu_rlhf.synth.read_quality` reads the quality back from any text (the gold reader).

Recipes (pair sets from one world file, built only from training questions):
    project       `build pairs` defaults: the vote model (full), today's rules, the 3,000 most confident pairs
    article       the article's rules (same question, created within 30 days, >= 2x votes, each response once),
                  3,000 drawn at random, no vote model (benchmarks/pair_quality.py)
    naive         per question the most- vs the least-upvoted answer, 3,000 drawn at random
    oracle        the project's pairs relabelled by the truth (latent quality): the ceiling
    project_10k   the project's recipe with --limit 10000
    project_all   the project's recipe with --limit 0 (every pair the rules allow)

Stage rm: `train rm` on each set, every run from the same start (a small Llama with a BPE tokenizer trained on
the world's own text, built offline, random weights: see `build_start`). Measured on held-out questions that
no training set touched:
    gold_accuracy       share of held-out answer pairs (same question, gold scores more than GOLD_MARGIN apart)
                        the RM orders like the gold reader
    style_sensitivity   mean |RM score change| when an answer's author style is swapped for another author's
                        (same sentences, same gold score), in units of the RM's score sd over held-out answers
    length_sensitivity  mean RM score change (signed) when an answer is padded with ASIDE_PAD neutral asides
                        the gold reader skips, in the same units
The policy stages (DPO on each set, PPO with each RM: gold_gain, proxy, kl) are not built yet: `--stages` takes
only rm, and the record fields they would fill are null.

    python benchmarks/rlhf_outcome.py --worlds readable,readable_popularity --seeds 0,1,2 --stages rm \
        --json rm_table.json                     # the RM table (2-core CPU)
    python benchmarks/rlhf_outcome.py --quick    # the learning check the tests run: oracle RM beats chance
    python benchmarks/rlhf_outcome.py --model Qwen/Qwen2.5-0.5B --device cuda   # a real start on a GPU

Records (`--json FILE`): {world, recipe, size, seed, stage, gold_accuracy, gold_gain, proxy, kl,
style_sensitivity, length_sensitivity}, null where a field does not apply. The printed table gives each
recipe's mean over seeds with a 95% t interval.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from zhihu_rlhf.instruct import InstructOptions  # noqa: E402
from zhihu_rlhf.pairs import PairOptions, select_pairs  # noqa: E402
from zhihu_rlhf.pipelines.answers import prepare_answers  # noqa: E402
from zhihu_rlhf.split import unit_hash  # noqa: E402
from zhihu_rlhf.votes import VoteModelOptions  # noqa: E402

RECIPES = ("project", "article", "naive", "oracle", "project_10k", "project_all")
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
    "world", "recipe", "size", "seed", "stage", "gold_accuracy", "gold_gain", "proxy", "kl", "style_sensitivity",
    "length_sensitivity",
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
    max_len: int = 96
    """tokens of prompt + answer the RM reads (answers are ~105 tokens: the start of each is read)"""
    eval_pairs: int = EVAL_PAIRS
    probe_answers: int = PROBE_ANSWERS


REAL_MODEL = Budget(rm_lr=1e-5, rm_batch=16, max_len=512)
"""With --model (a pretrained start): the learning rate and length a 0.5B-7B model trains with."""
QUICK = Budget(rows=12_000, rm_epochs=2.0, rm_lr=2e-3, rm_batch=32, max_len=128, eval_pairs=300, probe_answers=60)


# ---------------------------------------------------------------------------------------------------------------
# The world and its pair sets


@dataclass
class World:
    name: str
    answers: pl.DataFrame  # canonical answers with the default vote model's quality columns
    truth: pl.DataFrame  # answer_id, quality (latent), gold (what the text shows)
    heldout: pl.Series  # question groups no training set touches


def load_world(name: str, budget: Budget, folder: Path, seed: int = 1) -> World:
    data, truth_path = synth.write(budget.rows, folder / f"{name}.parquet", seed, world=name,
                                   mean_answer_chars=budget.mean_answer_chars)
    answers, _ = prepare_answers(str(data), DedupeOptions(), VoteModelOptions())
    truth = pl.read_parquet(truth_path).select("answer_id", "quality").drop_nulls("answer_id").unique("answer_id")
    gold = answers.select("answer_id", gold=pl.Series(synth.read_quality(answers["answer"])))
    truth = truth.join(gold, on="answer_id")
    groups = answers["question_group"].unique()
    heldout = groups.filter(unit_hash(groups) < HELDOUT_FRACTION)
    return World(name, answers, truth, heldout)


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
    train = world.answers.filter(~pl.col("question_group").is_in(world.heldout.implode()))
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
            drawn = naive_pairs(train, InstructOptions()).sample(fraction=1.0, shuffle=True, seed=seed).head(PAIRS)
            sets[recipe] = _with_texts(drawn, train)
        else:
            raise ValueError(f"unknown recipe {recipe!r}")
    return sets


def label_accuracy(pairs: pl.DataFrame, truth: pl.DataFrame) -> tuple[float, float]:
    """(share of pairs whose chosen has the higher latent quality, ... the higher gold score)."""
    joined = pairs.join(truth.rename({"answer_id": "chosen_answer_id", "quality": "qc", "gold": "gc"}), on="chosen_answer_id").join(
        truth.rename({"answer_id": "rejected_answer_id", "quality": "qr", "gold": "gr"}), on="rejected_answer_id"
    )
    return float((joined["qc"] > joined["qr"]).mean()), float((joined["gc"] > joined["gr"]).mean())


@dataclass
class Probes:
    """Held-out material every RM is measured on."""

    pairs: pl.DataFrame  # prompt, better, worse: gold scores more than GOLD_MARGIN apart
    prompts: list[str]  # PROBE_ANSWERS held-out answers in a readable style, their question ...
    answers: list[str]  # ... the answer as written
    swapped: list[str]  # ... in another author's style
    padded: list[str]  # ... padded with neutral asides


def make_probes(world: World, budget: Budget, seed: int = 0) -> Probes:
    held = world.answers.filter(pl.col("question_group").is_in(world.heldout.implode())).join(
        world.truth.select("answer_id", "gold"), on="answer_id"
    )
    a = held.select("question_group", "question", "answer_id", "answer", "gold")
    pairs = (
        a.join(a.select("question_group", other_id="answer_id", other="answer", other_gold="gold"), on="question_group")
        .filter((pl.col("gold") - pl.col("other_gold") > GOLD_MARGIN))
        .sample(fraction=1.0, shuffle=True, seed=seed)
        .filter(pl.int_range(pl.len()).over("question_group") < 3)  # a few per question, so no question dominates
        .head(budget.eval_pairs)
        .select(prompt="question", better="answer", worse="other")
    )
    styled = held.filter(pl.col("answer").map_elements(lambda t: synth.style_of(t) is not None, return_dtype=pl.Boolean))
    probe = styled.sample(n=min(budget.probe_answers, styled.height), seed=seed)
    rng = np.random.default_rng(seed)
    answers = probe["answer"].to_list()
    swapped = []
    for text in answers:
        own = synth.style_of(text)
        other = int(rng.integers(synth.readable.N_STYLES - 1))
        swapped.append(synth.swap_style(text, other + (other >= own)))
    padded = [synth.pad_with_asides(t, ASIDE_PAD) for t in answers]
    return Probes(pairs, probe["question"].to_list(), answers, swapped, padded)


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


def _write_pairs(pairs: pl.DataFrame, test: pl.DataFrame, folder: Path) -> Path:
    """A pairs folder as `train` reads it (OUT/data/{train,test}-*.parquet)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pairs.select("prompt", "chosen", "rejected").write_parquet(folder / "data" / "train-00000.parquet")
    test.select("prompt", "chosen", "rejected").write_parquet(folder / "data" / "test-00000.parquet")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Stage rm


def train_rm(start: str, pairs: pl.DataFrame, probes: Probes, folder: Path, seed: int, budget: Budget, device: str) -> Path:
    from zhihu_rlhf.train.rm import RMOptions, train

    test = probes.pairs.head(200).select("prompt", chosen="better", rejected="worse")
    data = _write_pairs(pairs, test, folder / "pairs")
    options = RMOptions(
        data=str(data), out=folder / "rm", model=start, max_len=budget.max_len, lr=budget.rm_lr,
        epochs=budget.rm_epochs, batch_size=budget.rm_batch, seed=seed, save_steps=0, device=device, warmup_ratio=0.05,
    )
    options.validate()
    train(options)
    return folder / "rm"


def rm_scores(rm_folder: Path, prompts: list[str], responses: list[str], max_len: int, device: str) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification

    from zhihu_rlhf.train.models import load_tokenizer
    from zhihu_rlhf.train.rm import score

    tokenizer = load_tokenizer(str(rm_folder))
    model = AutoModelForSequenceClassification.from_pretrained(rm_folder).to("cuda" if device == "cuda" else "cpu").eval()
    return score(model, tokenizer, prompts, responses, max_len=max_len, batch_size=32).numpy()


def measure_rm(rm_folder: Path, probes: Probes, budget: Budget, device: str) -> dict[str, float]:
    n = probes.pairs.height
    p = probes.pairs
    pair_scores = rm_scores(rm_folder, [*p["prompt"], *p["prompt"]], [*p["better"], *p["worse"]], budget.max_len, device)
    k = len(probes.answers)
    probe_scores = rm_scores(
        rm_folder, probes.prompts * 3, [*probes.answers, *probes.swapped, *probes.padded], budget.max_len, device
    )
    plain, swapped, padded = probe_scores[:k], probe_scores[k : 2 * k], probe_scores[2 * k :]
    spread = float(np.std(np.r_[pair_scores, plain])) or 1.0
    return {
        "gold_accuracy": float(np.mean(pair_scores[:n] > pair_scores[n:])),
        "style_sensitivity": float(np.mean(np.abs(swapped - plain)) / spread),
        "length_sensitivity": float(np.mean(padded - plain) / spread),
    }


# ---------------------------------------------------------------------------------------------------------------
# Records and the table


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


def print_table(records: list[dict], stage: str, fields: list[str]) -> None:
    rows = [r for r in records if r["stage"] == stage]
    if not rows:
        return
    print(f"\n| world | recipe | pairs | label right (latent) | {' | '.join(fields)} | seeds |")
    print("|---|---|---:|---:|" + "---:|" * len(fields) + "---:|")
    keys = list(dict.fromkeys((r["world"], r["recipe"]) for r in rows))
    for world, recipe in keys:
        group = [r for r in rows if r["world"] == world and r["recipe"] == recipe]
        cells = [interval([r[f] for r in group]) if group[0][f] is not None else "–" for f in fields]
        right = group[0].get("label_right")
        print(f"| {world} | {recipe} | {group[0]['size']:,} | {right:.3f} | {' | '.join(cells)} | {len(group)} |")


# ---------------------------------------------------------------------------------------------------------------


def run(worlds: list[str], recipes: list[str], seeds: list[int], budget: Budget, model: str | None, device: str,
        workdir: Path) -> list[dict]:
    records: list[dict] = []
    for world_name in worlds:
        started = time.perf_counter()
        world = load_world(world_name, budget, workdir)
        sets = pair_sets(world, recipes)
        probes = make_probes(world, budget)
        train_texts = world.answers.filter(~pl.col("question_group").is_in(world.heldout.implode()))
        start = model or str(build_start(
            [*train_texts["answer"], *train_texts["question"].unique()], workdir / f"start-{world_name}",
            budget.hidden, budget.layers, budget.vocab,
        ))
        print(f"{world_name}: {world.answers.height:,} answers, {probes.pairs.height:,} held-out gold pairs, "
              f"sets {', '.join(f'{k} {v.height:,}' for k, v in sets.items())} [{time.perf_counter() - started:.0f}s]", flush=True)
        for recipe, pairs in sets.items():
            right_latent, right_gold = label_accuracy(pairs, world.truth)
            print(f"  {recipe}: {pairs.height:,} pairs, chosen truly better {right_latent:.3f} (gold reader {right_gold:.3f})")
            for seed in seeds:
                began = time.perf_counter()
                folder = workdir / f"{world_name}-{recipe}-{seed}"
                rm_folder = train_rm(start, pairs, probes, folder, seed, budget, device)
                measured = measure_rm(rm_folder, probes, budget, device)
                row = record(world_name, recipe, pairs.height, seed, "rm", **measured)
                row["label_right"] = right_latent
                records.append(row)
                print(f"    seed {seed}: {json.dumps(measured)} [{time.perf_counter() - began:.0f}s]", flush=True)
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="readable,readable_popularity", help="comma-separated synth worlds")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (the world is the same)")
    parser.add_argument("--stages", default="rm", choices=["rm"], help="rm (the policy stages are not built yet)")
    parser.add_argument("--rows", type=int, default=Budget().rows, help="rows of each synthetic world")
    parser.add_argument("--model", default=None, help="start from this model (Hub id or folder) instead of the small one")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="the learning check: readable, oracle pairs, one seed, small")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--workdir", type=Path, help="keep models and sets here (default: a temporary folder)")
    args = parser.parse_args(argv)

    budget = QUICK if args.quick else dataclasses.replace(REAL_MODEL if args.model else Budget(), rows=args.rows)
    worlds = ["readable"] if args.quick else args.worlds.split(",")
    recipes = ["oracle"] if args.quick else args.recipes.split(",")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()
        records = run(worlds, recipes, seeds, budget, args.model, args.device, workdir)
        print(f"\n{len(records)} runs in {time.perf_counter() - started:.0f}s (2-core machine shared with other agents)")
    print_table(records, "rm", ["gold_accuracy", "style_sensitivity", "length_sensitivity"])
    if args.json:
        args.json.write_text(json.dumps([{k: r[k] for k in RECORD_FIELDS} for r in records], indent=1))
    return records


if __name__ == "__main__":
    main()
