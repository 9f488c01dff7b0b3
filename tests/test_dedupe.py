"""Dedupe: planted near-duplicates are merged, true non-duplicates are kept apart, ids are stable."""

from __future__ import annotations

import random
import unicodedata
from datetime import datetime, timezone

import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zhihu_rlhf import sources, synth
from zhihu_rlhf.dedupe import DedupeOptions, check_dedupe_options, dedupe
from zhihu_rlhf.errors import UserError

# Body sentences: distinct enough that unrelated answers built from them are not near-duplicates.
SENTENCES = [
    "我在互联网公司做了八年产品经理，见过太多项目从立项到死亡的全过程。",
    "说实话，大多数失败不是技术问题，而是需求本身就没有想清楚。",
    "刚毕业那会儿我也以为只要足够努力就能解决一切，后来才发现方向比努力重要得多。",
    "去年我们团队做了一次复盘，结论是过早扩张拖垮了现金流。",
    "如果你现在二十多岁，我的建议是先把基本功打扎实，再考虑跳槽的事情。",
    "这个行业的变化太快了，三年前的经验放到今天可能完全不适用。",
    "我身边有个朋友辞职去大理开民宿，第一年亏了二十万，第二年才慢慢回本。",
    "归根结底，选择什么样的生活方式，只有你自己能做决定。",
    "从数据上看，一线城市的房租收入比已经连续五年上升。",
    "读博的第三年是最难熬的，实验反复失败，导师也不太管。",
    "后来我换了一个课题，反而很快就出了成果，这件事让我明白及时止损的重要性。",
    "很多人问我要不要考公，我的回答一直是看你想要什么样的稳定。",
]
QUOTE = (
    "我们这一代人最大的幸运，是赶上了一个充满机会的时代；最大的不幸，是很多人把这种机会当成了理所当然，"
    "以为时代的红利会永远持续下去，以为努力一定会有回报，以为明天一定会比今天更好。"
)


def _answer(start: int, count: int = 8, separator: str = "") -> str:
    return separator.join(SENTENCES[(start + i) % len(SENTENCES)] for i in range(count))


def _random_text(seed: int, length: int = 150) -> str:
    """Unrelated text: random common CJK characters (two of these are never near-duplicates)."""
    rnd = random.Random(seed)
    return "".join(chr(rnd.randrange(0x4E00, 0x4E00 + 3000)) for _ in range(length)) + "。"


def _table(rows: list[tuple[int, int, str, str]]) -> pl.DataFrame:
    """Canonical answer table from (question_id, answer_id, question, answer)."""
    n = len(rows)
    return pl.DataFrame(
        {
            "question_id": [r[0] for r in rows],
            "answer_id": [r[1] for r in rows],
            "question": [r[2] for r in rows],
            "answer": [r[3] for r in rows],
            "upvotes": [10] * n,
            "created_at": [datetime(2022, 1, 1, tzinfo=timezone.utc)] * n,
            "author_id": ["a"] * n,
            "author_followers": [None] * n,
            "source": ["test"] * n,
        },
        schema=sources.CANONICAL_SCHEMA,
    )


def _cluster(table: pl.DataFrame, answer_id: int) -> int:
    return table.filter(pl.col("answer_id") == answer_id)["answer_cluster"].item()


def _group(table: pl.DataFrame, question_id: int) -> int:
    return table.filter(pl.col("question_id") == question_id)["question_group"].item(0)


