"""Sources -> the canonical answer table.

Every input ends up as one table with one row per answer:

    question_id Int64 | answer_id Int64 | question str | answer str | upvotes Int64
    created_at Datetime(us, UTC) (nullable) | author_id str (nullable) | author_followers Int64 (nullable) | source str
    | answer_chars Int64 (the answer's length in characters, so that a table read back without its texts has it)

`--source` may be a Hub dataset id (default `wangrui6/Zhihu-KOL`), a local parquet file, a folder or glob of parquet
files, `sample` (a small Zhihu-KOL-shaped file shipped in the package), or a MediaCrawler Zhihu crawl (see
`zhihu_rlhf.mediacrawler`: its data folder, any store folder under it, a contents file, a workbook, or its SQLite
database).

Zhihu-KOL keeps its metadata in a JSON *string* whose values were scraped from the page, so every field comes in
several spellings; each parser below turns all of them into the exact value they denote. Rows that cannot be used are
dropped and counted by reason, never silently. A missing creation time or author never costs a row its place: such
rows are kept and counted (`created_at_missing`, `author_id_missing`).
"""

from __future__ import annotations

import glob
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Protocol

import polars as pl

from zhihu_rlhf import mediacrawler
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.normalize import ZERO_WIDTH, normalize_text

DEFAULT_SOURCE = "wangrui6/Zhihu-KOL"
SAMPLE = "sample"

CANONICAL_SCHEMA = {
    "question_id": pl.Int64,
    "answer_id": pl.Int64,
    "question": pl.String,
    "answer": pl.String,
    "upvotes": pl.Int64,
    "created_at": pl.Datetime("us", "UTC"),
    "author_id": pl.String,
    "author_followers": pl.Int64,  # MediaCrawler creators' follower counts; null where the source has none
    "source": pl.String,
}

# What decides which of two crawls of one answer is kept (later is better): MediaCrawler's `updated_time`, the date in
# the crawl file's name, and `last_modify_ts` (when MediaCrawler stored the row). Null for sources that are not crawls.
RECRAWL_SCHEMA = {"updated_at": pl.Datetime("us", "UTC"), "file_date": pl.Date, "crawled_at": pl.Int64}

# The canonical columns, why a row is dropped (null: it is usable) and the re-crawl order: what each file becomes.
PARSED_SCHEMA = {**CANONICAL_SCHEMA, "drop_reason": pl.String, **RECRAWL_SCHEMA}

# Most of the canonical table's bytes. Only dedupe reads them all; the recipes need each answer's length, which the
# table carries as `answer_chars`, and the texts of the few answers they select (see `texts_of`).
CANONICAL_TEXT_COLUMNS = ("question", "answer")
ANSWER_CHARS = pl.col("answer").str.len_chars().cast(pl.Int64).alias("answer_chars")
"""The column the canonical table adds to CANONICAL_SCHEMA's: each answer's length in characters."""

# Column sets that identify each input layout.
ZHIHU_KOL_COLUMNS = ("INSTRUCTION", "RESPONSE", "METADATA")
ZHIHU_KOL_LEGACY_COLUMNS = ("问题内容", "回答内容", "问题ID", "回答ID")  # an earlier revision of the dataset
MEDIACRAWLER_COLUMNS = ("content_id", "content_type", "content_text", "question_id", "title")

FILE_FORMATS = {
    ".parquet": "parquet",
    ".json": "json",  # a JSON array (MediaCrawler's json store) or JSON lines: told apart by the first character
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".xlsx": "xlsx",  # MediaCrawler's excel store: its Contents sheet
    **dict.fromkeys(mediacrawler.SQLITE_SUFFIXES, "sqlite"),
}


@dataclass(frozen=True)
class SourceFiles:
    """Files one reader reads in one go (a parquet dataset's shards, or one other file), and a label for messages."""

    paths: tuple[Path, ...]
    file_format: str  # "parquet" | "json" | "jsonl" | "csv" | "xlsx" | "sqlite"
    label: str


@dataclass(frozen=True)
class Source:
    """What `--source` resolved to: the answer files, and MediaCrawler creator files found beside them."""

    label: str
    files: list[SourceFiles]
    creator_files: list[Path] = field(default_factory=list)

    def paths(self) -> list[Path]:
        """Every file this source reads."""
        return [path for files in self.files for path in files.paths] + list(self.creator_files)


# ---------------------------------------------------------------------------------------------
# Field parsers: polars expressions, so a million rows parse without a Python loop.


