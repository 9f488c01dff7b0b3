"""Sources -> the canonical answer table.

Every input ends up as one table with one row per answer:

    question_id Int64 | answer_id Int64 | question str | answer str | upvotes Int64
    created_at Datetime(us, UTC) (nullable) | author_id str (nullable) | source str

`--source` may be a Hub dataset id (default `wangrui6/Zhihu-KOL`), a local parquet file, a folder or
glob of parquet files, a MediaCrawler Zhihu export (`zhihu_contents*.jsonl|csv`), or `sample` (a small
Zhihu-KOL-shaped file shipped in the package). Zhihu-KOL keeps its metadata in a JSON *string* whose
values were scraped from the page, so every field comes in several spellings; each parser below turns
all of them into the exact value they denote. Rows that cannot be used are dropped and counted by
reason, never silently.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

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
    "source": pl.String,
}

# Column sets that identify each input layout.
ZHIHU_KOL_COLUMNS = ("INSTRUCTION", "RESPONSE", "METADATA")
ZHIHU_KOL_LEGACY_COLUMNS = ("问题内容", "回答内容", "问题ID", "回答ID")  # an earlier revision of the dataset
MEDIACRAWLER_COLUMNS = ("content_id", "content_type", "content_text", "question_id", "title")


@dataclass(frozen=True)
class SourceFiles:
    """Where the rows come from: local files of one format, and a label for messages and stats."""

    paths: tuple[Path, ...]
    file_format: str  # "parquet" | "jsonl" | "csv"
    label: str


# ---------------------------------------------------------------------------------------------
# Field parsers: polars expressions, so a million rows parse without a Python loop.


def parse_id(value: pl.Expr) -> pl.Expr:
    """Ids arrive as ints, floats that went through pandas (`59530469.0`) or digit strings."""
    digits = value.cast(pl.String).str.strip_chars().str.extract(r"^(\d+)(?:\.0*)?$")
    return digits.cast(pl.Int64, strict=False)


def parse_upvotes(value: pl.Expr) -> pl.Expr:
    """Vote-button text or a number -> the exact count it denotes; null when it denotes none.

    `赞同 1291`, `\\u200b赞同 1291`, `赞同 1.2 万` (= 12000), `赞同` alone (= 0), `1,291`, `3.4k`, `1.2w`, 17.
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


# ---------------------------------------------------------------------------------------------
# Finding the files.