BASE = _answer(0)
PLANTED = _table(
    [
        (1, 100, "如何评价张伟在2019年春晚上的表现？", BASE),
        (2, 101, "读博是一种怎样的体验？", "谢邀，人在美国，刚下飞机。" + BASE),  # cross-post with prefix
        (3, 102, "程序员三十五岁以后怎么办？", BASE + "\n编辑于 2022-01-01"),  # with suffix
        (4, 103, "年轻人应该去大城市还是回老家？", "谢邀。\n" + BASE + "\n\n（完）"),  # both
        (5, 104, "如何评价张伟在2019年春晚上的表现?", BASE.replace("，", ",", 2).replace("。", "！", 1)),
        (6, 105, "怎么评价张伟在2019年春晚上的表现？", _random_text(101)),
        (7, 106, "如何看待张伟在2019年春晚上的表现？", _random_text(102)),
        (8, 107, "如何评价李娜在2019年春晚上的表现？", _random_text(103)),
        (9, 108, "如何评价张伟在2020年春晚上的表现？", _random_text(104)),
        (10, 109, "读书有什么用？", _random_text(105) + QUOTE + _random_text(106)),  # a shared quote,
        (11, 110, "人为什么要读书？", _random_text(107) + QUOTE + _random_text(108)),  # nothing else shared
        (12, 111, "读博是一种怎样的体验？", BASE),  # exact copy under another question
        (13, 112, "请问 读博是一种怎样的体验??", _random_text(109)),  # cosmetic re-ask of 2
    ]
)


@pytest.fixture(scope="module")
def near() -> tuple[pl.DataFrame, dict]:
    return dedupe(PLANTED, DedupeOptions())


