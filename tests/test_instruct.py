"""Which questions the instruct set keeps: the ones whose chosen answer is most surely the best of its question
(`p_best_in_question`), on hand-made estimates and on a planted world where raw upvotes would pick the wrong ones.
The basic selection rules (length, clusters, one per group) are in test_pairs.py."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.instruct import InstructOptions, select_instruct
from zhihu_rlhf.sources import ANSWER_CHARS
from zhihu_rlhf.votes import VoteModelOptions, estimate_quality

T0 = datetime(2022, 1, 1, tzinfo=UTC)
TEXT = "这是一个足够长的回答，用来通过长度过滤。" * 3


def phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def estimated(rows: list[dict]) -> pl.DataFrame:
    """Answer rows with their quality estimates given directly (sd 0.5 unless set); other fields neutral."""
    return pl.DataFrame(
        [
            {
                "question_id": row["question"],
                "answer_id": i + 1,
                "question": f"问题{row['question']}？",
                "answer": row.get("answer", f"{TEXT}#{i + 1}"),
                "upvotes": row.get("upvotes", 10),
                "created_at": T0,
                "author_id": None,
                "question_group": row["question"],
                "answer_cluster": row.get("cluster", i + 1),
                "estimated_quality": row["quality"],
                "quality_sd": row.get("sd", 0.5),
                "quality_share_shift": 0.0,
            }
            for i, row in enumerate(rows)
        ],
        schema_overrides={"created_at": pl.Datetime("us", "UTC"), "author_id": pl.String},
    ).with_columns(ANSWER_CHARS)


def test_p_best_is_the_product_over_the_competitors_and_orders_the_set() -> None:
    lead = 2 / math.sqrt(0.5**2 + 0.5**2)  # 2.83 sds: chosen at 2, a rival at 0, both sd 0.5
    rows = estimated(
        [
            {"question": 1, "quality": 2.0}, {"question": 1, "quality": 0.0},
            # ten rivals as far behind as question 1's one: ten chances to be wrong
            {"question": 2, "quality": 2.0}, *({"question": 2, "quality": 0.0} for _ in range(10)),
            {"question": 3, "quality": 2.0, "upvotes": 500},  # alone
            # a copy of the chosen text (same cluster) is no rival
            {"question": 4, "quality": 2.0, "upvotes": 9, "cluster": 100}, {"question": 4, "quality": 2.0, "upvotes": 8, "cluster": 100},
            {"question": 4, "quality": 0.0},
            # a rival nobody upvoted cannot be chosen, but it still competes
            {"question": 5, "quality": 2.0}, {"question": 5, "quality": 1.5, "upvotes": 0},
            # a rival too short for the set does not compete: the chosen answer is alone
            {"question": 6, "quality": 2.0, "upvotes": 40}, {"question": 6, "quality": 5.0, "answer": "短"},
        ]
    )
    kept, _ = select_instruct(rows, InstructOptions(limit=0))
    p = dict(zip(kept["question_id"], kept["p_best_in_question"], strict=True))
    assert p[1] == pytest.approx(phi(lead), rel=1e-9)
    assert p[2] == pytest.approx(phi(lead) ** 10, rel=1e-9)
    assert p[4] == pytest.approx(phi(lead), rel=1e-9)
    assert p[5] == pytest.approx(phi(0.5 / math.sqrt(0.5)), rel=1e-9)
    assert p[3] is None and p[6] is None
    # Surest first (1 and 4 tie: more upvotes first); questions with nothing to compare last, most-upvoted first.
    assert kept["question_id"].to_list() == [1, 4, 2, 5, 3, 6]


def test_leads_far_beyond_float_precision_still_order_questions() -> None:
    # Phi(10 sds) and Phi(20 sds) are both 1.0 in floats; the set must still keep the 20-sd lead first.
    rows = estimated([
        {"question": 1, "quality": 10 * math.sqrt(0.5), "upvotes": 900}, {"question": 1, "quality": 0.0},
        {"question": 2, "quality": 20 * math.sqrt(0.5), "upvotes": 5}, {"question": 2, "quality": 0.0},
    ])
    kept, dropped = select_instruct(rows, InstructOptions(limit=1))
    assert kept["question_id"].to_list() == [2]
    assert dropped["beyond_limit"] == 1


def planted_world(seed: int, clear: int = 300, close: int = 300) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Canonical answers whose votes are Poisson(exp(question + quality + luck)); (answers, truth, clear questions).

    `clear` quiet questions (3 answers, ~3 votes a rival, ~30 the best) where one answer is 2.5 above the others; `close` busy
    questions (8 answers, ~90 votes each) whose answers differ by little, so their top answer has the most votes
    of all and is a coin flip. Ranking by upvotes takes the busy ones first.
    """
    rng = np.random.default_rng(seed)
    sizes = np.r_[np.full(clear, 3), np.full(close, 8)]
    question = np.repeat(np.arange(clear + close), sizes)
    is_clear = question < clear
    first = np.r_[True, question[1:] != question[:-1]]
    quality = np.where(is_clear, rng.normal(0, 0.3, len(question)) + 2.5 * first, rng.normal(0, 0.1, len(question)))
    popularity = np.where(is_clear, 1.0, 4.5)
    votes = rng.poisson(np.exp(popularity + quality + rng.normal(0, 0.3, len(question))))
    answers = pl.DataFrame({
        "question_id": question + 1,
        "answer_id": np.arange(len(question)) + 1,
        "question": [f"问题{q}？" for q in question],
        "answer": [f"{TEXT}#{i}" for i in range(len(question))],
        "upvotes": votes,
        "created_at": [T0 + timedelta(days=float(d)) for d in rng.uniform(0, 30, len(question))],
        "author_id": None,
        "source": "test",
    }, schema_overrides={"author_id": pl.String}).with_columns(ANSWER_CHARS, question_group="question_id",
                                                              answer_cluster="answer_id")
    truth = pl.DataFrame({"answer_id": answers["answer_id"], "quality": quality, "question_group": answers["question_group"]})
    return answers, truth, pl.DataFrame({"question_group": np.arange(clear) + 1})


