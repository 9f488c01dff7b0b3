"""The instruct set: one answer per question, the best one that passes the quality filters.

Input is the deduplicated answer table (with `question_group` and `answer_cluster`) with the vote model's
`estimated_quality` (zhihu_rlhf.votes), so "one per question" means one per group of re-asked questions, "the
best" is the highest estimated quality (with `--vote-model raw`: the most upvotes), and a cross-posted answer
(one cluster) is used for at most one question.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

INSTRUCT_COLUMNS = ["question_id", "answer_id", "prompt", "completion", "upvotes", "created_at"]


@dataclass
class AnswerFilters:
    """Length and vote filters shared by the instruct set and the pairs."""

    min_answer_chars: int = 30
    """Shorter answers ("谢邀，不知道") teach nothing."""
    max_answer_chars: int = 4000
    """Longer answers mostly get truncated at training time (4000 Chinese chars is ~3-4k tokens)."""


@dataclass
class InstructOptions(AnswerFilters):
    limit: int = 26_000
    """Keep the questions with the best-upvoted answers, this many (0 = all)."""
    min_upvotes: int = 1
    """An answer nobody upvoted is no evidence of a good answer."""


def length_drop_reason(filters: AnswerFilters) -> pl.Expr:
    length = pl.col("answer").str.len_chars()
    return (
        pl.when(length < filters.min_answer_chars)
        .then(pl.lit("answer_too_short"))
        .when(length > filters.max_answer_chars)
        .then(pl.lit("answer_too_long"))
    )


# Best first; the rest of the key makes ties deterministic (earlier answer, then smaller id).
BEST_FIRST = (["upvotes", "created_at", "answer_id"], [True, False, False])


def select_instruct(answers: pl.DataFrame, opts: InstructOptions) -> tuple[pl.DataFrame, dict[str, int]]:
    """Returns (instruct rows, rows dropped by reason); every input row is either kept or counted."""
    by, descending = BEST_FIRST
    # Rank a slim copy (no texts: sorting two gigabytes of strings is the slow part); texts join back at the end.
    ranked = answers.select(
        "answer_id", "question_group", "answer_cluster", "upvotes", "created_at", "estimated_quality",
        drop_reason=pl.coalesce(
            length_drop_reason(opts),
            pl.when(pl.col("upvotes") < opts.min_upvotes).then(pl.lit("below_min_upvotes")),
        ),
    ).sort(by, descending=descending, nulls_last=True)

    eligible = pl.col("drop_reason").is_null()
    # A cross-posted answer counts once: only the best copy in its cluster stays in the running.
    best_of_cluster = pl.col("answer_id") == pl.col("answer_id").filter(eligible).first().over("answer_cluster")
    ranked = ranked.with_columns(
        drop_reason=pl.when(eligible & ~best_of_cluster).then(pl.lit("near_copy_of_a_better_answer")).otherwise("drop_reason")
    )
    # Within a question the vote model decides: votes alone favour the earliest answer and the biggest author.
    by_quality = pl.col("answer_id").filter(eligible).sort_by(
        pl.col("estimated_quality").filter(eligible), descending=True, maintain_order=True
    )
    best_of_question = pl.col("answer_id") == by_quality.first().over("question_group")
    ranked = ranked.with_columns(
        drop_reason=pl.when(eligible & ~best_of_question).then(pl.lit("not_best_in_question")).otherwise("drop_reason")
    )
    if opts.limit:
        over_limit = eligible.cum_sum() > opts.limit  # rows are best-first, so these are the weakest questions
        ranked = ranked.with_columns(
            drop_reason=pl.when(eligible & over_limit).then(pl.lit("beyond_limit")).otherwise("drop_reason")
        )

    texts = answers.select("answer_id", "question_id", prompt="question", completion="answer", author_id="author_id")
    kept = (
        ranked.filter(eligible)
        .join(texts, on="answer_id", how="left", maintain_order="left")
        .select(*INSTRUCT_COLUMNS, "author_id", "question_group")
    )
    dropped = ranked.filter(~eligible)["drop_reason"].value_counts().sort("drop_reason")
    return kept, dict(zip(dropped["drop_reason"], dropped["count"], strict=True))