def parse_id(value: pl.Expr) -> pl.Expr:
    """Ids arrive as ints, floats that went through pandas (`59530469.0`) or digit strings."""
    digits = value.cast(pl.String).str.strip_chars().str.extract(r"^(\d+)(?:\.0*)?$")
    return digits.cast(pl.Int64, strict=False)


def parse_upvotes(value: pl.Expr) -> pl.Expr:
    """Vote-button text or a number -> the exact count it denotes; null when it denotes none.

    `赞同 1291`, `\\u200b赞同 1291`, `赞同 1.2 万` (= 12000), `赞同` alone (= 0), `1,291`, `3.4k`, `1.2w`, 17.
    Follower counts are spelled the same way, so they are read with this parser too.
    """
    text = value.cast(pl.String).str.replace_all(ZERO_WIDTH, "").str.strip_chars()
    is_button = text.str.starts_with("赞同")
    number = text.str.strip_prefix("赞同").str.replace_all(r"[\s,]", "")
    parts = number.str.extract_groups(r"^(\d+(?:\.\d+)?)([万wWkK千]?)$")
    unit = parts.struct.field("2")
    multiplier = (
        pl.when(unit.is_in(["万", "w", "W"]))
        .then(10_000)
        .when(unit.is_in(["k", "K", "千"]))
        .then(1_000)
        .otherwise(1)
    )
    count = (parts.struct.field("1").cast(pl.Float64) * multiplier).round(0).cast(pl.Int64)
    return pl.when(is_button & (number == "")).then(pl.lit(0, pl.Int64)).otherwise(count)


def parse_time(value: pl.Expr) -> pl.Expr:
    """ISO 8601 (with or without milliseconds / offset; naive means UTC), epoch s or ms -> UTC datetime."""
    text = value.cast(pl.String).str.strip_chars()
    epoch = text.str.extract(r"^(\d{9,13})(?:\.\d*)?$").cast(pl.Int64, strict=False)
    from_epoch = (
        pl.when(epoch >= 100_000_000_000)  # 13 digits: milliseconds; seconds reach that in year 5138
        .then(pl.from_epoch(epoch, time_unit="ms"))
        .otherwise(pl.from_epoch(epoch, time_unit="s"))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
    return pl.coalesce(
        from_epoch,
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_zone="UTC", time_unit="us"),
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_zone="UTC", time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_zone="UTC", time_unit="us"),
    )


# The Zhihu-KOL converter wrote METADATA with json.dumps over pandas rows: a missing value became a bare `NaN` (an
# infinite one `Infinity` / `-Infinity`), tokens strict JSON rejects. They become `null`, which is what they meant.
# The pattern matches a member value only, never text inside a string. Its key is a quote, then characters other than
# quote, backslash, colon and comma (or `\uXXXX` escapes, as json.dumps writes non-ASCII keys), then a quote. So the
# second quote is unescaped, a real delimiter; and it closes a string, because two strings are always separated by a
# `:` or `,` in valid JSON. What follows it, the `:` and the token, is therefore outside every string.
# A key with another escape, a colon or a comma is not matched, nor a token inside an array: such METADATA stays
# invalid JSON (counted as invalid_metadata_json).
NON_FINITE_VALUE = r'("(?:[^"\\:,]|\\u[0-9a-fA-F]{4})*"\s*:\s*)(?:NaN|-?Infinity)'


def _null_non_finite(texts: pl.Series) -> pl.Series:
    """`"key": NaN` (or ±Infinity) -> `"key": null`; the regex runs only on the rare texts holding such a token."""
    has_token = texts.str.contains_any(["NaN", "Infinity"]).fill_null(False)
    if not has_token.any():
        return texts
    positions = has_token.arg_true()
    return texts.scatter(positions, texts.gather(positions).str.replace_all(NON_FINITE_VALUE, "${1}null"))


# METADATA keys, all read as text: the parsers above accept every spelling of each value. Unknown keys are ignored.
# 回答点赞数 / 回答时间 are the older crawler's keys (votes, epoch time); it wrote no ids.
METADATA_FIELDS = pl.Struct(
    {"question_id": pl.String, "answer_id": pl.String, "author_id": pl.String, "upvotes": pl.String,
     "answer_creation_time": pl.String, "回答点赞数": pl.String, "回答时间": pl.String}
)