def test_cross_posts_with_prefix_or_suffix_join_the_source_cluster(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    assert {_cluster(table, i) for i in (100, 101, 102, 103, 111)} == {100}


def test_punctuation_edits_join_the_source_cluster(near: tuple[pl.DataFrame, dict]) -> None:
    assert _cluster(near[0], 104) == 100


def test_answers_sharing_a_long_quote_stay_apart(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    assert _cluster(table, 109) == 109
    assert _cluster(table, 110) == 110


def test_unrelated_answers_stay_alone(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    for answer_id in (105, 106, 107, 108, 112):
        assert _cluster(table, answer_id) == answer_id


def test_cosmetic_reasks_share_a_group(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    assert _group(table, 5) == 1  # "？" -> "?"
    assert _group(table, 12) == 2  # same title under two ids
    assert _group(table, 13) == 2  # 请问, a space, "??"


def test_titles_with_other_content_characters_are_other_questions(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    assert _group(table, 6) == 6  # 怎么评价: a rewording is not folded (see the dedupe docstring)
    assert _group(table, 7) == 7  # 如何看待
    assert _group(table, 8) == 8  # 李娜 instead of 张伟
    assert _group(table, 9) == 9  # 2020 instead of 2019


def test_stats_count_groups_and_merges(near: tuple[pl.DataFrame, dict]) -> None:
    table, stats = near
    assert stats["mode"] == "near"
    assert stats["question_groups"] == table["question_group"].n_unique() == 10
    assert stats["questions_merged"] == 3  # id 5 into 1; 12 and 13 into 2
    assert stats["answer_clusters"] == table["answer_cluster"].n_unique() == PLANTED.height - 6 + 1
    assert stats["answers_merged"] == 6  # 100..104 and 111
    assert stats["answer_threshold"] == DedupeOptions().answer_threshold


def test_exact_mode_merges_only_identical_answers_and_groups_questions_alike() -> None:
    table, stats = dedupe(PLANTED, DedupeOptions(mode="exact"))
    assert _cluster(table, 111) == 100  # identical text
    for answer_id in (101, 102, 103, 104):
        assert _cluster(table, answer_id) == answer_id
    assert [_group(table, q) for q in (5, 12, 13, 6, 7)] == [1, 2, 2, 6, 7]
    assert stats["mode"] == "exact"


def test_off_mode_keeps_every_id() -> None:
    table, stats = dedupe(PLANTED, DedupeOptions(mode="off"))
    assert table["question_group"].to_list() == table["question_id"].to_list()
    assert table["answer_cluster"].to_list() == table["answer_id"].to_list()
    assert stats["answers_merged"] == 0 and stats["questions_merged"] == 0


@pytest.mark.parametrize("mode", ["near", "exact", "off"])
def test_every_row_kept_in_order_with_columns_added(mode: str) -> None:
    table, _ = dedupe(PLANTED, DedupeOptions(mode=mode))
    assert table.drop("question_group", "answer_cluster").equals(PLANTED)
    assert table.schema["question_group"] == pl.Int64 and table.schema["answer_cluster"] == pl.Int64


# ---------------------------------------------------------------------------------------------
# Question groups: cosmetic re-asks merge, template siblings never do


def _groups_of(titles: list[str]) -> list[int]:
    """The question_group of each title, asked under ids 1, 2, ... with unrelated answers."""
    table, _ = dedupe(_table([(i + 1, 1000 + i, t, _random_text(i)) for i, t in enumerate(titles)]), DedupeOptions())
    return [_group(table, i + 1) for i in range(len(titles))]


COSMETIC_REASKS = {
    "电影的未来会怎样？": [
        "电影的未来会怎样?", "电影的未来会怎样？？", "电影的未来会怎样", "电影的 未来 会怎样？", " 电影的未来会怎样？ ",
        "请问电影的未来会怎样？", "请问，电影的未来会怎样？", "电影的未来会怎样吗？", "电影的未来会怎样呢？",
        "请问 电影的未来会怎样吗??", "“电影”的未来会怎样？",
    ],
    "如何评价 iPhone 15 的续航？": [
        "如何评价ＩＰＨＯＮＥ　１５的续航？", "如何评价iphone15的续航?？", "请问如何评价 iPhone 15 的续航呢？",
        "如何评价 iPhone 15 的续航", "求问：如何评价 iPhone 15 的续航？",
    ],
    "在一线城市工作五年之后回到老家的小县城考公务员，是一种怎样的体验？": [
        "在一线城市工作五年之后回到老家的小县城考公务员,是一种怎样的体验?",
        "在一线城市工作五年之后回到老家的小县城考公务员是一种怎样的体验？？",
        "想问一下，在一线城市工作五年之后回到老家的小县城考公务员，是一种怎样的体验？",
        "在一线城市工作五年之后 回到老家的小县城考公务员 是一种怎样的体验吗",
    ],
}


@pytest.mark.parametrize("title", list(COSMETIC_REASKS))
def test_cosmetic_reasks_always_merge(title: str) -> None:
    reasks = COSMETIC_REASKS[title]
    assert _groups_of([title, *reasks]) == [1] * (len(reasks) + 1)


# Titles drawn from shared templates: their stock wording is common, so a guard that lets titles differ in
# common wording would merge them (the issue saw 电影的未来会怎样？ merged with 摄影的未来会怎样？？).
TOPICS = ["电影", "摄影", "电视剧", "音乐剧", "音乐", "话剧", "动漫", "游戏", "小说", "绘画", "舞蹈", "建筑", "设计", "新闻"]
NAMES = ["张伟", "张玮", "李娜", "王芳", "刘洋", "陈静"]
SIBLINGS = [
    *(template.format(topic) for topic in TOPICS for template in ("{}的未来会怎样？", "{}行业还值得进入吗？", "如何评价今年的{}？")),
    *(f"如何评价{name}在{year}年春晚上的表现？" for name in NAMES for year in (2018, 2019, 2020)),
]

HARD_NEGATIVES = [
    ("电影的未来会怎样？", "摄影的未来会怎样？？"),  # 1 character (the case the issue reports), short title
    ("电影的未来会怎样？", "电视剧的未来会怎样？"),  # 2 characters
    ("电影的未来会怎样？", "音乐剧的未来会怎样?"),  # 3 characters
    ("如何评价张伟在2019年春晚上的表现？", "如何评价张伟在2020年春晚上的表现？"),  # digits
    ("如何评价张伟在2019年春晚上的表现？", "如何评价张玮在2019年春晚上的表现?"),  # a name, 1 character
    ("如何评价张伟在2019年春晚上的表现？", "如何看待张伟在2019年春晚上的表现？"),  # a rewording
    ("在一线城市工作五年之后回到老家的小县城考公务员，是一种怎样的体验？",
     "在一线城市工作三年之后回到老家的小县城考公务员，是一种怎样的体验？"),  # long title, 1 character
    ("在一线城市工作五年之后回到老家的小县城考公务员，是一种怎样的体验？",
     "在一线城市工作五年之后回到老家的小县城考研究生，是一种怎样的体验？？"),  # long title, 3 characters
    ("在一线城市工作五年之后回到老家的小县城考公务员，是一种怎样的体验？",
     "在一线城市工作五年之后回到老家的县城考公务员，是一种怎样的体验？"),  # long title, 1 character dropped
    ("C++ 和 Java 哪个更适合初学者？", "C# 和 Java 哪个更适合初学者？"),  # symbols inside a name
    ("C++ 和 Java 哪个更适合初学者？", "C 和 Java 哪个更适合初学者？"),
    ("房贷利率4.1%还值得提前还款吗？", "房贷利率41%还值得提前还款吗？"),  # a decimal point
    ("北京有哪些好的酒吧？", "北京有哪些好的酒？"),  # 吧 ends a word here, it is no particle
]


@pytest.mark.parametrize(("title", "sibling"), HARD_NEGATIVES)
def test_template_siblings_never_merge(title: str, sibling: str) -> None:
    groups = _groups_of([*SIBLINGS, title, sibling])
    assert groups[-2] != groups[-1]


def test_every_template_sibling_is_its_own_question() -> None:
    titles = sorted(set(SIBLINGS))
    assert len(set(_groups_of(titles))) == len(titles)


# Content characters for the property tests: CJK (a block with none of the folded particles 请问求想吗呢啊呀),
# lower-case letters and digits.
CONTENT = [chr(c) for c in range(0x4E00, 0x5000)] + list("abcdefghijklmnopqrstuvwxyz0123456789")
content_titles = st.lists(st.sampled_from(CONTENT), min_size=4, max_size=60)


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


@settings(deadline=None, max_examples=60)  # a cold polars call can exceed hypothesis' 200 ms default
@given(
    chars=content_titles,
    spaces=st.lists(st.integers(min_value=0, max_value=60), max_size=3),
    prefix=st.sampled_from(["", "请问", "请问，", "请问 ", "求问："]),
    ending=st.sampled_from(["？", "?", "？？", "??", "", "吗？", "吗", "呢?", " ？"]),
    upper=st.booleans(),
    full_width=st.booleans(),
)
def test_cosmetic_reask_property(
    chars: list[str], spaces: list[int], prefix: str, ending: str, upper: bool, full_width: bool
) -> None:
    title = "".join(chars) + "？"
    reask = list(chars)
    for position in sorted(spaces, reverse=True):
        reask.insert(min(position, len(reask)), " ")
    reask_text = prefix + "".join(reask).upper() if upper else prefix + "".join(reask)
    reask_text += ending
    if full_width:
        reask_text = _full_width(reask_text)
    assert _groups_of([title, reask_text]) == [1, 1]


slots = st.lists(st.sampled_from(CONTENT), min_size=1, max_size=6)
edits = st.lists(
    st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(min_value=0, max_value=5),
              st.sampled_from(CONTENT)),
    min_size=1, max_size=3,
)


@settings(deadline=None, max_examples=60)
@given(
    head=st.lists(st.sampled_from(CONTENT), max_size=20),
    tail=st.lists(st.sampled_from(CONTENT), min_size=1, max_size=40),
    slot=slots,
    others=st.lists(slots, min_size=6, max_size=6),
    changes=edits,
    sibling_ending=st.sampled_from(["？", "?", "？？", "", "吗？"]),
)
def test_template_siblings_differing_in_content_characters_never_merge(
    head: list[str], tail: list[str], slot: list[str], others: list[list[str]], changes: list[tuple[str, int, str]],
    sibling_ending: str,
) -> None:
    """One template (head + slot + tail, short or long), slots differing in 1-3 content characters."""
    sibling = list(slot)
    for kind, position, char in changes:
        at = position % (len(sibling) + (kind == "insert"))
        if kind == "replace":
            sibling[at] = char
        elif kind == "insert":
            sibling.insert(at, char)
        elif len(sibling) > 1:
            del sibling[at]
    fillers = ["".join(s) for s in (*others, slot, sibling)]
    assume(len(set(fillers)) == len(fillers))  # the edits may cancel out; other slots may repeat
    titles = ["".join(head) + filler + "".join(tail) + "？" for filler in fillers]
    # The sibling also differs cosmetically (its ending), which must not excuse the content difference.
    titles[-1] = titles[-1].removesuffix("？") + sibling_ending
    assert len(set(_groups_of(titles))) == len(titles)


# ---------------------------------------------------------------------------------------------
# Answers: cross-posts keep their cluster whatever the greeting or stamps around a short body

GREETINGS = ["谢邀。", "利益相关，匿了。", "谢邀，人在美国，刚下飞机。\n\n", "泻药～\n", "谢邀 ", "利益相关：无。\n"]
STAMPS = [
    "\n编辑于 2022-01-01",
    "\n\n发布于 2023-05-06 12:00・IP 属地北京",
    "\n编辑于 昨天 09:30",
    " 编辑于 2021-03-04 18:20",  # paragraphs joined by one space, the stamp too
    "\n\n著作权归作者所有。商业转载请联系作者获得授权，非商业转载请注明出处。",
    "\n发布于 2020-02-02 10:00\n编辑于 2021-12-31 23:59",
]


@pytest.mark.parametrize("sentences", [2, 8])  # a short body (~60 characters), where boilerplate weighs most
@pytest.mark.parametrize(("greeting", "stamp"), list(zip(GREETINGS, STAMPS, strict=True)))
def test_cross_posts_with_greetings_and_stamps_keep_their_cluster(greeting: str, stamp: str, sentences: int) -> None:
    body = _answer(3, sentences, separator="\n\n")
    other = _answer(7, sentences, separator="\n\n")  # another body, wrapped the same way
    table, _ = dedupe(
        _table([
            (1, 1, "读博是一种怎样的体验？", body),
            (2, 2, "程序员三十五岁以后怎么办？", greeting + body + stamp),
            (3, 3, "年轻人应该去大城市还是回老家？", greeting + body),
            (4, 4, "人为什么要读书？", body + stamp),
            (5, 5, "读书有什么用？", greeting + other + stamp),
            (6, 6, "为什么要读书？", other),
        ]),
        DedupeOptions(),
    )
    assert [_cluster(table, i) for i in range(1, 7)] == [1, 1, 1, 1, 5, 5]


@pytest.mark.parametrize("sentences", [2, 8])
def test_paragraphs_joined_by_one_space_keep_their_cluster(sentences: int) -> None:
    body = _answer(5, sentences, separator="\n\n")
    table, _ = dedupe(
        _table([
            (1, 1, "读博是一种怎样的体验？", body),
            (2, 2, "程序员三十五岁以后怎么办？", body.replace("\n\n", " ")),  # another scraper's join
            (3, 3, "年轻人应该去大城市还是回老家？", "谢邀 " + body.replace("\n\n", " ") + " 编辑于 2022-01-01"),
            (4, 4, "人为什么要读书？", _answer(9, sentences, separator=" ")),
        ]),
        DedupeOptions(),
    )
    assert [_cluster(table, i) for i in range(1, 5)] == [1, 1, 1, 4]


def test_a_closing_sentence_that_mentions_publishing_is_body() -> None:
    """"发布于" without a time is the answer's own words: two answers that differ only there stay apart."""
    body = _answer(2, 2)
    table, _ = dedupe(
        _table([
            (1, 1, "读博是一种怎样的体验？", body + "这篇文章发布于人民日报，我反复读了很多遍，每次都有新的体会和收获。"),
            (2, 2, "程序员三十五岁以后怎么办？", body + "这篇文章发布于一个小众论坛，作者至今没有透露过自己的真实身份。"),
        ]),
        DedupeOptions(),
    )
    assert [_cluster(table, i) for i in (1, 2)] == [1, 2]


# ---------------------------------------------------------------------------------------------
# Synthetic data with known truth


def _canonical(data: pl.DataFrame) -> pl.DataFrame:
    frame = sources.to_canonical(data.lazy(), sources.SourceFiles((), "parquet", "synthetic"))
    answers = frame.filter(pl.col("drop_reason").is_null()).select(*sources.CANONICAL_SCHEMA).collect()
    return answers.cast(sources.CANONICAL_SCHEMA)


def test_ids_do_not_depend_on_row_order() -> None:
    answers = _canonical(synth.generate(3000, seed=7, mean_answer_chars=300)[0])
    ids = ["answer_id", "question_group", "answer_cluster"]
    first, _ = dedupe(answers, DedupeOptions())
    shuffled, _ = dedupe(answers.sample(fraction=1.0, shuffle=True, seed=3), DedupeOptions())
    assert first.select(ids).sort("answer_id").equals(shuffled.select(ids).sort("answer_id"))


def _same_cluster_pairs(frame: pl.DataFrame, columns: list[str]) -> int:
    sizes = frame.group_by(columns).len()["len"]
    return int((sizes * (sizes - 1) // 2).sum())


def _letters_and_digits(title: str) -> str:
    """A title's letters and digits after NFKC, written independently of dedupe."""
    return "".join(c for c in unicodedata.normalize("NFKC", title).lower() if c.isalnum())


@pytest.mark.parametrize("world", list(synth.WORLDS))
def test_every_world_keeps_near_duplicates_together_and_other_questions_apart(world: str) -> None:
    data, truth = synth.generate(2000, seed=5, world=world, mean_answer_chars=300)
    table, _ = dedupe(_canonical(data), DedupeOptions())
    joined = table.join(truth.select("answer_id", "dup_kind", true_cluster="answer_cluster",
                                     true_group="question_group"), on="answer_id")
    # Answers: each planted kind is present and clustered exactly as the truth says (copies with their source,
    # shared-quote answers alone), allowing 1 miss in 20; pairwise precision and recall over all rows.
    both = pl.len().over("answer_cluster", "true_cluster")
    exact = joined.with_columns(
        exact=(pl.len().over("answer_cluster") == both) & (pl.len().over("true_cluster") == both)
    )
    for kind in ("exact_copy", "crosspost_prefix_suffix", "punct_edit", "shared_quote"):
        planted = exact.filter(pl.col("dup_kind") == kind)
        assert planted.height > 0
        assert planted.filter(~pl.col("exact")).height <= planted.height // 20
    same = _same_cluster_pairs(joined, ["answer_cluster", "true_cluster"])
    assert same >= 0.99 * _same_cluster_pairs(joined, ["answer_cluster"])
    assert same >= 0.95 * _same_cluster_pairs(joined, ["true_cluster"])
    # Questions: no false merge, and every re-ask whose title keeps the letters and digits is merged; in the
    # templates world every re-ask is cosmetic (请问 and 吗 included), so every one is merged.
    questions = joined.unique("question_id").with_columns(
        characters=pl.col("question").map_elements(_letters_and_digits, return_dtype=pl.String)
    )
    merged = _same_cluster_pairs(questions, ["question_group"])
    assert merged > 0 and _same_cluster_pairs(questions, ["question_group", "true_group"]) == merged
    cosmetic = ["true_group"] if world == "templates" else ["true_group", "characters"]
    assert _same_cluster_pairs(questions, [*cosmetic, "question_group"]) == _same_cluster_pairs(questions, cosmetic)


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="--dedupe"):
        check_dedupe_options(DedupeOptions(mode="fuzzy"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--answer-threshold"):
        check_dedupe_options(DedupeOptions(answer_threshold=150))
