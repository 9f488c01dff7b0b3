"""Chosen/rejected pairs from votes, following the reference method and tightening it.

The rules, in the order the funnel in stats.json reports them:

1. same question: both answers belong to one question group (re-asked questions merged by dedupe);
   the answer with more upvotes is the candidate `chosen`; tied votes say nothing and are dropped.
2. not near-copies: chosen and rejected are not in one near-duplicate cluster.
3. created close in time: both have a creation time and were written at most `max_days_apart` apart.
   Zhihu votes depend on exposure; answers written at the same time competed for the same readers.
4. chosen not earlier (optional, Stanford SHP's rule): the chosen answer is no older than the
   rejected one, so its lead cannot come from a head start.
5. enough votes: the chosen answer has at least `min_chosen_upvotes`.
6. upvote ratio: chosen has at least `min_ratio` times the rejected's upvotes.
7. each response once: a response (a near-duplicate cluster) appears in at most one pair, in
   either slot, and a question gives at most `max_pairs_per_question` pairs. Conflicts are
   resolved greedily by confidence, most confident pair first.
8. limit: the `limit` most confident pairs are kept.

Confidence. Votes are not quality: exposure and the author's reach multiply them too (the article: 点赞受
许多因素影响，例如答题人粉丝数，答题时间). The vote model (zhihu_rlhf.votes) turns each answer's votes into an
estimated quality with an sd, and a pair's

    confidence      = (quality_c - quality_r) / sqrt(sd_c^2 + sd_r^2)    the model's lead in sds
    p_chosen_better = Phi(confidence)                                   P(chosen is truly the better answer)

Pairs are ranked by it (`confidence` orders exactly as `p_chosen_better` and still separates pairs whose
probability rounds to 1). A 2x lead of 2000 over 1000 votes is far more certain than 4 over 2, but not more
certain than the luck of an answer's spread allows; and a lead that the chosen author's reach or a head start
explains counts for little. With `--vote-model raw` the votes are taken as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from zhihu_rlhf.instruct import AnswerFilters, length_drop_reason
from zhihu_rlhf.votes import QUALITY_COLUMNS, normal_cdf, quality_lead

PAIRS_COLUMNS = [
    "question_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_answer_id",
    "rejected_answer_id",
    "chosen_upvotes",
    "rejected_upvotes",
    "chosen_created_at",
    "rejected_created_at",
    "upvote_ratio",
    "confidence",
    "p_chosen_better",
]

SECONDS_PER_DAY = 86_400


@dataclass
class PairOptions(AnswerFilters):
    limit: int = 3_000
    """Keep this many pairs, the most confident first (0 = all)."""
    max_days_apart: float = 30.0
    """Both answers were created at most this many days apart (the article: 创建时间相近)."""
    min_ratio: float = 2.0
    """The chosen answer has at least this many times the rejected's upvotes (the article: 至少两倍)."""
    min_chosen_upvotes: int = 10
    """Below this a vote lead is mostly noise, however large the ratio."""
    max_pairs_per_question: int = 5
    """Spread the pairs over many questions instead of a few very popular ones."""
    chosen_not_earlier: bool = False
    """Stanford SHP's rule: the chosen answer was written no earlier than the rejected one."""


def candidate_pairs(answers: pl.LazyFrame) -> pl.LazyFrame:
    """Every two answers of one question group, oriented so `chosen` has more upvotes (rule 1).

    Lazy: tens of millions of candidates are filtered as they are produced, never stored.
    """
    slim = answers.select("question_group", "answer_id", "answer_cluster", "upvotes", "created_at")
    both = slim.join(slim, on="question_group", suffix="_b").filter(pl.col("answer_id") < pl.col("answer_id_b"))
    a_wins = pl.col("upvotes") >= pl.col("upvotes_b")

    def side(field: str, winner: bool) -> pl.Expr:
        first, second = (pl.col(field), pl.col(f"{field}_b")) if winner else (pl.col(f"{field}_b"), pl.col(field))
        return pl.when(a_wins).then(first).otherwise(second)

    return both.select(
        "question_group",
        chosen_answer_id=side("answer_id", True),
        rejected_answer_id=side("answer_id", False),
        chosen_cluster=side("answer_cluster", True),
        rejected_cluster=side("answer_cluster", False),
        chosen_upvotes=side("upvotes", True),
        rejected_upvotes=side("upvotes", False),
        chosen_created_at=side("created_at", True),
        rejected_created_at=side("created_at", False),
    )