def _decode_metadata(texts: pl.Series) -> pl.Series:
    """JSON objects -> METADATA_FIELDS, in one parse per row.

    json_decode fails the whole batch when a known key holds an object or an array; such a batch is decoded field by
    field instead (slower, and only then), where that value reads as its JSON text and then fails its parser.
    """
    try:
        return texts.str.json_decode(METADATA_FIELDS)
    except pl.exceptions.ComputeError:
        fields = {name: texts.str.json_path_match(f"$['{name}']") for name in METADATA_FIELDS.to_schema()}
        return pl.DataFrame(fields).select(pl.struct(pl.all()).alias(texts.name)).to_series()


# ---------------------------------------------------------------------------------------------
# Finding the files.


def resolve_source(source: str) -> Source:
    """Turn `--source` into local files (downloading from the Hub into the usual cache if needed)."""
    if source == SAMPLE:
        sample = resources.files("zhihu_rlhf") / "data" / "sample.parquet"
        return Source("sample", [SourceFiles((Path(str(sample)),), "parquet", "sample")])
    if any(ch in source for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not matches:
            raise UserError(f"{source}: the pattern matches no file")
        return Source(source, _group_by_reader(matches, source))
    path = Path(source).expanduser()
    if path.is_dir():
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return Source(source, _group_by_reader(parquet, source))
        crawl = mediacrawler.find_files(path)
        stores = [*crawl.contents, *crawl.workbooks, *crawl.databases]
        if not stores:
            raise UserError(
                f"{source}: found no .parquet files, no MediaCrawler contents files ({mediacrawler.CONTENTS_PATTERN}), "
                f"no MediaCrawler excel workbooks ({mediacrawler.WORKBOOK_PATTERN}) and no SQLite database "
                f"({', '.join('*' + s for s in mediacrawler.SQLITE_SUFFIXES)}) in the folder or its subfolders"
            )
        return Source(source, _group_by_reader(stores, source), crawl.creators)
    if path.is_file():
        # A MediaCrawler contents file: the creators its run stored lie beside it.
        beside = mediacrawler.find_files(path.parent, recursive=False)
        return Source(source, _group_by_reader([path], source), beside.creators if path in beside.contents else [])
    if _looks_like_hub_id(source):
        return Source(source, [_download_from_hub(source)])
    raise UserError(f"{source}: no such file or folder (and not a Hub dataset id like {DEFAULT_SOURCE})")


def _group_by_reader(paths: list[Path], label: str) -> list[SourceFiles]:
    """Parquet files are one dataset's shards, scanned together; every other file is read on its own."""
    formats = {path: _file_format(path) for path in paths}
    parquet = tuple(p for p in paths if formats[p] == "parquet")
    groups = [SourceFiles(parquet, "parquet", label if len(parquet) > 1 else str(parquet[0]))] if parquet else []
    return groups + [SourceFiles((p,), formats[p], str(p)) for p in paths if formats[p] != "parquet"]


def _file_format(path: Path) -> str:
    file_format = FILE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'}; expected one of "
                        f"{', '.join(FILE_FORMATS)}")
    if file_format == "json":
        return "json" if _first_character(path) == b"[" else "jsonl"
    return file_format


