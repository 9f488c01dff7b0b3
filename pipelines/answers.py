"""Recipe steps shared by every set: read the source, merge near-duplicates, estimate each answer's quality; and,
at the end, write a set's folder.

Each of the three steps is taken from the cache when its inputs are unchanged (see zhihu_rlhf.cache); a set's own
step is cached under the last of them (`StepChain`), and a folder written from unchanged inputs is kept (`write_set`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl

from zhihu_rlhf.cache import StepCache, cached_step, cached_step_undecoded, folder_key, source_fingerprint, step_key
from zhihu_rlhf.dedupe import DedupeOptions, dedupe
from zhihu_rlhf.export import OutputSettings, write_dataset
from zhihu_rlhf.schema import Kind
from zhihu_rlhf.sources import CANONICAL_TEXT_COLUMNS, Texts, load_answers, resolve_source
from zhihu_rlhf.votes import VoteModelOptions, estimate_quality


@dataclass(frozen=True)
class StepChain:
    """Where a recipe's own cached step hangs: under the vote model's key, which fingerprints the source and every
    option the answer table depends on. `cache` None: the cache is off, the step is computed."""

    cache: StepCache | None
    key: str
    source: str

    def step(self, step: str, options: tuple, compute: Callable[[], tuple[pl.DataFrame, dict]],
             log: Callable[[str], None]) -> tuple[pl.DataFrame, dict]:
        """`compute()`'s (table, stats), or the stored ones of `step` with these `options` (dataclasses)."""
        key = step_key(step, self.key, *options) if self.cache else ""
        return cached_step(self.cache, step, key, compute, base=None, source=self.source, log=log)


def prepare_answers(
    source: str,
    dedupe_options: DedupeOptions,
    vote_options: VoteModelOptions | None = None,
    *,
    cache: StepCache | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[pl.DataFrame, dict]:
    """Canonical answer table, texts included, with `question_group`, `answer_cluster` and the vote model's quality
    columns."""
    answers, texts, stats, _ = chained_answers(source, dedupe_options, vote_options, cache=cache, log=log)
    return with_texts(answers, texts), stats


def chained_answers(
    source: str,
    dedupe_options: DedupeOptions,
    vote_options: VoteModelOptions | None = None,
    *,
    cache: StepCache | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[pl.DataFrame, Texts, dict, StepChain]:
    """`prepare_answers` without the texts; where the texts are (from the cache, only the rows a recipe selects are
    decoded); and the chain a later step's cache entry hangs from."""
    vote_options = vote_options or VoteModelOptions()
    resolved = resolve_source(source)
    # The keys chain: a step's key holds the key of the step it reads, so a changed step recomputes what follows it.
    answers_key = dedupe_key = votes_key = ""
    if cache:
        answers_key = step_key("answers", f"{resolved.label}\0{source_fingerprint(resolved.paths())}")
        dedupe_key = step_key("dedupe", answers_key, dedupe_options)
        votes_key = step_key("votes", dedupe_key, vote_options)
    step = partial(cached_step, cache, source=resolved.label, log=log)

    answers, stats, texts = cached_step_undecoded(cache, "answers", answers_key, partial(load_answers, resolved),
                                                  CANONICAL_TEXT_COLUMNS, "answer_id", source=resolved.label, log=log)
    answers, stats["dedupe"] = step("dedupe", dedupe_key, partial(_dedupe, answers, texts, dedupe_options), base=answers)
    stats["answers_per_question"] = answers_per_question(answers)
    answers, stats["vote_model"] = step("votes", votes_key, partial(estimate_quality, answers, vote_options), base=answers)
    return answers, texts, stats, StepChain(cache, votes_key, resolved.label)


def with_texts(answers: pl.DataFrame, texts: Texts) -> pl.DataFrame:
    """`answers` with the canonical table's texts back beside it (the same rows in the same order)."""
    beside = texts.lazy().select("answer_id", *CANONICAL_TEXT_COLUMNS).collect()
    if not beside["answer_id"].equals(answers["answer_id"]):  # hstack would pair rows by position, so check it
        raise RuntimeError("the canonical table's texts are not in the answer table's row order")
    return answers.hstack(beside.drop("answer_id"))


def _dedupe(answers: pl.DataFrame, texts: Texts, options: DedupeOptions) -> tuple[pl.DataFrame, dict]:
    """Dedupe reads every text, so only it gets them all; the table it hands on is without them again."""
    deduped, stats = dedupe(with_texts(answers, texts), options)
    return deduped.drop(CANONICAL_TEXT_COLUMNS), stats


def answers_per_question(answers: pl.DataFrame) -> dict[str, int]:
    """{answers in a question group: number of such groups}, for the card's histogram."""
    # Lazy, so that only question_group is read (an eager group_by over the whole table took 2-4x as long).
    sizes = answers.lazy().group_by("question_group").len().group_by("len").len(name="questions").sort("len").collect()
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


def write_set(out: Path, kind: Kind, train: pl.DataFrame, test: pl.DataFrame, stats: dict, params: dict,
              output: OutputSettings, cache: StepCache | None, log: Callable[[str], None]) -> Path:
    """`write_dataset`, unless the cache recorded writing these very inputs to `out` and its files are still the ones
    written then: a rebuild that changed another set's options keeps this one's folder (plots and card included)."""
    train, test = train.drop("question_group"), test.drop("question_group")
    settings = {"kind": kind, "stats": stats, "params": params, "formats": output.formats,
                "keep_author_ids": output.keep_author_ids}
    key = folder_key(out, [train, test], settings) if cache else ""
    if cache and cache.folder_unchanged(key, out):
        log(f"  {kind} set: unchanged since it was written, kept")
        return out
    return write_dataset(out, kind, train, test, stats, params, formats=output.formats,
                         keep_author_ids=output.keep_author_ids,
                         on_complete=partial(cache.record_folder, key, out) if cache else lambda _folder: None)
