"""Near-duplicate questions and answers: question groups and answer clusters, without dropping a row.

Zhihu repeats itself in two ways. A question is asked again under a new id ("如何评价X？" / "如何看待X?"),
and a KOL cross-posts one answer to several questions with small edits ("谢邀。" in front, "编辑于
2022-01-01" behind, a changed comma). `dedupe` adds two columns to the canonical answer table:

    question_group  smallest question_id among the titles that are near-duplicates of each other
    answer_cluster  smallest answer_id among the answers that are near-duplicates of each other (global,
                    across questions)

Both are connected components of a "near-duplicate" graph, so the ids do not depend on row order.

How a million answers are compared without comparing all pairs (mode "near"):
1. Exact: identical answer texts (and identical folded titles) are merged first, by hash.
2. Blocking: each distinct text is reduced to a few content-anchored character shingles. The text is
   folded (NFKC, lower case, punctuation/symbols/whitespace dropped, so "？" and "?" agree) and cut into
   overlapping k-character shingles; a shingle is kept when its hash is 0 modulo `*_sample` (the choice
   depends on the content only, so a prefix that shifts the text keeps the same shingles), plus each
   text's smallest-hash shingle so that short texts get one too. Answers use a window of
   `answer_window` characters from each end: a cross-post prefix only touches the head and a suffix the
   tail, and a long answer's near-copy shares both. Two texts become a candidate pair when they share a
   kept shingle that at most `max_bucket` texts contain; shingles in more texts (boilerplate such as
   "谢邀人在美国刚下飞机", stock phrases, famous quotes) say nothing about a pair and are ignored.
3. Verification with rapidfuzz: `fuzz.ratio` (normalised Indel similarity, 0-100, = 100 * (1 -
   (insertions + deletions) / (len_a + len_b))) on each candidate pair, `process.cpdist(workers=-1)`.
   Answers are compared as written (whole normalised text, so two answers that share a long quote but
   differ elsewhere stay apart); titles are compared folded, and two titles whose numbers differ
   ("2022年" vs "2023年", "iPhone 14" vs "15") are never merged.
4. Union-find over the accepted pairs gives the groups; each gets the smallest id of its members.

Mode "exact" stops after step 1; mode "off" gives every question and answer its own id.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel

from zhihu_rlhf.errors import UserError

DedupeMode = Literal["exact", "near", "off"]

# Folding for comparison: what is left after NFKC and lower-casing, without punctuation (P*), symbols
# (S*), separators/whitespace (Z*) and control characters (C*, which includes newlines).
_DROP_PATTERN = r"[\p{P}\p{S}\p{Z}\p{C}]"
_NUMBER_PATTERN = r"\d+"
_CHUNK_ROWS = 50_000  # texts shingled at a time (bounds the memory of the numpy arrays)


@dataclass
class DedupeOptions:
    """How questions and answers are merged (see the module docstring for the method)."""

    mode: DedupeMode = "near"
    """"near": exact + fuzzy near-duplicates; "exact": identical answer text, identical folded title only;
    "off": every question_id and answer_id stands alone."""
    answer_threshold: float = 90.0
    """Two answers are near-duplicates when rapidfuzz fuzz.ratio on their full texts is at least this
    (0-100). 90 keeps a 250-character answer with a 40-character greeting and edit stamp added, and
    rejects two answers that share a quote but otherwise differ."""
    question_threshold: float = 85.0
    """Two titles are near-duplicates when fuzz.ratio on their folded forms is at least this (0-100) and
    their numbers agree. 85 accepts one swapped phrase in a 20-character title ("如何评价" -> "如何看待")."""
    answer_window: int = 64
    """Characters taken from each end of an answer for blocking (the head sees prefixes, the tail suffixes)."""
    answer_shingle: int = 8
    """Shingle length, in folded characters, for answer blocking (long enough to be specific to a text)."""
    answer_sample: int = 4
    """Keep answer shingles whose hash is 0 modulo this (about 1 in `answer_sample`), chosen by content."""
    question_shingle: int = 3
    """Shingle length for title blocking (titles are short; every shingle is kept)."""
    max_bucket: int = 32
    """A shingle shared by more texts than this is treated as boilerplate and not used for blocking."""
    min_overlap: float = 0.2
    """Candidates must have at least this Jaccard overlap of their informative kept shingles (those in at
    most max_bucket texts) before rapidfuzz compares them (near-copies share most of them; texts that
    merely share one sentence share few)."""
    common_bigram_share: float = 0.001
    """Titles: a character bigram in at least this share of distinct titles (and at least 5) is stock
    wording ("如何", "评价", "为什"). Two titles merge only if, on at least one side, every character that
    the other title lacks sits in such a bigram: "现在后悔吗" -> "如今后悔吗" is a rewording, while
    "如何评价张三" / "如何评价李四" (a name on both sides) are two questions."""


def dedupe(answers: pl.DataFrame, opts: DedupeOptions) -> tuple[pl.DataFrame, dict]:
    """Add question_group and answer_cluster (Int64) to the canonical answer table; every row is kept.

    Returns (table, stats) with stats = {"mode", "question_groups", "questions_merged" (question ids folded
    into another id's group), "answer_clusters", "answers_merged" (answers in a cluster with another
    answer), "answer_threshold", "question_threshold"}.
    """
    _check(answers, opts)
    if opts.mode == "off":
        table = answers.with_columns(question_group=pl.col("question_id"), answer_cluster=pl.col("answer_id"))
    else:
        # Both steps return one id per row, so the (large) text table is never joined or copied.
        near = opts.mode == "near"
        table = answers.with_columns(
            question_group=_question_groups(answers.select("question_id", "question"), opts, near),
            answer_cluster=_answer_clusters(answers, opts, near),
        )
    return table, _stats(table, opts)


def _check(answers: pl.DataFrame, opts: DedupeOptions) -> None:
    if opts.mode not in ("exact", "near", "off"):
        raise UserError(f"--dedupe must be one of exact, near, off; got {opts.mode!r}")
    for name in ("answer_threshold", "question_threshold"):
        value = getattr(opts, name)
        if not 0.0 <= value <= 100.0:
            raise UserError(f"--{name.replace('_', '-')} must be a rapidfuzz score in [0, 100], got {value}")
    for name in ("answer_window", "answer_shingle", "answer_sample", "question_shingle"):
        if getattr(opts, name) < 1:
            raise UserError(f"dedupe option {name} must be at least 1, got {getattr(opts, name)}")
    if opts.max_bucket < 2:
        raise UserError(f"dedupe option max_bucket must be at least 2, got {opts.max_bucket}")
    missing = [c for c in ("question_id", "answer_id", "question", "answer") if c not in answers.columns]
    if missing:
        raise UserError(f"dedupe needs the canonical answer table; missing column(s): {', '.join(missing)}")


def _stats(table: pl.DataFrame, opts: DedupeOptions) -> dict:
    questions = table.select("question_id", "question_group").unique()
    cluster_sizes = table.group_by("answer_cluster").len()
    return {
        "mode": opts.mode,
        "question_groups": questions["question_group"].n_unique(),
        "questions_merged": int((questions["question_id"] != questions["question_group"]).sum()),
        "answer_clusters": cluster_sizes.height,
        "answers_merged": int(cluster_sizes.filter(pl.col("len") > 1)["len"].sum()),
        "answer_threshold": opts.answer_threshold,
        "question_threshold": opts.question_threshold,
    }


# ---------------------------------------------------------------------------------------------
# Questions


def _fold(text: pl.Expr) -> pl.Expr:
    """The comparison key: NFKC (full-width -> half-width), lower case, no punctuation or whitespace."""
    return text.str.normalize("NFKC").str.to_lowercase().str.replace_all(_DROP_PATTERN, "")


def _question_groups(questions: pl.DataFrame, opts: DedupeOptions, near: bool) -> pl.Series:
    """The question_group of each row."""
    ids = questions.group_by("question_id").agg(pl.col("question").min())  # one title per id
    ids = ids.with_columns(key=_fold(pl.col("question")))
    # An id whose title folds to nothing (only punctuation) is compared as written.
    ids = ids.with_columns(key=pl.when(pl.col("key") == "").then(pl.col("question")).otherwise("key"))
    keys = ids.group_by("key").agg(first_id=pl.col("question_id").min()).sort("first_id")
    ids = ids.join(keys, on="key")
    if near and keys.height > 1:
        key_list = keys["key"]
        a, b = _candidate_pairs(key_list, opts.question_shingle, 1, opts.max_bucket, opts.min_overlap)
        accepted = _verify(key_list, a, b, opts.question_threshold)
        a, b = a[accepted], b[accepted]
        numbers = key_list.str.extract_all(_NUMBER_PATTERN).list.join(",")
        same_numbers = (numbers.gather(a) == numbers.gather(b)).to_numpy()
        a, b = a[same_numbers], b[same_numbers]
        wording_only = _differ_in_stock_wording(key_list, a, b, opts.common_bigram_share)
        root = _union(keys.height, a[wording_only], b[wording_only])
        first_id = keys["first_id"].to_numpy()
        group_of_key = np.full(keys.height, np.iinfo(np.int64).max)
        np.minimum.at(group_of_key, root, first_id)
        keys = keys.with_columns(question_group=pl.Series(group_of_key[root], dtype=pl.Int64))
    else:
        keys = keys.with_columns(question_group=pl.col("first_id"))
    group_of_id = ids.join(keys.select("key", "question_group"), on="key").select("question_id", "question_group")
    return questions.select("question_id").join(group_of_id, on="question_id", how="left", maintain_order="left")[
        "question_group"
    ]


# ---------------------------------------------------------------------------------------------
# Answers


def _answer_clusters(answers: pl.DataFrame, opts: DedupeOptions, near: bool) -> pl.Series:
    """The answer_cluster of each row.

    Works on row numbers into the answer column: the texts themselves (gigabytes) are never copied;
    blocking reads a short window of each, verification only the candidate pairs.
    """
    texts = answers["answer"]
    # Exact copies first: identical texts share a 128-bit fingerprint (two independently seeded hashes,
    # so a collision is not a practical concern); each distinct text is represented by its smallest id.
    rows = pl.DataFrame(
        {"answer_id": answers["answer_id"], "hash_0": texts.hash(seed=0), "hash_1": texts.hash(seed=1)}
    ).with_row_index("row")
    distinct = (
        rows.group_by("hash_0", "hash_1")
        .agg(first_id=pl.col("answer_id").min(), first_row=pl.col("row").sort_by("answer_id").first())
        .sort("first_id")
        .with_row_index("text")
    )
    text_of_row = rows.join(distinct, on=["hash_0", "hash_1"], how="left", maintain_order="left")["text"].to_numpy()
    first_id = distinct["first_id"].to_numpy()
    if not near:
        return pl.Series(first_id[text_of_row], dtype=pl.Int64)
    first_row = distinct["first_row"].to_numpy()
    a, b = _candidate_pairs(
        _ends(texts, opts.answer_window).gather(first_row), opts.answer_shingle, opts.answer_sample,
        opts.max_bucket, opts.min_overlap,
    )
    accepted = _verify(texts, first_row[a], first_row[b], opts.answer_threshold)
    root = _union(len(first_id), a[accepted], b[accepted])
    cluster_of_text = np.full(len(first_id), np.iinfo(np.int64).max)
    np.minimum.at(cluster_of_text, root, first_id)
    return pl.Series(cluster_of_text[root][text_of_row], dtype=pl.Int64)


def _ends(texts: pl.Series, window: int) -> pl.Series:
    """The first and last `window` characters of each text (the whole text when it is short)."""
    long = texts.str.len_chars() > 2 * window
    return pl.select(
        pl.when(long).then(texts.str.slice(0, window) + "\n" + texts.str.slice(-window)).otherwise(texts)
    ).to_series()


# ---------------------------------------------------------------------------------------------
# Blocking: content-anchored shingles -> candidate pairs


@lru_cache(maxsize=1)
def _fold_table() -> np.ndarray:
    """Code point -> folded code point, for every code point (0 = dropped).

    Same folding as `_fold` (NFKC, lower case, drop punctuation/symbols/separators/controls), per
    character, so that blocking runs in numpy without a per-row Python loop. Only the Basic
    Multilingual Plane is folded; rarer planes (emoji, historic scripts) are kept as they are.
    """
    table = np.arange(0x110000, dtype=np.uint32)
    for code in range(0x10000):
        folded = unicodedata.normalize("NFKC", chr(code)).lower()
        keep = len(folded) == 1 and unicodedata.category(folded)[0] not in "PSZC"
        table[code] = ord(folded) if keep else 0
    return table


def _folded_codes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """All texts' folded code points, concatenated, and the row each belongs to (both sorted by row)."""
    strings = texts.to_list()
    codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32)
    rows = np.repeat(np.arange(len(strings)), texts.str.len_chars().to_numpy())
    codes = _fold_table()[codes]
    kept = codes != 0
    return codes[kept], rows[kept]


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a polynomial hash over all 64 bits."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _kept_shingles(texts: pl.Series, first_row: int, shingle: int, sample: int) -> pl.DataFrame:
    """(row, key): the kept shingle hashes of each text; rows numbered from `first_row`."""
    codes, rows = _folded_codes(texts)
    n = len(codes) - shingle + 1
    if n <= 0:
        return pl.DataFrame({"row": [], "key": []}, schema={"row": pl.Int64, "key": pl.UInt64})
    with np.errstate(over="ignore"):
        h = np.zeros(n, dtype=np.uint64)
        for j in range(shingle):  # polynomial hash of each k-character window
            h = h * np.uint64(1_000_003) + codes[j : j + n].astype(np.uint64)
        h = _mix(h)
    valid = rows[:n] == rows[shingle - 1 :]  # the window lies inside one text
    h, shingle_rows = h[valid], rows[:n][valid]
    sampled = h % np.uint64(sample) == 0
    # Plus each text's smallest shingle (rows are contiguous and sorted), so short texts get one too.
    row_starts = np.r_[0, np.flatnonzero(np.diff(shingle_rows)) + 1] if len(h) else np.empty(0, np.int64)
    return pl.DataFrame(
        {
            "row": np.concatenate([shingle_rows[sampled], shingle_rows[row_starts]]).astype(np.int64) + first_row,
            "key": np.concatenate([h[sampled], np.minimum.reduceat(h, row_starts) if len(h) else h]),
        }
    )