def _first_character(path: Path) -> bytes:
    """The first character of a text file after any BOM and white space (b"" if there is none in its first 4 KiB)."""
    with path.open("rb") as file:
        return file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _download_from_hub(repo_id: str) -> SourceFiles:
    """Fetch the dataset's parquet shards through huggingface_hub (cached in the usual HF cache)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        files = HfApi().list_repo_files(repo_id, repo_type="dataset")
        shards = sorted(f for f in files if f.endswith(".parquet"))
        if not shards:
            raise UserError(f"{repo_id}: the Hub dataset has no parquet files")
        paths = tuple(Path(hf_hub_download(repo_id, f, repo_type="dataset")) for f in shards)
    except GatedRepoError:
        raise UserError(f"{repo_id}: the Hub dataset is gated; accept its terms on the Hub and log in") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such dataset on the Hugging Face Hub (private? set HF_TOKEN)") from None
    except OfflineModeIsEnabled:
        raise UserError(f"{repo_id}: HF_HUB_OFFLINE is set and the dataset is not a local path") from None
    except HfHubHTTPError as err:
        raise UserError(f"{repo_id}: the Hub refused the download ({_first_line(err)})") from None
    except OSError as err:  # httpx connection errors and disk errors are OSErrors underneath
        raise UserError(f"{repo_id}: cannot download from the Hub, no network? ({_first_line(err)})") from None
    except Exception as err:
        if type(err).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise UserError(f"{repo_id}: cannot reach the Hugging Face Hub, no network? ({_first_line(err)})") from None
        raise
    return SourceFiles(paths, "parquet", repo_id)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Reading each file type. Everything but parquet is read eagerly, so a bad file fails here, named, before any work.


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def scan_raw(files: SourceFiles, warn: Callable[[str], None] = _warn) -> tuple[pl.LazyFrame | None, int]:
    """The rows of the files as they are (None for a file without rows: an empty file, JSON array, sheet or table),
    and how many records a cut at the end of a JSON file broke (a crawl killed while saving: see `_before_the_cut`).
    """
    path = files.paths[0]
    if files.file_format == "parquet":
        try:
            frame = pl.scan_parquet(list(files.paths))
            frame.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as err:
            raise UserError(f"{files.label}: not a readable parquet file ({_first_line(err)})") from None
        return frame, 0
    if files.file_format == "sqlite":
        table = mediacrawler.read_table(path, mediacrawler.CONTENTS_TABLE)
        return (table.lazy() if table.height else None), 0
    if files.file_format == "xlsx":
        sheet = mediacrawler.read_sheet(path, mediacrawler.CONTENTS_SHEET)
        return (sheet.lazy() if sheet is not None and sheet.height else None), 0
    if not _first_character(path):
        return None, 0
    cut_records = 0
    try:
        if files.file_format == "json":
            frame = pl.read_json(path, infer_schema_length=None)
        elif files.file_format == "jsonl":
            frame = pl.read_ndjson(path, infer_schema_length=None)
        else:
            frame = pl.read_csv(path, infer_schema=False)  # as text: the parsers take every spelling
    except (pl.exceptions.PolarsError, OSError) as err:
        cut = _before_the_cut(path, files.file_format)
        if cut is None:
            where = _json_syntax_error(path, files.file_format) or _first_line(err)
            raise UserError(f"{path}: not a readable {files.file_format} file ({where})") from None
        complete, records, cut_records = cut
        warn(f"{path}: the file ends mid-write (a crawl stopped while saving?); read the {records:,} complete "
             f"record{'s' * (records != 1)} before the cut"
             f"{f', the one it cut is counted as {TRUNCATED}' if cut_records else ''}")
        if not records:
            return None, cut_records
        read = pl.read_json if files.file_format == "json" else pl.read_ndjson
        frame = read(io.BytesIO(complete), infer_schema_length=None)
    return (frame.lazy() if frame.width else None), cut_records


# Why a record is dropped when a crawl file ends mid-write (counted in stats.json like every other drop reason).
TRUNCATED = "truncated_record"
# What is left of a JSON token the cut broke (after the point where the decoder ran out of text): nothing, part of a
# number, of true/false/null, or of a \uXXXX escape.
PARTIAL_TOKEN = re.compile(r"-?\d*(?:\.\d*)?(?:[eE][-+]?\d*)?|t(?:r(?:ue?)?)?|f(?:a(?:l(?:se?)?)?)?|n(?:u(?:ll?)?)?"
                           r"|\\?u[0-9a-fA-F]{0,4}")


def _runs_out(text: str, err: json.JSONDecodeError) -> bool:
    """Whether the JSON decoder failed because `text` ended inside a value, not because of a syntax error."""
    # A string runs to the end of the text exactly when its closing quote was never written.
    return err.msg.startswith("Unterminated string") or PARTIAL_TOKEN.fullmatch(text[err.pos:].rstrip()) is not None


def _before_the_cut(path: Path, file_format: str) -> tuple[bytes, int, int] | None:
    """A JSON array or JSON lines file whose end was cut off, as (its complete records, as a file of the same format;
    how many; how many records the cut broke: 0 or 1). None when the file is not cut off but broken elsewhere, or is
    not JSON at all. Each record is decoded with the json library; the cut may fall inside a multi-byte character."""
    if file_format not in ("json", "jsonl"):
        return None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if err.end != len(data) or err.reason != "unexpected end of data":
            return None
        text = data[: err.start].decode("utf-8-sig")
    decoder = json.JSONDecoder()
    if file_format == "jsonl":
        # A record and its "\n" are written together, so only the text after the last "\n" can be cut. Split on "\n"
        # only: a record's text may hold U+2028 and other characters str.splitlines breaks at.
        *lines, last = text.split("\n")
        whole = [line for line in lines if line.strip()]
        for line in whole:
            try:
                decoder.decode(line)
            except json.JSONDecodeError:
                return None  # broken before the end
        if not last.strip():
            return None  # not cut: broken some other way
        try:
            decoder.decode(last)
        except json.JSONDecodeError as err:
            return ("\n".join(whole).encode(), len(whole), 1) if _runs_out(last, err) else None
        return None
    # A JSON array: "[", records separated by commas, "]" (never reached in a cut file).
    start = position = text.index("[") + 1
    ends: list[int] = []
    while True:
        position = _skip_space(text, position)
        if position == len(text):  # cut between two records
            return _array(text, start, ends), len(ends), 0
        if ends and text[position] == ",":
            position = _skip_space(text, position + 1)
            if position == len(text):
                return _array(text, start, ends), len(ends), 0
        elif text[position] == "]" or ends:
            return None  # a whole array (with trailing garbage, or other trouble) or a missing comma
        try:
            _, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            return (_array(text, start, ends), len(ends), 1) if _runs_out(text, err) else None
        ends.append(position)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _array(text: str, start: int, ends: list[int]) -> bytes:
    """The JSON array of the records that end at `ends`."""
    return ("[" + (text[start : ends[-1]] if ends else "") + "]").encode()


def _json_syntax_error(path: Path, file_format: str) -> str | None:
    """Where a JSON file's first syntax error is (line, column, what), for the message; None if there is none."""
    if file_format not in ("json", "jsonl"):
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        return _first_line(err)
    # A JSON array is one document; JSON lines are one document a line (numbered from 1, blank lines skipped).
    documents = [(1, text)] if file_format == "json" else enumerate(text.splitlines(), 1)
    for first_line, document in documents:
        if not document.strip():
            continue
        try:
            json.loads(document)
        except json.JSONDecodeError as err:
            return f"line {first_line + err.lineno - 1}, column {err.colno}: {err.msg}"
    return None