def pair_rules(opts: PairOptions) -> list[tuple[str, str, pl.Expr]]:
    """(name, description, keep-condition) for rules 1-6, in funnel order."""
    days_apart = (pl.col("chosen_created_at") - pl.col("rejected_created_at")).dt.total_seconds().abs() / SECONDS_PER_DAY
    rules = [
        ("distinct_upvotes", "tied upvotes carry no preference", pl.col("chosen_upvotes") > pl.col("rejected_upvotes")),
        ("not_near_copies", "chosen and rejected are not near-duplicates", pl.col("chosen_cluster") != pl.col("rejected_cluster")),
        (
            "created_close_in_time",
            f"both have a creation time, at most {opts.max_days_apart:g} days apart",
            days_apart.fill_null(math.inf) <= opts.max_days_apart,
        ),
    ]
    if opts.chosen_not_earlier:
        rules.append(
            (
                "chosen_not_earlier",
                "the chosen answer was written no earlier than the rejected one",
                pl.col("chosen_created_at") >= pl.col("rejected_created_at"),
            )
        )
    rules += [
        (
            "min_chosen_upvotes",
            f"the chosen answer has at least {opts.min_chosen_upvotes} upvotes",
            pl.col("chosen_upvotes") >= opts.min_chosen_upvotes,
        ),
        (
            "upvote_ratio",
            f"chosen has at least {opts.min_ratio:g}x the rejected's upvotes",
            pl.col("chosen_upvotes") >= opts.min_ratio * pl.col("rejected_upvotes"),
        ),
    ]
    return rules


def select_one_use_per_response(candidates: pl.DataFrame, max_pairs_per_question: int) -> pl.DataFrame:
    """Greedy matching by confidence: each response (cluster) in at most one pair (rule 7).

    Sequential greedy over millions of candidates would be a Python loop; instead each round keeps
    every pair that is the most confident remaining pair of *both* its responses ("locally
    dominant"). Those pairs are exactly the ones sequential greedy accepts next, so the result is
    identical, in a handful of vectorised rounds. The per-question cap is applied in rank order.
    """
    ranked = candidates.sort(["confidence", "chosen_answer_id", "rejected_answer_id"], descending=[True, False, False])
    # Dense integer codes, so each round is a few numpy passes over the pairs still in play.
    clusters = pl.concat([ranked["chosen_cluster"], ranked["rejected_cluster"]]).rank("dense").to_numpy() - 1
    chosen, rejected = clusters[: ranked.height], clusters[ranked.height :]
    question = ranked["question_group"].rank("dense").to_numpy() - 1
    cluster_used = np.zeros(len(clusters), dtype=bool)
    pairs_in_question = np.zeros(ranked.height, dtype=np.int64)
    selected = np.zeros(ranked.height, dtype=bool)
    in_play = np.arange(ranked.height)  # positions in rank order: smaller is more confident
    while len(in_play):
        # The best (smallest) rank in play of each response; a pair is dominant when it is the best of both.
        best = np.full(len(clusters), ranked.height)
        np.minimum.at(best, chosen[in_play], in_play)
        np.minimum.at(best, rejected[in_play], in_play)
        dominant = in_play[(best[chosen[in_play]] == in_play) & (best[rejected[in_play]] == in_play)]
        # Dominant pairs of one question are accepted in rank order while the question has room;
        # `place` numbers the dominant pairs of each question 0, 1, 2, ... in rank order.
        by_question = dominant[np.argsort(question[dominant], kind="stable")]
        their_question = question[by_question]
        starts = np.flatnonzero(np.diff(their_question, prepend=-1))
        place = np.arange(len(by_question)) - np.repeat(starts, np.diff(starts, append=len(by_question)))
        accepted = by_question[pairs_in_question[their_question] + place < max_pairs_per_question]
        selected[accepted] = True
        np.add.at(pairs_in_question, question[accepted], 1)
        cluster_used[chosen[accepted]] = cluster_used[rejected[accepted]] = True
        # Dominant pairs over the cap are settled too (their question is now full).
        settled = np.zeros(ranked.height, dtype=bool)
        settled[dominant] = True
        in_play = in_play[
            ~settled[in_play]
            & ~cluster_used[chosen[in_play]]
            & ~cluster_used[rejected[in_play]]
            & (pairs_in_question[question[in_play]] < max_pairs_per_question)
        ]
    return ranked.filter(pl.Series(selected))