def _candidate_pairs(
    texts: pl.Series, shingle: int, sample: int, max_bucket: int, min_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) of `texts` that share a kept shingle held by at most `max_bucket` rows and whose
    kept shingles overlap (Jaccard) by at least `min_overlap`."""
    chunks = [
        _kept_shingles(texts.slice(start, _CHUNK_ROWS), start, shingle, sample)
        for start in range(0, len(texts), _CHUNK_ROWS)
    ]
    keys = pl.concat(chunks).unique()
    # Overlap is measured on informative shingles only (held by at most max_bucket texts).
    sizes = keys.group_by("key").agg(size=pl.len()).filter(pl.col("size") <= max_bucket)
    informative = keys.join(sizes, on="key")
    keys_per_row = informative.group_by("row").agg(n=pl.len())
    members = informative.filter(pl.col("size") >= 2).select("row", "key")
    pairs = (
        members.join(members, on="key", suffix="_b")
        .filter(pl.col("row") < pl.col("row_b"))
        .group_by("row", "row_b")
        .agg(shared=pl.len())
        .join(keys_per_row, on="row")
        .join(keys_per_row, left_on="row_b", right_on="row", suffix="_b")
        .filter(pl.col("shared") >= min_overlap * (pl.col("n") + pl.col("n_b") - pl.col("shared")))
        .sort("row", "row_b")
    )
    return pairs["row"].to_numpy(), pairs["row_b"].to_numpy()


# ---------------------------------------------------------------------------------------------
# Verification and union-find


def _verify(texts: pl.Series, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Which pairs of rows (a[i], b[i]) of `texts` have a fuzz.ratio of at least `threshold`."""
    accepted = np.zeros(len(a), dtype=bool)
    if len(a) == 0:
        return accepted
    len_a = texts.gather(a).str.len_chars().to_numpy().astype(np.float64)
    len_b = texts.gather(b).str.len_chars().to_numpy().astype(np.float64)
    # fuzz.ratio can reach at most 200 * shorter / (sum of lengths): skip pairs that cannot pass.
    possible = np.flatnonzero(200.0 * np.minimum(len_a, len_b) / np.maximum(len_a + len_b, 1.0) >= threshold)
    if len(possible) == 0:
        return accepted
    scores = process.cpdist(
        texts.gather(a[possible]).to_list(), texts.gather(b[possible]).to_list(),
        scorer=fuzz.ratio, score_cutoff=threshold, workers=-1,
    )
    accepted[possible] = scores >= threshold
    return accepted


