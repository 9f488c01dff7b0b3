"""The vote model (zhihu_rlhf.votes) on small worlds simulated here with known effects, its levels and options,
and p_chosen_better in the built pairs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from zhihu_rlhf import synth
from zhihu_rlhf.build import BuildOptions, build, main
from zhihu_rlhf.dedupe import DedupeOptions
from zhihu_rlhf.errors import UserError
from zhihu_rlhf import schema
from zhihu_rlhf.pairs import PairOptions, length_skew, select_pairs
from zhihu_rlhf.pipelines.answers import prepare_answers
from zhihu_rlhf.sources import ANSWER_CHARS
from zhihu_rlhf.votes import (
    FALLBACK_LUCK_SD,
    MIN_LUCK_COPY_PAIRS,
    QUALITY_COLUMNS,
    VoteModelOptions,
    estimate_quality,
    log_normal_cdf,
    normal_cdf,
    quality_lead,
)

T0 = datetime(2021, 1, 1, tzinfo=UTC)


def planted_world(seed: int, questions: int = 2500, author_sd: float = 0.8, exposure: float = 0.4,
                  prolific_authors: int = 60, solo_share: float = 0.3, length_effect: float = 0.0,
                  quality_length: float = 0.0) -> tuple[pl.DataFrame, dict]:
    """Canonical answers whose votes are Poisson(exp(question + quality + author + exposure + length + luck)), and the
    truth.

    Each question has 2-8 answers written over 60 days; exposure = -exposure * log1p(answers written before it).
    A share of answers comes from authors who write only that one answer; the rest from `prolific_authors`
    authors, each with a log reach ~ N(0, author_sd) shared by all their answers. Quality ~ N(0, 1), luck ~ N(0, 0.3).
    Answer texts are log(chars) ~ log 300 + quality_length * quality + N(0, 0.8) long; the length term is
    length_effect * log(chars).
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
    chars = np.maximum(np.round(np.exp(np.log(300) + quality_length * quality + rng.normal(0, 0.8, rows))), 1).astype(np.int64)
    log_rate = log_rate + length_effect * np.log(chars)
    answers = pl.DataFrame({
        "question_id": question + 1,
        "answer_id": np.arange(rows) + 1,
        "upvotes": rng.poisson(np.exp(log_rate)),
        "created_at": [T0 + timedelta(days=float(d)) for d in days],
        "author_id": [f"author-{a}" for a in author],
        "source": "test",
        "answer": ["字" * c for c in chars],
    }).with_columns(ANSWER_CHARS, question_group="question_id", answer_cluster="answer_id")
    truth = {"quality": quality, "reach": reach, "solo": solo, "exposure": exposure_term, "question": question,
             "log_chars": np.log(chars)}
    return answers, truth


def within_question_pairs(estimated: pl.DataFrame, quality: np.ndarray) -> pl.DataFrame:
    """Every two answers of a question: p_chosen_better (first over second) and whether the first is truly better."""
    frame = estimated.select("question_group", "answer_id", *QUALITY_COLUMNS).with_columns(true=quality)
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


