"""A user's own Zhihu crawl, as [MediaCrawler](https://github.com/NanmiCoder/MediaCrawler) stores it.

MediaCrawler writes one row per content item (answers, articles, videos) with `content_id, content_type,
content_text, question_id, title, created_time, updated_time, voteup_count, …` and the author as `user_id` (until
July 2026) or `creator_hash` (an anonymised hash of it, since). Where it lands depends on its `SAVE_DATA_OPTION`,
under `data/zhihu/` (or `SAVE_DATA_PATH`):

    json/{search|detail|creator}_contents_{YYYY-MM-DD}.json    one JSON array (indent 4), rewritten on every item
    jsonl/…_contents_….jsonl                                   one object a line
    csv/…_contents_….csv                                       UTF-8 with a BOM
    1_search_contents_….csv                                    older versions: a run number in front, at the root
    zhihu_{search|detail|creator}_{YYYYMMDD_HHMMSS}.xlsx       excel: one workbook a run, sheets Contents, Comments and
                                                               Creators (openpyxl; empty sheets removed, None as "")
    sqlite: a database file (default `database/sqlite_tables.db`) with a `zhihu_content` table

Comments go to `…_comments_…` files (and `zhihu_comment`, the Comments sheet), creators to `…_creator_…` files (and
`zhihu_creator`, the Creators sheet; `fans` is the follower count) in versions that still stored them: since mid-2026
MediaCrawler stores only `creator_hash` and no creators. `--source` takes the data folder or any folder under it, a
contents file (creator files beside it are read too), a workbook, or the database (its path or a folder holding it).
Answers come from contents files, the Contents sheet and `zhihu_content` only; creators give `author_followers`;
comments are not read.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import fastexcel  # the engine of polars' read_excel
import polars as pl

from zhihu_rlhf.errors import UserError, first_line

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
FILE_STORE_SUFFIXES = (".json", ".jsonl", ".csv")
CONTENTS_PATTERN = "*contents*.json|jsonl|csv"
WORKBOOK_PATTERN = "zhihu_*.xlsx"
CONTENTS_TABLE = "zhihu_content"
CREATORS_TABLE = "zhihu_creator"
CONTENTS_SHEET = "Contents"
CREATORS_SHEET = "Creators"

# A date in a file name: 2025-07-12 as MediaCrawler writes it, or 20250712.
DATE_IN_NAME = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


@dataclass(frozen=True)
class CrawlFiles:
    contents: list[Path]
    creators: list[Path]
    workbooks: list[Path]
    databases: list[Path]


def find_files(folder: Path, *, recursive: bool = True) -> CrawlFiles:
    """MediaCrawler's files in `folder` (and under it, if `recursive`), in path order (so every run reads them in the
    same order)."""
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    stores = [p for p in files if p.suffix.lower() in FILE_STORE_SUFFIXES]
    # `creator` is also a crawler type (`creator_contents_….json`): the item type decides what a file holds.
    contents = [p for p in stores if "contents" in p.name]
    creators = [p for p in stores if "creator" in p.name and "contents" not in p.name and "comments" not in p.name]
    workbooks = [p for p in files if p.match(WORKBOOK_PATTERN)]
    databases = [p for p in files if p.suffix.lower() in SQLITE_SUFFIXES]
    return CrawlFiles(contents, creators, workbooks, databases)


def file_date(path: Path) -> date | None:
    """The crawl date in a MediaCrawler file name (`search_contents_2025-07-12.json`), or None."""
    found = DATE_IN_NAME.findall(path.stem)
    if not found:
        return None
    year, month, day = (int(part) for part in found[-1])
    try:
        return date(year, month, day)
    except ValueError:
        return None


def read_table(path: Path, table: str, required: bool = True) -> pl.DataFrame | None:
    """A table of a MediaCrawler SQLite database, every column as text (SQLite keeps any type in any column, and the
    parsers read every spelling from text). None when the table is missing and not `required`. Opened read-only.
    """
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if table not in tables:
                if not required:
                    return None
                raise UserError(f"{path}: the SQLite database has no {table} table (tables: "
                                f"{', '.join(sorted(tables)) or 'none'}); is it MediaCrawler's?")
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
            as_text = ", ".join(f'CAST("{c}" AS TEXT) AS "{c}"' for c in columns)
            return pl.read_database(f'SELECT {as_text} FROM "{table}"', connection,
                                    schema_overrides=dict.fromkeys(columns, pl.String))
    except sqlite3.Error as err:
        raise UserError(f"{path}: not a readable SQLite database ({err})") from None


def read_sheet(path: Path, sheet: str) -> pl.DataFrame | None:
    """A sheet of a MediaCrawler workbook, every column as text (the parsers read every spelling from text); None when
    the workbook has no such sheet (MediaCrawler removes the empty ones)."""
    try:
        if sheet not in fastexcel.read_excel(path).sheet_names:
            return None
        return pl.read_excel(path, sheet_name=sheet, infer_schema_length=0)
    except pl.exceptions.NoDataError:  # not even a header row
        return None
    except (fastexcel.FastExcelError, pl.exceptions.PolarsError, OSError) as err:
        raise UserError(f"{path}: not a readable excel workbook ({first_line(err)})") from None