# ---------------------------------------------------------------------------------------------
# Mapping each layout onto the canonical columns (plus `drop_reason` and the re-crawl order).


def to_canonical(raw: pl.LazyFrame, files: SourceFiles) -> pl.LazyFrame:
    """Map whichever layout `raw` has onto PARSED_SCHEMA: canonical columns, `drop_reason`, the re-crawl order."""
    columns = raw.collect_schema().names()
    if all(c in columns for c in ZHIHU_KOL_COLUMNS):
        return _from_zhihu_kol(raw)
    if all(c in columns for c in ZHIHU_KOL_LEGACY_COLUMNS):
        return _from_flat(raw, columns, ZHIHU_KOL_LEGACY, is_answer=pl.lit(True))
    if all(c in columns for c in MEDIACRAWLER_COLUMNS):
        # MediaCrawler also exports articles and videos, which answer no question.
        is_answer = pl.col("content_type").cast(pl.String) == "answer"
        file_date = mediacrawler.file_date(files.paths[0]) if len(files.paths) == 1 else None
        return _from_flat(raw, columns, MEDIACRAWLER, is_answer=is_answer, file_date=file_date)
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    raise UserError(
        f"{files.label}: unknown table layout; expected Zhihu-KOL columns {', '.join(ZHIHU_KOL_COLUMNS)} "
        f"or a MediaCrawler export with {', '.join(MEDIACRAWLER_COLUMNS)}; found: {shown}"
    )


def _from_zhihu_kol(raw: pl.LazyFrame) -> pl.LazyFrame:
    metadata = pl.col("METADATA").cast(pl.String)
    text = metadata.map_batches(_null_non_finite, return_dtype=pl.String, is_elementwise=True)
    # json_path_match("$") is null exactly when the string is not valid JSON, and its text starts with "{" exactly
    # when it is an object; json_decode would fail the whole batch on one such row, so only objects are decoded.
    is_object = text.str.json_path_match("$").str.starts_with("{").fill_null(False)
    meta = pl.when(is_object).then(text).map_batches(_decode_metadata, METADATA_FIELDS, is_elementwise=True)
    field_of = pl.col("metadata").struct.field
    upvotes = pl.coalesce(field_of("upvotes"), field_of("回答点赞数"))
    return _with_drop_reason(
        raw.select(
            "INSTRUCTION", "RESPONSE", metadata=meta, metadata_ok=is_object
        ).select(
            question_id=parse_id(field_of("question_id")),
            answer_id=parse_id(field_of("answer_id")),
            question=pl.col("INSTRUCTION").cast(pl.String),
            answer=pl.col("RESPONSE").cast(pl.String),
            upvotes=parse_upvotes(upvotes),
            created_at=parse_time(pl.coalesce(field_of("answer_creation_time"), field_of("回答时间"))),
            author_id=field_of("author_id"),
            author_followers=pl.lit(None, pl.Int64),
            source=pl.lit("zhihu-kol"),
            metadata_ok="metadata_ok",
            legacy_crawler=(field_of("回答点赞数").is_not_null() | field_of("回答时间").is_not_null()),
            upvotes_given=upvotes.is_not_null(),
            is_answer=pl.lit(True),  # Zhihu-KOL holds answers only
            **{name: pl.lit(None, dtype) for name, dtype in RECRAWL_SCHEMA.items()},
        )
    )


