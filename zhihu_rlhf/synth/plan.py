"""The per-row plan: everything about the rows except their text, decided up front for all rows (small
arrays), one step per function in the order the random draws are made.

The draw order is part of the output: the `default` world must give the same bytes for the same seed
as it always did, so steps only add draws behind knobs that `default` leaves off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from zhihu_rlhf.synth import metadata, readable, text
from zhihu_rlhf.synth.worlds import World

CHUNK_ROWS = 20_000  # rows rendered and written at a time; fixed, so output never depends on it

T_QUESTIONS_FROM = int(datetime(2015, 1, 1, tzinfo=timezone.utc).timestamp())
T_QUESTIONS_TO = int(datetime(2022, 12, 31, tzinfo=timezone.utc).timestamp())
T_CRAWL = int(datetime(2023, 4, 1, tzinfo=timezone.utc).timestamp())  # the file's crawl (the latest, where each question has its own)
DAY = 86_400

DUP_KINDS = [None, "exact_copy", "crosspost_prefix_suffix", "punct_edit", "shared_quote", "reasked_question"]
MALFORMED_KINDS = [None, "invalid_json", "null_question_id", "null_answer_id", "blank_response", "legacy_no_ids"]


@dataclass
class Plan:
    """Everything about the rows except their text."""

    world: World
    # per question
    title: list[str]
    question_id: np.ndarray
    question_group: np.ndarray
    reasked: np.ndarray
    question_crawled: np.ndarray  # epoch seconds: when the question's answers and votes were crawled
    # per author
    author_token: list[str]
    author_log_reach: np.ndarray  # log multiplier on the votes of all the author's answers
    # per row
    row_question: np.ndarray
    answer_id: np.ndarray
    answer_cluster: np.ndarray
    author: np.ndarray
    quality: np.ndarray
    log_exposure: np.ndarray  # the exposure term added to the log vote rate
    log_length_effect: np.ndarray  # the length term added to the log vote rate (0 unless world.length_effect)
    created: np.ndarray  # epoch seconds
    n_sentences: np.ndarray
    dup_kind: np.ndarray  # index into DUP_KINDS
    dup_source: np.ndarray  # row the copy was made from, -1 if none
    quote_partner: np.ndarray  # the other row of a shared-quote pair, -1 if none
    malformed: np.ndarray  # index into MALFORMED_KINDS
    upvotes: np.ndarray  # the exact count the METADATA text denotes
    upvote_form: np.ndarray  # index into metadata.UPVOTE_FORMS
    time_form: np.ndarray  # index into metadata.TIME_FORMS
    question_id_form: np.ndarray  # index into metadata.ID_FORMS
    answer_id_form: np.ndarray
    ascii_json: np.ndarray  # json.dumps(ensure_ascii=True) rows: 赞同 appears as \\u8d5e\\u540c
    author_missing: np.ndarray  # METADATA lost the author (pandas: NaN); truth still knows it
    sentences: list[str] = field(default_factory=list)
    # readable worlds only (text_quality > 0), else empty
    author_style: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # per author
    shown_quality: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per row: the quality its text shows


@dataclass
class _Questions:
    counts: np.ndarray  # answers per question
    hot: np.ndarray  # bool per question
    asked: np.ndarray  # epoch seconds
    question_id: np.ndarray
    popularity: np.ndarray  # log votes added to every answer of the question
    title: list[str]
    crawled: np.ndarray  # epoch seconds: when the question's answers and votes were crawled


def _answer_counts(rng: np.random.Generator, rows: int, world: World) -> tuple[np.ndarray, np.ndarray]:
    """Answers per question: the hot questions first, then a capped Zipf tail cut to exactly `rows`."""
    hot_counts = np.zeros(0, dtype=np.int64)
    if world.hot_questions:
        low, high = world.hot_answers
        drawn = np.exp(rng.uniform(np.log(low), np.log(high), world.hot_questions)).astype(np.int64)
        budget = int(world.hot_max_row_share * rows)
        kept = max(1, int(np.searchsorted(np.cumsum(drawn), budget, side="right")))
        hot_counts = np.minimum(drawn[:kept], max(1, budget))
    rest = rows - int(hot_counts.sum())
    counts = hot_counts
    if rest > 0:
        cap = int(min(500, max(20, rows // 50)))
        batches, total = [], 0
        while total < rest:
            batch = np.minimum(rng.zipf(world.zipf_exponent, size=max(1024, rows // 2)), cap)
            batches.append(batch)
            total += int(batch.sum())
        tail = np.concatenate(batches)
        cum = np.cumsum(tail)
        n_tail = int(np.searchsorted(cum, rest)) + 1
        tail = tail[:n_tail].copy()
        tail[-1] -= cum[n_tail - 1] - rest
        counts = np.concatenate([hot_counts, tail])
    hot = np.zeros(len(counts), dtype=bool)
    hot[: len(hot_counts)] = True
    return counts, hot


def _questions(rng: np.random.Generator, rnd: random.Random, rows: int, world: World) -> _Questions:
    """Question counts, ask times, ids (growing with time, as on Zhihu), popularity and titles."""
    counts, hot = _answer_counts(rng, rows, world)
    n_questions = len(counts)
    asked = rng.integers(T_QUESTIONS_FROM, T_QUESTIONS_TO, n_questions)
    question_id = np.empty(n_questions, dtype=np.int64)
    question_id[np.argsort(asked, kind="stable")] = 19_550_224 + np.cumsum(rng.integers(1, 1500, n_questions))
    popularity = rng.normal(0.0, 2.4, n_questions)
    if world.title_template_share:
        templated = rng.random(n_questions) < world.title_template_share
        shared = iter(text.template_titles(rnd, int(templated.sum())))
        # past the templates' TEMPLATE_TITLE_COUNT distinct titles, questions get ordinary ones
        picked = [next(shared, None) if use_template else None for use_template in templated.tolist()]
        titles = [title if title is not None else text.random_title(rnd) for title in picked]
    else:
        titles = [text.random_title(rnd) for _ in range(n_questions)]
    crawled = np.full(n_questions, T_CRAWL, dtype=np.int64)
    if world.crawl_per_question:
        crawled = asked + np.maximum(DAY, (rng.random(n_questions) * (T_CRAWL - asked)).astype(np.int64))
    return _Questions(counts, hot, asked, question_id, popularity, titles, crawled)


def _reasks(
    rng: np.random.Generator, rnd: random.Random, world: World, question_id: np.ndarray, titles: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Re-asked questions: later questions whose title is an earlier one's, changed a little (edits `titles`).
    Returns (question_group: smallest question_id of the group, reasked: bool per question)."""
    n_questions = len(question_id)
    question_group = question_id.copy()
    reasked = np.zeros(n_questions, dtype=bool)
    n_reask = int(round(world.reask_share * n_questions)) if n_questions >= 4 else 0
    n_cosmetic = int(round(world.cosmetic_reask_share * n_questions)) if n_questions >= 4 else 0
    n_cosmetic = min(n_cosmetic, n_questions // 2 - n_reask)  # each re-ask needs an original of its own
    n_pairs = n_reask + n_cosmetic
    picked = rng.choice(n_questions, 2 * n_pairs, replace=False)
    a, b = picked[:n_pairs], picked[n_pairs:]
    original = np.where(question_id[a] < question_id[b], a, b)
    again = np.where(question_id[a] < question_id[b], b, a)
    question_group[again] = question_id[original]
    reasked[again] = True
    for i, (o, r) in enumerate(zip(original.tolist(), again.tolist(), strict=True)):
        titles[r] = text.reask_title(rnd, titles[o]) if i < n_reask else text.cosmetic_reask(rnd, titles[o])
    return question_group, reasked


@dataclass
class _Authors:
    author: np.ndarray  # per row
    token: list[str]  # per author
    log_reach: np.ndarray  # per author
    skill: np.ndarray  # per author, N(0, 1): their share of answer quality
    popularity: np.ndarray  # per author: the part of log reach that is not skill


def _authors(rng: np.random.Generator, rnd: random.Random, rows: int, world: World) -> _Authors:
    """Who wrote each row, and each author's reach (and skill, where the world has it)."""
    if world.authors_repeat:
        n_authors = max(20, int(rows // world.answers_per_author))
        activity = rng.lognormal(0.0, world.author_activity_sd, n_authors)
        followers = np.round(np.exp(rng.normal(4.5, 1.8, n_authors) + 0.6 * np.log(activity)))
        author = rng.choice(n_authors, rows, p=activity / activity.sum())
    else:
        n_authors = rows
        followers = np.round(np.exp(rng.normal(4.5, 1.8, n_authors)))
        author = rng.permutation(rows)
    tokens = [text.author_token(rnd) for _ in range(n_authors)]
    if world.unique_author_tokens:
        tokens = text.distinct_tokens(tokens)
    if world.author_reach_sd is None:
        log_reach = 0.2 * np.log1p(followers)
        return _Authors(author, tokens, log_reach, np.zeros(n_authors), log_reach)
    skill = rng.standard_normal(n_authors)
    popularity = rng.standard_normal(n_authors)
    share = world.reach_quality_share
    log_reach = world.author_reach_sd * (np.sqrt(share) * skill + np.sqrt(1.0 - share) * popularity)
    return _Authors(author, tokens, log_reach, skill, popularity)


def _answer_times(rng: np.random.Generator, world: World, questions: _Questions, row_question: np.ndarray) -> np.ndarray:
    """Answer times cluster days-to-months after the question (hot ones within weeks); never after its crawl."""
    rows = len(row_question)
    asked = questions.asked[row_question]
    delay_days = np.exp(rng.normal(np.log(15.0), 1.8, rows))
    if world.hot_questions:
        in_window = questions.hot[row_question] & (rng.random(rows) < world.hot_in_window_share)
        delay_days[in_window] = rng.random(int(in_window.sum())) * world.hot_window_days
    created = asked + (delay_days * DAY).astype(np.int64)
    crawled = questions.crawled[row_question]
    late = created > crawled
    created[late] = asked[late] + (rng.random(int(late.sum())) * (crawled[late] - asked[late])).astype(np.int64)
    return created


def _answer_lengths(
    rng: np.random.Generator, rnd: random.Random, rows: int, mean_answer_chars: int, quality_lengthening: np.ndarray | None
) -> tuple[list[str], np.ndarray]:
    """The sentence pool and, per row, a lognormal number of body sentences around the requested mean, times
    exp(quality_lengthening) where the world makes better answers longer."""
    sentences = text.sentence_pool(rnd, int(np.clip(rows * mean_answer_chars / 30 / 8, 20_000, 400_000)))
    sentence_chars = float(np.mean([len(s) for s in sentences])) + 0.6  # + mean separator length
    target = max(1.0, (mean_answer_chars - 25) / sentence_chars)
    log_sentences = rng.normal(np.log(target) - 0.5, 1.0, rows)
    if quality_lengthening is not None:  # added after the draw, so worlds without it keep their exact floats
        log_sentences = log_sentences + quality_lengthening
    n_sentences = np.clip(np.round(np.exp(log_sentences)), 1, 30 * target + 1).astype(np.int64)
    return sentences, n_sentences


def _log_length_effect(world: World, n_sentences: np.ndarray, dup_source: np.ndarray, quote_partner: np.ndarray) -> np.ndarray:
    """The length term of log votes: length_effect * (log body sentences - their mean over rows), for the text as
    rendered (a copy is as long as its source; a shared-quote answer has at least 24 sentences, see render.py)."""
    if not world.length_effect:
        return np.zeros(len(n_sentences))
    rendered = np.where(quote_partner >= 0, np.maximum(n_sentences, 24), n_sentences)
    log_length = np.log(rendered[np.where(dup_source >= 0, dup_source, np.arange(len(n_sentences)))])
    return world.length_effect * (log_length - log_length.mean())


def _duplicates(
    rng: np.random.Generator, row_question: np.ndarray, reasked: np.ndarray, n_sentences: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted near-duplicates, each within one write chunk (so the copy can be rendered from its source).
    Returns (dup_kind, dup_source, quote_partner)."""
    rows = len(row_question)
    dup_kind = np.zeros(rows, dtype=np.int8)
    dup_source = np.full(rows, -1, dtype=np.int64)
    quote_partner = np.full(rows, -1, dtype=np.int64)
    dup_kind[reasked[row_question]] = DUP_KINDS.index("reasked_question")
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        eligible = start + np.flatnonzero(~reasked[row_question[start:stop]])
        eligible = eligible[rng.permutation(len(eligible))]
        n_copies = int(round(0.03 * len(eligible)))
        n_quote_pairs = int(round(0.003 * len(eligible)))
        copies = eligible[:n_copies]
        quoted = eligible[n_copies : n_copies + 2 * n_quote_pairs]
        sources = eligible[n_copies + 2 * n_quote_pairs :]
        sources = sources[n_sentences[sources] >= 8]  # long enough that a prefix/suffix stays a near-copy
        if len(sources) == 0:
            continue
        dup_kind[copies] = rng.choice([1, 2, 3], len(copies), p=[0.35, 0.35, 0.30])
        dup_source[copies] = rng.choice(sources, len(copies))
        # A quarter of copies go to the same question as their source when it has another eligible answer.
        same_question: dict[int, list[int]] = {}
        for s in sources.tolist():
            same_question.setdefault(int(row_question[s]), []).append(s)
        for c in copies[rng.random(len(copies)) < 0.25].tolist():
            options = same_question.get(int(row_question[c]), [])
            if options:
                dup_source[c] = options[int(rng.integers(len(options)))]
        dup_kind[quoted] = DUP_KINDS.index("shared_quote")
        quote_partner[quoted[0::2]] = quoted[1::2]
        quote_partner[quoted[1::2]] = quoted[0::2]
    return dup_kind, dup_source, quote_partner


def _clusters(answer_id: np.ndarray, dup_source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(answer_cluster: smallest answer_id of each row's near-duplicate cluster, is_source: bool per row)."""
    rows = len(answer_id)
    is_copy = dup_source >= 0
    root = np.where(is_copy, dup_source, np.arange(rows))
    cluster_min = answer_id.copy()
    np.minimum.at(cluster_min, root, answer_id)
    is_source = np.zeros(rows, dtype=bool)
    is_source[dup_source[is_copy]] = True
    return cluster_min[root], is_source


def _defects(rng: np.random.Generator, world: World, dup_kind: np.ndarray, is_source: np.ndarray) -> np.ndarray:
    """Malformed rows (~1%) and the older crawler's rows, never part of a planted cluster."""
    rows = len(dup_kind)
    malformed = np.zeros(rows, dtype=np.int8)
    clean = np.flatnonzero((dup_kind == 0) & ~is_source)
    bad = rng.choice(clean, min(len(clean), int(round(0.01 * rows))), replace=False)
    malformed[bad] = rng.choice([1, 2, 3, 4], len(bad), p=[0.4, 0.15, 0.15, 0.3])
    if world.legacy_row_share:
        clean = np.flatnonzero((dup_kind == 0) & ~is_source & (malformed == 0))
        legacy = rng.choice(clean, min(len(clean), int(round(world.legacy_row_share * rows))), replace=False)
        malformed[legacy] = MALFORMED_KINDS.index("legacy_no_ids")
    return malformed


def _log_exposure(
    world: World, row_question: np.ndarray, created: np.ndarray, crawled: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exposure terms of log votes: (rank, lateness, crawl age). Earlier answers to a question and
    answers written soon after its first answer collect more votes (the very first ones a bonus, where the world
    has one); so do answers up longer before their crawl (`crawled`, per row)."""
    rows = len(row_question)
    order = np.lexsort((created, row_question))
    sorted_q = row_question[order]
    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_q)) + 1]
    group_sizes = np.diff(np.r_[group_start, rows])
    rank = np.empty(rows, dtype=np.int64)
    rank[order] = np.arange(rows) - np.repeat(group_start, group_sizes)
    first_answer = np.repeat(created[order][group_start], group_sizes)
    days_after_first = np.empty(rows)
    days_after_first[order] = (created[order] - first_answer) / DAY
    by_rank = world.exposure_strength * (-0.3 * np.log1p(rank))
    if world.early_answer_bonus:
        by_rank = by_rank + world.early_answer_bonus * (rank < world.early_answers)
    by_lateness = world.exposure_strength * (-0.35 * np.log1p(days_after_first / 7.0))
    by_age = world.crawl_age_effect * np.log1p((crawled - created) / DAY / 30.0)
    return by_rank, by_lateness, by_age


def _choose_forms(rng: np.random.Generator, allowed: np.ndarray, weights: list[float]) -> np.ndarray:
    """Per row, one form index among the allowed ones (allowed: rows x forms bool), by weight."""
    w = allowed * np.asarray(weights)
    cum = np.cumsum(w, axis=1)
    u = rng.random(len(allowed)) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1)


def _upvote_forms(rng: np.random.Generator, world: World, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How METADATA writes each count, and what that text denotes (万/w rounded to 1,000s, k to 100s).
    Every form the spelling uses that fits some row of a chunk appears in that chunk."""
    rows = len(votes)
    v = votes
    weights = metadata.UPVOTE_FORM_WEIGHTS[world.metadata_spelling]
    fits = np.stack(
        [
            np.ones(rows, bool), (v > 0) & (v < 10_000), (v > 0) & (v < 10_000), v >= 10_000, v == 0,
            np.ones(rows, bool), v >= 1_000, v >= 10_000,
        ],
        axis=1,
    )
    allowed = fits & (np.asarray(weights) > 0)
    upvote_form = _choose_forms(rng, allowed, weights).astype(np.int8)
    n_forms = len(metadata.UPVOTE_FORMS)
    for start in range(0, rows, CHUNK_ROWS):
        for form in range(n_forms):
            chunk_forms = upvote_form[start : start + CHUNK_ROWS]
            if not (chunk_forms == form).any() and np.bincount(chunk_forms).max() > 1:
                candidates = start + np.flatnonzero(allowed[start : start + CHUNK_ROWS, form])
                candidates = candidates[np.bincount(chunk_forms, minlength=n_forms)[upvote_form[candidates]] > 1]
                if len(candidates):
                    upvote_form[candidates[rng.integers(len(candidates))]] = form
    upvotes = v.copy()
    in_thousands = (upvote_form == metadata.UPVOTE_FORMS.index("wan")) | (upvote_form == metadata.UPVOTE_FORMS.index("w"))
    upvotes[in_thousands] = (v[in_thousands] + 500) // 1000 * 1000
    in_hundreds = upvote_form == metadata.UPVOTE_FORMS.index("k")
    upvotes[in_hundreds] = (v[in_hundreds] + 50) // 100 * 100
    return upvote_form, upvotes


def make_plan(rows: int, seed: int, mean_answer_chars: int, world: World) -> Plan:
    """The whole plan for `rows` rows of `world`."""
    rng = np.random.default_rng(seed)
    rnd = random.Random(seed)  # text-level choices (faster than numpy for one value at a time)

    questions = _questions(rng, rnd, rows, world)
    question_group, reasked = _reasks(rng, rnd, world, questions.question_id, questions.title)
    q_order = rng.permutation(len(questions.counts))  # rows grouped by question, questions in random order
    row_question = np.repeat(q_order, questions.counts[q_order])

    authors = _authors(rng, rnd, rows, world)
    author = authors.author
    created = _answer_times(rng, world, questions, row_question)
    answer_id = np.empty(rows, dtype=np.int64)
    answer_id[np.argsort(created, kind="stable")] = 10_000_000 + np.cumsum(rng.integers(1, 2500, rows))
    quality = rng.normal(0.0, 1.0, rows)
    if world.author_quality_sd:
        s = world.author_quality_sd
        quality = s * authors.skill[author] + np.sqrt(1.0 - s * s) * quality
    quality_lengthening = world.quality_length * quality if world.quality_length else None
    sentences, n_sentences = _answer_lengths(rng, rnd, rows, mean_answer_chars, quality_lengthening)

    dup_kind, dup_source, quote_partner = _duplicates(rng, row_question, reasked, n_sentences)
    is_copy = dup_source >= 0
    quality[is_copy] = quality[dup_source[is_copy]]  # same content, same true quality
    if world.authors_repeat:
        author[is_copy] = author[dup_source[is_copy]]  # cross-posts come from the same author
    answer_cluster, is_source = _clusters(answer_id, dup_source)
    malformed = _defects(rng, world, dup_kind, is_source)

    by_rank, by_lateness, by_age = _log_exposure(world, row_question, created, questions.crawled[row_question])
    log_length_effect = _log_length_effect(world, n_sentences, dup_source, quote_partner)
    log_rate = (  # summed in this order so that `default` keeps its exact floats
        1.0
        + questions.popularity[row_question]
        + world.quality_effect * quality
        + authors.log_reach[author]
        + by_rank
        + by_lateness
        + rng.normal(0.0, world.luck_sd, rows)
    )
    if world.crawl_age_effect:
        log_rate += by_age
    if world.length_effect:
        log_rate += log_length_effect
    true_votes = rng.poisson(np.exp(np.minimum(log_rate, np.log(3e5)))).astype(np.int64)

    upvote_form, upvotes = _upvote_forms(rng, world, true_votes)
    legacy = malformed == MALFORMED_KINDS.index("legacy_no_ids")
    upvotes[legacy] = true_votes[legacy]  # the older crawler wrote the exact count
    time_shares = metadata.TIME_FORM_SHARES[world.metadata_spelling]
    time_forms = np.asarray([metadata.TIME_FORMS.index(name) for name in time_shares], dtype=np.int8)
    time_form = time_forms[rng.choice(len(time_shares), rows, p=list(time_shares.values()))]
    question_id_form = rng.choice(3, rows, p=[0.4, 0.4, 0.2]).astype(np.int8)
    answer_id_form = rng.choice(3, rows, p=[0.4, 0.4, 0.2]).astype(np.int8)
    ascii_json = rng.random(rows) < 0.1
    author_missing = np.zeros(rows, dtype=bool)
    if metadata.AUTHOR_MISSING_SHARE[world.metadata_spelling]:
        author_missing = rng.random(rows) < metadata.AUTHOR_MISSING_SHARE[world.metadata_spelling]

    author_style, shown_quality = _readable(rng, world, authors.popularity, quality, dup_source)
    return Plan(
        world=world, title=questions.title, question_id=questions.question_id, question_group=question_group,
        reasked=reasked, question_crawled=questions.crawled, author_token=authors.token,
        author_log_reach=authors.log_reach, row_question=row_question,
        answer_id=answer_id, answer_cluster=answer_cluster, author=author, quality=quality,
        log_exposure=by_rank + by_lateness + by_age, log_length_effect=log_length_effect, created=created, n_sentences=n_sentences, dup_kind=dup_kind,
        dup_source=dup_source, quote_partner=quote_partner, malformed=malformed, upvotes=upvotes,
        upvote_form=upvote_form, time_form=time_form, question_id_form=question_id_form,
        answer_id_form=answer_id_form, ascii_json=ascii_json, author_missing=author_missing, sentences=sentences,
        author_style=author_style, shown_quality=shown_quality,
    )


def _readable(
    rng: np.random.Generator, world: World, popularity: np.ndarray, quality: np.ndarray, dup_source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Readable worlds (text_quality > 0): (each author's style, each row's shown quality); empty otherwise.
    Drawn last, so that every other draw is the same as without the knob.

    Styles follow the popular part of reach (noisily): popular authors share a few styles, so vote pairs favour
    them, while a style says nothing about quality. Copies show what their source shows (quality is copied)."""
    if not world.text_quality:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    noisy = popularity + rng.normal(0.0, 0.5 * popularity.std() + 1e-9, len(popularity))
    ranks = np.argsort(np.argsort(noisy, kind="stable"), kind="stable")
    author_style = (ranks * readable.N_STYLES // len(popularity)).astype(np.int64)
    t = world.text_quality
    shown = t * quality + np.sqrt(1.0 - t * t) * rng.standard_normal(len(quality))
    is_copy = dup_source >= 0
    shown[is_copy] = shown[dup_source[is_copy]]
    return author_style, shown
