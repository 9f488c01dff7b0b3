"""Rows from the plan: the answer texts, the METADATA strings and the truth rows, one write chunk at a time."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl
import pyarrow as pa

from zhihu_rlhf.synth import metadata, readable, text
from zhihu_rlhf.synth.plan import CHUNK_ROWS, DUP_KINDS, MALFORMED_KINDS, Plan


def _texts(plan: Plan, rng: np.random.Generator, rnd: random.Random, start: int, stop: int) -> list[str | None]:
    """Answer texts of rows [start, stop): body, shared quotes, then the planted copies of earlier rows."""
    if plan.world.text_quality:
        texts = _readable_texts(plan, rnd, start, stop)
    else:
        texts = _pool_texts(plan, rng, rnd, start, stop)
    return _copies(plan, rnd, start, stop, texts)


def _body_lengths(plan: Plan, start: int, stop: int) -> np.ndarray:
    n_body = plan.n_sentences[start:stop].copy()
    shared_quote = plan.quote_partner[start:stop] >= 0
    n_body[shared_quote] = np.maximum(n_body[shared_quote], 24)  # own text well longer than the shared quote
    return n_body


def _pool_texts(plan: Plan, rng: np.random.Generator, rnd: random.Random, start: int, stop: int) -> list[str | None]:
    """Body: sentences from the pool interleaved with separators (mostly empty, sometimes paragraph breaks)."""
    pool = plan.sentences
    pool_size = len(pool)
    tokens_pool = pool + text.SEPARATORS
    n_body = _body_lengths(plan, start, stop)
    total = int(n_body.sum())
    tokens = np.empty(2 * total, dtype=np.int64)
    tokens[0::2] = rng.integers(0, pool_size, total)
    tokens[1::2] = pool_size + rng.choice(len(text.SEPARATORS), total, p=text.SEPARATOR_P)
    token_list = tokens.tolist()
    bounds = np.r_[0, np.cumsum(2 * n_body)].tolist()

    texts: list[str | None] = []
    for i in range(stop - start):
        opener = text.opener(rnd) + ("\n\n" if rnd.random() < 0.5 else "")
        body = token_list[bounds[i] : bounds[i + 1]]
        texts.append(opener + "".join(map(tokens_pool.__getitem__, body)))
    return texts


def _readable_texts(plan: Plan, rnd: random.Random, start: int, stop: int) -> list[str | None]:
    """Readable worlds: each answer written from its shown quality, in its author's style (synth/readable.py)."""
    n_body = _body_lengths(plan, start, stop).tolist()
    shown = plan.shown_quality[start:stop].tolist()
    styles = plan.author_style[plan.author[start:stop]].tolist()
    return [readable.answer(rnd, plan.sentences, n, s, style) for n, s, style in zip(n_body, shown, styles, strict=True)]