def _differ_in_stock_wording(keys: pl.Series, a: np.ndarray, b: np.ndarray, common_share: float) -> np.ndarray:
    """For each title pair: is what differs stock wording (see DedupeOptions.common_bigram_share)?

    A Python loop over verified title pairs only (a few per re-asked question), not over rows.
    """
    if len(a) == 0:
        return np.zeros(0, dtype=bool)
    codes, rows = _folded_codes(keys)
    same_row = rows[:-1] == rows[1:]
    bigrams = (codes[:-1].astype(np.uint64) << np.uint64(32)) | codes[1:].astype(np.uint64)
    per_title = pl.DataFrame({"row": rows[:-1][same_row], "bigram": bigrams[same_row]}).unique()
    counts = per_title.group_by("bigram").len()
    min_titles = max(5.0, common_share * len(keys))
    common = set(counts.filter(pl.col("len") >= min_titles)["bigram"].to_list())

    def stock(text: str, position: int) -> bool:
        around = (text[max(position - 1, 0) : position + 1], text[position : position + 2])
        return any(len(g) == 2 and ((ord(g[0]) << 32) | ord(g[1])) in common for g in around)

    texts_a, texts_b = keys.gather(a).to_list(), keys.gather(b).to_list()
    result = np.zeros(len(a), dtype=bool)
    for i, (x, y) in enumerate(zip(texts_a, texts_b)):
        ops = Indel.editops(x, y)
        removed = [stock(x, op.src_pos) for op in ops if op.tag == "delete"]
        added = [stock(y, op.dest_pos) for op in ops if op.tag == "insert"]
        result[i] = (bool(removed) and all(removed)) or (bool(added) and all(added))
    return result


def _union(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (a[i], b[i]): each node's root = smallest node."""
    parent = np.arange(n)
    while True:
        # Point every node at its root (pointer jumping), then hook the larger root of each edge
        # under the smaller one; repeat until no edge joins two roots.
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        root_a, root_b = parent[a], parent[b]
        differ = root_a != root_b
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(root_a, root_b)[differ], np.minimum(root_a, root_b)[differ])
