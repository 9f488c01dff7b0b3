"""A user's own crawl as MediaCrawler stores it: every file store, the SQLite store, data folders, repeated runs."""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import polars as pl
import pytest

from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.sources import SourceFiles, load_answers, scan_raw

T0 = 1676899170  # 2023-02-20T13:19:30Z
DAY = 86_400


def _item(content_id: int, question_id: int, votes: int, *, content_type: str = "answer", author: str = "u1",
          updated: int = T0, stored_ms: int = 1_752_300_000_000, new_version: bool = True) -> dict:
    """One content item with the fields MediaCrawler's ZhihuContent has, plus the last_modify_ts its store adds.

    new_version: the author as `creator_hash` and ids as strings (since July 2026); else `user_id` and the profile
    fields, and ids as the API's numbers.
    """
    item = {
        "content_id": str(content_id) if new_version else content_id,
        "content_type": content_type,
        "content_text": f"回答{content_id}的正文。" if content_type == "answer" else "文章正文。",
        "content_url": f"https://www.zhihu.com/question/{question_id}/answer/{content_id}",
        "question_id": str(question_id) if content_type == "answer" else "",
        "title": f"问题{question_id}怎么看？",
        "desc": "",
        "created_time": T0,
        "updated_time": updated,
        "voteup_count": votes,
        "comment_count": 3,
        "source_keyword": "RLHF",
    }
    if new_version:
        item |= {"creator_hash": f"hash-{author}" if author else "", "user_nickname": "张***三"}
    else:
        item |= {"user_id": author, "user_link": f"https://www.zhihu.com/people/{author}", "user_nickname": "张三",
                 "user_avatar": "", "user_url_token": author}
    return item | {"last_modify_ts": stored_ms}


CRAWL = [
    _item(101, 9, 12),
    _item(102, 9, 5, author="u2"),
    _item(103, 10, 0, author=""),  # an author MediaCrawler could not read: the answer is kept, author unknown
    _item(201, 0, 40, content_type="article"),
    _item(301, 0, 7, content_type="zvideo"),
]
CREATED = datetime.fromtimestamp(T0, UTC)
EXPECTED = [  # (question_id, answer_id, question, answer, upvotes, created_at, author_id, source)
    (9, 101, "问题9怎么看？", "回答101的正文。", 12, CREATED, "hash-u1", "mediacrawler"),
    (9, 102, "问题9怎么看？", "回答102的正文。", 5, CREATED, "hash-u2", "mediacrawler"),
    (10, 103, "问题10怎么看？", "回答103的正文。", 0, CREATED, None, "mediacrawler"),
]
COMMENT = {"comment_id": "c1", "parent_comment_id": "", "content": "说得好", "publish_time": T0, "sub_comment_count": 0,
           "like_count": 1, "dislike_count": 0, "content_id": "101", "content_type": "answer",
           "creator_hash": "hash-u9", "user_nickname": "李*", "last_modify_ts": 1_752_300_000_000}


# Writers: each store as MediaCrawler's own code writes it (tools/async_file_writer.py, the ORM tables).


