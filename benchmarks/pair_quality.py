"""How often is `chosen` truly the better answer? Measured on synthetic data, where truth is known.

The synthetic generator gives every answer a latent quality and makes upvotes depend on it *and* on
confounders (author following, exposure time), like real Zhihu votes. For each variant of the pair
rules we build the pairs and report the share whose chosen answer has the higher true quality.

    python benchmarks/pair_quality.py --rows 200000 --seed 1
    python benchmarks/pair_quality.py --data bench_data/zhihu_kol_full.parquet   # uses FILE.truth.parquet
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import polars as pl

from zhihu_rlhf import synth
from zhihu_rlhf.dedupe import DedupeOptions
from zhihu_rlhf.pairs import PairOptions, select_pairs
from zhihu_rlhf.pipelines.answers import prepare_answers


def reused_responses(pairs: pl.DataFrame, truth: pl.DataFrame) -> int:
    """Answers whose true near-duplicate cluster already appears elsewhere in the set (the "never twice" rule)."""
    used = pl.concat([pairs["chosen_answer_id"], pairs["rejected_answer_id"]]).to_frame("answer_id")
    clusters = used.join(truth.select("answer_id", "answer_cluster"), on="answer_id")["answer_cluster"]
    return clusters.len() - clusters.n_unique()


def accuracy(pairs: pl.DataFrame, quality: pl.DataFrame) -> float:
    joined = pairs.join(quality.rename({"answer_id": "chosen_answer_id", "quality": "q_chosen"}), on="chosen_answer_id").join(
        quality.rename({"answer_id": "rejected_answer_id", "quality": "q_rejected"}), on="rejected_answer_id"
    )
    return float((joined["q_chosen"] > joined["q_rejected"]).mean()) if joined.height else math.nan


def variants() -> dict[str, tuple[PairOptions, bool]]:
    """name -> (rules, ranked by confidence?). Unranked variants keep a random subset, as a plain filter would."""
    ours = PairOptions()
    return {
        "ours (all rules, confidence-ranked)": (ours, True),
        "ours, random order instead of confidence": (ours, False),
        "without created_close_in_time": (dataclasses.replace(ours, max_days_apart=math.inf), True),
        "without upvote_ratio": (dataclasses.replace(ours, min_ratio=1.0), True),
        "without min_chosen_upvotes": (dataclasses.replace(ours, min_chosen_upvotes=0), True),
        "with chosen_not_earlier (SHP)": (dataclasses.replace(ours, chosen_not_earlier=True), True),
        "the article's rules (time + 2x ratio), unranked": (dataclasses.replace(ours, min_chosen_upvotes=0), False),
        "naive (same question, more votes wins), unranked": (
            dataclasses.replace(ours, max_days_apart=math.inf, min_ratio=1.0, min_chosen_upvotes=0), False
        ),
    }


def pick(answers: pl.DataFrame, options: PairOptions, ranked: bool, limit: int, seed: int) -> pl.DataFrame:
    if ranked:
        return select_pairs(answers, dataclasses.replace(options, limit=limit))[0]
    everything = select_pairs(answers, dataclasses.replace(options, limit=0))[0]
    shuffled = everything.sample(fraction=1.0, shuffle=True, seed=seed)
    return shuffled.head(limit) if limit else shuffled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows to generate (ignored with --data)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, help="an existing synthetic file (its .truth.parquet beside it)")
    parser.add_argument("--limit", type=int, default=3000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data, truth_path = args.data, args.data.with_name(args.data.name.removesuffix(".parquet") + ".truth.parquet")
        else:
            data, truth_path = synth.write(args.rows, Path(tmp) / "synth.parquet", args.seed)
        truth = pl.read_parquet(truth_path, columns=["answer_id", "quality", "answer_cluster"]).drop_nulls()
        quality = truth.select("answer_id", "quality")

        results = []
        for dedupe_mode in ("near", "off"):
            started = time.perf_counter()
            answers, _ = prepare_answers(str(data), DedupeOptions(mode=dedupe_mode))
            print(f"[dedupe={dedupe_mode}] {answers.height:,} answers ready in {time.perf_counter() - started:.1f}s")
            named = variants() if dedupe_mode == "near" else {"ours, dedupe off": (PairOptions(), True)}
            for name, (options, ranked) in named.items():
                pairs = pick(answers, options, ranked, args.limit, args.seed)
                results.append((name, pairs.height, accuracy(pairs, quality), reused_responses(pairs, truth)))

    print(f"\n| variant ({f'{args.limit} pairs max' if args.limit else 'every pair the rules allow'}) | pairs | chosen truly better | near-copies of a used response |")
    print("|---|---:|---:|---:|")
    for name, n, acc, reused in results:
        print(f"| {name} | {n:,} | {acc:.1%} | {reused} |")


if __name__ == "__main__":
    main()
