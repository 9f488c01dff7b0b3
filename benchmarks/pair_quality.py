"""How often is `chosen` truly the better answer, and the instruct answer truly the best? Synthetic worlds, known truth.

The synthetic generator gives every answer a latent quality and makes upvotes depend on it *and* on confounders
(author reach, exposure), like real Zhihu votes. Per world, each method builds its pairs from the same deduplicated
answers and we report, against the truth file:

- top-3,000: share of the (at most) 3,000 pairs whose chosen answer has the higher true quality;
- all pairs: the same over every pair the method's rules allow (and the one-use matching keeps);
- ECE: expected calibration error of `p_chosen_better` over those pairs, 10 equal-width bins (model rows only);
- mean p (top-3,000): the model's own estimate of the top-3,000 accuracy, to compare with the measured one;
- instruct: share of questions (with at least two answers that pass the length filters) whose instruct answer is
  the truly best of those answers: over every such question (`--limit 0`); over those in the default instruct set
  (the 26,000 questions whose answer is most surely the best of its question, `p_best_in_question`); over the 26,000
  questions with the most-upvoted chosen answers, the set's ranking before; and the set's mean `p_best_in_question`
  (compared questions only), the model's own estimate of its share.

Methods: the naive pairing (per question, most- vs least-upvoted answer), the article's rules (time window + 2x
ratio, no ranking: a random subset), the Wald ranking used before the vote model (Poisson z of the log vote ratio,
with today's rules), and the vote model at each level (zhihu_rlhf.votes), with the author share at its default and
at 0 and 1. The unranked methods' instruct columns are the raw level's (plain votes).

    python benchmarks/pair_quality.py --world default --rows 200000 --seed 1
    python benchmarks/pair_quality.py --data /work/bench_data/kol_1m.parquet      # uses FILE.truth.parquet
    python benchmarks/pair_quality.py --world kol --rows 200000 --reliability      # + the reliability table
    python benchmarks/pair_quality.py --data /work/bench_data/kol_1m.parquet --levels-only   # the 1M table's runs
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import polars as pl

from zhihu_rlhf import synth
from zhihu_rlhf.dedupe import DedupeOptions
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, length_drop_reason, select_instruct
from zhihu_rlhf.pairs import PairOptions, select_pairs
from zhihu_rlhf.pipelines.answers import prepare_answers
from zhihu_rlhf.votes import EFFECT_COLUMNS, QUALITY_COLUMNS, VoteModelOptions, estimate_quality

TOP = 3_000
DEFAULT_SHARE = VoteModelOptions().author_share


def model_variants(levels_only: bool = False) -> dict[str, VoteModelOptions]:
    """The vote model's four levels; unless levels_only, also other author shares and wrong luck sds."""
    variants = {
        "vote model: raw (plain votes)": VoteModelOptions(model="raw"),
        "vote model: exposure only": VoteModelOptions(model="exposure"),
        f"vote model: authors only (share {DEFAULT_SHARE:g})": VoteModelOptions(model="authors"),
        f"vote model: full (share {DEFAULT_SHARE:g}) - the default": VoteModelOptions(model="full"),
    }
    if levels_only:
        return variants
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        if share != DEFAULT_SHARE:
            variants[f"vote model: full, share {share:g}"] = VoteModelOptions(model="full", author_share=share)
    # The worlds' luck sd is 0.3; these show what a wrong assumption does.
    for luck in (0.15, 0.6):
        variants[f"vote model: full, luck_sd {luck:g} (assumed wrong)"] = VoteModelOptions(model="full", luck_sd=luck)
    return variants


def with_truth(pairs: pl.DataFrame, quality: pl.DataFrame) -> pl.DataFrame:
    """pairs + `right` (chosen has the higher true quality)."""
    q = quality.select("answer_id", "quality")
    return (
        pairs.join(q.rename({"answer_id": "chosen_answer_id", "quality": "q_chosen"}), on="chosen_answer_id", maintain_order="left")
        .join(q.rename({"answer_id": "rejected_answer_id", "quality": "q_rejected"}), on="rejected_answer_id", maintain_order="left")
        .with_columns(right=pl.col("q_chosen") > pl.col("q_rejected"))
    )