def _copies(plan: Plan, rnd: random.Random, start: int, stop: int, texts: list[str | None]) -> list[str | None]:
    """Shared quotes, then the planted copies of earlier rows."""
    pool = plan.sentences
    pool_size = len(pool)
    shared_quote = plan.quote_partner[start:stop] >= 0

    # Shared quote: both answers quote the same 150+ char passage at some point but otherwise differ.
    for row in np.flatnonzero(shared_quote).tolist():
        partner = int(plan.quote_partner[start + row])
        if partner < start + row:
            continue
        quote = ""
        while len(quote) < 150:
            quote += pool[rnd.randrange(pool_size)]
        source = rnd.choice(text.QUOTE_SOURCES)
        for r in (row, partner - start):
            answer = texts[r]
            assert answer is not None
            cut = answer.find("。", rnd.randrange(len(answer) // 2 + 1)) + 1
            texts[r] = answer[:cut] + f"\n\n正如{source}所说：“{quote}”\n\n" + answer[cut:]

    # Planted copies, rendered from their (already final) source text.
    for row in np.flatnonzero(plan.dup_source[start:stop] >= 0).tolist():
        answer = texts[int(plan.dup_source[start + row]) - start]
        assert answer is not None
        kind = DUP_KINDS[plan.dup_kind[start + row]]
        if kind == "crosspost_prefix_suffix":
            answer = text.crosspost(rnd, answer, plan.world.crosspost_prefixes)
        elif kind == "punct_edit":
            answer = text.punct_edit(rnd, answer)
        texts[row] = answer

    if plan.world.paragraph_join == "space":
        texts = [text.join_paragraphs_with_spaces(t) if t is not None else None for t in texts]
    return texts


def _metadata(
    plan: Plan, rnd: random.Random, start: int, stop: int, texts: list[str | None]
) -> tuple[list[str], list[int | None]]:
    """METADATA strings of rows [start, stop) and the creation time each denotes (epoch microseconds or None).
    Plants the defects, blanking the response of `blank_response` rows in `texts`."""
    pandas = plan.world.metadata_spelling == "pandas"
    encoded_rows: list[str] = []
    denoted_created: list[int | None] = []
    iso = np.datetime_as_string(plan.created[start:stop].astype("datetime64[s]"), unit="s").tolist()
    for i in range(stop - start):
        r = start + i
        q = int(plan.row_question[r])
        epoch = int(plan.created[r])
        defect = MALFORMED_KINDS[plan.malformed[r]]
        if defect == "legacy_no_ids":
            encoded_rows.append(metadata.legacy_metadata(int(plan.upvotes[r]), epoch))
            denoted_created.append(epoch * 1_000_000)
            continue
        question_id, answer_id = int(plan.question_id[q]), int(plan.answer_id[r])
        upvotes = metadata.upvote_value(int(plan.upvote_form[r]), int(plan.upvotes[r]), rnd)
        time_form = int(plan.time_form[r])
        created = metadata.time_value(time_form, epoch, iso[i], rnd)
        denoted_created.append(None if metadata.TIME_FORMS[time_form] in metadata.NO_TIME_FORMS else epoch * 1_000_000)
        if pandas:
            meta = metadata.pandas_row(
                None if defect == "null_question_id" else question_id,
                None if defect == "null_answer_id" else answer_id,
                None if plan.author_missing[r] else plan.author_token[int(plan.author[r])],
                upvotes, created, f"https://www.zhihu.com/question/{question_id}/answer/{answer_id}",
            )
        else:
            meta = metadata.kol_row(
                metadata.id_value(int(plan.question_id_form[r]), question_id),
                metadata.id_value(int(plan.answer_id_form[r]), answer_id),
                plan.author_token[int(plan.author[r])], upvotes, created,
            )
            if defect == "null_question_id":
                meta["question_id"] = None
            elif defect == "null_answer_id":
                meta["answer_id"] = None
        if defect == "blank_response":
            texts[i] = rnd.choice([None, "", "   ", "\u200b", " \n\t "])
        encoded = json.dumps(meta, ensure_ascii=bool(plan.ascii_json[r]) and not pandas)  # the converter wrote UTF-8
        if defect == "invalid_json":
            encoded = encoded[: rnd.randrange(1, len(encoded) - 1)] if rnd.random() < 0.7 else str(meta)
        encoded_rows.append(encoded)
    return encoded_rows, denoted_created


def render_chunk(plan: Plan, seed: int, start: int, stop: int) -> tuple[pa.Table, pl.DataFrame]:
    """Data rows [start, stop) (INSTRUCTION, RESPONSE, SOURCE, METADATA) and their truth rows."""
    rng = np.random.default_rng([seed, start // CHUNK_ROWS, 7])
    rnd = random.Random(seed * 100_003 + start // CHUNK_ROWS)
    texts = _texts(plan, rng, rnd, start, stop)
    encoded, created = _metadata(plan, rnd, start, stop, texts)
    questions = plan.row_question[start:stop]
    data = pa.table(
        {
            "INSTRUCTION": pa.array([plan.title[q] for q in questions.tolist()], pa.string()),
            "RESPONSE": pa.array(texts, pa.string()),
            "SOURCE": pa.array(["Zhihu"] * (stop - start), pa.string()),
            "METADATA": pa.array(encoded, pa.string()),
        }
    )
    authors = plan.author[start:stop]
    truth = pl.DataFrame(
        {
            "row": pl.Series(np.arange(start, stop), dtype=pl.Int64),
            "question_id": pl.Series(plan.question_id[questions], dtype=pl.Int64),
            "answer_id": pl.Series(plan.answer_id[start:stop], dtype=pl.Int64),
            "quality": pl.Series(plan.quality[start:stop], dtype=pl.Float64),
            "question_group": pl.Series(plan.question_group[questions], dtype=pl.Int64),
            "answer_cluster": pl.Series(plan.answer_cluster[start:stop], dtype=pl.Int64),
            "dup_kind": pl.Series([DUP_KINDS[k] for k in plan.dup_kind[start:stop].tolist()], dtype=pl.String),
            "malformed": pl.Series([MALFORMED_KINDS[k] for k in plan.malformed[start:stop].tolist()], dtype=pl.String),
            "upvotes": pl.Series(plan.upvotes[start:stop], dtype=pl.Int64),
            "created_at": pl.Series(created, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "author": pl.Series(authors, dtype=pl.Int64),
            "author_log_reach": pl.Series(plan.author_log_reach[authors], dtype=pl.Float64),
            "log_exposure": pl.Series(plan.log_exposure[start:stop], dtype=pl.Float64),
            "log_length_effect": pl.Series(plan.log_length_effect[start:stop], dtype=pl.Float64),
        }
    )
    if plan.world.text_quality:
        truth = truth.with_columns(
            author_style=pl.Series(plan.author_style[authors], dtype=pl.Int64),
            shown_quality=pl.Series(plan.shown_quality[start:stop], dtype=pl.Float64),
        )
    return data, truth