def truly_best_share(kept: pl.DataFrame, truth: pl.DataFrame) -> float:
    best = truth.group_by("question_group").agg(best=pl.col("quality").max())
    scored = kept.select("question_group", "answer_id").join(truth.drop("question_group"), on="answer_id").join(best, on="question_group")
    return float((scored["quality"] >= scored["best"]).mean())


@pytest.mark.parametrize("seed", [1, 2])
def test_clear_questions_come_before_busy_coin_flips(seed: int) -> None:
    answers, truth, clear = planted_world(seed)
    quality, _ = estimate_quality(answers, VoteModelOptions())
    kept, dropped = select_instruct(quality, InstructOptions(limit=clear.height))
    everything, _ = select_instruct(quality, InstructOptions(limit=0))
    assert kept["question_group"].is_in(clear["question_group"].implode()).mean() > 0.95
    assert truly_best_share(kept, truth) > 0.95
    # What ranking by the chosen answer's upvotes would have kept: the busy questions, a coin flip among 8.
    by_upvotes = everything.sort("upvotes", descending=True).head(clear.height)
    assert by_upvotes["question_group"].is_in(clear["question_group"].implode()).mean() < 0.05
    assert truly_best_share(by_upvotes, truth) < 0.5
    # Every input row is kept or counted, the questions past the limit included.
    assert answers.height == kept.height + sum(dropped.values())
    assert dropped["beyond_limit"] == everything.height - clear.height


def test_instruct_stats_and_card_report_the_ranking(tmp_path: Path) -> None:
    out = build("instruct", BuildOptions(source="sample", out=tmp_path), log=lambda _: None)["instruct"]
    stats = json.loads((out / "stats.json").read_text())
    ranking = stats["instruct_ranking"]
    assert ranking["questions_compared"] + ranking["questions_with_one_answer"] == stats["rows_kept"]
    assert ranking["questions_compared"] > 0 and 0.5 < ranking["mean_p_best_in_question"] <= 1
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"their mean\n`p_best_in_question` is **{ranking['mean_p_best_in_question']:.3f}**" in card
    # The published files keep their columns: the probability is a ranking key, reported in stats and the card.
    assert "p_best_in_question" not in pl.read_parquet(out / "data" / "train-00000-of-00001.parquet").columns
