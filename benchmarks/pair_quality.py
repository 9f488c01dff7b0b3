"""How often is `chosen` truly the better answer, and the instruct answer truly the best? Synthetic worlds, known truth.

The synthetic generator gives every answer a latent quality and makes upvotes depend on it *and* on confounders
(author reach, exposure), like real Zhihu votes. Per world, each method builds its pairs from the same deduplicated
answers and we report, against the truth file:

- top-3,000: share of the (at most) 3,000 pairs whose chosen answer has the higher true quality;
- all pairs: the same over every pair the method's rules allow (and the one-use matching keeps): what a user gets
  with `--limit 1000000`;
- ECE: expected calibration error of `p_chosen_better` over those pairs, 10 equal-width bins (model rows only), and
  the worst bin: the largest |mean p - share right| over the bins holding at least 500 pairs;
- mean p (top-3,000): the model's own estimate of the top-3,000 accuracy, to compare with the measured one;
- chosen longer, length ratio (top-3,000): the share of those pairs whose chosen answer has more characters than
  the rejected one, and the median chosen/rejected character ratio: what a reward model trained on them may learn
  about length. The `truth-chosen` row is what quality alone gives: each question's truly best against its truly
  worst usable answer, the 3,000 questions with the largest quality gaps;
- instruct: share of questions (with at least two answers that pass the length filters) whose instruct answer is
  the truly best of those answers: over every such question (`--limit 0`); over those in the default instruct set
  (the 26,000 questions whose answer is most surely the best of its question, `p_best_in_question`); over the 26,000
  questions with the most-upvoted chosen answers, the set's ranking before; and the set's mean `p_best_in_question`
  (compared questions only), the model's own estimate of its share.

Methods: the naive pairing (per question, most- vs least-upvoted answer), the article's rules (time window + 2x
ratio, no ranking: a random subset), the Wald ranking used before the vote model (Poisson z of the log vote ratio,
with today's rules), and the vote model at each level (zhihu_rlhf.votes), with other author shares and luck sds.
The unranked methods' instruct columns are the raw level's (plain votes). For the default model, and for every
variant with --calibration, the reliability table of `p_chosen_better` over all pairs is printed: per bin of p
(0-0.1, ..., 0.9-1) the mean p, the share truly right and the number of pairs.

    python benchmarks/pair_quality.py --world default --rows 200000 --seed 1
    python benchmarks/pair_quality.py --data /work/bench_data/kol_1m.parquet      # uses FILE.truth.parquet
    python benchmarks/pair_quality.py --world kol --rows 200000 --reliability      # + the reliability table
    python benchmarks/pair_quality.py --data W_200000_1.parquet --length   # length share x length-ratio bound grid
    python benchmarks/pair_quality.py --data W_1m.parquet --length --defaults-only   # default + truth rows only
    python benchmarks/pair_quality.py --data /work/bench_data/kol_1m.parquet --levels-only   # the four levels only
    python benchmarks/pair_quality.py --data /work/bench_data/kol_1m.parquet --calibration   # the default vs the
        # assumptions before luck was measured and the author share carried as a range
    python benchmarks/pair_quality.py --data W_1m.parquet --calibration --defaults-only   # the default only, with
        # the truth-chosen row: calibration, instruct and length figures in one fit
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
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, length_drop_reason, select_instruct
from zhihu_rlhf.pairs import PairOptions, select_pairs
from zhihu_rlhf.pipelines.answers import prepare_answers
from zhihu_rlhf.votes import EFFECT_COLUMNS, QUALITY_COLUMNS, VoteModelOptions, author_share_range, estimate_quality

TOP = 3_000
SHARE_LOW, SHARE_HIGH = author_share_range(VoteModelOptions())
DEFAULT_SHARE = f"{SHARE_LOW:g}:{SHARE_HIGH:g}" if SHARE_HIGH > SHARE_LOW else f"{SHARE_LOW:g}"
MIN_BIN_PAIRS = 500  # bins with fewer pairs are too noisy for the worst-bin figure


def calibration_variants(alternatives: bool) -> dict[str, VoteModelOptions]:
    """The default against what it replaced; with alternatives, also the other ways it could have gone."""
    variants = {
        f"vote model: full, share {DEFAULT_SHARE}, luck auto - the default": VoteModelOptions(),
        "vote model: full, share 0.75 known, luck 0.3 assumed (before)": VoteModelOptions(author_share=0.75, luck_sd=0.3),
    }
    if alternatives:
        variants |= {
            "vote model: full, share 0.75 known, luck auto": VoteModelOptions(author_share=0.75),
            f"vote model: full, share {DEFAULT_SHARE}, luck 0.3 assumed": VoteModelOptions(luck_sd=0.3),
            "vote model: full, share 0.5:1, luck auto": VoteModelOptions(author_share=(0.5, 1.0)),
            "vote model: full, share 0.25:1, luck auto": VoteModelOptions(author_share=(0.25, 1.0)),
        }
    return variants


def model_variants(levels_only: bool = False) -> dict[str, VoteModelOptions]:
    """The vote model's four levels; unless levels_only, also other author shares and wrong luck sds."""
    variants = {
        "vote model: raw (plain votes)": VoteModelOptions(model="raw"),
        "vote model: exposure only": VoteModelOptions(model="exposure"),
        f"vote model: authors only (share {DEFAULT_SHARE})": VoteModelOptions(model="authors"),
        f"vote model: full (share {DEFAULT_SHARE}) - the default": VoteModelOptions(model="full"),
    }
    if levels_only:
        return variants
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        variants[f"vote model: full, share {share:g} known"] = VoteModelOptions(model="full", author_share=share)
    # Most worlds' luck sd is 0.3 (lucky: 0.6); these show what an assumed value does.
    for luck in (0.15, 0.3, 0.6):
        variants[f"vote model: full, luck_sd {luck:g} assumed"] = VoteModelOptions(model="full", luck_sd=luck)
    return variants


