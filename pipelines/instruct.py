"""Recipe: the instruct set (question -> best answer), like liyucheng/zhihu_26k but deduplicated."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from zhihu_rlhf.export import OutputSettings, write_dataset
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, ranking_summary, select_instruct
from zhihu_rlhf.pipelines.answers import set_stats
from zhihu_rlhf.split import split_by_question


def build_instruct_set(
    answers: pl.DataFrame,
    source_stats: dict,
    options: InstructOptions,
    lengths: LengthFilter,
    *,
    out: Path,
    params: dict,
    output: OutputSettings,
) -> Path:
    rows, dropped_here = select_instruct(answers, options, lengths)
    train, test = split_by_question(rows, output.test_fraction)
    stats = set_stats(source_stats, rows.height, dropped_here, train, test)
    stats["instruct_ranking"] = ranking_summary(rows)
    return write_dataset(
        out, "instruct", train.drop("question_group"), test.drop("question_group"), stats, params,
        formats=output.formats, keep_author_ids=output.keep_author_ids,
    )
