"""Readable worlds (text_quality > 0): the text shows latent quality through rules the gold reader reads back,
author styles say nothing about quality, and the knob changes nothing but the text."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from zhihu_rlhf import synth
from zhihu_rlhf.synth import readable

ROWS = 6000


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pl.DataFrame({"a": a, "b": b}).select(pl.corr("a", "b", method="spearman")).item())


@pytest.fixture(scope="module", params=["readable", "readable_popularity"])
def world(request: pytest.FixtureRequest) -> tuple[str, pl.DataFrame]:
    data, truth = synth.generate(ROWS, seed=3, world=request.param, mean_answer_chars=150)
    return request.param, pl.concat([data, truth], how="horizontal").filter(pl.col("malformed").is_null())


def test_gold_reader_ranks_answers_like_their_latent_quality(world: tuple[str, pl.DataFrame]) -> None:
    name, frame = world
    gold = synth.read_quality(frame["RESPONSE"])
    assert _spearman(gold, frame["quality"].to_numpy()) >= 0.8, name
    # ... but not perfectly: the text shows quality with noise
    assert _spearman(gold, frame["quality"].to_numpy()) < 0.95, name


def test_swapping_the_author_style_does_not_move_the_gold_score(world: tuple[str, pl.DataFrame]) -> None:
    _, frame = world
    texts = [t for t in frame["RESPONSE"].head(400) if synth.style_of(t) is not None]
    assert len(texts) > 300  # only copies with a cross-post prefix lose their style
    before = synth.read_quality(texts)
    for style in range(readable.N_STYLES):
        swapped = [synth.swap_style(t, style) for t in texts]
        assert all(synth.style_of(t) == style for t in swapped)
        assert sum(a != b for a, b in zip(swapped, texts, strict=True)) >= len(texts) // 2
        np.testing.assert_array_equal(synth.read_quality(swapped), before)
    with pytest.raises(ValueError, match="not a readable answer"):
        synth.swap_style("谢邀。" + texts[0], 0)


def test_padding_with_asides_makes_answers_longer_not_better(world: tuple[str, pl.DataFrame]) -> None:
    _, frame = world
    texts = frame["RESPONSE"].head(300).to_list()
    padded = [synth.pad_with_asides(t, 6) for t in texts]
    assert all(len(p) >= len(t) + 60 for p, t in zip(padded, texts, strict=True))
    np.testing.assert_array_equal(synth.read_quality(padded), synth.read_quality(texts))


def test_style_follows_popularity_and_says_nothing_about_quality(world: tuple[str, pl.DataFrame]) -> None:
    name, frame = world
    authors = frame.group_by("author").agg(
        pl.col("author_style").first(), pl.col("author_log_reach").first(), pl.col("quality").mean(), n=pl.len()
    ).filter(pl.col("n") >= 20)
    style, reach = authors["author_style"].to_numpy(), authors["author_log_reach"].to_numpy()
    assert authors.group_by("author_style").len().height == readable.N_STYLES
    assert _spearman(style, reach) > 0.4, name  # popular authors share styles: votes favour them
    assert abs(_spearman(style, authors["quality"].to_numpy())) < 0.3, name
    assert abs(_spearman(frame["author_style"].to_numpy(), frame["quality"].to_numpy())) < 0.1, name


def test_the_reader_sees_nothing_in_the_other_worlds_text() -> None:
    """No marker occurs in the sentence pool every world writes from; only a long answer that happens to repeat a
    pool sentence reads below zero."""
    data, _ = synth.generate(2000, seed=4, world="kol", mean_answer_chars=300)
    gold = synth.read_quality(data["RESPONSE"])
    assert (gold <= 0).all() and (gold < 0).mean() < 0.05


def test_the_knob_changes_only_the_text() -> None:
    """readable is kol plus text_quality: same questions, votes, times and authors, row for row."""
    assert dataclasses.replace(synth.WORLDS["readable"], text_quality=0.0, name="kol", description="") == dataclasses.replace(
        synth.WORLDS["kol"], description=""
    )
    kol, kol_truth = synth.generate(3000, seed=8, world="kol", mean_answer_chars=150)
    readable_data, readable_truth = synth.generate(3000, seed=8, world="readable", mean_answer_chars=150)
    assert readable_data["INSTRUCTION"].equals(kol["INSTRUCTION"])  # METADATA may spell the same values otherwise
    assert readable_truth.select(kol_truth.columns).equals(kol_truth)
    assert not readable_data["RESPONSE"].equals(kol["RESPONSE"])


def test_reader_rules_on_hand_written_text() -> None:
    """Each class, read back from text written by hand (not by the renderer)."""
    opening, signoff = readable.STYLES[0][0], readable.STYLES[0][1]
    good = f"{opening}\n\n第2步，先做预算：按国家统计局的说法，一般需要3年。\n\n因此，要早做准备。\n\n{signoff}"
    bad = f"{opening}\n\n怎么说呢，看情况吧。\n\n这事神马的，酱紫就行。\n\n{signoff}"
    plain = "我觉得还行。今天天气不错。"
    repeated = "我觉得还行。我觉得还行。"
    np.testing.assert_allclose(synth.read_quality([good, bad, plain, repeated, None, ""]), [1.5, -1.5, 0.0, -1.0, 0.0, 0.0])
