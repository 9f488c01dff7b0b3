"""Synthetic Zhihu-KOL-shaped data with known truth, for tests and benchmarks, in named worlds.

Writes a parquet shaped like `wangrui6/Zhihu-KOL` (INSTRUCTION, RESPONSE, SOURCE, METADATA as a JSON
string) plus a truth file `<stem>.truth.parquet` holding, per row, what the row really is: the intended
ids, the latent answer quality, the planted duplicate groups, the planted defect, the exact upvote
count and creation time the METADATA text denotes, and the author and exposure effects on its votes.

Where things are:
- worlds.py: the `World` knobs and the `WORLDS` presets (default, hot, kol, popularity, earned, lucky, solo,
  unlearnable, length, templates, readable, readable_popularity, pandas); a world's definition fits one screen there.
- plan.py: the per-row plan (questions, re-asks, authors, times, duplicates, defects, votes, forms).
- text.py: the Chinese text generator, titles, shared title templates, re-asked and cosmetic titles.
- metadata.py: METADATA in each spelling (Zhihu-KOL's, pandas' NaN / Infinity / float ids, legacy rows).
- readable.py: text that shows its quality (worlds with text_quality > 0), author styles, and the gold
  reader `read_quality` that scores any text by the same rules.
- render.py: texts, METADATA strings and truth rows of one chunk; __main__.py: the command line.

How every world is simulated (so you know what a good pipeline should recover):
- Questions: answers per question are Zipf-distributed (most have 1, many 2-10, a few hundreds), plus
  hot questions where the world has them. Question ids grow with question time, answer ids with answer time.
- Answers: latent quality ~ N(0, 1). Upvotes ~ Poisson(exp(log rate)), the log rate adding the question's
  popularity, quality, the author's reach, exposure and, in the `length` world, answer length beyond
  quality (see worlds.py). Pairs close in time, with a
  large vote ratio and large counts are therefore more often right.
- Planted duplicates: exact cross-posts, cross-posts with a prefix ("谢邀。") and/or suffix
  ("编辑于 ..."), punctuation edits, re-asked questions (title variants under a new question_id), and
  NON-duplicates that share a long quote (each stays its own cluster).
- Every METADATA variant seen in the wild, and ~1% malformed rows.

Truth columns (one row per data row, same order):
    row, question_id, answer_id (the intended ids, whatever form METADATA writes them in),
    quality (higher = truly better), question_group (smallest question_id of the re-asked group),
    answer_cluster (smallest answer_id of the near-duplicate cluster), dup_kind (null or the planted kind;
    set on the planted copy rows, on both rows of a shared-quote pair, and on every answer row of a
    re-asked question, while the original keeps null), malformed (null or the planted defect; such rows
    must be dropped; "legacy_no_ids" for the older crawler's rows), upvotes (exact count the METADATA
    text denotes: "赞同 1.2 万" -> 12000), created_at (the time METADATA denotes, null when it is empty,
    missing, NaN or Infinity), author (the true author's index, also where METADATA lost it),
    author_log_reach (the author's log multiplier on votes: the author effect a vote model should
    estimate), log_exposure (the exposure term added to the log rate), log_length_effect (the length term
    added to the log rate beyond quality; 0 in worlds without one). Readable worlds only:
    author_style (the style index the author writes in, readable.STYLES), shown_quality (the quality the
    text was written to show: latent quality plus noise; `read_quality` reads it back with sentence noise).
    For malformed rows the ids/upvotes/created_at are what the row would have said. Rows whose creation
    time or author is missing are not malformed.

The embedded sample (zhihu_rlhf/data/sample.parquet) was made with:
    python -m zhihu_rlhf.synth --rows 4000 --seed 20230416 --mean-answer-chars 350 --no-truth \
        --out zhihu_rlhf/data/sample.parquet
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.synth.metadata import ID_FORMS, TIME_FORMS, UPVOTE_FORMS
from zhihu_rlhf.synth.plan import CHUNK_ROWS, DUP_KINDS, MALFORMED_KINDS, make_plan
from zhihu_rlhf.synth.readable import pad_with_asides, read_quality, style_of, swap_style
from zhihu_rlhf.synth.render import render_chunk
from zhihu_rlhf.synth.worlds import WORLDS, World, world_named

__all__ = [
    "CHUNK_ROWS", "DUP_KINDS", "FULL_ROWS", "ID_FORMS", "MALFORMED_KINDS", "MEAN_ANSWER_CHARS", "TIME_FORMS",
    "UPVOTE_FORMS", "WORLDS", "SynthOptions", "World", "generate", "pad_with_asides", "read_quality", "style_of",
    "swap_style", "truth_path_for", "world_named", "write",
]

FULL_ROWS = 1_006_218  # size of the real Zhihu-KOL
# The real Zhihu-KOL holds ~2.3 GB of UTF-8 text, ~2.3 KB (~800 Chinese characters) per answer.
MEAN_ANSWER_CHARS = 800


def truth_path_for(out: Path) -> Path:
    """The truth file that goes with a data file: FILE.parquet -> FILE.truth.parquet."""
    return out.with_suffix(".truth.parquet")


@dataclass
class SynthOptions:
    """Options of `python -m zhihu_rlhf.synth`."""

    rows: int
    """Number of data rows to write (the real Zhihu-KOL has 1,006,218)."""
    out: Path
    """Data parquet to write; the truth file goes next to it as <stem>.truth.parquet."""
    seed: int = 0
    """Random seed; the same seed, world and options give byte-identical files."""
    world: str = "default"
    """Preset world (see `WORLDS` / --list-worlds)."""
    mean_answer_chars: int = MEAN_ANSWER_CHARS
    """Mean answer length in characters (heavy-tailed); the default makes the full size ~2.2 GB of UTF-8 text."""
    write_truth: bool = True
    """Also write the truth file (the shipped sample is written without one)."""


def _check(rows: int, mean_answer_chars: int) -> None:
    if rows < 1:
        raise UserError(f"--rows must be at least 1, got {rows}")
    if mean_answer_chars < 60:
        raise UserError(f"--mean-answer-chars must be at least 60, got {mean_answer_chars}")


def _chunks(rows: int, seed: int, world: World, mean_answer_chars: int) -> Iterator[tuple[pa.Table, pl.DataFrame]]:
    _check(rows, mean_answer_chars)
    row_plan = make_plan(rows, seed, mean_answer_chars, world)
    with tqdm(total=rows, unit="rows", desc=f"synth {world.name}", disable=rows < 50_000) as progress:
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(rows, start + CHUNK_ROWS)
            yield render_chunk(row_plan, seed, start, stop)
            progress.update(stop - start)


def generate(
    rows: int, seed: int, world: str | World = "default", mean_answer_chars: int = MEAN_ANSWER_CHARS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(data, truth) of `world` in memory; use `write` for large sizes (it streams chunks to disk)."""
    parts = list(_chunks(rows, seed, world_named(world), mean_answer_chars))
    data = pl.from_arrow(pa.concat_tables([d for d, _ in parts]))
    assert isinstance(data, pl.DataFrame)
    return data, pl.concat([t for _, t in parts])


def write(
    rows: int,
    out: Path,
    seed: int,
    world: str | World = "default",
    mean_answer_chars: int = MEAN_ANSWER_CHARS,
    write_truth: bool = True,
) -> tuple[Path, Path | None]:
    """Write the data parquet (and its truth file) atomically; returns their paths (truth None if not written)."""
    out = Path(out)
    _check(rows, mean_answer_chars)
    chosen = world_named(world)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'synth.parquet'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_out = truth_path_for(out)
    tmp_data = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_truth = truth_out.with_name(f".{truth_out.name}.tmp-{os.getpid()}")
    try:
        truths = []
        writer: pq.ParquetWriter | None = None
        for data, truth in _chunks(rows, seed, chosen, mean_answer_chars):
            if writer is None:
                writer = pq.ParquetWriter(tmp_data, data.schema, compression="zstd")
            writer.write_table(data, row_group_size=CHUNK_ROWS)
            truths.append(truth)
        assert writer is not None
        writer.close()
        if write_truth:
            pl.concat(truths).write_parquet(tmp_truth, compression="zstd")
            os.replace(tmp_truth, truth_out)
        os.replace(tmp_data, out)
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_truth.unlink(missing_ok=True)
    return out, truth_out if write_truth else None
