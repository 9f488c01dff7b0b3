"""Recipe: the instruct set (question -> best answer), like liyucheng/zhihu_26k but deduplicated."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import polars as pl

from zhihu_rlhf.export import OutputSettings
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, ranking_summary, select_instruct
from zhihu_rlhf.pipelines.answers import StepChain, set_stats, write_set
from zhihu_rlhf.sources import Texts
from zhihu_rlhf.split import split_by_question


def build_instruct_set(
    answers: pl.DataFrame,
    texts: Texts,
    source_stats: dict,
    options: InstructOptions,
    lengths: LengthFilter,
    *,
    out: Path,
    params: dict,
    output: OutputSettings,
    chain: StepChain | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """The selection is a cached step (`chain`): a rebuild that changes only the pairs' options reuses it, and keeps
    the folder it wrote (`write_set`)."""
    select = partial(_select, answers, texts, options, lengths)
    rows, selection = chain.step("instruct", (options, lengths), select, log) if chain else select()
    train, test = split_by_question(rows, output.test_fraction)
    stats = set_stats(source_stats, rows.height, selection["rows_dropped"], train, test)
    stats["instruct_ranking"] = ranking_summary(rows)
    return write_set(out, "instruct", train, test, stats, params, output, chain.cache if chain else None, log)


def _select(answers: pl.DataFrame, texts: Texts, options: InstructOptions,
            lengths: LengthFilter) -> tuple[pl.DataFrame, dict]:
    rows, dropped_here = select_instruct(answers, options, lengths, texts)
    return rows, {"rows_dropped": dropped_here}