def _first_present(names: tuple[str, ...], columns: list[str]) -> pl.Expr:
    """The first of `names` that is a column and not empty in a row (exports leave some out); null if none."""
    present = [pl.when(pl.col(n).cast(pl.String) != "").then(pl.col(n).cast(pl.String)) for n in names if n in columns]
    return pl.coalesce(present) if present else pl.lit(None, pl.String)


@dataclass(frozen=True)
class FlatLayout:
    """A layout with one column per canonical field (no JSON): which column holds what.

    Everything but the ids and texts may be missing from an export (null then); where several columns are named,
    the first one present and not empty is used.
    """

    source: str
    question_id: str
    answer_id: str
    question: str
    answer: str
    upvotes: str
    created_at: str
    author_id: tuple[str, ...]
    updated_at: tuple[str, ...] = ()
    crawled_at: tuple[str, ...] = ()
    repeated_answer: str = "duplicate_answer_id"
    """Why the other rows of an answer read more than once are dropped (see `_drop_repeated_answers`)."""


ZHIHU_KOL_LEGACY = FlatLayout(
    "zhihu-kol", "问题ID", "回答ID", "问题内容", "回答内容", "回答点赞数", "回答时间", author_id=("作者ID",)
)
# MediaCrawler wrote the author as `user_id` until July 2026, then as `creator_hash` (an anonymised hash of that id).
# An answer it stored twice was crawled again: the older crawl is superseded.
MEDIACRAWLER = FlatLayout(
    "mediacrawler", "question_id", "content_id", "title", "content_text", "voteup_count", "created_time",
    author_id=("user_id", "creator_hash"), updated_at=("updated_time",), crawled_at=("last_modify_ts",),
    repeated_answer="superseded_crawl",
)
# Each row names its layout in `source` (Zhihu-KOL's JSON layout shares the legacy one's name and rule).
REPEATED_ANSWER = {layout.source: layout.repeated_answer for layout in (ZHIHU_KOL_LEGACY, MEDIACRAWLER)}


def _from_flat(raw: pl.LazyFrame, columns: list[str], layout: FlatLayout, is_answer: pl.Expr,
               file_date: date | None = None) -> pl.LazyFrame:
    upvotes = _first_present((layout.upvotes,), columns)
    return _with_drop_reason(
        raw.select(
            question_id=parse_id(pl.col(layout.question_id)),
            answer_id=parse_id(pl.col(layout.answer_id)),
            question=pl.col(layout.question).cast(pl.String),
            answer=pl.col(layout.answer).cast(pl.String),
            upvotes=parse_upvotes(upvotes),
            created_at=parse_time(_first_present((layout.created_at,), columns)),
            author_id=_first_present(layout.author_id, columns),
            author_followers=pl.lit(None, pl.Int64),
            source=pl.lit(layout.source),
            metadata_ok=pl.lit(True),
            legacy_crawler=pl.lit(False),
            upvotes_given=upvotes.is_not_null(),
            is_answer=is_answer,
            updated_at=parse_time(_first_present(layout.updated_at, columns)),
            file_date=pl.lit(file_date, pl.Date),
            crawled_at=parse_id(_first_present(layout.crawled_at, columns)),
        )
    )


