"""Recipe: chosen/rejected pairs from votes, like liyucheng/zhihu_rlhf_3k but cleaned (see zhihu_rlhf.pairs)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from zhihu_rlhf.export import OutputSettings, write_dataset
from zhihu_rlhf.instruct import LengthFilter
from zhihu_rlhf.pairs import PairOptions, length_skew, select_pairs
from zhihu_rlhf.pipelines.answers import set_stats
from zhihu_rlhf.split import split_by_question


def build_pairs_set(
    answers: pl.DataFrame,
    source_stats: dict,
    options: PairOptions,
    lengths: LengthFilter,
    *,
    out: Path,
    params: dict,
    output: OutputSettings,
) -> Path:
    pairs, dropped_here, funnel = select_pairs(answers, options, lengths)
    train, test = split_by_question(pairs, output.test_fraction)
    # rows_kept counts answer rows: each pair uses two, none twice
    stats = set_stats(source_stats, 2 * pairs.height, dropped_here, train, test) | {
        "pairs": pairs.height, "funnel": funnel, "length": length_skew(pairs)
    }
    return write_dataset(
        out, "pairs", train.drop("question_group"), test.drop("question_group"), stats, params,
        formats=output.formats, keep_author_ids=output.keep_author_ids,
    )