def reliability(pairs: pl.DataFrame, bins: int = 10) -> pl.DataFrame:
    """Per p_chosen_better bin: pairs, mean p, measured share right."""
    return (
        pairs.group_by((pl.col("p_chosen_better") * bins).floor().clip(0, bins - 1).cast(pl.Int32).alias("bin"))
        .agg(pairs=pl.len(), mean_p=pl.col("p_chosen_better").mean(), right=pl.col("right").mean())
        .sort("bin")
    )


def expected_calibration_error(pairs: pl.DataFrame) -> float:
    table = reliability(pairs)
    return float((table["pairs"] * (table["mean_p"] - table["right"]).abs()).sum() / max(table["pairs"].sum(), 1))


def instruct_truly_best(answers: pl.DataFrame, quality: pl.DataFrame) -> tuple[float, float, float, float]:
    """Share of questions with >= 2 usable answers whose instruct answer has the highest true quality among them:
    over all such questions, over those in the default set, over the 26k with the most-upvoted chosen answers (the
    ranking before p_best_in_question); and the default set's mean p_best_in_question."""
    filters = InstructOptions()
    usable = answers.filter(length_drop_reason(LengthFilter()).is_null()).join(quality, on="answer_id")
    best = usable.group_by("question_group").agg(best_quality=pl.col("quality").max(), usable=pl.len())
    # With no limit the rows come in the set's order, so the default set is the first `limit` of them.
    chosen, _ = select_instruct(answers, dataclasses.replace(filters, limit=0))
    scored = chosen.join(quality, on="answer_id", maintain_order="left").join(best, on="question_group", maintain_order="left")
    scored = scored.with_columns(truly_best=pl.col("quality") >= pl.col("best_quality"))
    default_set = scored.head(filters.limit)
    by_upvotes = scored.sort(["upvotes", "created_at", "answer_id"], descending=[True, False, False]).head(filters.limit)
    compared = [frame.filter(pl.col("usable") >= 2)["truly_best"].mean() for frame in (scored, default_set, by_upvotes)]
    return (*(float(share) for share in compared), float(default_set["p_best_in_question"].mean()))


def naive_pairs(answers: pl.DataFrame, lengths: LengthFilter) -> pl.DataFrame:
    """Per question group: the most- vs the least-upvoted usable answer (distinct votes)."""
    usable = answers.filter(length_drop_reason(lengths).is_null()).sort("upvotes", "answer_id")
    return (
        usable.group_by("question_group")
        .agg(chosen_answer_id=pl.col("answer_id").last(), rejected_answer_id=pl.col("answer_id").first(),
             most=pl.col("upvotes").last(), least=pl.col("upvotes").first())
        .filter(pl.col("most") > pl.col("least"))
        .sort("question_group")
    )


def wald_quality(answers: pl.DataFrame) -> pl.DataFrame:
    """Quality columns under which a pair's confidence is the pre-vote-model Wald statistic:
    ln((u_c+1)/(u_r+1)) / sqrt(1/(u_c+1) + 1/(u_r+1))."""
    return answers.with_columns(estimated_quality=(pl.col("upvotes") + 1).log(), quality_sd=(pl.col("upvotes") + 1).pow(-0.5))


def recovered_effects(estimated: pl.DataFrame, truth: pl.DataFrame) -> str:
    """Correlation, within questions, of the estimated exposure and author terms with the planted ones."""
    planted = {"exposure_effect": "log_exposure", "author_effect": "author_log_reach"}
    joined = estimated.join(truth, on="answer_id").filter(pl.len().over("question_group") >= 2)
    found = []
    for estimate, true in planted.items():
        if true in joined.columns and joined[estimate].std() > 0:
            centred = joined.select((pl.col(c) - pl.col(c).mean().over("question_group")) for c in (estimate, true))
            found.append(f"{estimate} vs planted: r = {centred.select(pl.corr(estimate, true)).item():.3f}")
    return "; ".join(found)