def select_pairs(answers: pl.DataFrame, opts: PairOptions) -> tuple[pl.DataFrame, dict[str, int], list[dict]]:
    """Returns (pairs, answer rows dropped by reason, funnel of candidate pairs per rule)."""
    # Candidates are built from ids and votes only; texts (gigabytes) are attached to the kept pairs at the end.
    slim = answers.select(
        "question_group", "answer_id", "answer_cluster", "upvotes", "created_at", drop_reason=length_drop_reason(opts)
    )
    usable = slim.filter(pl.col("drop_reason").is_null())

    rules = pair_rules(opts)
    # For the funnel: the first rule each candidate fails (len(rules) = passes them all).
    first_failed = pl.coalesce(*(pl.when(~keep).then(pl.lit(i)) for i, (_, _, keep) in enumerate(rules)), pl.lit(len(rules)))
    candidates = candidate_pairs(usable.lazy())
    # Two streaming passes over the candidates: sharing one pass would cache all of them in memory.
    failures = candidates.group_by(first_failed.alias("rule")).len().collect(engine="streaming")
    quality = answers.lazy().select("answer_id", *QUALITY_COLUMNS)
    candidates = (
        candidates.filter(*(keep for _, _, keep in rules))
        .join(quality.rename(lambda c: f"chosen_{c}"), on="chosen_answer_id", how="left")
        .join(quality.rename(lambda c: f"rejected_{c}"), on="rejected_answer_id", how="left")
        .with_columns(
            # finite even over zero votes, so every export format can carry it
            upvote_ratio=pl.col("chosen_upvotes") / pl.max_horizontal(pl.col("rejected_upvotes"), 1),
            confidence=quality_lead("chosen_", "rejected_"),
        )
        .with_columns(p_chosen_better=normal_cdf(pl.col("confidence")))
        .collect(engine="streaming")
    )
    failed_at = dict(zip(failures["rule"], failures["len"], strict=True))
    left = sum(failed_at.values())
    funnel = [{"rule": "same_question", "description": "two answers to one question group", "removed": 0, "left": left}]
    for i, (name, description, _) in enumerate(rules):
        removed = failed_at.get(i, 0)
        left -= removed
        funnel.append({"rule": name, "description": description, "removed": removed, "left": left})

    before = candidates.height
    chosen_once = select_one_use_per_response(candidates, opts.max_pairs_per_question)
    funnel.append(
        {
            "rule": "each_response_once",
            "description": f"a response is in at most one pair; at most {opts.max_pairs_per_question} pairs per question",
            "removed": before - chosen_once.height,
            "left": chosen_once.height,
        }
    )
    kept = chosen_once.head(opts.limit) if opts.limit else chosen_once
    funnel.append({"rule": "limit", "description": "the most confident pairs", "removed": chosen_once.height - kept.height, "left": kept.height})

    pairs = _attach_texts(kept, answers)

    in_pair = pl.col("answer_id").is_in(pl.concat([kept["chosen_answer_id"], kept["rejected_answer_id"]]).implode())
    usable_in_question = pl.col("drop_reason").is_null().sum().over("question_group")
    reasons = slim.select(
        pl.coalesce(
            "drop_reason",
            pl.when(usable_in_question == 1).then(pl.lit("only_answer_to_its_question")),
            pl.when(~in_pair).then(pl.lit("not_in_a_selected_pair")),
        ).alias("drop_reason")
    )["drop_reason"]
    dropped = reasons.drop_nulls().value_counts().sort("drop_reason")
    return pairs, dict(zip(dropped["drop_reason"], dropped["count"], strict=True)), funnel


def _attach_texts(kept: pl.DataFrame, answers: pl.DataFrame) -> pl.DataFrame:
    """Join the question and the two answer texts onto the selected pairs (texts travel only now)."""
    chosen = answers.select(
        chosen_answer_id="answer_id", question_id="question_id", prompt="question", chosen="answer", chosen_author_id="author_id"
    )
    rejected = answers.select(rejected_answer_id="answer_id", rejected="answer", rejected_author_id="author_id")
    return (
        kept.join(chosen, on="chosen_answer_id", how="left", maintain_order="left")
        .join(rejected, on="rejected_answer_id", how="left", maintain_order="left")
        .select(*PAIRS_COLUMNS, "chosen_author_id", "rejected_author_id", "question_group")
    )
