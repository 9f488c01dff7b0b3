"""Dedupe: planted near-duplicates are merged, true non-duplicates are kept apart, ids are stable."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import polars as pl
import pytest

from zhihu_rlhf import sources, synth
from zhihu_rlhf.dedupe import DedupeOptions, dedupe
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


def _answer(start: int, count: int = 8) -> str:
    return "".join(SENTENCES[(start + i) % len(SENTENCES)] for i in range(count))


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
# Other questions written in the same stock wording, so the title guard can learn what is wording.
NAMES = ["王芳", "刘洋", "陈静", "杨磊", "赵敏", "黄勇", "周杰", "吴涛", "徐丽", "孙强", "马超", "朱琳"]
FILLER = [
    (20 + i, 200 + i, template.format(name), _random_text(i))
    for i, (name, template) in enumerate(
        (name, template) for name in NAMES for template in ("如何评价{}的新作品？", "如何看待{}退出比赛？", "为什么{}这么火？")
    )
]
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
        *FILLER,
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
    for answer_id in (105, 106, 107, 108):
        assert _cluster(table, answer_id) == answer_id


def test_reasked_questions_share_a_group(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    # "？" -> "?", and the stock rewordings 如何评价 -> 怎么评价 / 如何看待, all about the same person and year.
    assert {_group(table, q) for q in (1, 5, 6, 7)} == {1}
    # Same title under two ids -> one group.
    assert _group(table, 12) == 2


def test_titles_about_another_person_or_year_are_other_questions(near: tuple[pl.DataFrame, dict]) -> None:
    table, _ = near
    assert _group(table, 8) == 8  # 李娜 instead of 张伟
    assert _group(table, 9) == 9  # 2020 instead of 2019


def test_stats_count_groups_and_merges(near: tuple[pl.DataFrame, dict]) -> None:
    table, stats = near
    assert stats["mode"] == "near"
    assert stats["question_groups"] == table["question_group"].n_unique()
    assert stats["questions_merged"] == 4  # ids 5, 6, 7 into 1; 12 into 2
    assert stats["answer_clusters"] == table["answer_cluster"].n_unique() == PLANTED.height - 6 + 1
    assert stats["answers_merged"] == 6  # 100..104 and 111
    assert stats["answer_threshold"] == DedupeOptions().answer_threshold


def test_exact_mode_merges_only_identical_text_and_folded_titles() -> None:
    table, stats = dedupe(PLANTED, DedupeOptions(mode="exact"))
    assert _cluster(table, 111) == 100  # identical text
    for answer_id in (101, 102, 103, 104):
        assert _cluster(table, answer_id) == answer_id
    assert _group(table, 5) == 1  # "？" vs "?" fold to the same key
    assert _group(table, 12) == 2
    assert _group(table, 7) == 7  # a reworded title is not an exact match
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


@pytest.fixture(scope="module")
def synthetic() -> tuple[pl.DataFrame, pl.DataFrame]:
    data, truth = synth.generate(3000, seed=7, mean_answer_chars=300)
    frame = sources.to_canonical(data.lazy(), sources.SourceFiles((), "parquet", "synthetic"))
    answers = frame.filter(pl.col("drop_reason").is_null()).select(*sources.CANONICAL_SCHEMA).collect()
    return answers.cast(sources.CANONICAL_SCHEMA), truth


def test_ids_do_not_depend_on_row_order(synthetic: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    answers, _ = synthetic
    ids = ["answer_id", "question_group", "answer_cluster"]
    first, _ = dedupe(answers, DedupeOptions())
    shuffled, _ = dedupe(answers.sample(fraction=1.0, shuffle=True, seed=3), DedupeOptions())
    assert first.select(ids).sort("answer_id").equals(shuffled.select(ids).sort("answer_id"))


def _same_cluster_pairs(frame: pl.DataFrame, columns: list[str]) -> int:
    sizes = frame.group_by(columns).len()["len"]
    return int((sizes * (sizes - 1) // 2).sum())


def test_synthetic_planted_duplicates_are_recovered(synthetic: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    answers, truth = synthetic
    table, _ = dedupe(answers, DedupeOptions())
    joined = table.join(truth.select("answer_id", "dup_kind", true_cluster="answer_cluster",
                                     true_group="question_group"), on="answer_id")
    # Every planted kind is present in this sample and each is caught.
    for kind in ("exact_copy", "crosspost_prefix_suffix", "punct_edit"):
        planted = joined.filter(pl.col("dup_kind") == kind)
        assert planted.height > 0
        assert planted.filter(pl.col("answer_cluster") != pl.col("true_cluster")).height <= planted.height // 20
    quoted = joined.filter(pl.col("dup_kind") == "shared_quote")
    assert quoted.height > 0 and (quoted["answer_cluster"] == quoted["answer_id"]).all()
    # Pairwise precision and recall over same-cluster pairs.
    for predicted, true in (("answer_cluster", "true_cluster"), ("question_group", "true_group")):
        rows = joined if predicted == "answer_cluster" else joined.unique("question_id")
        both = _same_cluster_pairs(rows, [predicted, true])
        assert both >= 0.99 * _same_cluster_pairs(rows, [predicted])
        assert both >= 0.95 * _same_cluster_pairs(rows, [true])


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="--dedupe"):
        dedupe(PLANTED, DedupeOptions(mode="fuzzy"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--answer-threshold"):
        dedupe(PLANTED, DedupeOptions(answer_threshold=150))