def evaluate(answers: pl.DataFrame, truth: pl.DataFrame, seed: int, show_reliability: bool, levels_only: bool) -> list[dict]:
    quality = truth.select("answer_id", "quality")
    rules, lengths = PairOptions(limit=0), LengthFilter()
    base = answers.drop(*QUALITY_COLUMNS, *EFFECT_COLUMNS, strict=False)
    raw_instruct = instruct_truly_best(estimate_quality(base, VoteModelOptions(model="raw"))[0], quality)
    rows = []

    def add(method: str, every: pl.DataFrame, top: pl.DataFrame, instruct: tuple[float, ...], calibrated: bool) -> None:
        rows.append({
            "method": method, "top": float(top["right"].mean()), "pairs": every.height, "all": float(every["right"].mean()),
            "ece": expected_calibration_error(every) if calibrated else None,
            "mean_p": float(top["p_chosen_better"].mean()) if calibrated else None, "instruct": instruct,
        })

    naive = with_truth(naive_pairs(base, lengths), quality).sample(fraction=1.0, shuffle=True, seed=seed)
    add("naive: most- vs least-upvoted per question, unranked", naive, naive.head(TOP), raw_instruct, False)
    article = dataclasses.replace(rules, min_chosen_upvotes=0)
    every = with_truth(select_pairs(wald_quality(base), article)[0], quality).sample(fraction=1.0, shuffle=True, seed=seed)
    add("the article's rules (time + 2x), unranked", every, every.head(TOP), raw_instruct, False)
    every = with_truth(select_pairs(wald_quality(base), rules)[0], quality)
    add("today's rules, Wald-ranked (before the vote model)", every, every.head(TOP), raw_instruct, False)
    for name, options in model_variants(levels_only).items():
        started = time.perf_counter()
        estimated, fitted = estimate_quality(base, options)
        seconds = time.perf_counter() - started
        every = with_truth(select_pairs(estimated, rules)[0], quality)
        add(name, every, every.head(TOP), instruct_truly_best(estimated, quality), True)
        print(f"  {name}: fitted in {seconds:.1f}s; {recovered_effects(estimated, truth)}\n    {fitted}", flush=True)
        if show_reliability and options == VoteModelOptions():
            print(f"\nreliability of p_chosen_better, {name}, all {every.height:,} pairs:\n{reliability(every)}\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="default", choices=list(synth.WORLDS), help="synthetic world to generate (ignored with --data)")
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows to generate (ignored with --data)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, help="an existing synthetic file (its .truth.parquet beside it)")
    parser.add_argument("--reliability", action="store_true", help="also print the default model's reliability table")
    parser.add_argument("--levels-only", action="store_true",
                        help="only the four levels of the vote model, no other author shares or luck sds (fewer runs)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data, truth_path = args.data, synth.truth_path_for(args.data)
            label = args.data.name
        else:
            data, truth_path = synth.write(args.rows, Path(tmp) / "synth.parquet", args.seed, world=args.world)
            label = f"{args.world}, {args.rows:,} rows, seed {args.seed}"
        truth = pl.read_parquet(truth_path)
        planted = [c for c in ("author_log_reach", "log_exposure") if c in truth.columns]
        truth = truth.select("answer_id", "quality", *planted).drop_nulls("answer_id").unique("answer_id")
        started = time.perf_counter()
        answers, _ = prepare_answers(str(data), DedupeOptions(), VoteModelOptions(model="raw"))
        print(f"{label}: {answers.height:,} answers ready in {time.perf_counter() - started:.1f}s", flush=True)
        rows = evaluate(answers, truth, args.seed, args.reliability, args.levels_only)

    print(f"\n| {label} | top-{TOP:,} right | all pairs | all right | ECE | mean p top-{TOP:,} | instruct: truly best "
          "| in the 26k set | 26k by upvotes (before) | mean p_best, 26k set |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ece = f"{r['ece']:.3f}" if r["ece"] is not None else "–"
        mean_p = f"{r['mean_p']:.3f}" if r["mean_p"] is not None else "–"
        instruct = " | ".join(f"{share:.3f}" for share in r["instruct"])
        print(f"| {r['method']} | {r['top']:.3f} | {r['pairs']:,} | {r['all']:.3f} | {ece} | {mean_p} | {instruct} |")


if __name__ == "__main__":
    main()
