"""zhihu_rlhf.synth: determinism, every METADATA variant, truth that matches the text, planted structure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rapidfuzz import fuzz

from zhihu_rlhf import synth
from zhihu_rlhf.errors import UserError

SAMPLE = Path(synth.__file__).parent / "data" / "sample.parquet"


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