def world_with_copies(seed: int, luck_sd: float, copies: int, questions: int = 1500) -> pl.DataFrame:
    """Questions of 3-8 answers by 150 authors (log reach ~ N(0, 0.5)); `copies` answers are posted once more into
    their own question: one text (cluster), author and quality, but their own time, place and luck ~ N(0, luck_sd)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 9, questions)
    question = np.repeat(np.arange(questions), sizes)
    quality, author = rng.normal(0, 1, len(question)), rng.integers(0, 150, len(question))
    source = rng.choice(len(question), copies, replace=False)
    cluster = np.concatenate([np.arange(len(question)), source])
    question, quality, author = (np.concatenate([a, a[source]]) for a in (question, quality, author))
    days = rng.uniform(0, 60, len(question))
    rank = pl.DataFrame({"q": question, "d": days}).select(pl.col("d").rank("ordinal").over("q") - 1).to_series().to_numpy()
    log_rate = (3.0 + rng.normal(0, 1, questions)[question] + quality + rng.normal(0, 0.5, 150)[author]
                - 0.3 * np.log1p(rank) + rng.normal(0, luck_sd, len(question)))
    return pl.DataFrame({
        "question_id": question + 1,
        "answer_id": np.arange(len(question)) + 1,
        "upvotes": rng.poisson(np.exp(log_rate)),
        "created_at": [T0 + timedelta(days=float(d)) for d in days],
        "author_id": [f"author-{a}" for a in author],
        "source": "test",
        "answer_cluster": cluster + 1,
    }).with_columns(question_group="question_id")


@pytest.mark.parametrize("luck_sd", [0.3, 0.6])
def test_luck_sd_auto_recovers_the_planted_luck_from_copies(luck_sd: float) -> None:
    answers = world_with_copies(seed=7, luck_sd=luck_sd, copies=800)
    _, fitted = estimate_quality(answers, VoteModelOptions())
    assert fitted["luck_sd_from"] == "copies" and fitted["luck_copy_pairs"] >= 700
    assert fitted["luck_sd"] == pytest.approx(luck_sd, abs=0.06)
    # A number is taken as given, and the copies' measurement is still reported.
    _, given = estimate_quality(answers, VoteModelOptions(luck_sd=0.45))
    assert given["luck_sd"] == 0.45 and given["luck_sd_from"] == "assumed"
    assert given["luck_sd_measured"] == pytest.approx(fitted["luck_sd"], abs=0.02)


def test_luck_sd_auto_falls_back_where_copies_are_too_few() -> None:
    answers = world_with_copies(seed=8, luck_sd=0.6, copies=MIN_LUCK_COPY_PAIRS // 2)
    _, fitted = estimate_quality(answers, VoteModelOptions())
    assert fitted["luck_sd_from"] == "fallback" and fitted["luck_sd"] == FALLBACK_LUCK_SD
    assert 0 < fitted["luck_copy_pairs"] < MIN_LUCK_COPY_PAIRS


def test_an_unknown_author_share_moves_leads_that_hinge_on_reach_toward_one_half(world) -> None:
    answers, truth, _, _ = world
    known, _ = estimate_quality(answers, VoteModelOptions(author_share=0.5))
    unknown, _ = estimate_quality(answers, VoteModelOptions(author_share=(0.0, 1.0)))
    # The estimates are those of the range's middle; only the probabilities change.
    assert np.allclose(known["estimated_quality"], unknown["estimated_quality"])
    assert (known["quality_share_shift"] == 0).all() and (unknown["quality_share_shift"].abs() > 0).mean() > 0.5

    def leads(estimated: pl.DataFrame) -> pl.DataFrame:
        frame = estimated.select("question_group", "answer_id", "author_effect", *QUALITY_COLUMNS)
        first, second = (frame.rename(lambda c, side=side: c if c == "question_group" else side + c) for side in ("a_", "b_"))
        both = first.join(second, on="question_group").filter(pl.col("a_answer_id") < pl.col("b_answer_id"))
        return both.select(z=quality_lead("a_", "b_"), reach_gap=(pl.col("a_author_effect") - pl.col("b_author_effect")).abs())

    z = {share: leads(estimate_quality(answers, VoteModelOptions(author_share=share))[0])["z"].to_numpy()
         for share in (0.0, 0.75, 1.0)}
    z_known, z_unknown = leads(known), leads(unknown)
    # Pairs whose lead is explained by reach: removing none or all of the author effect turns it round, each way
    # by more than a sd.
    hinge = (np.sign(z[0.0]) != np.sign(z[1.0])) & (np.abs(z[0.0]) > 1) & (np.abs(z[1.0]) > 1)
    sureness = lambda lead: np.abs(pl.DataFrame({"z": lead}).select(normal_cdf(pl.col("z")))["z"].to_numpy() - 0.5)  # noqa: E731
    assert hinge.sum() > 50
    assert sureness(z_unknown["z"].to_numpy()[hinge]).mean() < 0.1  # near 0.5 ...
    assert sureness(z_unknown["z"].to_numpy()[hinge]).mean() < 0.8 * sureness(z_known["z"].to_numpy()[hinge]).mean()
    assert sureness(z[0.75][hinge]).mean() > 0.2  # ... where one assumed share was confident
    # Leads between two answers whose authors have no estimated reach lose next to nothing.
    alike = (z_known["reach_gap"] == 0).to_numpy()
    change = lambda pairs: np.abs(sureness(z_unknown["z"].to_numpy()[pairs]) - sureness(z_known["z"].to_numpy()[pairs])).mean()  # noqa: E731
    assert alike.sum() > 100 and change(alike) < 0.01 < 0.03 < change(hinge)


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


def _within_question_corr(question: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    centred = pl.DataFrame({"q": question, "a": a, "b": b}).select(pl.col("a", "b") - pl.col("a", "b").mean().over("q"))
    return float(np.corrcoef(centred["a"], centred["b"])[0, 1])


def test_length_slope_is_recovered() -> None:
    # Length independent of quality: the slope is the planted direct effect.
    answers, truth = planted_world(seed=4, questions=1500, length_effect=0.5)
    estimated, fitted = estimate_quality(answers, VoteModelOptions(model="full"))
    assert fitted["length_slope"] == pytest.approx(0.5, abs=0.05)
    assert _within_question_corr(truth["question"], estimated["length_effect"].to_numpy(), truth["log_chars"]) > 0.999
    # Better answers longer too: votes cannot separate the two, the slope is the whole association,
    # 0.5 + Cov(quality, log chars) / Var(log chars) = 0.5 + 0.4 / (0.16 + 0.64) = 1.0.
    answers, _ = planted_world(seed=4, questions=1500, length_effect=0.5, quality_length=0.4)
    assert estimate_quality(answers, VoteModelOptions(model="full"))[1]["length_slope"] == pytest.approx(1.0, abs=0.07)
    # No length term: no slope; the levels below full do not fit one; a table without answer lengths has none.
    answers, _ = planted_world(seed=4, questions=1500)
    assert abs(estimate_quality(answers, VoteModelOptions(model="full"))[1]["length_slope"]) < 0.05
    assert estimate_quality(answers, VoteModelOptions(model="exposure"))[1]["length_slope"] is None
    assert estimate_quality(answers.drop("answer_chars"), VoteModelOptions(model="full"))[1]["length_slope"] is None


def test_length_share_removes_that_share_of_the_length_lead() -> None:
    # Votes reward length, quality does not lengthen answers: all of the length lead is spurious.
    answers, truth = planted_world(seed=5, questions=1500, length_effect=0.7)
    skew, rights = {}, {}
    for share in (0.0, 0.5, 1.0):
        estimated, fitted = estimate_quality(answers, VoteModelOptions(model="full", length_share=share))
        assert fitted["length_share"] == share
        skew[share] = _within_question_corr(truth["question"], estimated["estimated_quality"].to_numpy(), truth["log_chars"])
        pairs = within_question_pairs(estimated, truth["quality"])
        rights[share] = ((pairs["p"] > 0.5) == pairs["right"]).mean()
    # Estimated quality follows length less the more is removed, and not at all once all of it is.
    assert skew[0.0] > skew[0.5] + 0.1 > skew[1.0] + 0.2 and abs(skew[1.0]) < 0.03, skew
    assert rights[0.0] < rights[0.5] < rights[1.0], rights


@pytest.fixture(scope="module")
def length_world(tmp_path_factory) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The synthetic `length` world (votes ~ length^0.5 beyond quality, better answers longer): answers, truth."""
    path, truth_path = synth.write(30_000, tmp_path_factory.mktemp("length") / "length.parquet", 2, world="length")
    answers, _ = prepare_answers(str(path), DedupeOptions(mode="exact"), VoteModelOptions(model="raw"))
    return answers, pl.read_parquet(truth_path).drop_nulls("answer_id").unique("answer_id")


