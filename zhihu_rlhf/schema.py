"""The published sets' columns: name, type and meaning of each, in file order. They are written down here only.

    INSTRUCT, PAIRS     the columns of each set's canonical parquet (OUT/data/{train,test}-*.parquet)
    AUTHOR_IDS          personal data: written after those only with --keep-author-ids
    TEXT_COLUMNS        the text columns the training commands and the plain-text formats read
    columns(kind), names(kind), meanings(kind)

instruct.py and pairs.py select these columns, export.py writes exactly them (and refuses a frame whose columns or
types differ), cards.py puts their meanings in the card's column table, and train/data.py reads TEXT_COLUMNS. A
column added here (and made by the set's selection) reaches the parquet, the card and its declared features with no
change elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

Kind = Literal["instruct", "pairs"]


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    meaning: str
    """One line of the card's column table (Markdown)."""


UTC_TIME = pl.Datetime("us", "UTC")
QUESTION_ID = Column("question_id", pl.Int64(), "Zhihu id of the question")
PROMPT = Column("prompt", pl.String(), "the question title (normalised)")

INSTRUCT: tuple[Column, ...] = (
    QUESTION_ID,
    Column("answer_id", pl.Int64(), "Zhihu id of the answer"),
    PROMPT,
    Column("completion", pl.String(), "the answer text (normalised)"),
    Column("upvotes", pl.Int64(), "the answer's upvotes when it was crawled"),
    Column("created_at", UTC_TIME, "when the answer was written (UTC; may be null)"),
)

PAIRS: tuple[Column, ...] = (
    QUESTION_ID,
    PROMPT,
    Column("chosen", pl.String(), "the answer with clearly more upvotes (normalised)"),
    Column("rejected", pl.String(), "the other answer (normalised)"),
    Column("chosen_answer_id", pl.Int64(), "Zhihu id of the chosen answer"),
    Column("rejected_answer_id", pl.Int64(), "Zhihu id of the rejected answer"),
    Column("chosen_upvotes", pl.Int64(), "the chosen answer's upvotes when crawled"),
    Column("rejected_upvotes", pl.Int64(), "the rejected answer's upvotes when crawled"),
    Column("chosen_created_at", UTC_TIME, "when the chosen answer was written (UTC; may be null)"),
    Column("rejected_created_at", UTC_TIME, "when the rejected answer was written (UTC; may be null)"),
    Column("upvote_ratio", pl.Float64(), "chosen_upvotes / max(rejected_upvotes, 1)"),
    Column("confidence", pl.Float64(),
           "the vote model's quality lead of chosen over rejected, in standard deviations (pairs are ranked by it)"),
    Column("p_chosen_better", pl.Float64(),
           "the vote model's probability that chosen is truly the better answer, Φ(confidence); see \"Vote model\""),
)

AUTHOR_IDS: dict[Kind, tuple[Column, ...]] = {
    "instruct": (
        Column("author_id", pl.String(), "Zhihu profile id of the author, **kept on request** (`--keep-author-ids`)"),
    ),
    "pairs": (
        Column("chosen_author_id", pl.String(),
               "Zhihu profile id of the chosen answer's author, **kept on request** (`--keep-author-ids`)"),
        Column("rejected_author_id", pl.String(),
               "Zhihu profile id of the rejected answer's author, **kept on request** (`--keep-author-ids`)"),
    ),
}

# What a model is trained on: the question and the answer(s), by the names TRL uses.
TEXT_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "instruct": ("prompt", "completion"),
    "pairs": ("prompt", "chosen", "rejected"),
}


def columns(kind: Kind) -> tuple[Column, ...]:
    """The set's canonical columns, looked up on each call (not bound at import), so every user sees the same list."""
    return INSTRUCT if kind == "instruct" else PAIRS


def names(kind: Kind) -> list[str]:
    return [column.name for column in columns(kind)]


def author_id_names(kind: Kind) -> list[str]:
    return [column.name for column in AUTHOR_IDS[kind]]


def meanings(kind: Kind) -> dict[str, str]:
    """Every column a folder of this kind can hold (author ids included) -> its meaning."""
    return {column.name: column.meaning for column in (*columns(kind), *AUTHOR_IDS[kind])}
