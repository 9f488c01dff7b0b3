"""The vote model (zhihu_rlhf.votes) on small worlds simulated here with known effects, its levels and options,
and p_chosen_better in the built pairs."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from zhihu_rlhf.build import BuildOptions, build, main
from zhihu_rlhf.errors import UserError
from zhihu_rlhf import schema
from zhihu_rlhf.votes import VoteModelOptions, estimate_quality, log_normal_cdf, normal_cdf, quality_lead

T0 = datetime(2021, 1, 1, tzinfo=UTC)


def planted_world(seed: int, questions: int = 2500, author_sd: float = 0.8, exposure: float = 0.4,
                  prolific_authors: int = 60, solo_share: float = 0.3) -> tuple[pl.DataFrame, dict]:
    """Canonical answers whose votes are Poisson(exp(question + quality + author + exposure + luck)), and the truth.

    Each question has 2-8 answers written over 60 days; exposure = -exposure * log1p(answers written before it).
    A share of answers comes from authors who write only that one answer; the rest from `prolific_authors`
    authors, each with a log reach ~ N(0, author_sd) shared by all their answers. Quality ~ N(0, 1), luck ~ N(0, 0.3).
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, questions)
    question = np.repeat(np.arange(questions), sizes)
    rows = len(question)
    days = rng.uniform(0, 60, rows)
    order = np.lexsort((days, question))
    rank = np.empty(rows, dtype=np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rank[order] = np.arange(rows) - np.repeat(starts, sizes)
    solo = rng.random(rows) < solo_share
    author = np.where(solo, prolific_authors + np.arange(rows), rng.integers(0, prolific_authors, rows))
    reach = np.where(solo, rng.normal(0, author_sd, rows), rng.normal(0, author_sd, prolific_authors)[np.minimum(author, prolific_authors - 1)])
    quality = rng.normal(0, 1, rows)
    exposure_term = -exposure * np.log1p(rank)
    log_rate = 2.0 + rng.normal(0, 1.0, questions)[question] + quality + reach + exposure_term + rng.normal(0, 0.3, rows)
    answers = pl.DataFrame({
        "question_id": question + 1,
        "answer_id": np.arange(rows) + 1,
        "upvotes": rng.poisson(np.exp(log_rate)),
        "created_at": [T0 + timedelta(days=float(d)) for d in days],
        "author_id": [f"author-{a}" for a in author],
        "source": "test",
    }).with_columns(question_group="question_id", answer_cluster="answer_id")
    truth = {"quality": quality, "reach": reach, "solo": solo, "exposure": exposure_term, "question": question}
    return answers, truth


def within_question_pairs(estimated: pl.DataFrame, quality: np.ndarray) -> pl.DataFrame:
    """Every two answers of a question: p_chosen_better (first over second) and whether the first is truly better."""
    frame = estimated.select("question_group", "answer_id", "estimated_quality", "quality_sd").with_columns(true=quality)
    first, second = (frame.rename(lambda c, side=side: c if c == "question_group" else side + c) for side in ("a_", "b_"))
    both = first.join(second, on="question_group").filter(pl.col("a_answer_id") < pl.col("b_answer_id"))
    return both.select(p=normal_cdf(quality_lead("a_", "b_")), right=pl.col("a_true") > pl.col("b_true"))


@pytest.fixture(scope="module")
def world() -> tuple[pl.DataFrame, dict, pl.DataFrame, dict]:
    answers, truth = planted_world(seed=1)
    estimated, fitted = estimate_quality(answers, VoteModelOptions(model="full", author_share=1.0))
    return answers, truth, estimated, fitted


def test_author_effects_are_recovered_from_other_answers(world) -> None:
    _, truth, estimated, fitted = world
    effect = estimated["author_effect"].to_numpy()
    prolific = ~truth["solo"]
    # Up to a constant (questions absorb the mean), the estimate follows the planted reach closely.
    error = (effect - truth["reach"])[prolific]
    assert np.abs(error - error.mean()).mean() < 0.1
    assert np.corrcoef(effect[prolific], truth["reach"][prolific])[0, 1] > 0.97
    assert fitted["author_effect_sd"] == pytest.approx(0.8, abs=0.2)


def test_single_answer_authors_get_no_correction(world) -> None:
    answers, truth, estimated, _ = world
    assert (estimated["author_effect"].to_numpy()[truth["solo"]] == 0).all()
    # A cross-post of the same text is not another answer: an author with two copies of one text stays uncorrected.
    copy = answers.head(2).with_columns(
        author_id=pl.lit("copyist"), answer_cluster=pl.lit(1, pl.Int64), question_group=pl.Series([1, 2], dtype=pl.Int64)
    )
    again, _ = estimate_quality(pl.concat([answers.filter(pl.col("answer_id") > 2), copy]), VoteModelOptions())
    assert again.filter(pl.col("author_id") == "copyist")["author_effect"].to_list() == [0.0, 0.0]
    # Neither are answers whose author is unknown.
    unknown, _ = estimate_quality(answers.with_columns(author_id=pl.lit(None, pl.String)), VoteModelOptions())
    assert (unknown["author_effect"] == 0).all()


def test_exposure_slope_is_recovered(world) -> None:
    _, truth, estimated, _ = world
    # The planted exposure is -0.4 log1p(rank); the fitted term, centred per question, must follow it.
    fitted = estimated["exposure_effect"].to_numpy()
    planted = pl.DataFrame({"q": truth["question"], "e": truth["exposure"]}).select(pl.col("e") - pl.col("e").mean().over("q"))
    assert np.abs(fitted - planted.to_series().to_numpy()).mean() < 0.05


def test_p_chosen_better_is_calibrated(world) -> None:
    _, truth, estimated, _ = world
    pairs = within_question_pairs(estimated, truth["quality"])
    bins = pairs.group_by((pl.col("p") * 10).floor().clip(0, 9).alias("bin")).agg(
        n=pl.len(), p=pl.col("p").mean(), right=pl.col("right").mean()
    )
    ece = float((bins["n"] * (bins["p"] - bins["right"]).abs()).sum() / bins["n"].sum())
    assert ece < 0.02
    confident = bins.filter(pl.col("n") >= 500)
    assert ((confident["p"] - confident["right"]).abs() < 0.04).all()


def test_levels_remove_what_they_name() -> None:
    answers, truth = planted_world(seed=2, questions=1500)
    rights = {}
    for model in ("raw", "exposure", "authors", "full"):
        estimated, fitted = estimate_quality(answers, VoteModelOptions(model=model, author_share=1.0))
        assert fitted["model"] == model
        assert (estimated["exposure_effect"].abs().max() > 0) == (model in ("exposure", "full"))
        assert (estimated["author_effect"].abs().max() > 0) == (model in ("authors", "full"))
        pairs = within_question_pairs(estimated, truth["quality"])
        rights[model] = ((pairs["p"] > 0.5) == pairs["right"]).mean()  # share of pairs the model orders right
    # Raw votes order answers within a question as their upvotes do.
    raw, _ = estimate_quality(answers, VoteModelOptions(model="raw"))
    by_votes = raw.sort("question_group", "upvotes").group_by("question_group", maintain_order=True).agg("estimated_quality")
    assert all(q == sorted(q) for q in by_votes["estimated_quality"].to_list())
    # Each adjustment orders more pairs right; both do best.
    assert rights["raw"] < rights["exposure"] < rights["full"] and rights["raw"] < rights["authors"] < rights["full"]


def test_author_share_scales_the_removed_author_effect(world) -> None:
    answers, truth, _, _ = world
    prolific = pl.Series(~truth["solo"])
    widest, narrowest = (answers.filter(prolific)["author_id"].gather(int(f(truth["reach"][~truth["solo"]]))) for f in (np.argmax, np.argmin))
    means = {}
    for share in (0.0, 0.5, 1.0):
        estimated, _ = estimate_quality(answers, VoteModelOptions(model="full", author_share=share))
        means[share] = [estimated.filter(pl.col("author_id") == a)["estimated_quality"].mean() for a in (widest, narrowest)]
    # The more of the author effect is removed, the less the widest-reaching author's answers are credited with.
    assert means[0.0][0] > means[0.5][0] > means[1.0][0]
    assert means[0.0][1] < means[0.5][1] < means[1.0][1]


def test_followers_are_a_measured_part_of_reach() -> None:
    # Every author answers once, so only follower counts can reveal reach; they are planted as its cause.
    answers, truth = planted_world(seed=3, questions=1500, solo_share=1.0)
    followers = np.round(np.exp(truth["reach"] / 0.5 + 5))
    with_followers = answers.with_columns(author_followers=pl.Series(followers.astype(np.int64)))
    estimated, fitted = estimate_quality(with_followers, VoteModelOptions(model="full", author_share=1.0))
    assert fitted["followers_slope"] == pytest.approx(0.5, abs=0.05)
    # Within each question (all the model compares), the author term follows the planted reach.
    centred = pl.DataFrame({"q": truth["question"], "reach": truth["reach"], "effect": estimated["author_effect"]}).select(
        pl.col("reach", "effect") - pl.col("reach", "effect").mean().over("q")
    )
    assert np.corrcoef(centred["effect"], centred["reach"])[0, 1] > 0.95


@pytest.mark.parametrize(("options", "message"), [
    (VoteModelOptions(model="votes"), "--vote-model"),  # type: ignore[arg-type]
    (VoteModelOptions(author_share=1.5), "--author-share"),
    (VoteModelOptions(luck_sd=-1), "--luck-sd"),
])
def test_bad_options_are_named(options: VoteModelOptions, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build("pairs", BuildOptions(source="sample", votes=options), log=lambda _: None)


def test_cli_vote_model_flags_reach_the_recipe(tmp_path: Path) -> None:
    assert main(["pairs", "--source", "sample", "--out", str(tmp_path / "raw"), "--vote-model", "raw", "--limit", "50"]) == 0
    params = json.loads((tmp_path / "raw" / "params.json").read_text())["params"]
    assert params["votes"] == {"model": "raw", "author_share": VoteModelOptions().author_share, "luck_sd": VoteModelOptions().luck_sd}
    stats = json.loads((tmp_path / "raw" / "stats.json").read_text())
    assert stats["vote_model"]["model"] == "raw" and stats["vote_model"]["exposure_slopes"] == {}


def test_built_pairs_carry_p_chosen_better_ranked_first(tmp_path: Path) -> None:
    formats = ["trl", "trl-chat", "llamafactory", "deepspeed-chat", "zhihu_rlhf_3k"]
    out = build("pairs", BuildOptions(source="sample", out=tmp_path, formats=formats), log=lambda _: None)["pairs"]
    carrying = 0
    for path in sorted([*out.rglob("*.parquet"), *(out / "formats").rglob("*.json")]):
        if path.suffix == ".parquet":
            columns = pl.read_parquet(path).columns
        else:  # a JSON array of rows, JSON lines, or an object (dataset_info.json)
            text = path.read_text(encoding="utf-8")
            first = json.loads(text) if text.lstrip().startswith(("[", "{\n")) else json.loads(text.splitlines()[0])
            columns = list(first[0]) if isinstance(first, list) else [] if path.name == "dataset_info.json" else list(first)
        if "upvote_ratio" in columns:  # every file that carries pair metadata carries the probability
            assert "p_chosen_better" in columns, path
            carrying += 1
    assert carrying >= 2  # at least the canonical train and test files
    train = pl.read_parquet(out / "data" / "train-00000-of-00001.parquet")
    assert train.columns == schema.names("pairs")
    assert train["p_chosen_better"].is_between(0, 1).all()
    assert (train["p_chosen_better"] > 0.5).mean() > 0.9
    card = (out / "README.md").read_text()
    assert "## Vote model" in card and "Mean `p_chosen_better`" in card and "plots/p_chosen_better.png" in card


def test_degenerate_tables_give_finite_estimates() -> None:
    answers, _ = planted_world(seed=4, questions=300)
    lone = answers.unique("question_group", keep="first", maintain_order=True)
    no_time = answers.with_columns(created_at=pl.lit(None, pl.Datetime("us", "UTC")))
    for table in (answers.head(0), lone, no_time, answers.with_columns(upvotes=0)):
        estimated, _ = estimate_quality(table, VoteModelOptions())
        assert estimated.height == table.height
        assert estimated.select(pl.col("estimated_quality", "quality_sd").is_finite().all()).row(0) in ((True, True), (None, None))
    # A lone answer has nothing to be compared with; no votes anywhere, nothing to learn.
    assert (estimate_quality(lone, VoteModelOptions())[0]["estimated_quality"].abs() < 1e-9).all()
    assert (estimate_quality(answers.with_columns(upvotes=0), VoteModelOptions())[0]["estimated_quality"] == 0).all()
    assert (estimate_quality(no_time, VoteModelOptions())[0]["exposure_effect"] == 0).all()


def test_log_normal_cdf_keeps_both_tails() -> None:
    z = [-30.0, -3.0, 0.0, 3.0, 9.0, 30.0]
    got = pl.DataFrame({"z": z}).select(log_normal_cdf(pl.col("z")))["z"].to_list()
    # log Phi(z) by hand: far down the left tail directly, in the right tail as log(1 - Phi(-z)) ~ -Phi(-z).
    expected = [math.log(0.5 * math.erfc(-v / math.sqrt(2))) if v <= 0 else math.log1p(-0.5 * math.erfc(v / math.sqrt(2))) for v in z]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[-2] < got[-1] < 0  # 9 and 30 sds still differ, where Phi rounds both to 1