def write_json(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    return path


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


def write_csv(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8-sig") as file:  # utf-8-sig: the BOM MediaCrawler writes
        writer = csv.DictWriter(file, fieldnames=items[0].keys())
        writer.writeheader()
        writer.writerows(items)
    return path


def write_sqlite(path: Path, items: list[dict], creators: list[tuple[str, str]] = ()) -> Path:
    """zhihu_content as MediaCrawler's SQLite store has it (times as text), and zhihu_creator with `fans` as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(items[0])
    as_stored = [[str(item[c]) if c in ("created_time", "updated_time") else item[c] for c in columns] for item in items]
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE zhihu_content (id INTEGER PRIMARY KEY AUTOINCREMENT, content_id VARCHAR(64),"
            " content_type TEXT, content_text TEXT, content_url TEXT, question_id VARCHAR(255), title TEXT, desc TEXT,"
            " created_time VARCHAR(32), updated_time TEXT, voteup_count INTEGER, comment_count INTEGER,"
            " source_keyword TEXT, creator_hash VARCHAR(64), user_id VARCHAR(255), user_link TEXT, user_nickname TEXT,"
            " user_avatar TEXT, user_url_token TEXT, add_ts BIGINT, last_modify_ts BIGINT)"
        )
        connection.execute("CREATE TABLE zhihu_comment (id INTEGER PRIMARY KEY, comment_id VARCHAR(64), content TEXT)")
        connection.executemany(
            f"INSERT INTO zhihu_content ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", as_stored
        )
        if creators:
            connection.execute("CREATE TABLE zhihu_creator (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id VARCHAR(64),"
                               " user_nickname TEXT, follows TEXT, fans TEXT, anwser_count TEXT, last_modify_ts BIGINT)")
            connection.executemany("INSERT INTO zhihu_creator (user_id, fans, last_modify_ts) VALUES (?, ?, 1)",
                                   creators)
    connection.close()
    return path


def write_xlsx(path: Path, contents: list[dict], comments: list[dict] = (), creators: list[dict] = ()) -> Path:
    """A workbook as MediaCrawler's excel store (store/excel_store_base.py) writes it with openpyxl: sheets Contents,
    Comments and Creators; the header is the first item's keys, extended by new keys; None is written as "" and lists
    or dicts as their str(); sheets left without rows are removed before saving."""
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, items in (("Contents", contents), ("Comments", comments), ("Creators", creators)):
        sheet = workbook.create_sheet(name)
        headers: list[str] = []
        for item in items:
            headers += [key for key in item if key not in headers]
            for column, header in enumerate(headers, 1):
                sheet.cell(row=1, column=column, value=header)
            row = sheet.max_row + 1
            for column, header in enumerate(headers, 1):
                value = item.get(header, "")
                value = str(value) if isinstance(value, (list, dict)) else "" if value is None else value
                sheet.cell(row=row, column=column, value=value)
        if sheet.max_row == 1:
            workbook.remove(sheet)
    workbook.save(path)
    return path


def write_empty_sqlite(path: Path) -> Path:
    """A database as MediaCrawler leaves it when it starts: its tables created, no row stored yet."""
    write_sqlite(path, CRAWL, creators=[("u1", "1")])
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM zhihu_content")
        connection.execute("DELETE FROM zhihu_creator")
    connection.close()
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _rows(answers: pl.DataFrame) -> list[tuple]:
    return answers.sort("answer_id").drop("author_followers", "answer_chars").rows()


STORES = {
    "json": lambda root: write_json(root / "data/zhihu/json/search_contents_2025-07-12.json", CRAWL),
    "jsonl": lambda root: write_jsonl(root / "data/zhihu/jsonl/search_contents_2025-07-12.jsonl", CRAWL),
    "csv": lambda root: write_csv(root / "data/zhihu/csv/search_contents_2025-07-12.csv", CRAWL),
    "csv-run-numbered": lambda root: write_csv(root / "data/zhihu/1_search_contents_2025-07-12.csv", CRAWL),
    "sqlite": lambda root: write_sqlite(root / "database/sqlite_tables.db", CRAWL),
    "excel": lambda root: write_xlsx(root / "data/zhihu/zhihu_search_20250712_153000.xlsx", CRAWL, comments=[COMMENT]),
}


@pytest.mark.parametrize("store", STORES)
def test_every_store_gives_the_same_answers(tmp_path: Path, store: str) -> None:
    path = STORES[store](tmp_path)
    # Comments beside the contents are never read as answers.
    write_json(path.parent / "search_comments_2025-07-12.json", [COMMENT])
    write_csv(path.parent / "search_comments_2025-07-12.csv", [COMMENT])
    for source in (path, path.parent):  # the file itself, and the folder holding it
        answers, stats = load_answers(str(source))
        assert _rows(answers) == EXPECTED, source
        assert answers["author_followers"].null_count() == answers.height  # no creators stored
        assert stats["rows_in"] == len(CRAWL)
        assert stats["rows_dropped"] == {"not_an_answer": 2}
        assert stats["author_id_missing"] == 1 and stats["created_at_missing"] == 0


def test_older_versions_numeric_ids_and_user_id(tmp_path: Path) -> None:
    old = [_item(101, 9, 12, new_version=False), _item(102, 9, 5, author="u2", new_version=False)]
    for path in (write_json(tmp_path / "json/search_contents_2024-01-14.json", old),
                 write_jsonl(tmp_path / "jsonl/search_contents_2024-01-14.jsonl", old),
                 write_csv(tmp_path / "csv/search_contents_2024-01-14.csv", old),
                 write_xlsx(tmp_path / "zhihu_search_20240114_101500.xlsx", old)):
        answers, _ = load_answers(str(path))
        assert answers.select("answer_id", "upvotes", "author_id").rows() == [(101, 12, "u1"), (102, 5, "u2")], path


def test_the_data_folder_reads_every_store_and_keeps_the_latest_crawl(tmp_path: Path) -> None:
    data = tmp_path / "data" / "zhihu"
    # Run 1 (jsonl, 12 July) crawls 101 and 102; run 2 (json, 20 July) crawls 101 again with more votes, same edit time.
    write_jsonl(data / "jsonl/search_contents_2025-07-12.jsonl", [_item(101, 9, 12), _item(102, 9, 5)])
    write_json(data / "json/search_contents_2025-07-20.json", [_item(101, 9, 40), _item(104, 9, 1)])
    # 102 was edited after the 20 July crawl of it that a detail run (csv) stored: the edited version wins although
    # its file is older.
    write_csv(data / "csv/detail_contents_2025-07-15.csv", [_item(102, 9, 9, updated=T0 + DAY)])
    write_csv(data / "csv/search_contents_2025-07-20.csv", [_item(102, 9, 7)])
    # Same day, same edit time: the row MediaCrawler stored last (last_modify_ts) wins.
    write_jsonl(data / "jsonl/detail_contents_2025-07-21.jsonl",
                [_item(105, 9, 30, stored_ms=2_000), _item(105, 9, 20, stored_ms=1_000)])
    write_json(data / "json/search_comments_2025-07-20.json", [COMMENT])
    answers, stats = load_answers(str(data))
    assert answers.sort("answer_id").select("answer_id", "upvotes").rows() == [(101, 40), (102, 9), (104, 1), (105, 30)]
    assert stats["rows_in"] == 8
    assert stats["rows_dropped"] == {"superseded_crawl": 4}


def test_followers_from_the_creator_table_and_creator_files(tmp_path: Path) -> None:
    old = [_item(101, 9, 12, new_version=False), _item(102, 9, 5, author="u2", new_version=False),
           _item(103, 9, 5, author="u3", new_version=False)]
    database = write_sqlite(tmp_path / "db/sqlite_tables.db", old, creators=[("u1", "1234"), ("u2", "1.2万")])
    answers, _ = load_answers(str(database))
    assert answers.sort("answer_id").select("author_id", "author_followers").rows() == [
        ("u1", 1234), ("u2", 12000), ("u3", None)
    ]
    assert answers.schema["author_followers"] == pl.Int64

    # Older file stores wrote creators beside the contents; a `creator` crawl's contents file is still contents.
    crawl = tmp_path / "files"
    write_json(crawl / "json/creator_contents_2025-07-12.json", old)
    write_json(crawl / "json/creator_creator_2025-07-12.json", [{"user_id": "u1", "fans": 10, "last_modify_ts": 1}])
    write_json(crawl / "json/creator_creator_2025-07-20.json", [{"user_id": "u1", "fans": 15, "last_modify_ts": 2},
                                                                {"user_id": "u3", "fans": 0, "last_modify_ts": 2}])
    answers, stats = load_answers(str(crawl))
    assert answers.sort("answer_id").select("author_id", "author_followers").rows() == [
        ("u1", 15), ("u2", None), ("u3", 0)
    ]
    assert stats["rows_in"] == 3
    # The contents file alone: the creators its runs stored beside it are read too.
    alone, _ = load_answers(str(crawl / "json/creator_contents_2025-07-12.json"))
    assert alone.sort("answer_id").select("author_id", "author_followers").rows() == [("u1", 15), ("u2", None), ("u3", 0)]

    # The excel store keeps creators in the workbook's Creators sheet.
    workbook = write_xlsx(tmp_path / "excel/zhihu_creator_20250712_101500.xlsx", old,
                          creators=[{"user_id": "u1", "fans": "1.2万", "last_modify_ts": 1},
                                    {"user_id": "u2", "fans": 7, "last_modify_ts": 1}])
    for source in (workbook, workbook.parent):
        answers, _ = load_answers(str(source))
        assert answers.sort("answer_id").select("author_id", "author_followers").rows() == [
            ("u1", 12000), ("u2", 7), ("u3", None)
        ], source


def test_a_crawl_builds_and_author_data_stays_out_of_the_published_files(tmp_path: Path) -> None:
    sample, _ = load_answers("sample")
    items = [
        _item(row["answer_id"], row["question_id"], row["upvotes"], author=f"u{row['answer_id'] % 50}",
              new_version=False)
        | {"title": row["question"], "content_text": row["answer"],
           "created_time": int(row["created_at"].timestamp()) if row["created_at"] else 0}
        for row in sample.iter_rows(named=True)
    ]
    database = write_sqlite(tmp_path / "database/sqlite_tables.db", items,
                            creators=[(f"u{i}", str(100 * i)) for i in range(50)])
    written = build("all", BuildOptions(source=str(database.parent), out=tmp_path / "out"), log=lambda _: None)
    for folder in written.values():
        train = pl.read_parquet(folder / "data" / "train-00000-of-00001.parquet")
        assert train.height > 0
        assert not any("author" in column for column in train.columns), folder
        stats = json.loads((folder / "stats.json").read_text())
        assert stats["rows_in"] == sample.height
        assert stats["created_at_missing"] == sample["created_at"].null_count()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_json(p / "data/zhihu/json/search_comments_2025-07-12.json", [COMMENT]).parents[1],
         r"zhihu: found no \.parquet files, no MediaCrawler contents files \(\*contents\*\.json\|jsonl\|csv\), "
         r"no MediaCrawler excel workbooks \(zhihu_\*\.xlsx\) and no SQLite database"),
        (lambda p: _write_text(p / "search_contents_2025-07-12.json", '[\n    {"content_id": "1",\n    {'),
         r"search_contents_2025-07-12\.json: not a readable json file \(line 3, column 5: "),
        (lambda p: _write_text(p / "search_contents_2025-07-12.jsonl",
                               json.dumps(CRAWL[0]) + '\n{"content_id": "2", "title": \n'),
         r"search_contents_2025-07-12\.jsonl: not a readable jsonl file \(line 2, column 30: Expecting value"),
        (lambda p: _write_text(p / "crawl.db", "not a database"),
         r"crawl\.db: not a readable SQLite database"),
        (lambda p: sqlite3.connect(p / "other.db").execute("CREATE TABLE xhs_note (note_id TEXT)").connection.commit()
         or p / "other.db", r"other\.db: the SQLite database has no zhihu_content table \(tables: xhs_note\)"),
        (lambda p: write_json(p / "json/search_contents_2025-07-12.json", [COMMENT]),
         r"search_contents_2025-07-12\.json: unknown table layout"),
        # Not JSON at all, though named so: no record is read as if the file had been cut.
        (lambda p: _write_text(p / "search_contents_2025-07-12.json", "<html><body>登录</body></html>\n"),
         r"search_contents_2025-07-12\.json: not a readable jsonl file \(line 1, column 1: Expecting value"),
        (lambda p: _write_text(p / "zhihu_search_20250712_153000.xlsx", "not a workbook"),
         r"zhihu_search_20250712_153000\.xlsx: not a readable excel workbook"),
        (lambda p: write_empty_sqlite(p / "database/sqlite_tables.db"),
         r"sqlite_tables\.db: no rows to read: the zhihu_content table is empty"),
    ],
)
def test_bad_crawls_fail_with_one_line_naming_the_file(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        load_answers(str(make(tmp_path)))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_json(p / "search_comments_2025-07-12.json", [COMMENT]).parent, "found no .parquet files"),
        # MediaCrawler's SQLite store at start-up: tables, no rows. Not an empty build: the same kind of error.
        (lambda p: write_empty_sqlite(p / "database/sqlite_tables.db").parent, "no rows to read"),
    ],
)
def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path: Path, make, message: str) -> None:
    import subprocess
    import sys

    source = make(tmp_path)
    run = subprocess.run([sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", str(source), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith(f"error: {source}: {message}")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


# A crawl killed while MediaCrawler saves leaves a file whose end is missing.


def _record_spans(data: bytes, file_format: str) -> list[tuple[int, int]]:
    """(first byte, byte after the last) of each record, from the layouts the writers above produce."""
    if file_format == "jsonl":
        ends = [i for i, byte in enumerate(data) if byte == ord("\n")]
        return list(zip([0] + [end + 1 for end in ends[:-1]], ends, strict=True))
    starts = [i + 5 for i in range(len(data)) if data.startswith(b"\n    {", i)]
    ends = [i + 6 for i in range(len(data)) if data.startswith(b"\n    }", i)]
    return list(zip(starts, ends, strict=True))


@pytest.mark.parametrize("file_format", ["json", "jsonl"])
def test_a_file_cut_anywhere_gives_its_complete_records(tmp_path: Path, file_format: str) -> None:
    write = write_json if file_format == "json" else write_jsonl
    items = [CRAWL[0] | {"content_text": "影响🙂\n“引号”\\ \u0001", "desc": None, "ok": True}, CRAWL[1], CRAWL[2]]
    whole = write(tmp_path / f"search_contents_2025-07-12.{file_format}", items).read_bytes()
    spans = _record_spans(whole, file_format)
    assert len(spans) == len(items)
    cut_file = tmp_path / f"cut.{file_format}"
    warnings: list[str] = []
    for cut in range(1, len(whole)):
        cut_file.write_bytes(whole[:cut])
        frame, cut_records = scan_raw(SourceFiles((cut_file,), file_format, str(cut_file)), warnings.append)
        complete = sum(end <= cut for _, end in spans)
        read = [] if frame is None else frame.collect()["content_id"].to_list()
        assert read == [item["content_id"] for item in items[:complete]], cut
        assert cut_records == any(start < cut < end for start, end in spans), cut
    assert warnings and all(str(cut_file) in warning for warning in warnings)


def test_a_cut_crawl_builds_counts_the_cut_record_and_warns_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_json(tmp_path / "data/zhihu/json/search_contents_2025-07-12.json", CRAWL)
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index("回答103".encode()) + 1])  # inside the three bytes of 回
    write_jsonl(tmp_path / "data/zhihu/jsonl/search_contents_2025-07-11.jsonl", CRAWL[:2])
    answers, stats = load_answers(str(tmp_path / "data"))
    assert answers["answer_id"].to_list() == [101, 102]
    assert stats["rows_in"] == len(CRAWL[:2]) * 2 + 1
    assert stats["rows_dropped"] == {"superseded_crawl": 2, "truncated_record": 1}
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {path}: ") and "truncated_record" in warning[0]

    written = build("instruct", BuildOptions(source=str(path), out=tmp_path / "out"), log=lambda _: None)
    stats = json.loads((written["instruct"] / "stats.json").read_text())
    assert stats["rows_dropped"]["truncated_record"] == 1
    assert stats["rows_in"] == stats["rows_kept"] + sum(stats["rows_dropped"].values())