def with_truth(pairs: pl.DataFrame, quality: pl.DataFrame) -> pl.DataFrame:
    """pairs + `right` (chosen has the higher true quality) + `length_ratio` (chosen / rejected characters);
    `quality` has answer_id, quality and chars."""
    q = quality.select("answer_id", "quality", "chars")
    return (
        pairs.join(q.rename({"answer_id": "chosen_answer_id", "quality": "q_chosen", "chars": "c_chosen"}), on="chosen_answer_id", maintain_order="left")
        .join(q.rename({"answer_id": "rejected_answer_id", "quality": "q_rejected", "chars": "c_rejected"}), on="rejected_answer_id", maintain_order="left")
        .with_columns(right=pl.col("q_chosen") > pl.col("q_rejected"), length_ratio=pl.col("c_chosen") / pl.col("c_rejected"))
    )


def length_skew(pairs: pl.DataFrame) -> tuple[float, float]:
    """(share of pairs whose chosen answer is longer, median chosen/rejected length ratio) of `with_truth` pairs."""
    return float((pairs["length_ratio"] > 1).mean()), float(pairs["length_ratio"].median())


def truth_chosen_pairs(answers: pl.DataFrame, quality: pl.DataFrame, lengths: LengthFilter) -> pl.DataFrame:
    """What quality alone gives: per question group, the truly best vs the truly worst usable answer (in different
    near-duplicate clusters), the TOP questions with the largest quality gaps first."""
    usable = answers.filter(length_drop_reason(lengths).is_null()).select("question_group", "answer_id", "answer_cluster")
    usable = usable.join(quality.select("answer_id", "quality"), on="answer_id").sort("quality", "answer_id")
    ends = usable.group_by("question_group").agg(
        chosen_answer_id=pl.col("answer_id").last(), rejected_answer_id=pl.col("answer_id").first(),
        gap=pl.col("quality").last() - pl.col("quality").first(), clusters=pl.col("answer_cluster").n_unique(),
    )
    return ends.filter(pl.col("clusters") >= 2).sort(["gap", "question_group"], descending=[True, False]).head(TOP)


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


def worst_bin(pairs: pl.DataFrame) -> float | None:
    """The largest |mean p - share right| over the bins holding at least MIN_BIN_PAIRS pairs (None: no such bin)."""
    table = reliability(pairs).filter(pl.col("pairs") >= MIN_BIN_PAIRS)
    return float((table["mean_p"] - table["right"]).abs().max()) if table.height else None


