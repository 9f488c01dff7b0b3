"""Recipe: chosen/rejected pairs from votes, like liyucheng/zhihu_rlhf_3k but cleaned (see zhihu_rlhf.pairs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from zhihu_rlhf.cache import StepCache
from zhihu_rlhf.export import OutputSettings
from zhihu_rlhf.instruct import LengthFilter
from zhihu_rlhf.pairs import PairOptions, length_skew, select_pairs
from zhihu_rlhf.pipelines.answers import set_stats, write_set
from zhihu_rlhf.sources import Texts
from zhihu_rlhf.split import split_by_question


def build_pairs_set(
    answers: pl.DataFrame,
    texts: Texts,
    source_stats: dict,
    options: PairOptions,
    lengths: LengthFilter,
    *,
    out: Path,
    params: dict,
    output: OutputSettings,
    cache: StepCache | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """`cache`: where the written folder is recorded, so that a rebuild with the same pairs keeps it (`write_set`)."""
    pairs, dropped_here, funnel = select_pairs(answers, options, lengths, texts)
    train, test = split_by_question(pairs, output.test_fraction)
    # rows_kept counts answer rows: each pair uses two, none twice
    stats = set_stats(source_stats, 2 * pairs.height, dropped_here, train, test) | {
        "pairs": pairs.height, "funnel": funnel, "length": length_skew(pairs)
    }
    return write_set(out, "pairs", train, test, stats, params, output, cache, log)
