"""Parsing every field variant seen in the wild, the input layouts, and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.normalize import normalize_text
from zhihu_rlhf.sources import load_answers, parse_id, parse_time, parse_upvotes


def _apply(expr_fn, values: list) -> list:
    return pl.DataFrame({"v": values}, schema={"v": pl.String}).select(expr_fn(pl.col("v")).alias("v"))["v"].to_list()


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("赞同 1291", 1291),
        ("\u200b赞同 1291", 1291),
        ("赞同 1.2 万", 12000),
        ("\u200b赞同 3 万", 30000),
        ("赞同", 0),
        ("\u200b赞同", 0),
        ("1,291", 1291),
        ("3.4k", 3400),
        ("1.2w", 12000),
        ("17", 17),
        ("0", 0),
    ],
)
def test_upvote_variants(text: str, count: int) -> None:
    assert _apply(parse_upvotes, [text]) == [count]


@pytest.mark.parametrize("text", ["", "lots", "赞同 很多", "1.2.3", "-5", None])
def test_upvotes_that_denote_no_count_are_null(text: str | None) -> None:
    assert _apply(parse_upvotes, [text]) == [None]


@settings(deadline=None)  # a cold polars call can exceed hypothesis' 200 ms default on a busy CI box
@given(st.integers(min_value=0, max_value=10**9))
def test_upvotes_round_trip_every_plain_spelling(n: int) -> None:
    spellings = [str(n), f"赞同 {n}", f"\u200b赞同 {n}", f"{n:,}"]
    assert _apply(parse_upvotes, spellings) == [n] * len(spellings)


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=9999))
def test_upvotes_wan_means_ten_thousand(tenths: int) -> None:
    # Zhihu shows counts over 10,000 as 万 with one decimal: "1.2 万" is exactly 12,000.
    text = f"{tenths // 10}.{tenths % 10}"
    assert _apply(parse_upvotes, [f"赞同 {text} 万", f"{text}w"]) == [tenths * 1000] * 2


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_ids_as_int_float_or_string(n: int) -> None:
    assert _apply(parse_id, [str(n), f"{n}.0", f" {n} "]) == [n, n, n]


def test_bad_ids_are_null() -> None:
    assert _apply(parse_id, ["", "abc", "12.5", None]) == [None] * 4


def test_time_variants() -> None:
    moment = datetime(2023, 2, 20, 13, 19, 30, tzinfo=UTC)
    values = [
        "2023-02-20T13:19:30.000Z",
        "2023-02-20T13:19:30Z",
        "2023-02-20T21:19:30+08:00",
        "2023-02-20T13:19:30",
        str(int(moment.timestamp())),
        str(int(moment.timestamp()) * 1000),
    ]
    assert _apply(parse_time, values) == [moment] * len(values)
    assert _apply(parse_time, ["", None, "yesterday"]) == [None, None, None]
    with_ms = _apply(parse_time, ["1676899170123"])[0]
    assert with_ms.microsecond == 123_000


@settings(deadline=None)
@given(st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2030, 1, 1)).map(lambda d: d.replace(microsecond=0, tzinfo=UTC)))
def test_time_round_trip(moment: datetime) -> None:
    values = [moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"), moment.strftime("%Y-%m-%dT%H:%M:%SZ"), str(int(moment.timestamp()))]
    assert _apply(parse_time, values) == [moment] * 3


def test_normalize_removes_noise_and_keeps_chinese() -> None:
    raw = ["\u200b 你好，\u00a0世界！\t\t再见 &amp; &lt;b&gt;  ", "第一段\n\n\n\n第二段 \n 第三段", "\ufeff\u200b \u00a0", "全角：，。？！（）「」"]
    assert _apply(normalize_text, raw) == ["你好， 世界！ 再见 & <b>", "第一段\n\n第二段\n第三段", None, "全角：，。？！（）「」"]


def _kol_file(tmp_path: Path, rows: list[tuple[str | None, str | None, object]]) -> Path:
    path = tmp_path / "kol.parquet"
    pl.DataFrame(
        {
            "INSTRUCTION": [r[0] for r in rows],
            "RESPONSE": [r[1] for r in rows],
            "SOURCE": ["Zhihu"] * len(rows),
            "METADATA": [r[2] if isinstance(r[2], str) else json.dumps(r[2], ensure_ascii=False) for r in rows],
        },
        schema={"INSTRUCTION": pl.String, "RESPONSE": pl.String, "SOURCE": pl.String, "METADATA": pl.String},
    ).write_parquet(path)
    return path


def test_zhihu_kol_rows_kept_and_dropped_by_reason(tmp_path: Path) -> None:
    good = {"question_id": 59530469.0, "answer_id": "12", "upvotes": "\u200b赞同 1.2 万",
            "answer_creation_time": "2023-02-20T13:19:30.000Z", "author_id": "https://www.zhihu.com/people/abc"}
    path = _kol_file(
        tmp_path,
        [
            ("如何评价X？", "回答一", good),
            ("如何评价X？", "回答一（重复抓取）", {**good}),  # same answer id crawled twice
            ("如何评价X？", "回答二", {**good, "answer_id": 13, "answer_creation_time": ""}),
            ("如何评价X？", "回答三", '{"question_id": 1, "answer_id": 2, "upv'),  # truncated JSON
            ("如何评价X？", "回答四", {**good, "answer_id": 14, "question_id": None}),
            ("如何评价X？", "回答五", {**good, "answer_id": None}),
            ("如何评价X？", "  \u200b ", {**good, "answer_id": 15}),
            ("如何评价X？", None, {**good, "answer_id": 16}),
            ("  ", "回答六", {**good, "answer_id": 17}),
            ("如何评价X？", "回答七", {**good, "answer_id": 18, "upvotes": "很多"}),
            ("如何评价X？", "回答八", {k: v for k, v in good.items() if k != "upvotes"} | {"answer_id": 19}),
        ],
    )
    answers, stats = load_answers(str(path))
    assert answers["answer_id"].to_list() == [12, 13]
    assert answers.row(0, named=True) == {
        "question_id": 59530469, "answer_id": 12, "question": "如何评价X？", "answer": "回答一", "upvotes": 12000,
        "created_at": datetime(2023, 2, 20, 13, 19, 30, tzinfo=UTC), "author_id": "https://www.zhihu.com/people/abc",
        "source": "zhihu-kol",
    }
    assert stats["rows_in"] == 11
    assert stats["rows_dropped"] == {
        "duplicate_answer_id": 1, "invalid_metadata_json": 1, "missing_question_id": 1, "missing_answer_id": 1,
        "empty_answer": 2, "empty_question": 1, "unparseable_upvotes": 1, "missing_upvotes": 1,
    }
    assert stats["rows_in"] == answers.height + sum(stats["rows_dropped"].values())
    assert stats["created_at_missing"] == 1


def test_legacy_chinese_columns(tmp_path: Path) -> None:
    path = tmp_path / "legacy.parquet"
    pl.DataFrame({"问题内容": ["为什么？"], "回答内容": ["因为。"], "回答点赞数": [7], "回答时间": [1676899170],
                  "问题ID": [1], "回答ID": [2], "作者ID": ["u"]}).write_parquet(path)
    answers, _ = load_answers(str(path))
    assert answers.select("question_id", "answer_id", "upvotes").row(0) == (1, 2, 7)
    assert answers["created_at"][0] == datetime.fromtimestamp(1676899170, UTC)


def test_mediacrawler_jsonl_and_csv_keep_answers_only(tmp_path: Path) -> None:
    rows = [
        {"content_id": "101", "content_type": "answer", "content_text": "回答", "question_id": "9", "title": "问题？",
         "created_time": 1676899170, "voteup_count": 12, "user_id": "u1"},
        {"content_id": 102, "content_type": "article", "content_text": "文章", "question_id": "", "title": "文章标题",
         "created_time": 1676899170, "voteup_count": 3, "user_id": "u2"},
    ]
    jsonl = tmp_path / "zhihu_contents_2024.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    csv = tmp_path / "csv" / "zhihu_contents_2024.csv"
    csv.parent.mkdir()
    pl.DataFrame(rows, schema={k: pl.String for k in rows[0]}).write_csv(csv)
    for source in (jsonl, csv.parent):
        answers, stats = load_answers(str(source))
        assert answers.select("question_id", "answer_id", "upvotes", "source").rows() == [(9, 101, 12, "mediacrawler")]
        assert stats["rows_dropped"] == {"not_an_answer": 1}


def test_folder_and_glob_of_parquet(tmp_path: Path) -> None:
    meta = {"question_id": 1, "answer_id": 1, "upvotes": 1, "answer_creation_time": ""}
    for i in range(3):
        (tmp_path / f"part{i}").mkdir()
        _kol_file(tmp_path / f"part{i}", [("问？", f"答{i}", {**meta, "answer_id": i})])
    assert load_answers(str(tmp_path))[0].height == 3
    assert load_answers(str(tmp_path / "part*" / "*.parquet"))[0].height == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.parquet", "no such file"),
        (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "unsupported file type"),
        (lambda p: (p / "fake.parquet").write_text("not parquet") and p / "fake.parquet", "not a readable parquet"),
        (lambda p: pl.DataFrame({"a": [1]}).write_parquet(p / "odd.parquet") or p / "odd.parquet", "unknown table layout"),
        (lambda p: p / "nomatch*.parquet", "matches no file"),
    ],
)
def test_bad_sources_raise_one_clear_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_answers(str(make(tmp_path)))


def test_unknown_hub_id_and_no_network_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2 as httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(self, repo_id, **kwargs):
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=httpx.Request("GET", "https://hub")))

    monkeypatch.setattr(HfApi, "list_repo_files", not_found)
    with pytest.raises(UserError, match="no such dataset on the Hugging Face Hub"):
        load_answers("nobody/nothing")

    def offline(self, repo_id, **kwargs):
        raise httpx.ConnectError("Name or service not known")

    monkeypatch.setattr(HfApi, "list_repo_files", offline)
    with pytest.raises(UserError, match="no network"):
        load_answers("nobody/nothing")


def test_every_synthetic_row_parses_to_its_true_values(tmp_path: Path) -> None:
    from zhihu_rlhf import synth

    data, truth_path = synth.write(6000, tmp_path / "s.parquet", seed=11)
    answers, stats = load_answers(str(data))
    truth = pl.read_parquet(truth_path)
    valid = truth.filter(pl.col("malformed").is_null())
    assert sorted(answers["answer_id"]) == sorted(valid["answer_id"])
    joined = answers.join(valid, on="answer_id", suffix="_true")
    for column in ("question_id", "upvotes", "created_at"):
        same = (joined[column] == joined[f"{column}_true"]) | (joined[column].is_null() & joined[f"{column}_true"].is_null())
        assert same.all(), f"{column} differs from the truth"
    planted = truth["malformed"].drop_nulls().value_counts()
    expected = {"invalid_json": "invalid_metadata_json", "null_question_id": "missing_question_id",
                "null_answer_id": "missing_answer_id", "blank_response": "empty_answer"}
    assert stats["rows_dropped"] == {expected[k]: n for k, n in zip(planted["malformed"], planted["count"], strict=True)}
