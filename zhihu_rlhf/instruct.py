"""The instruct set: one answer per question, the best one that passes the quality filters.

Input is the deduplicated answer table (with `question_group` and `answer_cluster`) with the vote model's
`estimated_quality` and `quality_sd` (zhihu_rlhf.votes), so "one per question" means one per group of re-asked
questions, "the best" is the highest estimated quality (with `--vote-model raw`: plain votes), and a cross-posted
answer (one cluster) is used for at most one question.

Which questions make the set (`limit`, 26,000 by default, like zhihu_26k): those where the vote model is surest
that the chosen answer is truly the best of its question, `p_best_in_question`. Ranking by the chosen answer's raw
upvotes, as before, fills the set with the busiest questions, where many answers compete and votes are most
confounded, so the chosen answer is the truly best one less often (benchmarks/RESULTS.md, "Vote model").

    p_best_in_question = prod over the question's other answers j of Phi(lead over j in sds)

The leads are `votes.quality_lead`, the same as a pair's `confidence`. Every other answer of the question group
that passes the length filters competes (also one with too few upvotes, or whose text is used for another
question: it is still an answer to this question and may be the better one), except copies of the chosen text.
The events "better than j" all share the chosen answer's own quality, so they are positively associated and the
product is a lower bound of P(best of all) (Harris' inequality, treating the answers' posteriors as independent):
a question with many close answers ranks low, as it should. A question whose chosen answer is its only usable one
has nothing to compare with (p_best_in_question is null): being "best of one" says nothing about the answer, so
these questions come after every question with a compared answer, the most-upvoted first.

Chosen by the worst case over the synthetic worlds where authors repeat (default, kol, popularity, templates,
pandas; benchmarks/RESULTS.md, "Vote model"): at 200k rows, with the set scaled to 5,200 questions, the chosen answer
was the truly best in 0.863-0.946 of the set's questions ranked this way, against 0.710-0.802 ranked by upvotes;
ranking by the lead over the runner-up alone was never better (worst world 0.858 against 0.863). At 1,006,218 rows
the published 26k set's share is 0.875-0.943 on those worlds (0.728-0.820 ranked by upvotes). The model's own mean
p_best_in_question over the set is too sure (0.98-0.99): the set keeps the questions it is surest of, those it is
wrongly sure of included. The choice within a question is unchanged; over every question the chosen answer is the
truly best one only 0.63-0.71 of the time, which is what votes allow where many answers compete.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from zhihu_rlhf import schema
from zhihu_rlhf.sources import Texts, texts_of
from zhihu_rlhf.votes import QUALITY_COLUMNS, log_normal_cdf, quality_lead


@dataclass(frozen=True)
class LengthFilter:
    """Which answers are usable at all, by length: one filter for the instruct set and the pairs alike."""

    min_answer_chars: int = 30
    """Shorter answers ("谢邀，不知道") teach nothing."""
    max_answer_chars: int = 4000
    """Longer answers mostly get truncated at training time (4000 Chinese chars is ~3-4k tokens)."""


@dataclass
class InstructOptions:
    limit: int = 26_000
    """Keep this many questions (0 = all): those whose chosen answer is most surely the best of its question first
    (`p_best_in_question`), then single-answer questions by upvotes."""
    min_upvotes: int = 1
    """An answer nobody upvoted is no evidence of a good answer."""


def length_drop_reason(filters: LengthFilter) -> pl.Expr:
    length = pl.col("answer_chars")
    return (
        pl.when(length < filters.min_answer_chars)
        .then(pl.lit("answer_too_short"))
        .when(length > filters.max_answer_chars)
        .then(pl.lit("answer_too_long"))
    )


# Within a cluster, best first; the rest of the key makes ties deterministic (earlier answer, then smaller id).
BEST_FIRST = (["upvotes", "created_at", "answer_id"], [True, False, False])


def select_instruct(
    answers: pl.DataFrame, opts: InstructOptions, lengths: LengthFilter = LengthFilter(),
    texts: Texts | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Returns (instruct rows, surest first, with `p_best_in_question`; rows dropped by reason): every input row is
    either kept or counted. `texts`: where the kept answers' texts are read (None: `answers` holds them)."""
    by, descending = BEST_FIRST
    # Rank a slim copy (no texts: sorting two gigabytes of strings is the slow part); texts join back at the end.
    ranked = answers.select(
        "answer_id", "question_group", "answer_cluster", "upvotes", "created_at", *QUALITY_COLUMNS,
        usable=length_drop_reason(lengths).is_null(),
        drop_reason=pl.coalesce(
            length_drop_reason(lengths),
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
    ranked = ranked.join(p_best_in_question(ranked.filter(eligible), ranked.filter("usable")), on="question_group",
                         how="left", maintain_order="left")
    # Surest first; single-answer questions (null) last, by upvotes as before.
    ranked = ranked.sort(["log_p_best", *by], descending=[True, *descending], nulls_last=True)
    if opts.limit:
        over_limit = eligible.cum_sum() > opts.limit  # rows are surest-first, so these are the least sure questions
        ranked = ranked.with_columns(
            drop_reason=pl.when(eligible & over_limit).then(pl.lit("beyond_limit")).otherwise("drop_reason")
        )

    kept = ranked.filter(eligible)
    ids = answers.select("answer_id", "question_id", "author_id")
    kept_texts = texts_of(answers if texts is None else texts, kept["answer_id"]).rename(
        {"question": "prompt", "answer": "completion"})
    kept = (
        kept.with_columns(p_best_in_question=pl.col("log_p_best").exp())
        .join(ids, on="answer_id", how="left", maintain_order="left")
        .join(kept_texts, on="answer_id", how="left", maintain_order="left")
        .select(*schema.names("instruct"), *schema.author_id_names("instruct"), "question_group", "p_best_in_question")
    )
    dropped = ranked.filter(~eligible)["drop_reason"].value_counts().sort("drop_reason")
    return kept, dict(zip(dropped["drop_reason"], dropped["count"], strict=True))


def p_best_in_question(chosen: pl.DataFrame, usable: pl.DataFrame) -> pl.DataFrame:
    """Per question group with a chosen answer and at least one competitor: `log_p_best`, the log of the lower bound
    prod_j Phi(lead over j) over the group's usable answers j outside the chosen answer's cluster (module docstring).
    In logs, so that leads of many sds still order the questions (1 - Phi(8) is below float precision near 1)."""
    quality = ["answer_cluster", *QUALITY_COLUMNS]
    chosen = chosen.select("question_group", *(pl.col(c).alias(f"chosen_{c}") for c in quality))
    return (
        usable.select("question_group", *quality)
        .join(chosen, on="question_group")
        .filter(pl.col("answer_cluster") != pl.col("chosen_answer_cluster"))
        .group_by("question_group")
        .agg(log_p_best=log_normal_cdf(quality_lead("chosen_", "")).sum())
    )


def ranking_summary(rows: pl.DataFrame) -> dict:
    """For stats.json and the card: how many kept questions had answers to compare, and the mean p_best_in_question
    over them (the model's estimate of the share whose answer is truly the best of its question)."""
    p = rows["p_best_in_question"]
    return {
        "questions_compared": int(p.is_not_null().sum()),
        "questions_with_one_answer": int(p.is_null().sum()),
        "mean_p_best_in_question": round(float(p.mean()), 4) if p.is_not_null().any() else None,
    }