def _with_drop_reason(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Normalise the texts and name the first thing wrong with each row (null = the row is usable)."""
    author = pl.col("author_id").cast(pl.String).str.strip_chars()
    frame = frame.with_columns(
        question=normalize_text(pl.col("question")),
        answer=normalize_text(pl.col("answer")),
        author_id=pl.when(author != "").then(author),
    )
    reason = (
        pl.when(~pl.col("is_answer").fill_null(False))
        .then(pl.lit("not_an_answer"))
        .when(~pl.col("metadata_ok"))
        .then(pl.lit("invalid_metadata_json"))
        .when(pl.col("question_id").is_null() & pl.col("answer_id").is_null() & pl.col("legacy_crawler"))
        .then(pl.lit("legacy_no_ids"))
        .when(pl.col("question_id").is_null())
        .then(pl.lit("missing_question_id"))
        .when(pl.col("answer_id").is_null())
        .then(pl.lit("missing_answer_id"))
        .when(pl.col("question").is_null())
        .then(pl.lit("empty_question"))
        .when(pl.col("answer").is_null())
        .then(pl.lit("empty_answer"))
        .when(pl.col("upvotes").is_null() & pl.col("upvotes_given"))
        .then(pl.lit("unparseable_upvotes"))
        .when(pl.col("upvotes").is_null())
        .then(pl.lit("missing_upvotes"))
    )
    return frame.with_columns(drop_reason=reason).select(*PARSED_SCHEMA).cast(PARSED_SCHEMA)


# ---------------------------------------------------------------------------------------------


def load_answers(source: str | Source, warn: Callable[[str], None] = _warn) -> tuple[pl.DataFrame, dict]:
    """Read `source` (a `--source` string, or what `resolve_source` made of one) into the canonical answer table;
    returns (table, stats).

    stats: rows_in, rows_dropped {reason: count}, and the rows kept without a usable time (`created_at_missing`: they
    can still be instruct answers but never pair members) or without an author (`author_id_missing`).
    rows_in == len(table) + dropped.

    Drop reasons: not_an_answer (MediaCrawler articles/videos), invalid_metadata_json, legacy_no_ids (the older
    Zhihu-KOL crawler's `{"回答点赞数": …, "回答时间": …}` rows: they name no question or answer, and are not grouped by
    their title), missing_question_id, missing_answer_id, empty_question, empty_answer, unparseable_upvotes,
    missing_upvotes, superseded_crawl (an older MediaCrawler crawl of an answer crawled again), duplicate_answer_id
    (any other answer read twice) and truncated_record (the record a JSON file's end was cut in, `warn`ed about).
    """
    resolved = source if isinstance(source, Source) else resolve_source(source)
    frames = []
    truncated = 0
    for files in resolved.files:
        raw, cut_records = scan_raw(files, warn)
        truncated += cut_records
        if raw is not None:
            frames.append(to_canonical(raw, files))
    if not frames:
        raise UserError(f"{resolved.label}: no rows to read: {_what_is_empty(resolved.files)}")
    parsed = pl.concat(frames, how="vertical")
    followers = _read_followers(resolved, warn)
    if followers is not None:
        parsed = parsed.drop("author_followers").join(
            followers, on="author_id", how="left", maintain_order="left"
        ).select(*PARSED_SCHEMA)
    try:
        table = parsed.with_row_index("row").collect(engine="streaming")
    except pl.exceptions.PolarsError as err:
        raise UserError(f"{resolved.label}: could not read the rows ({_first_line(err)})") from None

    table = _drop_repeated_answers(table)
    dropped = table.filter(pl.col("drop_reason").is_not_null()).group_by("drop_reason").len().sort("drop_reason")
    # One chunk per column (cheap: string views are not copied). Gathering rows from a column in many chunks, as the
    # streaming engine leaves it, copies each long text, and dedupe and the recipes gather and join texts by row.
    answers = table.filter(pl.col("drop_reason").is_null()).select(*CANONICAL_SCHEMA).rechunk()
    answers = answers.with_columns(ANSWER_CHARS)
    stats = {
        "source": resolved.label,
        "rows_in": table.height + truncated,
        "rows_dropped": dict(zip(dropped["drop_reason"], dropped["len"], strict=True)) | ({TRUNCATED: truncated} if truncated else {}),
        "created_at_missing": answers["created_at"].null_count(),
        "author_id_missing": answers["author_id"].null_count(),
    }
    return answers, stats


class Texts(Protocol):
    """Where the canonical table's texts are: anything whose `lazy()` scans answer_id and CANONICAL_TEXT_COLUMNS (a
    frame in memory, or the cache's texts file, `zhihu_rlhf.cache.ReadAhead`, where only the rows filtered for are
    decoded)."""

    def lazy(self) -> pl.LazyFrame: ...


def texts_of(texts: Texts, answer_ids: pl.Series) -> pl.DataFrame:
    """(answer_id, question, answer) of `answer_ids`: from the canonical table in memory, or from the cache's texts
    file, where only the selected answers' texts are decoded."""
    wanted = pl.col("answer_id").is_in(answer_ids.implode())
    return texts.lazy().filter(wanted).select("answer_id", *CANONICAL_TEXT_COLUMNS).collect()


def _what_is_empty(read: list[SourceFiles]) -> str:
    """What was read and found empty, for the message: MediaCrawler creates its tables when it starts, so a crawl that
    stored nothing leaves a database with empty tables."""
    where = {"sqlite": f"the {mediacrawler.CONTENTS_TABLE} table", "xlsx": f"the {mediacrawler.CONTENTS_SHEET} sheet"}  # or none: MediaCrawler removes empty sheets
    if len(read) == 1:
        return f"{where.get(read[0].file_format, 'the file')} is empty" + (
            " (MediaCrawler creates it when it starts: did the crawl store anything?)" if read[0].file_format == "sqlite" else "")
    names = [f.label + (f" ({where[f.file_format]})" if f.file_format in where else "") for f in read]
    return f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''} are all empty"