def resolve_source(source: str) -> SourceFiles:
    """Turn `--source` into local files (downloading from the Hub into the usual cache if needed)."""
    if source == SAMPLE:
        sample = resources.files("zhihu_rlhf") / "data" / "sample.parquet"
        return SourceFiles((Path(str(sample)),), "parquet", "sample")
    if any(ch in source for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
        if not matches:
            raise UserError(f"{source}: the pattern matches no file")
        return _files_of_one_format(matches, source)
    path = Path(source).expanduser()
    if path.is_dir():
        parquet = sorted(path.rglob("*.parquet"))
        crawl = sorted(path.glob("zhihu_contents*.jsonl")) or sorted(path.glob("zhihu_contents*.csv"))
        if not (parquet or crawl):
            raise UserError(f"{source}: the folder has no .parquet files and no zhihu_contents*.jsonl|csv export")
        return _files_of_one_format(parquet or crawl, source)
    if path.exists():
        return _files_of_one_format([path], source)
    if _looks_like_hub_id(source):
        return _download_from_hub(source)
    raise UserError(f"{source}: no such file or folder (and not a Hub dataset id like {DEFAULT_SOURCE})")


def _files_of_one_format(paths: list[Path], label: str) -> SourceFiles:
    formats = {_file_format(p) for p in paths}
    if len(formats) > 1:
        raise UserError(f"{label}: mixes file types {sorted(formats)}; point --source at one kind")
    return SourceFiles(tuple(paths), formats.pop(), label)


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; expected .parquet, .jsonl or .csv")


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
# Reading each layout into the canonical columns (plus `drop_reason` for rows we cannot use).


def scan_raw(files: SourceFiles) -> pl.LazyFrame:
    """A lazy scan of the files; bad files fail here with a clear message, before any work."""
    try:
        if files.file_format == "parquet":
            frame = pl.scan_parquet(list(files.paths))
        elif files.file_format == "jsonl":
            frame = pl.concat([pl.scan_ndjson(p, infer_schema_length=None) for p in files.paths], how="diagonal_relaxed")
        else:
            frame = pl.concat([pl.scan_csv(p, infer_schema=False) for p in files.paths], how="diagonal_relaxed")
        frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        where = files.paths[0] if len(files.paths) == 1 else files.label
        raise UserError(f"{where}: not a readable {files.file_format} file ({_first_line(err)})") from None
    return frame


def to_canonical(raw: pl.LazyFrame, files: SourceFiles) -> pl.LazyFrame:
    """Map whichever layout `raw` has onto the canonical columns, plus a `drop_reason` column."""
    columns = raw.collect_schema().names()
    if all(c in columns for c in ZHIHU_KOL_COLUMNS):
        return _from_zhihu_kol(raw)
    if all(c in columns for c in ZHIHU_KOL_LEGACY_COLUMNS):
        return _from_flat(raw, columns, ZHIHU_KOL_LEGACY, is_answer=pl.lit(True))
    if all(c in columns for c in MEDIACRAWLER_COLUMNS):
        # MediaCrawler also exports articles and videos, which answer no question.
        return _from_flat(raw, columns, MEDIACRAWLER, is_answer=pl.col("content_type").cast(pl.String) == "answer")
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    raise UserError(
        f"{files.label}: unknown table layout; expected Zhihu-KOL columns {', '.join(ZHIHU_KOL_COLUMNS)} "
        f"or a MediaCrawler export with {', '.join(MEDIACRAWLER_COLUMNS)}; found: {shown}"
    )


# METADATA keys, all read as text: the parsers above accept every spelling of each value.
METADATA_FIELDS = pl.Struct(
    {"question_id": pl.String, "answer_id": pl.String, "author_id": pl.String, "upvotes": pl.String,
     "answer_creation_time": pl.String}
)


def _from_zhihu_kol(raw: pl.LazyFrame) -> pl.LazyFrame:
    # json_path_match("$") is null exactly when the string is not valid JSON; json_decode would fail
    # the whole batch on one truncated row, so only valid rows are decoded (one parse each).
    metadata_ok = pl.col("METADATA").str.json_path_match("$").is_not_null()
    meta = pl.when(metadata_ok).then(pl.col("METADATA")).str.json_decode(METADATA_FIELDS)
    return _with_drop_reason(
        raw.select(
            "INSTRUCTION", "RESPONSE", metadata=meta, metadata_ok=metadata_ok
        ).select(
            question_id=parse_id(pl.col("metadata").struct.field("question_id")),
            answer_id=parse_id(pl.col("metadata").struct.field("answer_id")),
            question=pl.col("INSTRUCTION").cast(pl.String),
            answer=pl.col("RESPONSE").cast(pl.String),
            upvotes=parse_upvotes(pl.col("metadata").struct.field("upvotes")),
            created_at=parse_time(pl.col("metadata").struct.field("answer_creation_time")),
            author_id=pl.col("metadata").struct.field("author_id"),
            source=pl.lit("zhihu-kol"),
            metadata_ok="metadata_ok",
            upvotes_given=pl.col("metadata").struct.field("upvotes").is_not_null(),
            is_answer=pl.lit(True),  # Zhihu-KOL holds answers only
        )
    )


def _optional(name: str, columns: list[str]) -> pl.Expr:
    """A column that some exports leave out: null where it is missing."""
    return pl.col(name) if name in columns else pl.lit(None, pl.String)


@dataclass(frozen=True)
class FlatLayout:
    """A layout with one column per canonical field (no JSON): which column holds what.

    upvotes, created_at and author_id may be missing from an export; they are null then.
    """

    source: str
    question_id: str
    answer_id: str
    question: str
    answer: str
    upvotes: str
    created_at: str
    author_id: str


ZHIHU_KOL_LEGACY = FlatLayout("zhihu-kol", "问题ID", "回答ID", "问题内容", "回答内容", "回答点赞数", "回答时间", "作者ID")
MEDIACRAWLER = FlatLayout(
    "mediacrawler", "question_id", "content_id", "title", "content_text", "voteup_count", "created_time", "user_id"
)


def _from_flat(raw: pl.LazyFrame, columns: list[str], layout: FlatLayout, is_answer: pl.Expr) -> pl.LazyFrame:
    upvotes = _optional(layout.upvotes, columns)
    return _with_drop_reason(
        raw.select(
            question_id=parse_id(pl.col(layout.question_id)),
            answer_id=parse_id(pl.col(layout.answer_id)),
            question=pl.col(layout.question).cast(pl.String),
            answer=pl.col(layout.answer).cast(pl.String),
            upvotes=parse_upvotes(upvotes),
            created_at=parse_time(_optional(layout.created_at, columns)),
            author_id=_optional(layout.author_id, columns).cast(pl.String),
            source=pl.lit(layout.source),
            metadata_ok=pl.lit(True),
            upvotes_given=upvotes.is_not_null(),
            is_answer=is_answer,
        )
    )


def _with_drop_reason(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Normalise the texts and name the first thing wrong with each row (null = the row is usable)."""
    frame = frame.with_columns(
        question=normalize_text(pl.col("question")),
        answer=normalize_text(pl.col("answer")),
        author_id=pl.col("author_id").cast(pl.String),
    )
    reason = (
        pl.when(~pl.col("is_answer").fill_null(False))
        .then(pl.lit("not_an_answer"))
        .when(~pl.col("metadata_ok"))
        .then(pl.lit("invalid_metadata_json"))
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
    return frame.with_columns(drop_reason=reason).select(*CANONICAL_SCHEMA, "drop_reason")


# ---------------------------------------------------------------------------------------------


def load_answers(source: str) -> tuple[pl.DataFrame, dict]:
    """Read `source` into the canonical answer table; returns (table, stats).

    stats: rows_in, rows_dropped {reason: count} and created_at_missing (rows kept without a usable
    time: they can still be instruct answers but never pair members). rows_in == len(table) + dropped.
    """
    files = resolve_source(source)
    parsed = to_canonical(scan_raw(files), files).with_row_index("row")
    try:
        table = parsed.collect(engine="streaming")
    except pl.exceptions.PolarsError as err:
        raise UserError(f"{files.label}: could not read the rows ({_first_line(err)})") from None

    # The same answer crawled twice is one answer: keep its first usable row.
    usable = pl.col("drop_reason").is_null()
    first_usable_row = pl.col("row").filter(usable).min().over("answer_id")
    table = table.with_columns(
        drop_reason=pl.when(usable & (pl.col("row") != first_usable_row))
        .then(pl.lit("duplicate_answer_id"))
        .otherwise("drop_reason")
    )

    dropped = table.filter(pl.col("drop_reason").is_not_null()).group_by("drop_reason").len().sort("drop_reason")
    answers = table.filter(pl.col("drop_reason").is_null()).select(*CANONICAL_SCHEMA).cast(CANONICAL_SCHEMA)
    stats = {
        "source": files.label,
        "rows_in": table.height,
        "rows_dropped": dict(zip(dropped["drop_reason"], dropped["len"], strict=True)),
        "created_at_missing": answers["created_at"].null_count(),
    }
    return answers, stats
