"""Recipe step shared by every set: read the source and merge near-duplicates."""

from __future__ import annotations

import polars as pl

from zhihu_rlhf.dedupe import DedupeOptions, dedupe
from zhihu_rlhf.sources import load_answers


def prepare_answers(source: str, dedupe_options: DedupeOptions) -> tuple[pl.DataFrame, dict]:
    """Canonical answer table with `question_group` and `answer_cluster`; stats of both steps."""
    answers, stats = load_answers(source)
    answers, stats["dedupe"] = dedupe(answers, dedupe_options)
    return answers, stats


def answers_per_question(answers: pl.DataFrame) -> dict[str, int]:
    """{answers in a question group: number of such groups}, for the card's histogram."""
    sizes = answers.group_by("question_group").len().group_by("len").len(name="questions").sort("len")
    return {str(n): q for n, q in zip(sizes["len"], sizes["questions"], strict=True)}
