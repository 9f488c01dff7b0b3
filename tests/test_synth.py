"""zhihu_rlhf.synth: determinism, every METADATA variant, truth that matches the text, planted structure,
and each preset world's defining property measured in its output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import subprocess
import sys
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from zhihu_rlhf import synth
from zhihu_rlhf.synth.__main__ import main as synth_cli
from zhihu_rlhf.synth.plan import T_CRAWL, make_plan
from zhihu_rlhf.errors import UserError

SAMPLE = Path(synth.__file__).parent.parent / "data" / "sample.parquet"


@pytest.fixture(scope="module")
def generated() -> pl.DataFrame:
    """Data and truth side by side, 4000 rows of short answers."""
    data, truth = synth.generate(4000, seed=11, mean_answer_chars=300)
    assert data.height == truth.height == 4000
    return pl.concat([data, truth], how="horizontal")


def _meta(text: str) -> dict | None:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _upvote_form(value: object) -> str:
    """Classify an upvotes value by the forms listed in the issue (independent of synth's own names)."""
    if isinstance(value, int):
        return "int"
    assert isinstance(value, str), value
    if value == "赞同" or value == "\u200b赞同":
        return "bare"
    if value.endswith(" 万"):
        return "wan"
    if value.startswith("\u200b赞同 "):
        return "button_zw"
    if value.startswith("赞同 "):
        return "button"
    if value.endswith("k"):
        return "k"
    if value.endswith("w"):
        return "w"
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", value), value
    return "comma"


def _parse_upvotes(value: object) -> int:
    """A tiny independent reading of each form to the count it denotes."""
    if isinstance(value, int):
        return value
    text = str(value).replace("\u200b", "").replace("赞同", "").replace(",", "").strip()
    if not text:
        return 0
    for unit, scale in ((" 万", 10_000), ("w", 10_000), ("k", 1_000)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * scale)
    return int(text)


def _parse_time(meta: dict) -> datetime | None:
    value = meta.get("answer_creation_time")
    if value in (None, ""):
        return None
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000 if value > 10**11 else value, tz=timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(microsecond=0)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, a_truth = synth.write(1500, tmp_path / "a.parquet", seed=3, mean_answer_chars=200)
    b, b_truth = synth.write(1500, tmp_path / "b.parquet", seed=3, mean_answer_chars=200)
    c, _ = synth.write(1500, tmp_path / "c.parquet", seed=4, mean_answer_chars=200)
    assert a.read_bytes() == b.read_bytes()
    assert a_truth is not None and b_truth is not None
    assert a_truth.read_bytes() == b_truth.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a_truth == tmp_path / "a.truth.parquet"


def test_every_metadata_variant_is_present(generated: pl.DataFrame) -> None:
    metas = [m for m in map(_meta, generated["METADATA"]) if m is not None]
    upvote_forms = {_upvote_form(m["upvotes"]) for m in metas}
    assert upvote_forms == {"int", "button", "button_zw", "wan", "bare", "comma", "k", "w"}
    id_types = {type(m[key]).__name__ for m in metas for key in ("question_id", "answer_id") if m[key] is not None}
    assert id_types == {"int", "float", "str"}
    times = [m.get("answer_creation_time", "MISSING") for m in metas]
    assert any(isinstance(t, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", t) for t in times)
    assert any(isinstance(t, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t) for t in times)
    assert any(isinstance(t, int) and t < 10**11 for t in times)  # epoch seconds
    assert any(isinstance(t, int) and t > 10**11 for t in times)  # epoch milliseconds
    assert "" in times and "MISSING" in times
    assert all(m["author_id"].startswith("https://www.zhihu.com/people/") for m in metas)
    assert set(generated["SOURCE"]) == {"Zhihu"}


def test_shipped_sample_has_every_variant_and_no_truth_file() -> None:
    sample = pl.read_parquet(SAMPLE)
    assert sample.columns == ["INSTRUCTION", "RESPONSE", "SOURCE", "METADATA"]
    assert 3000 <= sample.height <= 5000
    assert SAMPLE.stat().st_size < 3_000_000
    assert not synth.truth_path_for(SAMPLE).exists()
    metas = [_meta(m) for m in sample["METADATA"]]
    assert {_upvote_form(m["upvotes"]) for m in metas if m} == {"int", "button", "button_zw", "wan", "bare", "comma", "k", "w"}
    assert any(m is None for m in metas)  # invalid JSON rows
    assert any(m and m["question_id"] is None for m in metas)
    assert any(m and m["answer_id"] is None for m in metas)
    assert sample["RESPONSE"].is_null().any() or (sample["RESPONSE"].str.strip_chars(" \n\t\u200b") == "").any()


def test_truth_matches_what_metadata_says(generated: pl.DataFrame) -> None:
    checked = 0
    for row in generated.filter(pl.col("malformed").is_null()).iter_rows(named=True):
        meta = _meta(row["METADATA"])
        assert meta is not None
        assert int(float(meta["question_id"])) == row["question_id"]
        assert int(float(meta["answer_id"])) == row["answer_id"]
        assert _parse_upvotes(meta["upvotes"]) == row["upvotes"]
        assert _parse_time(meta) == row["created_at"]
        checked += 1
    assert checked > 3900
    assert generated["answer_id"].is_unique().all()
    assert generated["row"].to_list() == list(range(4000))


def test_malformed_rows_are_really_malformed(generated: pl.DataFrame) -> None:
    bad = generated.filter(pl.col("malformed").is_not_null())
    assert 0.005 <= bad.height / generated.height <= 0.02
    assert set(bad["malformed"]) == {"invalid_json", "null_question_id", "null_answer_id", "blank_response"}
    for row in bad.iter_rows(named=True):
        meta = _meta(row["METADATA"])
        if row["malformed"] == "invalid_json":
            assert meta is None
        elif row["malformed"] == "null_question_id":
            assert meta is not None and meta["question_id"] is None
        elif row["malformed"] == "null_answer_id":
            assert meta is not None and meta["answer_id"] is None
        else:
            assert row["RESPONSE"] is None or row["RESPONSE"].strip(" \n\t\u200b") == ""
    good = generated.filter(pl.col("malformed").is_null())
    assert (good["RESPONSE"].str.strip_chars().str.len_chars() > 20).all()


def test_planted_copies_are_near_copies_of_their_cluster(generated: pl.DataFrame) -> None:
    copies = generated.filter(pl.col("dup_kind").is_in(["exact_copy", "crosspost_prefix_suffix", "punct_edit"]))
    assert set(copies["dup_kind"]) == {"exact_copy", "crosspost_prefix_suffix", "punct_edit"}
    share_in_clusters = generated.filter(pl.col("answer_cluster").is_duplicated()).height / generated.height
    assert 0.02 <= share_in_clusters <= 0.10
    originals = generated.filter(pl.col("dup_kind").is_null())
    for row in copies.iter_rows(named=True):
        assert row["answer_cluster"] <= row["answer_id"]
        original = originals.filter(pl.col("answer_cluster") == row["answer_cluster"])
        assert original.height == 1  # copies point at one original that is not itself a copy
        source, copy = original["RESPONSE"][0], row["RESPONSE"]
        if row["dup_kind"] == "exact_copy":
            assert copy == source
        else:
            assert copy != source and fuzz.ratio(copy, source) >= 90
            if row["dup_kind"] == "crosspost_prefix_suffix":
                assert source in copy
        assert row["quality"] == original["quality"][0]
    crossposted = copies.join(originals.select("answer_cluster", orig_q="question_id"), on="answer_cluster")
    assert (crossposted["question_id"] != crossposted["orig_q"]).any()  # cross-posts to other questions
    assert (crossposted["question_id"] == crossposted["orig_q"]).any()  # and duplicates within one question


def test_shared_quote_pairs_share_a_long_quote_but_are_not_duplicates(generated: pl.DataFrame) -> None:
    quoted = generated.filter(pl.col("dup_kind") == "shared_quote")
    assert quoted.height >= 4 and quoted.height % 2 == 0
    assert quoted["answer_cluster"].to_list() == quoted["answer_id"].to_list()  # each is its own cluster
    texts = quoted["RESPONSE"].to_list()
    quotes = [re.search(r"所说：“(.+)”\n\n", t, re.S) for t in texts]
    assert all(q is not None for q in quotes)
    by_quote: dict[str, list[str]] = {}
    for text, quote in zip(texts, quotes, strict=True):
        assert quote is not None
        by_quote.setdefault(quote.group(1), []).append(text)
    pairs = [v for q, v in by_quote.items() if len(v) == 2]
    assert len(pairs) == quoted.height // 2
    for (a, b), quote in zip(pairs, [q for q, v in by_quote.items() if len(v) == 2], strict=True):
        assert len(quote) >= 150
        assert fuzz.ratio(a, b) < 60


def test_reasked_questions_share_a_group_and_a_similar_title(generated: pl.DataFrame) -> None:
    reasked = generated.filter(pl.col("dup_kind") == "reasked_question").unique("question_id")
    assert reasked.height >= 5
    assert (reasked["question_group"] < reasked["question_id"]).all()
    titles = generated.unique("question_id").select("question_id", "INSTRUCTION")
    for row in reasked.iter_rows(named=True):
        original = titles.filter(pl.col("question_id") == row["question_group"])["INSTRUCTION"][0]
        assert row["INSTRUCTION"] != original
        assert fuzz.ratio(row["INSTRUCTION"].strip(), original.strip()) >= 75


def test_no_accidental_near_duplicates_between_clusters(generated: pl.DataFrame) -> None:
    clean = generated.filter(pl.col("malformed").is_null()).head(300)
    texts, clusters = clean["RESPONSE"].to_list(), clean["answer_cluster"].to_list()
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if clusters[i] != clusters[j]:
                assert fuzz.ratio(texts[i], texts[j], score_cutoff=80) == 0, (i, j)
    titles = generated.unique("question_group", keep="first").sort("question_group")["INSTRUCTION"].head(600).to_list()
    for i in range(len(titles)):
        for j in range(i + 1, len(titles)):
            assert fuzz.ratio(titles[i], titles[j], score_cutoff=90) == 0, (titles[i], titles[j])


def test_heavy_tails(generated: pl.DataFrame) -> None:
    upvotes = generated["upvotes"].to_numpy()
    assert np.mean(upvotes <= 10) > 0.5 and upvotes.max() >= 10_000
    per_question = generated.group_by("question_id").len()["len"].to_numpy()
    assert np.mean(per_question == 1) > 0.5
    assert np.mean((per_question >= 2) & (per_question <= 10)) > 0.15
    assert per_question.max() >= 30
    per_author = pl.Series([m["author_id"] for m in map(_meta, generated["METADATA"]) if m]).value_counts()["count"]
    assert per_author.max() >= 20
    lengths = generated["RESPONSE"].drop_nulls().str.len_chars().to_numpy()
    assert 220 <= lengths.mean() <= 400 and lengths.max() > 8 * np.median(lengths)
    years = generated["created_at"].drop_nulls().dt.year()
    assert years.min() <= 2016 and years.max() >= 2022


def test_upvotes_carry_quality_through_confounders(generated: pl.DataFrame) -> None:
    """Naive pairs are noisy; a 2x ratio and closeness in time make 'more votes' more often 'better'."""
    answers = generated.filter(pl.col("malformed").is_null()).select("question_id", "answer_id", "quality", "upvotes", "created_at")
    pairs = (
        answers.join(answers, on="question_id", suffix="_r")
        .filter(pl.col("upvotes") > pl.col("upvotes_r"))
        .with_columns(
            better=pl.col("quality") > pl.col("quality_r"),
            ratio_ok=pl.col("upvotes") >= 2 * pl.col("upvotes_r"),
            close=(pl.col("created_at") - pl.col("created_at_r")).abs() <= pl.duration(days=30),
        )
    )
    naive = pairs["better"].mean()
    ruled = pairs.filter("ratio_ok", "close")["better"].mean()
    assert 0.6 < naive < 0.85
    assert ruled > naive + 0.05


def test_text_needs_normalising(generated: pl.DataFrame) -> None:
    text = "".join(generated["RESPONSE"].drop_nulls().head(2000))
    for noise in ("&amp;", "&lt;", "&quot;", "\u00a0", "\u200b", "\t", "  ", "\n\n\n"):
        assert noise in text, repr(noise)
    assert re.search(r"[A-Za-z]{3,}", text) and re.search(r"\d+", text)


def test_cli_writes_both_files(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "kol.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.synth", "--rows", "300", "--out", str(out), "--seed", "1", "--mean-answer-chars", "200"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    data, truth = pl.read_parquet(out), pl.read_parquet(tmp_path / "sub" / "kol.truth.parquet")
    assert data.height == truth.height == 300
    assert dict(truth.schema) == {
        "row": pl.Int64, "question_id": pl.Int64, "answer_id": pl.Int64, "quality": pl.Float64,
        "question_group": pl.Int64, "answer_cluster": pl.Int64, "dup_kind": pl.String, "malformed": pl.String,
        "upvotes": pl.Int64, "created_at": pl.Datetime("us", "UTC"),
        "author": pl.Int64, "author_log_reach": pl.Float64, "log_exposure": pl.Float64, "log_length_effect": pl.Float64,
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["kol.parquet", "kol.truth.parquet"]  # no temp files left


@pytest.mark.parametrize("rows", ["0", "-5"])
def test_cli_rejects_bad_row_counts(tmp_path: Path, rows: str) -> None:
    out = tmp_path / "x.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.synth", "--rows", rows, "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --rows must be at least 1") and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_library_errors() -> None:
    with pytest.raises(UserError, match="--rows"):
        synth.generate(0, seed=1)
    with pytest.raises(UserError, match="mean-answer-chars"):
        synth.generate(10, seed=1, mean_answer_chars=5)


def test_tiny_sizes_work() -> None:
    for rows in (1, 2, 17):
        data, truth = synth.generate(rows, seed=rows, mean_answer_chars=100)
        assert data.height == truth.height == rows


# ---------------------------------------------------------------------------------------------------
# Preset worlds: each generates, deterministically, and shows the property it exists for.

WORLD_ROWS = 8000  # enough for a hot question of 2,000+ answers (hot questions may take 30% of a file)


@pytest.fixture(scope="module")
def worlds() -> dict[str, pl.DataFrame]:
    """Every preset at WORLD_ROWS rows of short answers: data and truth side by side."""
    frames = {}
    for name in synth.WORLDS:
        data, truth = synth.generate(WORLD_ROWS, seed=5, world=name, mean_answer_chars=150)
        assert data.height == truth.height == WORLD_ROWS
        frames[name] = pl.concat([data, truth], how="horizontal")
    return frames


def test_the_contracts_presets_exist() -> None:
    assert set(synth.WORLDS) == {
        "default", "hot", "kol", "popularity", "earned", "lucky", "solo", "unlearnable", "length", "templates",
        "readable", "readable_popularity", "pandas",
    }
    assert all(world.name == name and world.description for name, world in synth.WORLDS.items())


@pytest.mark.parametrize("name", list(synth.WORLDS))
def test_every_world_is_deterministic_and_its_own(name: str) -> None:
    a, a_truth = synth.generate(600, seed=9, world=name, mean_answer_chars=100)
    b, b_truth = synth.generate(600, seed=9, world=name, mean_answer_chars=100)
    assert a.equals(b) and a_truth.equals(b_truth)
    if name != "default":
        default, _ = synth.generate(600, seed=9, mean_answer_chars=100)
        assert not a.equals(default)


def test_default_world_still_makes_the_shipped_sample(tmp_path: Path) -> None:
    """The embedded sample was generated before worlds existed; the default world must still reproduce it."""
    out, _ = synth.write(4000, tmp_path / "sample.parquet", seed=20230416, mean_answer_chars=350, write_truth=False)
    assert pl.read_parquet(out).equals(pl.read_parquet(SAMPLE))


# Digests of every text cell (and every truth cell but log_length_effect) of the presets that existed before the
# length knobs, as the code before them wrote them (300 rows, seed 3, 120 chars): knobs a world leaves off draw nothing.
# The truth digests were taken again with floats to 8 figures, from the generator before the length knobs (25b68cb),
# on an AVX2 machine where author_log_reach and log_exposure differ in the last bit from the machine that first
# recorded them.
_DIGESTS_BEFORE_LENGTH = {
    "default": ("8e7d38947a8183f6", "92d666651f1085df"), "hot": ("a8869e56c342196d", "d91593ad1233c29a"),
    "kol": ("f4b4b555a112cf76", "056243d1886ac55b"), "popularity": ("b092a6529289627b", "7412df202053b8e6"),
    "solo": ("52a58cc123c09a10", "8c9133a2d87a4792"), "unlearnable": ("c422753a531e4b1e", "1b4f764e732d1c48"),
    "templates": ("80d490dd37b762e7", "1b7042dccdc9c40f"), "pandas": ("9c693cb318e2200c", "74f7ecdb5f3190c3"),
}


# The truth columns the presets had before the length knobs (a later column, such as log_length_effect, is new).
_TRUTH_BEFORE_LENGTH = [
    "row", "question_id", "answer_id", "quality", "question_group", "answer_cluster", "dup_kind", "malformed",
    "upvotes", "created_at", "author", "author_log_reach", "log_exposure",
]


def _cells_digest(frame: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    for column in frame.columns:
        digest.update(column.encode())
        for value in frame[column].to_list():
            # Floats to 8 figures: numpy's exp and log differ in the last bit between CPUs (its SIMD kernels).
            digest.update((f"{value:.8g}" if isinstance(value, float) else repr(value)).encode() + b"\x00")
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("name", list(_DIGESTS_BEFORE_LENGTH))
def test_presets_before_the_length_knobs_are_unchanged(name: str) -> None:
    data, truth = synth.generate(300, seed=3, world=name, mean_answer_chars=120)
    assert (_cells_digest(data), _cells_digest(truth.select(_TRUTH_BEFORE_LENGTH))) == _DIGESTS_BEFORE_LENGTH[name]
    assert (truth["log_length_effect"] == 0).all()


# Digests of the presets that existed before the luck, early-answer and crawl-date knobs, taken from the
# generator as it was before they were added: a knob a preset leaves off must not change its bytes.
PRESET_DIGESTS = {
    "default": "8402a45d64310f6f", "hot": "eb58be95b4b5e0cf", "kol": "d3155ffef423da81", "popularity": "eeccb2c4919e7d3a",
    "solo": "ac512d4ae46b7c42", "unlearnable": "793c47b6e5645ced", "templates": "817f3fbade2e4af6", "pandas": "d8146207da01e378",
}


@pytest.mark.parametrize("name", list(PRESET_DIGESTS))
def test_older_presets_keep_their_bytes(name: str) -> None:
    data, truth = synth.generate(1500, seed=9, world=name, mean_answer_chars=100)
    digest = hashlib.sha256()
    for column in ("INSTRUCTION", "RESPONSE", "METADATA"):
        digest.update("\x1f".join(data[column].fill_null("\x00").to_list()).encode())
    digest.update(truth["quality"].to_numpy().tobytes())
    digest.update(truth["upvotes"].to_numpy().tobytes())
    assert digest.hexdigest()[:16] == PRESET_DIGESTS[name]


def test_every_world_has_the_truth_columns_of_the_contract(worlds: dict[str, pl.DataFrame]) -> None:
    for name, frame in worlds.items():
        for column in ("author", "author_log_reach", "log_exposure", "quality", "question_group", "answer_cluster", "upvotes"):
            assert frame[column].null_count() == 0, (name, column)
        # reach belongs to the author: one value per author
        assert frame.group_by("author").agg(pl.col("author_log_reach").n_unique())["author_log_reach"].max() == 1, name
        assert frame["log_exposure"].n_unique() > WORLD_ROWS // 2, name


def test_hot_has_questions_with_thousands_of_answers_within_weeks(worlds: dict[str, pl.DataFrame]) -> None:
    def hottest_within_four_weeks(frame: pl.DataFrame) -> int:
        timed = frame.filter(pl.col("created_at").is_not_null())
        in_window = timed.filter(pl.col("created_at") <= pl.col("created_at").min().over("question_id") + pl.duration(days=28))
        return in_window.group_by("question_id").len()["len"].max()

    assert hottest_within_four_weeks(worlds["hot"]) >= 0.8 * 2000  # at least 2,000 answers, most within weeks
    assert hottest_within_four_weeks(worlds["default"]) < 500


def _author_metadata(frame: pl.DataFrame) -> pl.Series:
    return pl.Series([m.get("author_id") if m else None for m in map(_meta, frame["METADATA"])])


def test_kol_authors_write_many_answers_and_reach_moves_votes_like_quality(worlds: dict[str, pl.DataFrame]) -> None:
    kol = worlds["kol"].filter(pl.col("malformed").is_null())
    per_author = kol.group_by("author").len()
    assert kol.join(per_author, on="author")["len"].median() >= 50
    assert _author_metadata(kol).n_unique() == per_author.height  # METADATA's profile ids are the true authors
    # log votes ~ quality + reach (+ question popularity, exposure, noise): the two coefficients are alike
    x = np.column_stack([np.ones(kol.height), kol["quality"].to_numpy(), kol["author_log_reach"].to_numpy()])
    coef = np.linalg.lstsq(x, np.log1p(kol["upvotes"].to_numpy()), rcond=None)[0]
    assert coef[1] > 0.3 and 0.5 <= coef[2] / coef[1] <= 2.0, coef
    assert 0.7 <= kol["author_log_reach"].unique().std() <= 1.3


def _reach_and_author_quality(frame: pl.DataFrame) -> float:
    """Correlation, over authors with 20+ answers, of their reach with their mean answer quality."""
    authors = frame.group_by("author").agg(pl.col("author_log_reach").first(), pl.col("quality").mean(), n=pl.len())
    authors = authors.filter(pl.col("n") >= 20)
    assert authors.height >= 40
    return float(np.corrcoef(authors["author_log_reach"], authors["quality"])[0, 1])


def test_kol_reach_is_partly_quality_and_popularity_reach_is_not(worlds: dict[str, pl.DataFrame]) -> None:
    assert _reach_and_author_quality(worlds["kol"]) > 0.4
    assert abs(_reach_and_author_quality(worlds["popularity"])) < 0.25


def test_earned_reach_is_skill_first_answers_gain_and_each_question_has_its_crawl(worlds: dict[str, pl.DataFrame]) -> None:
    # Reach earned by writing well: an author's reach tracks their answers' quality far more than in kol.
    assert _reach_and_author_quality(worlds["earned"]) > 0.85 > _reach_and_author_quality(worlds["kol"])
    # Quality is mostly the author's skill: authors' mean quality varies nearly as much as answers' quality.
    earned = worlds["earned"].filter(pl.col("malformed").is_null())
    authors = earned.group_by("author").agg(pl.col("quality").mean(), n=pl.len()).filter(pl.col("n") >= 40)
    assert authors["quality"].var() > 0.6 * earned["quality"].var()

    # The first three answers of a question collect extra votes: a step in exposure between the 3rd and the 4th.
    def step_after_third(frame: pl.DataFrame) -> float:
        ranked = frame.with_columns(rank=pl.col("created_at").rank("ordinal").over("question_id"))
        ranked = ranked.filter(pl.len().over("question_id") >= 6)
        third, fourth = (ranked.filter(pl.col("rank") == r)["log_exposure"].mean() for r in (3, 4))
        return third - fourth

    assert step_after_third(worlds["earned"]) > step_after_third(worlds["kol"]) + 0.4
    # Each question crawled on its own date; no answer is newer than its question's crawl.
    for name, crawls in (("earned", 50), ("kol", 1)):
        plan = make_plan(2000, seed=5, mean_answer_chars=100, world=synth.world_named(name))
        assert len(np.unique(plan.question_crawled)) >= crawls
        assert (plan.created <= plan.question_crawled[plan.row_question]).all()
        assert (plan.question_crawled <= T_CRAWL).all()


def test_lucky_has_more_luck_and_wider_reach(worlds: dict[str, pl.DataFrame]) -> None:
    def luck_sd(frame: pl.DataFrame) -> float:
        """Sd of log votes left after quality, reach, exposure and the question, where count noise is small."""
        busy = frame.filter(pl.col("malformed").is_null() & (pl.col("upvotes") >= 300))
        left = busy.select(
            (pl.col("upvotes").log() - pl.col("quality") - pl.col("author_log_reach") - pl.col("log_exposure")).alias("left"),
            "question_id",
        ).filter(pl.len().over("question_id") >= 3)
        return float(left.select(pl.col("left") - pl.col("left").mean().over("question_id"))["left"].std())

    assert luck_sd(worlds["lucky"]) > 1.6 * luck_sd(worlds["popularity"])
    assert worlds["lucky"]["author_log_reach"].unique().std() > 1.3 * worlds["popularity"]["author_log_reach"].unique().std()
    assert abs(_reach_and_author_quality(worlds["lucky"])) < 0.25  # pure popularity


def test_solo_authors_never_repeat(worlds: dict[str, pl.DataFrame]) -> None:
    solo = worlds["solo"]
    assert solo["author"].is_unique().all()
    profiles = _author_metadata(solo).drop_nulls()
    assert profiles.len() > 0.98 * WORLD_ROWS and profiles.is_unique().all()


def _quality_left_in_votes(frame: pl.DataFrame) -> float:
    """Correlation of quality with what reach and exposure leave unexplained of log votes."""
    frame = frame.filter(pl.col("malformed").is_null())
    x = np.column_stack([np.ones(frame.height), frame["author_log_reach"].to_numpy(), frame["log_exposure"].to_numpy()])
    y = np.log1p(frame["upvotes"].to_numpy())
    residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return float(np.corrcoef(residual, frame["quality"])[0, 1])


def test_unlearnable_votes_carry_no_quality_given_reach(worlds: dict[str, pl.DataFrame]) -> None:
    assert abs(_quality_left_in_votes(worlds["unlearnable"])) < 0.05
    assert _quality_left_in_votes(worlds["popularity"]) > 0.2  # the same statistic where votes do carry quality


def test_length_votes_grow_with_length_beyond_quality_and_better_answers_are_longer(worlds: dict[str, pl.DataFrame]) -> None:
    """In `length`, log votes regressed on quality, reach, exposure and log length (all measured from the output)
    give length a slope near the world's 0.5, and log length rises with quality; in `kol` length does nothing."""
    def slopes(frame: pl.DataFrame) -> tuple[float, float]:
        frame = frame.filter(pl.col("malformed").is_null() & (pl.col("upvotes") >= 5))
        log_chars = np.log(frame["RESPONSE"].str.len_chars().to_numpy())
        # question popularity as a constant per question: demean within questions
        centred = frame.with_columns(log_chars=pl.Series(log_chars), log_votes=pl.col("upvotes").log()).select(
            (pl.col(c) - pl.col(c).mean().over("question_id")).alias(c)
            for c in ("log_votes", "quality", "author_log_reach", "log_exposure", "log_chars")
        )
        x = centred.select("quality", "author_log_reach", "log_exposure", "log_chars").to_numpy()
        by_length = np.linalg.lstsq(x, centred["log_votes"].to_numpy(), rcond=None)[0][3]
        return float(by_length), float(np.corrcoef(frame["quality"], log_chars)[0, 1])

    length_slope, quality_length = slopes(worlds["length"])
    assert 0.35 <= length_slope <= 0.65 and quality_length > 0.15, (length_slope, quality_length)
    kol_slope, kol_quality_length = slopes(worlds["kol"])
    assert abs(kol_slope) < 0.12 and abs(kol_quality_length) < 0.06, (kol_slope, kol_quality_length)
    # the truth file says what the length term was: 0.5 * (log length - its mean), one-to-one with the text's length
    length = worlds["length"].filter(pl.col("dup_kind").is_null() & pl.col("malformed").is_null())
    assert np.corrcoef(length["log_length_effect"], np.log(length["RESPONSE"].str.len_chars()))[0, 1] > 0.9
    assert 0.4 <= length["log_length_effect"].std() <= 0.6 and abs(length["log_length_effect"].mean()) < 0.05


def test_length_knobs_off_is_kol() -> None:
    """The length world is kol plus the two length knobs: with them off it is kol's bytes."""
    off = dataclasses.replace(synth.WORLDS["length"], length_effect=0.0, quality_length=0.0)
    assert synth.generate(300, seed=4, world=off, mean_answer_chars=120)[0].equals(
        synth.generate(300, seed=4, world="kol", mean_answer_chars=120)[0])


def _fold_cosmetics(title: str) -> str:
    """A re-ask's title with cosmetic differences folded: width, spaces, question marks, 请问, 吗."""
    folded = unicodedata.normalize("NFKC", title)
    folded = re.sub(r"\s+", "", folded).rstrip("?")
    folded = folded.removeprefix("请问")
    return folded.removesuffix("吗")


def _titles_by_group(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.unique("question_id").select("question_id", "question_group", "INSTRUCTION")


def test_templates_plant_hard_negative_titles(worlds: dict[str, pl.DataFrame]) -> None:
    def close_pairs_of_different_questions(frame: pl.DataFrame) -> int:
        titles = _titles_by_group(frame)
        texts = titles["INSTRUCTION"]
        distances = process.cdist(texts, texts, scorer=Levenshtein.distance, score_cutoff=3, workers=1)
        groups = titles["question_group"].to_numpy()
        close = (distances <= 3) & (groups[:, None] != groups[None, :])
        return int(close.sum()) // 2

    in_templates = close_pairs_of_different_questions(worlds["templates"])
    in_default = close_pairs_of_different_questions(worlds["default"])  # rare: two names in one event template
    assert in_templates >= 200 and in_templates >= 20 * in_default, (in_templates, in_default)


def test_templates_reasks_differ_only_cosmetically(worlds: dict[str, pl.DataFrame]) -> None:
    titles = _titles_by_group(worlds["templates"])
    originals = dict(titles.filter(pl.col("question_id") == pl.col("question_group")).drop("question_group").iter_rows())
    reasks = titles.filter(pl.col("question_id") != pl.col("question_group"))
    assert reasks.height >= 40
    for row in reasks.iter_rows(named=True):
        original = originals[row["question_group"]]
        assert row["INSTRUCTION"] != original
        assert _fold_cosmetics(row["INSTRUCTION"]) == _fold_cosmetics(original), (row["INSTRUCTION"], original)
    edits = " ".join(reasks["INSTRUCTION"])
    assert "请问" in edits and "？？" in edits and "?" in edits and re.search(r"\s", edits)


def test_pandas_metadata_is_what_json_dumps_over_a_pandas_row_writes(worlds: dict[str, pl.DataFrame]) -> None:
    frame = worlds["pandas"]
    texts = frame["METADATA"].to_list()
    for token in (": NaN", ": Infinity", ": -Infinity"):
        assert any(token in t for t in texts), token
    nan_row = next(t for t in texts if '"answer_creation_time": NaN' in t)
    assert math.isnan(json.loads(nan_row)["answer_creation_time"])  # Python's json reads the NaN token
    whole = frame.filter(~pl.col("malformed").is_in(["invalid_json", "legacy_no_ids"]).fill_null(False))
    rows = [json.loads(t) for t in whole["METADATA"]]
    assert all(list(r) == ["question_id", "answer_id", "author_id", "upvotes", "answer_creation_time", "url"] for r in rows)
    # A pandas frame of those rows writes them back byte for byte: NaN for missing values, float ids.
    rewritten = [json.dumps(r, ensure_ascii=False) for r in pd.DataFrame(rows).to_dict("records")]
    assert rewritten == whole["METADATA"].to_list()
    assert all(isinstance(r["answer_id"], float) for r in rows)


def test_pandas_missing_time_or_author_is_not_malformed(worlds: dict[str, pl.DataFrame]) -> None:
    frame = worlds["pandas"].filter(~pl.col("malformed").is_in(["invalid_json", "legacy_no_ids"]).fill_null(False))
    metas = [json.loads(t) for t in frame["METADATA"]]
    no_time = [not isinstance(m["answer_creation_time"], str) for m in metas]  # NaN or ±Infinity
    no_author = [not isinstance(m["author_id"], str) for m in metas]
    assert 0.03 <= np.mean(no_time) <= 0.1 and 0.01 <= np.mean(no_author) <= 0.04
    lost = frame.filter(pl.Series(no_time) | pl.Series(no_author))
    assert lost["author"].null_count() == 0  # the truth still knows who wrote it
    assert lost["malformed"].drop_nulls().is_in(["null_question_id", "null_answer_id", "blank_response"]).all()
    assert lost["malformed"].null_count() > 0.95 * lost.height  # only the planted ~1% of defects
    assert frame.filter(pl.Series(no_time))["created_at"].is_null().all()


def test_pandas_legacy_rows_have_chinese_keys_and_no_ids(worlds: dict[str, pl.DataFrame]) -> None:
    legacy = worlds["pandas"].filter(pl.col("malformed") == "legacy_no_ids")
    assert 0.01 <= legacy.height / WORLD_ROWS <= 0.03
    for row in legacy.iter_rows(named=True):
        meta = json.loads(row["METADATA"])
        assert meta == {"回答点赞数": row["upvotes"], "回答时间": int(row["created_at"].timestamp())}
        assert row["RESPONSE"].strip() and row["INSTRUCTION"].strip()


def test_pandas_paragraphs_are_joined_by_one_space(worlds: dict[str, pl.DataFrame]) -> None:
    answers = worlds["pandas"].filter(pl.col("malformed").is_null() | (pl.col("malformed") != "blank_response"))["RESPONSE"]
    assert not answers.str.contains("\n").any()
    assert answers.str.contains("。 ").mean() > 0.3  # paragraph breaks became spaces
    assert worlds["default"]["RESPONSE"].drop_nulls().str.contains("\n").mean() > 0.3


def test_new_worlds_crosspost_with_new_prefixes_and_keep_quality(worlds: dict[str, pl.DataFrame]) -> None:
    """Cross-posted copies in every new world (also with paragraphs joined by spaces) contain their original
    and carry its quality; 利益相关，匿了。 is among their prefixes."""
    new_prefix = 0
    for name, frame in worlds.items():
        if name == "default":
            continue
        originals = frame.filter(pl.col("dup_kind").is_null())
        originals = originals.select("answer_cluster", original="RESPONSE", original_quality="quality")
        copies = frame.filter(pl.col("dup_kind") == "crosspost_prefix_suffix").join(originals, on="answer_cluster")
        assert copies.height >= 20, name
        for copy, original in zip(copies["RESPONSE"], copies["original"], strict=True):
            assert original in copy and copy != original, name
        assert (copies["quality"] == copies["original_quality"]).all(), name
        new_prefix += copies["RESPONSE"].str.starts_with("利益相关，匿了。").sum()
    assert new_prefix >= 5


def test_cli_lists_worlds_and_writes_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth_cli(["--list-worlds"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(synth.WORLDS)
    out = tmp_path / "p.parquet"
    assert synth_cli(["--world", "pandas", "--rows", "300", "--out", str(out), "--seed", "2"]) == 0
    assert pl.read_parquet(out)["METADATA"].str.contains('"url": ').mean() > 0.9  # all but legacy and broken rows
    with pytest.raises(SystemExit) as exit_info:
        synth_cli(["--world", "nope", "--rows", "3", "--out", str(tmp_path / "q.parquet")])
    assert exit_info.value.code == 2 and "'nope'" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a preset"):
        synth.generate(10, seed=1, world="nope")