def _read_followers(resolved: Source, warn: Callable[[str], None]) -> pl.LazyFrame | None:
    """`author_id -> author_followers` from MediaCrawler creator files, Creators sheets and `zhihu_creator` tables;
    None if none.

    An author stored more than once keeps the latest row: the latest file date, then `last_modify_ts`, then the last
    one read.
    """
    raws = [(path, scan_raw(SourceFiles((path,), _file_format(path), str(path)), warn)[0])
            for path in resolved.creator_files]
    for files in resolved.files:
        path = files.paths[0]
        if files.file_format == "sqlite":
            stored = mediacrawler.read_table(path, mediacrawler.CREATORS_TABLE, required=False)
        elif files.file_format == "xlsx":
            stored = mediacrawler.read_sheet(path, mediacrawler.CREATORS_SHEET)
        else:
            continue
        if stored is not None:
            raws.append((path, stored.lazy()))
    frames = []
    for position, (path, raw) in enumerate(raws):
        if raw is None:
            continue
        columns = raw.collect_schema().names()
        if "user_id" not in columns or "fans" not in columns:
            shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
            raise UserError(f"{path}: MediaCrawler creators without user_id and fans columns; found: {shown}")
        frames.append(raw.select(
            author_id=_first_present(("user_id",), columns),
            author_followers=parse_upvotes(pl.col("fans")),  # follower counts are spelled like vote counts
            file_date=pl.lit(mediacrawler.file_date(path), pl.Date),
            crawled_at=parse_id(_first_present(("last_modify_ts",), columns)),
            position=pl.lit(position),
        ).with_row_index("row"))
    if not frames:
        return None
    latest_first = pl.concat(frames).drop_nulls("author_id").sort(
        ["file_date", "crawled_at", "position", "row"], descending=True, nulls_last=True
    )
    return latest_first.unique("author_id", keep="first").select("author_id", "author_followers")


def _drop_repeated_answers(table: pl.DataFrame) -> pl.DataFrame:
    """The same answer read twice is one answer: keep one usable row of it and name why the others go.

    The row kept is the latest crawl: the latest `updated_time` (the answer was edited since), then the latest date in
    the crawl file's name, then the latest `last_modify_ts`, then the first row read. For sources that are not crawls
    (Zhihu-KOL) that is the first row. The others get their layout's `repeated_answer` reason (`superseded_crawl` for
    MediaCrawler rows, `duplicate_answer_id` otherwise).
    """
    usable = table.filter(pl.col("drop_reason").is_null())
    repeated = usable.filter(pl.col("answer_id").is_duplicated())
    if repeated.is_empty():
        return table
    latest_first = repeated.sort([*RECRAWL_SCHEMA, "row"], descending=[True, True, True, False], nulls_last=True)
    superseded = latest_first.filter(~pl.col("answer_id").is_first_distinct()).select(
        "row", reason=pl.col("source").replace_strict(REPEATED_ANSWER, default=FlatLayout.repeated_answer)
    )
    # One pass over the table per reason (usually one), not a lookup of every row's source.
    drop_reason = pl.col("drop_reason")
    for (reason,), rows in superseded.group_by("reason"):
        drop_reason = pl.when(pl.col("row").is_in(rows["row"].implode())).then(pl.lit(reason)).otherwise(drop_reason)
    return table.with_columns(drop_reason=drop_reason)
