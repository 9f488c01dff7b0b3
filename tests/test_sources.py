"""Parsing every field variant seen in the wild, the input layouts, and bad input."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhihu_rlhf import synth
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.normalize import normalize_text
from zhihu_rlhf.sources import (
    SourceFiles,
    _null_non_finite,
    load_answers,
    parse_id,
    parse_time,
    parse_upvotes,
    to_canonical,
)


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
    assert _apply(normalize_text, raw) == ["你好，世界！ 再见 & <b>", "第一段\n\n第二段\n第三段", None, "全角：，。？！（）「」"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("影\u00a0响", "影响"),  # inside a word: a space there would split it
        ("影\u00a0响\u00a0力\u00a0很\u00a0大", "影响力很大"),  # a NBSP after every character
        ("影\u00a0\u00a0响", "影响"),
        ("你好，\u00a0世界。\u00a0「再见」", "你好，世界。「再见」"),  # next to CJK punctuation
        ("他说\u00a0“好”\u00a0走了……\u00a0对", "他说“好”走了……对"),  # punctuation shared with English: next to CJK
        ("。\u00a0“好”\u00a0“", "。“好” “"),  # two marks English uses too: a space, as in English
        ("影&nbsp;响，影&#160;响，影&#xa0;响", "影响，影响，影响"),  # as an entity: the same NBSP
        ("影\u00a0\u200b响", "影响"),  # a zero-width character does not hide its neighbour
        ("これ\u00a0は\u00a0한국어", "これは한국어"),
        ("machine\u00a0learning", "machine learning"),  # between Latin words: a word break
        ("共\u00a03\u00a0个\u00a0GPU", "共 3 个 GPU"),  # between Han and digits or Latin
        ("said\u00a0“hi”", "said “hi”"),
        ("影\u00a0 响", "影 响"),  # next to a space the author typed: that space stays
        ("影\t响，A\tB", "影 响，A B"),  # a tab separates (table cells, pasted text): a space
    ],
)
def test_nbsp_is_removed_inside_cjk_text_and_a_space_elsewhere(raw: str, expected: str) -> None:
    assert _apply(normalize_text, [raw]) == [expected]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("一家\u200b👨\u200d👩\u200d👧", "一家👨\u200d👩\u200d👧"),  # the joiners make one family emoji: kept
        ("❤\ufe0f\u200d🔥 好", "❤\ufe0f\u200d🔥 好"),
        ("影\u200d响 a\u200db 👍\u200d \u200d👍", "影响 ab 👍 👍"),  # anywhere else a joiner is noise
    ],
)
def test_a_zero_width_joiner_stays_only_inside_an_emoji(raw: str, expected: str) -> None:
    assert _apply(normalize_text, [raw]) == [expected]


def _nbsp_reference(text: str) -> str:
    """The NBSP rule character by character: each run of NBSP (zero-width characters removed first) goes if CJK text
    is on both sides, or CJK text on one and punctuation English shares on the other, else becomes a space; then
    spaces collapse and the ends are trimmed."""
    cjk, shared = set("影响한，「"), set("“…")
    text = text.replace("\u200b", "")
    out, i = [], 0
    while i < len(text):
        if text[i] != "\u00a0":
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < len(text) and text[j] == "\u00a0":
            j += 1
        before, after = text[i - 1] if i else "", text[j] if j < len(text) else ""
        glued = (before in cjk and after in cjk | shared) or (before in shared and after in cjk)
        out.append("" if glued and before and after else " ")
        i = j
    return re.sub(" {2,}", " ", "".join(out)).strip()


@settings(deadline=None, max_examples=400)
@given(st.text(alphabet="影响한，「“…a3 \u00a0\u200b\uffff", max_size=30))
def test_nbsp_rule_matches_a_character_by_character_reading(text: str) -> None:
    # U+FFFF is the mark the fast passes use: a text holding it takes the plain regex, and reads the same.
    assert _apply(normalize_text, [text]) == [_nbsp_reference(text) or None]


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
        "author_followers": None, "source": "zhihu-kol", "answer_chars": 3,
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


@pytest.mark.parametrize("world", list(synth.WORLDS))
def test_every_synthetic_row_parses_to_its_true_values(tmp_path: Path, world: str) -> None:
    data, truth_path = synth.write(3000, tmp_path / "s.parquet", seed=11, world=world, mean_answer_chars=150)
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
                "null_answer_id": "missing_answer_id", "blank_response": "empty_answer", "legacy_no_ids": "legacy_no_ids"}
    assert stats["rows_dropped"] == {expected[k]: n for k, n in zip(planted["malformed"], planted["count"], strict=True)}


# ---------------------------------------------------------------------------------------------
# METADATA as the pandas-based Zhihu-KOL converter wrote it: bare NaN / Infinity, extra keys, float ids, and the
# older crawler's rows with Chinese keys and no ids.

MOMENT = datetime(2023, 2, 20, 13, 19, 30, tzinfo=UTC)
EPOCH = int(MOMENT.timestamp())


def _canonical_rows(metadata: list[str]) -> pl.DataFrame:
    """Each METADATA text in a Zhihu-KOL row, through the canonical mapping (no file, no de-duplication)."""
    n = len(metadata)
    raw = pl.DataFrame({"INSTRUCTION": ["问题？"] * n, "RESPONSE": ["回答。"] * n, "SOURCE": ["Zhihu"] * n,
                        "METADATA": metadata}, schema_overrides={"METADATA": pl.String})
    return to_canonical(raw.lazy(), SourceFiles((), "parquet", "test")).collect()


def _object(*members: str) -> str:
    """A METADATA text from its members, written as the converter wrote them (`"key": value`)."""
    return "{" + ", ".join(members) + "}"


IDS = '"question_id": 1, "answer_id": 2, "upvotes": 3'


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        # kept: (question_id, answer_id, upvotes, created_at, author_id)
        (_object(IDS, '"answer_creation_time": NaN', '"author_id": "u"'), (1, 2, 3, None, "u")),
        (_object(IDS, f'"answer_creation_time": {EPOCH}', '"author_id": NaN'), (1, 2, 3, MOMENT, None)),
        (_object(IDS, '"answer_creation_time": Infinity', '"author_id": "u"'), (1, 2, 3, None, "u")),
        ('{"question_id":1,"answer_id":2,"upvotes":3,"answer_creation_time":-Infinity,"author_id":-Infinity}',
         (1, 2, 3, None, None)),
        (_object('"question_id": 59530469.0, "answer_id": 2.0, "upvotes": 3.0',
                 '"answer_creation_time": "2023-02-20T13:19:30.000Z"'), (59530469, 2, 3, MOMENT, None)),
        (_object('"url": "https://www.zhihu.com/question/1/answer/2"', IDS,
                 '"extra": {"nested": [1, 2], "missing": NaN}', '"author_id": ""'), (1, 2, 3, None, None)),
        # the NaN inside a string survives; the one after it is a value
        (_object(IDS, '"note": "NaN: \\"NaN\\", "', '"author_id": NaN'), (1, 2, 3, None, None)),
        (_object(IDS, '"author_id": "x\\": NaN, \\"y"'), (1, 2, 3, None, 'x": NaN, "y')),
        # dropped, with the reason
        (_object('"回答点赞数": 5000', f'"回答时间": {EPOCH}'), "legacy_no_ids"),
        (_object('"回答点赞数": "赞同 5000"'), "legacy_no_ids"),
        (_object('"question_id": NaN, "answer_id": 2, "upvotes": 3'), "missing_question_id"),
        (_object('"question_id": 1, "answer_id": 2, "upvotes": NaN'), "missing_upvotes"),
        (_object('"question_id": {"id": 1}, "answer_id": 2, "upvotes": 3'), "missing_question_id"),
        (_object('"question_id": 1, "answer_id": 2, "upvotes": [3]'), "unparseable_upvotes"),
        (_object('"question_id": 1, "answer_id": 2, "upvotes": [3, NaN]'), "invalid_metadata_json"),  # in an array
        ("5", "invalid_metadata_json"),
        ("[]", "invalid_metadata_json"),
        ("null", "invalid_metadata_json"),
        ('"text"', "invalid_metadata_json"),
        ("{'question_id': 1}", "invalid_metadata_json"),
    ],
)
def test_metadata_spellings_in_the_wild(metadata: str, expected: tuple | str) -> None:
    # A well-formed neighbour in the same batch: an odd row never costs another row its values.
    neighbour = _object('"question_id": 7, "answer_id": 8, "upvotes": "赞同 1.2 万"', f'"answer_creation_time": {EPOCH}')
    rows = _canonical_rows([metadata, neighbour])
    assert rows.select("question_id", "answer_id", "upvotes", "created_at", "drop_reason").row(1) == (
        7, 8, 12000, MOMENT, None
    )
    got = rows.row(0, named=True)
    if isinstance(expected, str):
        assert got["drop_reason"] == expected
    else:
        assert got["drop_reason"] is None
        assert (got["question_id"], got["answer_id"], got["upvotes"], got["created_at"], got["author_id"]) == expected


def test_rows_without_time_or_author_are_kept_and_counted(tmp_path: Path) -> None:
    path = _kol_file(tmp_path, [
        ("问？", "答一", _object('"question_id": 1, "answer_id": 1, "upvotes": 5, "answer_creation_time": NaN',
                               '"author_id": "a"')),
        ("问？", "答二", _object('"question_id": 1, "answer_id": 2, "upvotes": 5, "answer_creation_time": NaN',
                               '"author_id": NaN')),
        ("问？", "答三", _object('"question_id": 1, "answer_id": 3, "upvotes": 5', f'"answer_creation_time": {EPOCH}',
                               '"author_id": NaN')),
        ("问？", "答四", _object('"回答点赞数": 5000', f'"回答时间": {EPOCH}')),
    ])
    answers, stats = load_answers(str(path))
    assert answers["answer_id"].to_list() == [1, 2, 3]
    assert stats["created_at_missing"] == 2 and stats["author_id_missing"] == 2
    assert stats["rows_dropped"] == {"legacy_no_ids": 1}


# Text that tempts a careless NaN replacement: tokens, quotes, colons and escapes inside string values.
_TRICKY = st.lists(
    st.sampled_from(["NaN", "Infinity", "-Infinity", '": NaN, "', '"', "\\", ":", ",", " ", "赞同", "{", "]", "null"])
    | st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P")), max_size=4),
    max_size=6,
).map("".join)
_NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
_KNOWN_KEYS = {"question_id", "answer_id", "author_id", "upvotes", "answer_creation_time", "回答点赞数", "回答时间"}


@st.composite
def _pandas_row(draw: st.DrawFn) -> tuple[dict, tuple]:
    """A valid row's METADATA in any spelling the pandas converter wrote, and the values it denotes."""
    question_id, answer_id = draw(st.integers(1, 10**12)), draw(st.integers(1, 10**12))
    votes = draw(st.integers(0, 10**7))
    moment = draw(st.datetimes(datetime(2011, 1, 1), datetime(2030, 1, 1))).replace(microsecond=0, tzinfo=UTC)
    author = "https://www.zhihu.com/people/" + draw(_TRICKY)
    spelled = {
        "question_id": draw(st.sampled_from([question_id, float(question_id), str(question_id)])),
        "answer_id": draw(st.sampled_from([answer_id, float(answer_id), str(answer_id)])),
        "upvotes": draw(st.sampled_from([votes, f"赞同 {votes}", f"\u200b赞同 {votes}", f"{votes:,}"])),
    }
    time_spelling = draw(st.sampled_from(["iso", "epoch", "non-finite", "absent"]))
    if time_spelling != "absent":
        spelled["answer_creation_time"] = {
            "iso": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "epoch": int(moment.timestamp()),
            "non-finite": draw(_NON_FINITE),
        }[time_spelling]
    author_spelling = draw(st.sampled_from(["text", "non-finite", "absent"]))
    if author_spelling != "absent":
        spelled["author_id"] = author if author_spelling == "text" else draw(_NON_FINITE)
    # Extra keys are column names of the converter's CSV (`url`, ...): plain words.
    extra_key = st.text("urlnote_赞同时间", min_size=1, max_size=8).filter(lambda k: k not in _KNOWN_KEYS)
    extra = draw(st.dictionaries(extra_key, _TRICKY | _NON_FINITE | st.integers() | st.none(), max_size=3))
    items = list((extra | spelled).items())
    metadata = dict(draw(st.permutations(items)))
    expected = (question_id, answer_id, votes, moment if time_spelling in ("iso", "epoch") else None,
                author.strip() if author_spelling == "text" else None)
    return metadata, expected