def test_length_term_is_recovered_on_the_length_world(length_world) -> None:
    answers, truth = length_world
    estimated, fitted = estimate_quality(answers.drop("estimated_quality", "quality_sd"), VoteModelOptions())
    # The slope is the whole association: the world's direct 0.5 plus what quality's lengthening adds
    # (0.3 / (1 + 0.3^2) = 0.28 per log sentence), a little less per log character (the opener adds noise).
    assert 0.6 <= fitted["length_slope"] <= 0.9, fitted
    joined = estimated.join(truth.select("answer_id", "log_length_effect"), on="answer_id")
    assert _within_question_corr(joined["question_group"].to_numpy(), joined["length_effect"].to_numpy(),
                                 joined["log_length_effect"].to_numpy()) > 0.9


def test_length_options_make_the_pairs_less_long_on_the_length_world(length_world) -> None:
    answers, _ = length_world
    base = answers.drop("estimated_quality", "quality_sd")
    skew = {}
    for share in (0.0, VoteModelOptions().length_share, 1.0):
        estimated, _ = estimate_quality(base, VoteModelOptions(length_share=share))
        skew[share] = length_skew(select_pairs(estimated, PairOptions(limit=300))[0])
    default = VoteModelOptions().length_share
    assert skew[0.0]["chosen_longer_share"] > skew[default]["chosen_longer_share"] > skew[1.0]["chosen_longer_share"], skew
    assert skew[0.0]["median_length_ratio"] > skew[default]["median_length_ratio"] > skew[1.0]["median_length_ratio"], skew
    estimated, _ = estimate_quality(base, VoteModelOptions(length_share=0.0))
    bounded = select_pairs(estimated, PairOptions(limit=300, max_length_ratio=2.0))[0]
    assert length_skew(bounded)["median_length_ratio"] < skew[0.0]["median_length_ratio"]
    chosen, rejected = bounded["chosen"].str.len_chars(), bounded["rejected"].str.len_chars()
    assert ((chosen <= 2.0 * rejected) & (rejected <= 2.0 * chosen)).all()


