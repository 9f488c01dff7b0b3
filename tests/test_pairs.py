"""Each pair rule, the ranking, the one-use matching, and the instruct selection (the vote model: test_votes.py)."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from zhihu_rlhf.instruct import InstructOptions, select_instruct
from zhihu_rlhf.pairs import PairOptions, candidate_pairs, select_one_use_per_response, select_pairs
from zhihu_rlhf.split import split_by_question, unit_hash

T0 = datetime(2022, 1, 1, tzinfo=UTC)
TEXT = "这是一个足够长的回答，用来通过长度过滤。" * 3


def answers(rows: list[dict]) -> pl.DataFrame:
    """Canonical, deduplicated answer rows; omitted fields get neutral defaults.

    The quality columns are fixed here, ln(upvotes + 1) with sd 1 / sqrt(upvotes + 1), so a pair's confidence is
    the plain Poisson Wald statistic and these tests check the rules whatever the vote model estimates.
    """
    full = []
    for i, row in enumerate(rows):
        answer_id = row.get("answer_id", i + 1)
        full.append(
            {
                "question_id": row.get("question_id", 1),
                "answer_id": answer_id,
                "question": row.get("question", f"问题{row.get('question_id', 1)}？"),
                "answer": row.get("answer", f"{TEXT}#{answer_id}"),
                "upvotes": row["upvotes"],
                "created_at": T0 + timedelta(days=row.get("day", 0)) if row.get("day", 0) is not None else None,
                "author_id": None,
                "source": "test",
                "question_group": row.get("question_group", row.get("question_id", 1)),
                "answer_cluster": row.get("answer_cluster", answer_id),
            }
        )
    return pl.DataFrame(full, schema_overrides={"created_at": pl.Datetime("us", "UTC"), "author_id": pl.String}).with_columns(
        estimated_quality=(pl.col("upvotes") + 1).log(), quality_sd=(pl.col("upvotes") + 1).pow(-0.5)
    )


NO_EXTRA_RULES = dict(min_chosen_upvotes=0, limit=0)


def pair_ids(frame: pl.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["chosen_answer_id"], frame["rejected_answer_id"], strict=True))


def wald(chosen_upvotes: pl.Expr, rejected_upvotes: pl.Expr) -> pl.Expr:
    """The confidence that the quality columns of `answers` give: the Poisson Wald statistic."""
    c, r = chosen_upvotes.cast(pl.Float64) + 1, rejected_upvotes.cast(pl.Float64) + 1
    return (c / r).log() / (1 / c + 1 / r).sqrt()


def test_pairs_carry_confidence_and_p_chosen_better_from_the_quality_columns() -> None:
    rows = answers([{"upvotes": 2000}, {"upvotes": 1000}, {"upvotes": 4, "question_id": 2}, {"upvotes": 2, "question_id": 2}])
    pairs, _, _ = select_pairs(rows, PairOptions(min_chosen_upvotes=0, limit=0))
    assert pairs["chosen_answer_id"].to_list() == [1, 3]  # 2000 over 1000 is the far surer lead
    expected = pairs.select(wald(pl.col("chosen_upvotes"), pl.col("rejected_upvotes"))).to_series()
    assert pairs["confidence"].to_list() == pytest.approx(expected.to_list())
    # p = Phi(confidence), by the error function of the standard library
    assert pairs["p_chosen_better"].to_list() == pytest.approx([0.5 * (1 + math.erf(z / math.sqrt(2))) for z in expected])


def test_ratio_rule() -> None:
    rows = answers([{"upvotes": 100}, {"upvotes": 50}, {"upvotes": 51}, {"upvotes": 10, "question_id": 2},
                    {"upvotes": 30, "question_id": 2}])
    pairs, _, funnel = select_pairs(rows, PairOptions(min_ratio=2.0, **NO_EXTRA_RULES))
    # 100 vs 50 is exactly 2x (kept), 100 vs 51 is not, 30 vs 10 is 3x.
    assert pair_ids(pairs) == {(1, 2), (5, 4)}
    ratio_step = next(step for step in funnel if step["rule"] == "upvote_ratio")
    assert ratio_step["removed"] == 2  # (1,3) and (3,2)


def test_time_rule_and_missing_times() -> None:
    rows = answers([{"upvotes": 100, "day": 0}, {"upvotes": 10, "day": 31}, {"upvotes": 10, "day": 29},
                    {"upvotes": 5, "day": None}])
    pairs, _, _ = select_pairs(rows, PairOptions(max_days_apart=30, **NO_EXTRA_RULES))
    assert pair_ids(pairs) == {(1, 3)}  # 31 days apart fails; no time, no pair


def test_chosen_not_earlier_rule() -> None:
    rows = answers([{"upvotes": 100, "day": 0}, {"upvotes": 10, "day": 5}, {"upvotes": 40, "day": 10},
                    {"upvotes": 1, "day": 2}])
    off, _, _ = select_pairs(rows, PairOptions(**NO_EXTRA_RULES))
    on, _, _ = select_pairs(rows, PairOptions(chosen_not_earlier=True, **NO_EXTRA_RULES))
    assert pair_ids(off) == {(1, 2), (3, 4)}  # 100 over 10 is the most confident pair, then 40 over 1
    # Answer 1 is the oldest, so it can be chosen over nobody; of 3's wins, 40 over 1 beats 40 over 10.
    assert pair_ids(on) == {(3, 4)}


def test_min_chosen_upvotes_rule() -> None:
    rows = answers([{"upvotes": 8}, {"upvotes": 1}, {"upvotes": 40, "question_id": 2}, {"upvotes": 3, "question_id": 2}])
    pairs, _, _ = select_pairs(rows, PairOptions(min_chosen_upvotes=10, limit=0))
    assert pair_ids(pairs) == {(3, 4)}


def test_ties_and_near_copies_never_pair() -> None:
    rows = answers([{"upvotes": 100, "answer_cluster": 1}, {"upvotes": 10, "answer_cluster": 1}, {"upvotes": 50},
                    {"upvotes": 50}])
    pairs, _, funnel = select_pairs(rows, PairOptions(**NO_EXTRA_RULES))
    for chosen, rejected in pair_ids(pairs):
        assert {chosen, rejected} != {1, 2} and {chosen, rejected} != {3, 4}
    rules = {step["rule"]: step["removed"] for step in funnel}
    assert rules["distinct_upvotes"] == 1 and rules["not_near_copies"] == 1


def test_pairs_from_two_ids_of_one_question_group() -> None:
    rows = answers([{"upvotes": 100, "question_id": 7, "question_group": 7},
                    {"upvotes": 5, "question_id": 8, "question_group": 7}])
    pairs, _, _ = select_pairs(rows, PairOptions(**NO_EXTRA_RULES))
    assert pair_ids(pairs) == {(1, 2)} and pairs["question_id"].to_list() == [7]


def test_each_response_used_once_over_clusters_and_the_cap() -> None:
    # Answers 1 and 4 are cross-posts of one text (cluster 1) in two questions.
    rows = answers(
        [{"upvotes": 500, "answer_cluster": 1}, {"upvotes": 20}, {"upvotes": 30},
         {"upvotes": 400, "question_id": 2, "answer_cluster": 1, "answer_id": 4}, {"upvotes": 10, "question_id": 2, "answer_id": 5}]
        + [{"upvotes": 1000 - i, "question_id": 3, "answer_id": 10 + i} for i in range(6)]
        + [{"upvotes": 5 + i, "question_id": 3, "answer_id": 20 + i} for i in range(6)]
    )
    pairs, _, _ = select_pairs(rows, PairOptions(max_pairs_per_question=2, **NO_EXTRA_RULES))
    used = pl.concat([pairs["chosen_answer_id"], pairs["rejected_answer_id"]]).to_list()
    clusters = rows.filter(pl.col("answer_id").is_in(used))["answer_cluster"].to_list()
    assert len(clusters) == len(set(clusters)), "a response (cluster) appears twice"
    per_question = pairs.group_by("question_id").len()
    assert per_question["len"].max() <= 2


def _sequential_greedy(candidates: pl.DataFrame, cap: int) -> set[tuple[int, int]]:
    """The obvious one-at-a-time greedy, to check the vectorised rounds against."""
    ordered = candidates.sort(["confidence", "chosen_answer_id", "rejected_answer_id"], descending=[True, False, False])
    used, per_question, kept = set(), {}, set()
    for row in ordered.iter_rows(named=True):
        if row["chosen_cluster"] in used or row["rejected_cluster"] in used:
            continue
        if per_question.get(row["question_group"], 0) >= cap:
            continue
        used |= {row["chosen_cluster"], row["rejected_cluster"]}
        per_question[row["question_group"]] = per_question.get(row["question_group"], 0) + 1
        kept.add((row["chosen_answer_id"], row["rejected_answer_id"]))
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_matching_equals_sequential_greedy(seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for answer_id in range(1, 400):
        question = rng.randint(1, 40)
        rows.append({"answer_id": answer_id, "question_id": question, "upvotes": int(rng.paretovariate(1.0) * 5),
                     "answer_cluster": rng.choice([answer_id] * 9 + [rng.randint(1, 399)])})
    table = answers(rows)
    candidates = candidate_pairs(table.lazy()).collect().filter(pl.col("chosen_upvotes") > pl.col("rejected_upvotes"))
    candidates = candidates.filter(pl.col("chosen_cluster") != pl.col("rejected_cluster")).with_columns(
        confidence=wald(pl.col("chosen_upvotes"), pl.col("rejected_upvotes"))
    )
    for cap in (1, 3, 1000):
        assert pair_ids(select_one_use_per_response(candidates, cap)) == _sequential_greedy(candidates, cap)


def test_limit_keeps_the_most_confident_and_rows_add_up() -> None:
    rows = answers([{"upvotes": u, "question_id": q} for q in range(1, 30) for u in (5 * q, 1000 * q, 3)])
    everything, _, _ = select_pairs(rows, PairOptions(limit=0, min_chosen_upvotes=0))
    top, dropped, funnel = select_pairs(rows, PairOptions(limit=10, min_chosen_upvotes=0))
    assert top.height == 10
    assert top["confidence"].to_list() == sorted(everything["confidence"].to_list(), reverse=True)[:10]
    assert rows.height == 2 * top.height + sum(dropped.values())
    assert funnel[-1] == {"rule": "limit", "description": "the most confident pairs", "removed": everything.height - 10, "left": 10}
    lefts = [step["left"] for step in funnel]
    assert lefts == sorted(lefts, reverse=True)


def test_instruct_takes_best_answer_per_group_and_each_text_once() -> None:
    rows = answers(
        [
            {"upvotes": 50, "question_id": 1},
            {"upvotes": 90, "question_id": 1, "answer": "太短"},  # best, but fails the length filter
            {"upvotes": 70, "question_id": 2, "question_group": 1},  # re-asked question: same group
            {"upvotes": 300, "question_id": 3, "answer_cluster": 20, "answer_id": 10},  # cross-post, better copy
            {"upvotes": 200, "question_id": 4, "answer_cluster": 20, "answer_id": 20},
            {"upvotes": 100, "question_id": 4, "answer_id": 21},
            {"upvotes": 0, "question_id": 5, "answer_id": 30},
        ]
    )
    kept, dropped = select_instruct(rows, InstructOptions(limit=0))
    assert kept.select("question_id", "answer_id").rows() == [(3, 10), (4, 21), (2, 3)]
    assert dropped == {"answer_too_short": 1, "not_best_in_question": 1, "near_copy_of_a_better_answer": 1,
                       "below_min_upvotes": 1}
    limited, dropped_limited = select_instruct(rows, InstructOptions(limit=2))
    assert limited["answer_id"].to_list() == [10, 21] and dropped_limited["beyond_limit"] == 1


def test_split_is_by_question_group_and_stable() -> None:
    groups = pl.DataFrame({"question_group": [g for g in range(5000) for _ in range(3)], "x": range(15000)})
    train, test = split_by_question(groups, 0.05)
    assert set(train["question_group"]).isdisjoint(test["question_group"])
    assert train.height + test.height == groups.height
    assert 0.04 < test["question_group"].n_unique() / 5000 < 0.06
    # A fixed point of the hash, computed by hand: (((7 % M + 1) * 48271**3) % M) / M.
    m = 2_147_483_647
    expected = (8 * pow(48271, 3, m)) % m / m
    assert pl.select(unit_hash(pl.lit(7, pl.Int64))).item() == pytest.approx(expected, abs=1e-15)


def test_candidate_pairs_cover_every_two_answers_once() -> None:
    rows = answers([{"upvotes": u} for u in (1, 2, 3, 4)])
    got = {tuple(sorted(p)) for p in pair_ids(candidate_pairs(rows.lazy()).collect())}
    assert got == set(itertools.combinations(range(1, 5), 2))