@settings(deadline=None, max_examples=100)
@given(st.lists(_pandas_row(), min_size=1, max_size=5), st.booleans())
def test_a_valid_row_is_never_dropped_for_its_spelling(rows: list[tuple[dict, tuple]], ascii_only: bool) -> None:
    metadata = [json.dumps(m, ensure_ascii=ascii_only) for m, _ in rows]  # json.dumps writes NaN/Infinity bare
    got = _canonical_rows(metadata)
    assert got["drop_reason"].to_list() == [None] * len(rows)
    assert got.select("question_id", "answer_id", "upvotes", "created_at", "author_id").rows() == [e for _, e in rows]


def _assert_repaired(original: object, repaired: object, ascii_only: bool) -> None:
    """The NaN repair changed nothing but non-finite member values, each into None; and it did change every one whose
    key, as written, has no colon, comma or backslash other than in \\uXXXX escapes (see sources.NON_FINITE_VALUE)."""
    if isinstance(original, dict):
        assert isinstance(repaired, dict) and list(repaired) == list(original)
        for key, value in original.items():
            if _is_non_finite(value):
                assert repaired[key] is None or (_plain_key(key, ascii_only) is False and
                                                 _comparable(repaired[key]) == _comparable(value)), key
            else:
                _assert_repaired(value, repaired[key], ascii_only)
    elif isinstance(original, list):
        assert isinstance(repaired, list) and len(repaired) == len(original)
        for value, repaired_value in zip(original, repaired, strict=True):
            if _is_non_finite(value):  # a token that is an array element is not a member value: left alone
                assert _comparable(repaired_value) == _comparable(value)
            else:
                _assert_repaired(value, repaired_value, ascii_only)
    else:
        assert repaired == original


def _plain_key(key: str, ascii_only: bool) -> bool:
    written = re.sub(r"\\u[0-9a-fA-F]{4}", "", json.dumps(key, ensure_ascii=ascii_only)[1:-1])
    return not any(c in written for c in "\\:,")


def _is_non_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _comparable(value: object) -> object:
    """JSON value with NaN spelled out (NaN != NaN would fail every comparison)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return "<NaN>" if isinstance(value, float) and math.isnan(value) else value


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=12,
)


@settings(deadline=None, max_examples=200)
@given(st.dictionaries(_TRICKY, _JSON, max_size=5), st.booleans())
def test_nan_repair_touches_member_values_only(document: dict, ascii_only: bool) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)
    repaired = _null_non_finite(pl.Series([text]))[0]
    _assert_repaired(document, json.loads(repaired), ascii_only)
    if "NaN" not in text and "Infinity" not in text:
        assert repaired == text
