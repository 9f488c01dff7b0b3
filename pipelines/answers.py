"""Recipe step shared by every set: read the source, merge near-duplicates, estimate each answer's quality."""

from __future__ import annotations

import polars as pl

from zhihu_rlhf.dedupe import DedupeOptions, dedupe
from zhihu_rlhf.sources import load_answers
from zhihu_rlhf.votes import VoteModelOptions, estimate_quality


def prepare_answers(
    source: str, dedupe_options: DedupeOptions, vote_options: VoteModelOptions | None = None
) -> tuple[pl.DataFrame, dict]:
    """Canonical answer table with `question_group`, `answer_cluster` and the vote model's quality columns."""
    answers, stats = load_answers(source)
    answers, stats["dedupe"] = dedupe(answers, dedupe_options)
    stats["answers_per_question"] = answers_per_question(answers)
    answers, stats["vote_model"] = estimate_quality(answers, vote_options or VoteModelOptions())
    return answers, stats


def answers_per_question(answers: pl.DataFrame) -> dict[str, int]:
    """{answers in a question group: number of such groups}, for the card's histogram."""
    sizes = answers.group_by("question_group").len().group_by("len").len(name="questions").sort("len")
    return {str(n): q for n, q in zip(sizes["len"], sizes["questions"], strict=True)}


def set_stats(source_stats: dict, rows_kept: int, dropped_here: dict[str, int], train: pl.DataFrame,
              test: pl.DataFrame) -> dict:
    """The stats.json fields every set has: each source row is kept or dropped for a named reason."""
    return {
        "rows_in": source_stats["rows_in"],
        "rows_kept": rows_kept,
        "rows_dropped": {**source_stats["rows_dropped"], **dropped_here},
        "created_at_missing": source_stats["created_at_missing"],
        "author_id_missing": source_stats["author_id_missing"],
        "splits": {"train": train.height, "test": test.height},
        "dedupe": source_stats["dedupe"],
        "answers_per_question": source_stats["answers_per_question"],
        "vote_model": source_stats["vote_model"],
    }
