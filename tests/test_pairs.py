"""Each pair rule, the ranking, the one-use matching, and the instruct selection (the vote model: test_votes.py)."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest

from zhihu_rlhf import pairs as pairs_module
from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, select_instruct
from zhihu_rlhf.pairs import LONGEST_GAP_US, PairOptions, length_skew, one_use_greedy, select_pairs
from zhihu_rlhf.sources import ANSWER_CHARS
from zhihu_rlhf.split import split_by_question, unit_hash
from zhihu_rlhf.votes import QUALITY_COLUMNS, quality_lead

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
        ANSWER_CHARS, estimated_quality=(pl.col("upvotes") + 1).log(), quality_sd=(pl.col("upvotes") + 1).pow(-0.5), quality_share_shift=0.0
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


def test_length_ratio_rule_bounds_the_length_gap_either_way() -> None:
    rows = answers([{"upvotes": 100, "answer": "长" * 300}, {"upvotes": 10, "answer": "短" * 100},
                    {"upvotes": 40, "question_id": 2, "answer": "短" * 100}, {"upvotes": 5, "question_id": 2, "answer": "中" * 250},
                    {"upvotes": 40, "question_id": 3, "answer": "短" * 100}, {"upvotes": 5, "question_id": 3, "answer": "中" * 190}])
    off, _, funnel = select_pairs(rows, PairOptions(**NO_EXTRA_RULES))
    assert pair_ids(off) == {(1, 2), (3, 4), (5, 6)} and "length_ratio" not in [step["rule"] for step in funnel]
    # Chosen 3x as long (question 1) and rejected 2.5x as long (question 2) are over a bound of 2; 1.9x is not.
    bounded, _, funnel = select_pairs(rows, PairOptions(max_length_ratio=2.0, **NO_EXTRA_RULES))
    assert pair_ids(bounded) == {(5, 6)}
    step = next(step for step in funnel if step["rule"] == "length_ratio")
    assert step["removed"] == 2 and step["description"] == "neither answer is more than 2x as long as the other"
    assert pair_ids(select_pairs(rows, PairOptions(max_length_ratio=3.0, **NO_EXTRA_RULES))[0]) == {(1, 2), (3, 4), (5, 6)}


@pytest.mark.parametrize("bound", [0.5, float("nan")])
def test_a_length_ratio_bound_below_one_is_refused(bound: float) -> None:
    with pytest.raises(UserError, match="--max-length-ratio"):
        BuildOptions(pairs=PairOptions(max_length_ratio=bound)).validate()


def test_build_refuses_a_bad_length_bound_before_reading_the_source(tmp_path) -> None:
    options = BuildOptions(source=str(tmp_path / "missing.parquet"), out=tmp_path / "out", pairs=PairOptions(max_length_ratio=0.9))
    with pytest.raises(UserError, match="--max-length-ratio must be at least 1"):
        build("pairs", options, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_length_skew_of_pairs() -> None:
    pairs = pl.DataFrame({"chosen": ["aaaa", "a", "aaaaaa"], "rejected": ["aa", "aa", "aa"]})
    assert length_skew(pairs) == {"chosen_longer_share": pytest.approx(2 / 3, abs=1e-4), "median_length_ratio": 2.0,
                                  "chosen_median_chars": 4.0, "rejected_median_chars": 2.0}
    assert length_skew(pairs.head(0))["chosen_longer_share"] is None


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


def every_pair(table: pl.LazyFrame) -> pl.LazyFrame:
    """Every two answers of one question group, `chosen` = more upvotes: the exhaustive construction."""
    slim = table.select("question_group", "answer_id", "answer_cluster", "upvotes", "created_at", *QUALITY_COLUMNS,
                        chars=pl.col("answer").str.len_chars())
    both = slim.join(slim, on="question_group", suffix="_b").filter(pl.col("answer_id") < pl.col("answer_id_b"))
    a_wins = pl.col("upvotes") >= pl.col("upvotes_b")
    columns = {}
    fields = [("answer_id", "answer_id"), ("answer_cluster", "cluster"), ("upvotes", "upvotes"), ("created_at", "created_at"),
              ("chars", "chars")]
    for field, name in fields + [(column, column) for column in QUALITY_COLUMNS]:
        columns[f"chosen_{name}"] = pl.when(a_wins).then(pl.col(field)).otherwise(pl.col(f"{field}_b"))
        columns[f"rejected_{name}"] = pl.when(a_wins).then(pl.col(f"{field}_b")).otherwise(pl.col(field))
    return both.select("question_group", **columns)


def _sequential_greedy(candidates: pl.DataFrame, cap: int) -> list[tuple[int, int]]:
    """The obvious one-at-a-time greedy, best first, to check the vectorised rounds against."""
    ordered = candidates.sort(["confidence", "chosen_answer_id", "rejected_answer_id"], descending=[True, False, False])
    used, per_question, kept = set(), {}, []
    for group, chosen, rejected, chosen_cluster, rejected_cluster in ordered.select(
        "question_group", "chosen_answer_id", "rejected_answer_id", "chosen_cluster", "rejected_cluster"
    ).iter_rows():
        if chosen_cluster in used or rejected_cluster in used or per_question.get(group, 0) >= cap:
            continue
        used |= {chosen_cluster, rejected_cluster}
        per_question[group] = per_question.get(group, 0) + 1
        kept.append((chosen, rejected))
    return kept


def vectorised_greedy(candidates: pl.DataFrame, cap: int) -> list[tuple[int, int]]:
    """one_use_greedy over a candidate frame: rank it, code its clusters and questions."""
    ranked = candidates.sort(["confidence", "chosen_answer_id", "rejected_answer_id"], descending=[True, False, False])
    clusters = pl.concat([ranked["chosen_cluster"], ranked["rejected_cluster"]]).rank("dense").to_numpy() - 1
    question = ranked["question_group"].rank("dense").to_numpy() - 1
    accepted = one_use_greedy(clusters[: ranked.height], clusters[ranked.height :], question, cap)
    return list(ranked.filter(pl.Series(accepted)).select("chosen_answer_id", "rejected_answer_id").iter_rows())


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_matching_equals_sequential_greedy(seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for answer_id in range(1, 400):
        question = rng.randint(1, 40)
        rows.append({"answer_id": answer_id, "question_id": question, "upvotes": int(rng.paretovariate(1.0) * 5),
                     "answer_cluster": rng.choice([answer_id] * 9 + [rng.randint(1, 399)])})
    table = answers(rows)
    candidates = every_pair(table.lazy()).collect().filter(pl.col("chosen_upvotes") > pl.col("rejected_upvotes"))
    candidates = candidates.filter(pl.col("chosen_cluster") != pl.col("rejected_cluster")).with_columns(
        confidence=wald(pl.col("chosen_upvotes"), pl.col("rejected_upvotes"))
    )
    for cap in (1, 3, 1000):
        assert vectorised_greedy(candidates, cap) == _sequential_greedy(candidates, cap)


def test_a_pair_waiting_on_another_question_keeps_its_place_under_the_cap() -> None:
    # Best first, cap 1. a takes cluster 7, so x (question 2) is refused, which frees y: y is question 1's
    # pair, not d, although d was free from the start and y had to wait for x.
    a, x, y, d = (3, 6, 7), (2, 7, 2), (1, 2, 3), (1, 4, 5)
    question, chosen, rejected = (np.array(column) for column in zip(a, x, y, d, strict=True))
    assert one_use_greedy(chosen, rejected, question, cap=1).tolist() == [True, False, True, False]


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
    # Surest first (tests/test_instruct.py): 70 over 50 votes; 100 votes under a 200-vote copy of the answer used
    # for question 3, which still competes in question 4; question 3's lone answer, compared with nothing, last.
    assert kept.select("question_id", "answer_id").rows() == [(2, 3), (4, 21), (3, 10)]
    assert dropped == {"answer_too_short": 1, "not_best_in_question": 1, "near_copy_of_a_better_answer": 1,
                       "below_min_upvotes": 1}
    limited, dropped_limited = select_instruct(rows, InstructOptions(limit=2))
    assert limited["answer_id"].to_list() == [3, 21] and dropped_limited["beyond_limit"] == 1


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


# ---------------------------------------------------------------------------------------------------------------
# The band join and the per-question budgets against the exhaustive construction
# ---------------------------------------------------------------------------------------------------------------


def exhaustive_selection(table: pl.DataFrame, opts: PairOptions) -> tuple[list[tuple[int, int]], list[int]]:
    """The rules written out over every pair: (selected (chosen, rejected) ids best first, funnel 'left' counts)."""
    length, lengths = pl.col("answer").str.len_chars(), LengthFilter()
    usable = table.lazy().filter(length.is_between(lengths.min_answer_chars, lengths.max_answer_chars))
    days_apart = (pl.col("chosen_created_at") - pl.col("rejected_created_at")).dt.total_seconds().abs() / 86_400
    rules = [
        pl.col("chosen_upvotes") > pl.col("rejected_upvotes"),
        pl.col("chosen_cluster") != pl.col("rejected_cluster"),
        days_apart <= opts.max_days_apart,  # null (a missing time) fails
    ]
    if opts.chosen_not_earlier:
        rules.append(pl.col("chosen_created_at") >= pl.col("rejected_created_at"))
    rules += [pl.col("chosen_upvotes") >= opts.min_chosen_upvotes, pl.col("chosen_upvotes") >= opts.min_ratio * pl.col("rejected_upvotes")]
    if opts.max_length_ratio < math.inf:
        rules.append((pl.col("chosen_chars") <= opts.max_length_ratio * pl.col("rejected_chars"))
                     & (pl.col("rejected_chars") <= opts.max_length_ratio * pl.col("chosen_chars")))
    rules = [rule.fill_null(False) for rule in rules]
    candidates = every_pair(usable)
    lefts = candidates.select(
        pl.len().alias("all"), *(pl.all_horizontal(rules[: i + 1]).sum().alias(str(i)) for i in range(len(rules)))
    ).collect(engine="streaming").row(0)
    passed = candidates.filter(*rules).with_columns(confidence=quality_lead("chosen_", "rejected_")).collect(engine="streaming")
    chosen_once = _sequential_greedy(passed, opts.max_pairs_per_question)
    # A pair the model is not sure enough of is never a candidate: the matching runs without it. The funnel counts
    # the pairs it would have published among those matched over every candidate.
    sure = passed.filter(pl.col("confidence") >= NormalDist().inv_cdf(opts.min_p_chosen_better))
    sure_once = _sequential_greedy(sure, opts.max_pairs_per_question)
    kept = sure_once[: opts.limit] if opts.limit else sure_once
    return kept, [*lefts, len(chosen_once), len(sure_once), len(kept)]


def hot_world(seed: int) -> pl.DataFrame:
    """Three questions with 3,000 answers each over a year, and 400 small ones (2-40 answers).

    The vote model's quality columns are votes plus noise, with sds of their own, so the rank differs
    from the vote order (a pair with the bigger vote lead is not always the surer one).

    Votes heavy-tailed with many ties; near-duplicate clusters inside questions and across them
    (cross-posts); ~5% of answers without a creation time; times on whole days (so many pairs are
    exactly at the window's edge) or anywhere to the microsecond; a few answers too short to use.
    """
    rng = np.random.default_rng(seed)
    sizes = np.r_[[3_000] * 3, rng.integers(2, 41, 400)]
    group = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    n = len(group)
    answer_id = rng.permutation(n) + 1
    whole_days = rng.integers(0, 365, n) * 86_400_000_000
    anywhere = rng.integers(0, 365 * 86_400_000_000, n)
    created = np.where(rng.random(n) < 0.5, whole_days, anywhere) + 1_640_995_200_000_000  # 2022-01-01
    upvotes = np.floor(rng.pareto(0.8, n) * 4).astype(np.int64)
    cluster = answer_id.copy()
    copies = rng.random(n) < 0.1  # a copy of another answer: mostly of its own question, sometimes anywhere
    same_question = np.minimum(np.arange(n) + rng.integers(1, 4, n), n - 1)
    anywhere_else = rng.integers(0, n, n)
    source = np.where(rng.random(n) < 0.8, same_question, anywhere_else)
    cluster[copies] = cluster[source[copies]]
    table = pl.DataFrame(
        {
            "question_id": group, "answer_id": answer_id, "question": [f"问题{g}？" for g in group],
            "answer": np.where(rng.random(n) < 0.01, "太短", [TEXT * k for k in rng.integers(1, 7, n)]), "upvotes": upvotes,
            "created_at": pl.Series(created).cast(pl.Datetime("us", "UTC")), "author_id": pl.Series([None] * n, dtype=pl.String),
            "source": "test", "question_group": group, "answer_cluster": cluster,
        }
    )
    return table.with_columns(
        ANSWER_CHARS,
        created_at=pl.when(pl.lit(rng.random(n) < 0.05)).then(None).otherwise("created_at"),
        estimated_quality=np.log1p(upvotes) + rng.normal(0, 0.5, n),
        quality_sd=rng.uniform(0.1, 1.0, n),
        quality_share_shift=rng.normal(0.0, 0.2, n),  # the author share's spread enters the rank key too
    )


def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small batches and pruning after each: the big questions (~300k candidates each, budget 33k)
    are cut to their budgets while their pairs are made."""
    monkeypatch.setattr(pairs_module, "PAIRS_PER_BATCH", 20_000)
    monkeypatch.setattr(pairs_module, "PRUNE_ABOVE", 5_000)


def one_candidate_per_question(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first budget of one candidate per question: every question with more must be widened again and
    again before the matching is exact."""
    monkeypatch.setattr(pairs_module, "candidate_budget", lambda in_order, cap: np.ones(in_order["group"].max() + 1, np.int64))


@pytest.mark.parametrize(("seed", "chosen_not_earlier", "max_length_ratio"), [(0, False, math.inf), (1, True, math.inf), (2, False, 2.0), (3, True, 3.0)])
def test_band_join_and_budgets_equal_the_exhaustive_rules(seed: int, chosen_not_earlier: bool, max_length_ratio: float, monkeypatch: pytest.MonkeyPatch) -> None:
    table = hot_world(seed)
    options = PairOptions(chosen_not_earlier=chosen_not_earlier, max_days_apart=30, limit=0, max_length_ratio=max_length_ratio)
    expected, expected_lefts = exhaustive_selection(table, options)
    assert len(expected) > 300 and expected_lefts[3] > 1_000_000  # the big questions give millions of pairs
    assert expected_lefts[-3] > expected_lefts[-2]  # some matched pairs are ones the model doubts

    def check(limit: int) -> pl.DataFrame:
        got, _, funnel = select_pairs(table, dataclasses.replace(options, limit=limit))
        assert list(zip(got["chosen_answer_id"], got["rejected_answer_id"], strict=True)) == (expected[:limit] if limit else expected)
        assert [step["left"] for step in funnel] == expected_lefts[:-1] + [len(expected[:limit]) if limit else len(expected)]
        return got

    everything = check(limit=0)
    assert everything.group_by("question_group").len()["len"].max() == options.max_pairs_per_question  # big questions fill their cap
    check(limit=40)
    small_batches(monkeypatch)
    check(limit=0)
    one_candidate_per_question(monkeypatch)
    check(limit=0)


def test_answers_without_a_creation_time_are_counted_not_paired() -> None:
    rows = answers([{"upvotes": 100, "day": 0}, {"upvotes": 10, "day": 3}, {"upvotes": 1, "day": None},
                    {"upvotes": 500, "day": None}, {"upvotes": 7, "question_id": 2, "day": None}])
    pairs, dropped, funnel = select_pairs(rows, PairOptions(**NO_EXTRA_RULES))
    assert pair_ids(pairs) == {(1, 2)}
    # The answer alone in its question says so first; the two others of question 1 cannot be in a timed pair.
    assert dropped == {"only_answer_to_its_question": 1, "no_creation_time": 2}
    time_step = next(step for step in funnel if step["rule"] == "created_close_in_time")
    assert time_step["removed"] == 5  # of the 6 pairs of question 1 (no ties, no near-copies) only (1, 2) has both times


def test_an_unbounded_window_pairs_answers_without_times_too() -> None:
    rows = answers([{"upvotes": 100, "day": None}, {"upvotes": 10, "day": 900}])
    unbounded, dropped, _ = select_pairs(rows, PairOptions(max_days_apart=math.inf, **NO_EXTRA_RULES))
    assert pair_ids(unbounded) == {(1, 2)} and dropped == {}
    bounded, dropped, _ = select_pairs(rows, PairOptions(max_days_apart=1e6, **NO_EXTRA_RULES))
    assert bounded.height == 0 and dropped == {"no_creation_time": 1, "not_in_a_selected_pair": 1}


# 1.0675e8 days: the bound is just under the longest int64 gap; LONGEST_GAP_US // 10**6 / 86_400 days: it would be
# past it (and is cut to it); 1.0676e8: no bound.
@pytest.mark.parametrize("days", [0.0, 1e-9, 0.1, 1 / 3, 14.0, 29.999999, 30.0, 365.25, 1e6, 1.0675e8,
                                  LONGEST_GAP_US // 10**6 / 86_400, 1.0676e8, 1e10, math.inf])
def test_the_time_rule_as_a_bound_on_the_gap_passes_what_the_rule_in_days_passes(days: float) -> None:
    # The rule as stats.json has always counted it: whole seconds apart (truncated), over 86,400, at most `days`.
    def in_days(gap_us: np.ndarray) -> np.ndarray:
        return gap_us // 1_000_000 / 86_400 <= days

    bound = pairs_module._longest_gap_us(days)
    rng = np.random.default_rng(0)
    gaps = rng.integers(0, 2**62, 100_000)
    if bound is None:  # every gap passes, the longest microseconds can hold included
        assert in_days(np.r_[gaps, LONGEST_GAP_US]).all()
        return
    # whole seconds around the bound, each microsecond
    edge = np.arange(max(bound - 3_000_000, 0), min(bound + 3_000_000, LONGEST_GAP_US))
    gaps = np.r_[gaps, edge, rng.integers(0, min(bound + 2, LONGEST_GAP_US), 100_000), LONGEST_GAP_US]
    assert in_days(np.array([bound])).all()
    if bound < LONGEST_GAP_US:
        assert not in_days(np.array([bound + 1])).any()
    np.testing.assert_array_equal(gaps <= bound, in_days(gaps))


@pytest.mark.parametrize("days", [float("nan"), -1.0])
def test_a_window_that_is_not_a_number_of_days_is_refused(days: float) -> None:
    with pytest.raises(UserError, match="--max-days-apart"):
        BuildOptions(pairs=PairOptions(max_days_apart=days)).validate()


def test_pairs_the_vote_model_doubts_are_never_published() -> None:
    # Three questions, one pair each: the model is sure of question 1's, barely sure of question 2's, and thinks
    # question 3's rejected answer is the better one (its chosen author's reach explains the votes, say).
    rows = answers([{"upvotes": 200, "question_id": q} if i == 0 else {"upvotes": 20, "question_id": q}
                    for q in (1, 2, 3) for i in range(2)])
    lead = {1: 3.0, 2: 0.2, 3: -0.3}  # chosen's quality minus rejected's, in units of quality_sd = 1/sqrt(2)
    rows = rows.with_columns(
        quality_sd=pl.lit(0.5**0.5),
        estimated_quality=pl.when(pl.col("upvotes") == 200).then(pl.col("question_id").replace_strict(lead)).otherwise(0.0),
    )
    p = {q: NormalDist().cdf(z) for q, z in lead.items()}  # sd of the lead: sqrt(1/2 + 1/2) = 1
    assert p[3] < 0.5 < p[2] < 0.9 < p[1]

    for threshold, questions in ((0.5, [1, 2]), (0.9, [1]), (0.0, [1, 2, 3])):
        pairs, dropped, funnel = select_pairs(rows, PairOptions(min_p_chosen_better=threshold, **NO_EXTRA_RULES))
        assert pairs["question_id"].to_list() == questions, threshold
        assert pairs["p_chosen_better"].to_list() == pytest.approx([p[q] for q in questions])
        step = next(step for step in funnel if step["rule"] == "min_p_chosen_better")
        assert (step["removed"], step["left"]) == (3 - len(questions), len(questions))
        assert funnel[-1]["left"] == pairs.height
        assert dropped.get("not_in_a_selected_pair", 0) == 2 * (3 - len(questions))
    assert PairOptions().min_p_chosen_better == 0.5


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5])
def test_a_min_p_chosen_better_that_is_not_a_probability_is_refused(threshold: float) -> None:
    with pytest.raises(UserError, match="--min-p-chosen-better must be a probability"):
        BuildOptions(pairs=PairOptions(min_p_chosen_better=threshold)).validate()