@pytest.mark.parametrize(("options", "message"), [
    (VoteModelOptions(model="votes"), "--vote-model"),  # type: ignore[arg-type]
    (VoteModelOptions(author_share=1.5), "--author-share"),
    (VoteModelOptions(author_share=(0.8, 0.2)), "--author-share"),
    (VoteModelOptions(author_share=(-0.1, 1.0)), "--author-share"),
    (VoteModelOptions(author_share=(0.1, 0.2, 0.3)), "--author-share"),  # type: ignore[arg-type]
    (VoteModelOptions(luck_sd=-1), "--luck-sd"),
    (VoteModelOptions(length_share=-0.1), "--length-share"),
    (VoteModelOptions(length_share=float("nan")), "--length-share"),
    (VoteModelOptions(luck_sd="sometimes"), "--luck-sd"),  # type: ignore[arg-type]
])
def test_bad_options_are_named(options: VoteModelOptions, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build("pairs", BuildOptions(source="sample", votes=options), log=lambda _: None)


@pytest.mark.parametrize(("flag", "value"), [("--author-share", "a:b"), ("--author-share", "0.9:0.1"), ("--luck-sd", "lots")])
def test_cli_rejects_bad_vote_flags_in_one_line(tmp_path: Path, flag: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.build", "pairs", "--source", "sample", "--out", str(tmp_path / "x"), flag, value],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and flag in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_vote_model_flags_reach_the_recipe(tmp_path: Path) -> None:
    assert main(["pairs", "--source", "sample", "--out", str(tmp_path / "raw"), "--vote-model", "raw", "--limit", "50",
                 "--length-share", "0.25"]) == 0
    params = json.loads((tmp_path / "raw" / "params.json").read_text())["params"]
    assert params["votes"] == {"model": "raw", "author_share": list(VoteModelOptions().author_share), "luck_sd": "auto",
                               "length_share": 0.25}
    stats = json.loads((tmp_path / "raw" / "stats.json").read_text())
    assert stats["vote_model"]["model"] == "raw" and stats["vote_model"]["exposure_slopes"] == {}
    out = tmp_path / "given"
    assert main(["pairs", "--source", "sample", "--out", str(out), "--author-share", "0.2:0.9", "--luck-sd", "0.45", "--limit", "50"]) == 0
    assert json.loads((out / "params.json").read_text())["params"]["votes"] == {"model": "full", "author_share": [0.2, 0.9], "luck_sd": 0.45,
                                                                                 "length_share": VoteModelOptions().length_share}
    fitted = json.loads((out / "stats.json").read_text())["vote_model"]
    assert fitted["author_share_range"] == [0.2, 0.9] and fitted["author_share"] == pytest.approx(0.55)
    assert fitted["luck_sd"] == 0.45 and fitted["luck_sd_from"] == "assumed"
    card = (out / "README.md").read_text()
    assert "anywhere from 0.2 to 0.9" in card and "0.45, assumed" in card


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
    # the length figures: stats.json's over every pair (both splits) as the texts give them, and the card's
    pairs = pl.concat([pl.read_parquet(path) for path in sorted((out / "data").glob("*.parquet"))])
    stats = json.loads((out / "stats.json").read_text())
    longer = (pairs["chosen"].str.len_chars() > pairs["rejected"].str.len_chars()).mean()
    assert stats["length"]["chosen_longer_share"] == pytest.approx(longer, abs=1e-4)
    assert f"longer one in **{100 * longer:.1f}%**" in card and "plots/pair_lengths.png" in card
    assert stats["vote_model"]["length_share"] == VoteModelOptions().length_share
    assert f"| share of it removed (`--length-share`) | {VoteModelOptions().length_share} |" in card
    # The card says where the luck sd came from (the sample has too few copies to measure it), that the author share
    # is a range, and what the probability does and does not promise.
    assert "luck sd (`--luck-sd auto`) | 0.3, assumed: only" in card and "pairs of copies of one answer" in card
    assert "anywhere from 0.0 to 1.0" in card and "What `p_chosen_better` promises, and what it does not" in card


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