def reliability_markdown(label: str, pairs: pl.DataFrame) -> str:
    """The reliability table as markdown: one column per bin of p_chosen_better."""
    table = reliability(pairs)
    header = " | ".join(f"{b / 10:.1f}-{(b + 1) / 10:.1f}" for b in table["bin"])
    rows = [
        f"| {label}: bin of p | {header} |",
        "|---" * (table.height + 1) + "|",
        "| mean p | " + " | ".join(f"{p:.3f}" for p in table["mean_p"]) + " |",
        "| share truly right | " + " | ".join(f"{r:.3f}" for r in table["right"]) + " |",
        "| pairs | " + " | ".join(f"{n:,}" for n in table["pairs"]) + " |",
    ]
    return "\n".join(rows)


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


def article_pairs(answers: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The article's rules (same question, created within 30 days, >= 2x votes, each response once), no vote model
    and no ranking: every pair the rules allow, in a random order (its first 3,000 are the article's set)."""
    rules = dataclasses.replace(PairOptions(limit=0), min_chosen_upvotes=0)
    return select_pairs(wald_quality(answers), rules)[0].sample(fraction=1.0, shuffle=True, seed=seed)


def wald_quality(answers: pl.DataFrame) -> pl.DataFrame:
    """Quality columns under which a pair's confidence is the pre-vote-model Wald statistic:
    ln((u_c+1)/(u_r+1)) / sqrt(1/(u_c+1) + 1/(u_r+1))."""
    return answers.with_columns(
        estimated_quality=(pl.col("upvotes") + 1).log(), quality_sd=(pl.col("upvotes") + 1).pow(-0.5), quality_share_shift=0.0
    )


def recovered_effects(estimated: pl.DataFrame, truth: pl.DataFrame) -> str:
    """Correlation, within questions, of the estimated exposure and author terms with the planted ones."""
    planted = {"exposure_effect": "log_exposure", "author_effect": "author_log_reach", "length_effect": "log_length_effect"}
    joined = estimated.join(truth, on="answer_id").filter(pl.len().over("question_group") >= 2)
    found = []
    for estimate, true in planted.items():
        if true in joined.columns and joined[estimate].std() > 0:
            centred = joined.select((pl.col(c) - pl.col(c).mean().over("question_group")) for c in (estimate, true))
            found.append(f"{estimate} vs planted: r = {centred.select(pl.corr(estimate, true)).item():.3f}")
    return "; ".join(found)


def length_variants() -> dict[str, tuple[VoteModelOptions, PairOptions]]:
    """The default model and rules, then each length share, then each length-ratio bound (the default share)."""
    default_votes, default_rules = VoteModelOptions(), PairOptions(limit=0)
    variants = {"default (length share {:g}, length ratio {:g})".format(default_votes.length_share, default_rules.max_length_ratio):
                (default_votes, default_rules)}
    for share in (0.0, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75, 1.0):
        if share != default_votes.length_share:
            variants[f"length share {share:g}"] = (dataclasses.replace(default_votes, length_share=share), default_rules)
    for bound in (math.inf, 4.0, 3.0, 2.0, 1.5):
        if bound != default_rules.max_length_ratio:
            variants[f"length ratio <= {bound:g}"] = (default_votes, dataclasses.replace(default_rules, max_length_ratio=bound))
    return variants


def evaluate_length(answers: pl.DataFrame, quality: pl.DataFrame, defaults_only: bool) -> list[dict]:
    """The length grid (or only its default): per variant, top-3,000 right, chosen-longer share and median length
    ratio, all pairs."""
    base = answers.drop(*QUALITY_COLUMNS, *EFFECT_COLUMNS, strict=False)
    truth_set = with_truth(truth_chosen_pairs(base, quality, LengthFilter()), quality)
    rows = [{"method": "truth-chosen: best vs worst answer, largest quality gaps", "top": 1.0,
             "skew": length_skew(truth_set), "pairs": truth_set.height, "all": 1.0, "ece": None}]
    # The rules' pairs ranked by the true quality gap (one sd for every answer): what quality explains under the rules.
    oracle = base.join(quality.select("answer_id", estimated_quality="quality"), on="answer_id").with_columns(quality_sd=pl.lit(1.0), quality_share_shift=pl.lit(0.0))
    every = with_truth(select_pairs(oracle, PairOptions(limit=0))[0], quality)
    rows.append({"method": "truth-ranked: the rules' pairs by true quality gap", "top": float(every.head(TOP)["right"].mean()),
                 "skew": length_skew(every.head(TOP)), "pairs": every.height, "all": float(every["right"].mean()), "ece": None})
    estimates: dict[float, pl.DataFrame] = {}
    variants = length_variants()
    for name, (votes, rules) in list(variants.items())[:1] if defaults_only else variants.items():
        if votes.length_share not in estimates:
            estimates[votes.length_share], fitted = estimate_quality(base, votes)
            print(f"  length share {votes.length_share:g}: {fitted}", flush=True)
        every = with_truth(select_pairs(estimates[votes.length_share], rules)[0], quality)
        top = every.head(TOP)
        rows.append({"method": name, "top": float(top["right"].mean()), "skew": length_skew(top), "pairs": every.height,
                     "all": float(every["right"].mean()), "ece": expected_calibration_error(every)})
    return rows


def evaluate(answers: pl.DataFrame, truth: pl.DataFrame, seed: int, variants: dict[str, VoteModelOptions],
             show_reliability: bool, baselines: bool = True) -> list[dict]:
    """Without baselines the truth-chosen row is still given (for its length skew), without instruct columns."""
    quality = truth.select("answer_id", "quality", "chars")
    rules, lengths = PairOptions(limit=0), LengthFilter()
    base = answers.drop(*QUALITY_COLUMNS, *EFFECT_COLUMNS, strict=False)
    raw_instruct = instruct_truly_best(estimate_quality(base, VoteModelOptions(model="raw"))[0], quality) if baselines else ()
    truth_set = with_truth(truth_chosen_pairs(base, quality, lengths), quality)
    rows = [{"method": "truth-chosen: best vs worst answer, largest quality gaps", "top": 1.0, "pairs": truth_set.height,
             "all": 1.0, "ece": None, "worst_bin": None, "mean_p": None, "instruct": raw_instruct,
             "skew": length_skew(truth_set)}]

    def add(method: str, every: pl.DataFrame, top: pl.DataFrame, instruct: tuple[float, ...], calibrated: bool) -> None:
        rows.append({
            "method": method, "top": float(top["right"].mean()), "pairs": every.height, "all": float(every["right"].mean()),
            "ece": expected_calibration_error(every) if calibrated else None,
            "worst_bin": worst_bin(every) if calibrated else None,
            "mean_p": float(top["p_chosen_better"].mean()) if calibrated else None, "instruct": instruct,
            "skew": length_skew(top),
        })

    if baselines:
        naive = with_truth(naive_pairs(base, lengths), quality).sample(fraction=1.0, shuffle=True, seed=seed)
        add("naive: most- vs least-upvoted per question, unranked", naive, naive.head(TOP), raw_instruct, False)
        every = with_truth(article_pairs(base, seed), quality)
        add("the article's rules (time + 2x), unranked", every, every.head(TOP), raw_instruct, False)
        every = with_truth(select_pairs(wald_quality(base), rules)[0], quality)
        add("today's rules, Wald-ranked (before the vote model)", every, every.head(TOP), raw_instruct, False)
    for name, options in variants.items():
        started = time.perf_counter()
        estimated, fitted = estimate_quality(base, options)
        seconds = time.perf_counter() - started
        every = with_truth(select_pairs(estimated, rules)[0], quality)
        add(name, every, every.head(TOP), instruct_truly_best(estimated, quality), True)
        print(f"  {name}: fitted in {seconds:.1f}s; {recovered_effects(estimated, truth)}\n    {fitted}", flush=True)
        print(f"    luck sd {fitted['luck_sd']} ({fitted['luck_sd_from']}, {fitted['luck_copy_pairs']:,} pairs of copies)", flush=True)
        if show_reliability or options == VoteModelOptions():
            print(f"\nreliability of p_chosen_better over all {every.height:,} pairs, ECE {expected_calibration_error(every):.3f}:\n"
                  f"{reliability_markdown(name, every)}\n", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="default", choices=list(synth.WORLDS), help="synthetic world to generate (ignored with --data)")
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows to generate (ignored with --data)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, help="an existing synthetic file (its .truth.parquet beside it)")
    parser.add_argument("--reliability", action="store_true",
                        help="print the reliability table of every variant (the default model's is always printed)")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--levels-only", action="store_true",
                      help="only the four levels of the vote model, no other author shares or luck sds (fewer runs)")
    runs.add_argument("--calibration", action="store_true",
                      help="only the default and the model before luck was measured and the share carried as a range, "
                           "each with its reliability table, no baselines")
    parser.add_argument("--alternatives", action="store_true",
                        help="with --calibration: also one known share with luck measured, luck assumed with the share "
                             "range, and narrower share ranges")
    parser.add_argument("--length", action="store_true",
                        help="only the length grid: the default, each --length-share, each --max-length-ratio")
    parser.add_argument("--defaults-only", action="store_true",
                        help="with --length or --calibration: only the default model and rules beside the truth rows "
                             "(the 1M runs; with --calibration, one run gives the reliability table, the instruct "
                             "columns and the top 3,000's length skew)")
    args = parser.parse_args()
    if args.defaults_only and not (args.length or args.calibration):
        parser.error("--defaults-only goes with --length or --calibration")

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data, truth_path = args.data, synth.truth_path_for(args.data)
            label = args.data.name
        else:
            data, truth_path = synth.write(args.rows, Path(tmp) / "synth.parquet", args.seed, world=args.world)
            label = f"{args.world}, {args.rows:,} rows, seed {args.seed}"
        truth = pl.read_parquet(truth_path)
        planted = [c for c in ("author_log_reach", "log_exposure", "log_length_effect") if c in truth.columns]
        truth = truth.select("answer_id", "quality", *planted).drop_nulls("answer_id").unique("answer_id")
        started = time.perf_counter()
        answers, _ = prepare_answers(str(data), DedupeOptions(), VoteModelOptions(model="raw"))
        print(f"{label}: {answers.height:,} answers ready in {time.perf_counter() - started:.1f}s", flush=True)
        # characters of each answer as the pipeline sees it (normalised), for the length columns
        truth = truth.join(answers.select("answer_id", chars="answer_chars"), on="answer_id", how="left")
        if args.length:
            rows = evaluate_length(answers, truth, args.defaults_only)
        else:
            if args.calibration:
                variants = calibration_variants(args.alternatives)
                if args.defaults_only:
                    variants = {name: options for name, options in variants.items() if options == VoteModelOptions()}
            else:
                variants = model_variants(args.levels_only)
            rows = evaluate(answers, truth, args.seed, variants, args.reliability or args.calibration,
                            baselines=not args.calibration)

    if args.length:
        print(f"\n| {label} | top-{TOP:,} right | chosen longer | median length ratio | all pairs | all right | ECE |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            ece = f"{r['ece']:.3f}" if r["ece"] is not None else "–"
            print(f"| {r['method']} | {r['top']:.3f} | {r['skew'][0]:.3f} | {r['skew'][1]:.2f} | {r['pairs']:,} | {r['all']:.3f} | {ece} |")
        return
    print(f"\n| {label} | top-{TOP:,} right | chosen longer | median length ratio | all pairs | all right | ECE "
          f"| worst bin (>= {MIN_BIN_PAIRS} pairs) | mean p top-{TOP:,} | instruct: truly best | in the 26k set "
          "| 26k by upvotes (before) | mean p_best, 26k set |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ece = f"{r['ece']:.3f}" if r["ece"] is not None else "–"
        worst = f"{r['worst_bin']:.3f}" if r["worst_bin"] is not None else "–"
        mean_p = f"{r['mean_p']:.3f}" if r["mean_p"] is not None else "–"
        instruct = " | ".join(f"{share:.3f}" for share in r["instruct"]) if r["instruct"] else " | ".join(["–"] * 4)
        print(f"| {r['method']} | {r['top']:.3f} | {r['skew'][0]:.3f} | {r['skew'][1]:.2f} | {r['pairs']:,} | {r['all']:.3f} "
              f"| {ece} | {worst} | {mean_p} | {instruct} |")


if __name__ == "__main__":
    main()
