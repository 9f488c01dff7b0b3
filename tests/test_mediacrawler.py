"""A user's own crawl as MediaCrawler stores it: every file store, the SQLite store, data folders, repeated runs."""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.sources import load_answers

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


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _rows(answers: pl.DataFrame) -> list[tuple]:
    return answers.sort("answer_id").drop("author_followers").rows()


STORES = {
    "json": lambda root: write_json(root / "data/zhihu/json/search_contents_2025-07-12.json", CRAWL),
    "jsonl": lambda root: write_jsonl(root / "data/zhihu/jsonl/search_contents_2025-07-12.jsonl", CRAWL),
    "csv": lambda root: write_csv(root / "data/zhihu/csv/search_contents_2025-07-12.csv", CRAWL),
    "csv-run-numbered": lambda root: write_csv(root / "data/zhihu/1_search_contents_2025-07-12.csv", CRAWL),
    "sqlite": lambda root: write_sqlite(root / "database/sqlite_tables.db", CRAWL),
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
                 write_csv(tmp_path / "csv/search_contents_2024-01-14.csv", old)):
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
         r"zhihu: found no \.parquet files, no MediaCrawler contents files \(\*contents\*\.json\|jsonl\|csv\) "
         r"and no SQLite database"),
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
    ],
)
def test_bad_crawls_fail_with_one_line_naming_the_file(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        load_answers(str(make(tmp_path)))
    assert "\n" not in str(error.value)


def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    write_json(tmp_path / "search_comments_2025-07-12.json", [COMMENT])
    run = subprocess.run([sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", str(tmp_path), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith(f"error: {tmp_path}: found no .parquet files")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
