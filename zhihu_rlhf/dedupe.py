"""Near-duplicate questions and answers: question groups and answer clusters, without dropping a row.

Zhihu repeats itself in two ways. A question is asked again under a new id, differing only cosmetically
("如何评价X？" / "请问如何评价X??" / "如何评价 X"), and a KOL cross-posts one answer to several questions
with small edits ("谢邀。" in front, "编辑于 2022-01-01" behind, a changed comma). `dedupe` adds two
columns to the canonical answer table:

    question_group  smallest question_id among the titles that ask the same question
    answer_cluster  smallest answer_id among the answers that are near-duplicates of each other (global,
                    across questions)

Both ids are the smallest id of their group, so they do not depend on row order.

Questions: two titles are the same question when they are equal after folding cosmetic differences
(`question_key`): width (NFKC), case, whitespace, punctuation and symbols (so a doubled or missing "？"
does not matter; but not "+" or "#" in a name such as C++ or C#, nor "." or "/" in a number), a leading
请问/求问/想问一下/请教一下 and a trailing 吗/呢/啊/呀. Nothing else: once
those are folded away, every character left is content (a CJK character, letter or digit), and titles
that differ in even one of them are different questions as often as not. Zhihu titles share templates
("电影的未来会怎样？" / "摄影的未来会怎样？", "2019年" / "2020年", "张伟" / "张玮"), so no fuzzy
threshold, however strict and however long the title, separates a typo from a sibling question. A
re-ask reworded with other content characters ("如何评价X" / "如何看待X") stays a separate group: that
costs pairs across two ids of one question, while a false merge would pair answers to different questions.

Answers (mode "near") — how a million answers are compared without comparing all pairs:
1. Exact: identical answer texts (same 64-bit hash and length) are merged first.
2. Body: a greeting or disclosure at the start ("谢邀。", "谢邀，人在美国，刚下飞机。", "利益相关，匿了。")
   and edit or publication stamps at the end ("编辑于 2022-01-01", "发布于 2023-05-06 12:00・IP 属地北京",
   "著作权归作者所有…") are what cross-posts add or drop; the steps below compare the body between them,
   so a short answer keeps its cluster however long its greeting and stamp are.
3. Blocking: each body is reduced to a few content-anchored character shingles. The text is folded
   (NFKC, lower case, punctuation/symbols/whitespace dropped, so "？" and "?" agree, and paragraphs
   joined by "\n\n" or by one space agree) and cut into overlapping 24-character shingles, long
   enough to span sentences, so a shingle belongs to one text and its copies rather than to a stock
   sentence. A shingle is kept when the hash of its first 8 characters is in the lowest 1/`answer_sample`
   of the range (the choice depends on content only, so a prefix that shifts the text keeps the same
   shingles); a text with none kept gets its smallest shingle. Only `answer_window` characters from each
   end of the body are shingled: a near-copy shares both ends. All (text, shingle) keys are packed into
   integers and sorted once (numpy/polars, in chunks, no Python objects per row); texts that share a
   key held by at most `max_bucket` texts are candidates (keys in more texts are boilerplate, stock
   phrases, famous quotes, and say nothing about a pair), kept when their informative keys overlap
   (Jaccard) by at least `min_overlap`.
4. Verification with rapidfuzz: `fuzz.ratio` (normalised Indel similarity, 0-100, = 100 * (1 -
   (insertions + deletions) / (len_a + len_b))) on the bodies of each candidate pair,
   `process.cpdist(workers=-1)`. Bodies are compared as written (whole, so two answers that share a long
   quote but differ elsewhere stay apart).
5. Union-find over the accepted pairs gives the clusters; each gets the smallest id of its members.

Mode "exact" stops after step 1 for answers (questions are grouped the same way in both modes); mode
"off" gives every question and answer its own id.
"""

from __future__ import annotations

import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from zhihu_rlhf.errors import UserError

DedupeMode = Literal["exact", "near", "off"]

# Folding for comparison: what is left after NFKC and lower-casing, without punctuation (P*), symbols
# (S*), separators/whitespace (Z*) and control characters (C*, which includes newlines).
_DROP_PATTERN = r"[\p{P}\p{S}\p{Z}\p{C}]"
_CHUNK_ROWS = 10_000  # texts shingled at a time (bounds the memory of the numpy arrays)

# Titles: punctuation and symbols are cosmetic except inside a name or a number, where they are content:
# "c++" / "c#" (a letter or digit followed by + or #), a decimal point or slash between digits ("3.5",
# "1/2"). The capture group keeps those; everything else the pattern matches is dropped.
_TITLE_COSMETIC = r"([a-z0-9][+#]+|\d[./]\d)|" + _DROP_PATTERN
# Particles that frame a question without changing it (matched after punctuation is dropped, so "请问，"
# and "吗？" are found too). Not 吧: it ends words (酒吧, 网吧), and "好的酒吧" is not "好的酒".
_LEADING_PARTICLES = r"^(?:请问|求问|想问一下|请教一下)"
_TRAILING_PARTICLES = r"(?:吗|呢|啊|呀)$"

# Answers: what cross-posts add around the same body. A greeting or disclosure opening the answer, ended by
# punctuation or a line break within 20 characters ("谢邀。", "谢邀，人在美国，刚下飞机。", "利益相关，匿了。",
# "泻药～\n"); one without such an end is left alone rather than cut into the body.
_GREETING = r"^(?:谢邀|泻药|谢谢邀请|感谢邀请|利益相关)[^。！!？?\s]{0,20}(?:[。！!？?]|\s)\s*"
# Stamps closing the answer, one or more: an edit or publication time ("编辑于 2022-01-01 12:00", "发布于
# 2023-05-06 12:00・IP 属地北京", "编辑于 昨天 09:30") or the copyright notice. A time is required after
# 编辑于/发布于, so a closing sentence such as "这篇文章发布于人民日报。" is body.
_STAMPS = (
    r"(?:\s*(?:(?:编辑于|发布于)\s*(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}|昨天|前天|今天|\d+\s*(?:分钟|小时)前)"
    r"|著作权归作者所有)[^\n]{0,60})+$"
)
_STAMP_WORDS = "编辑于|发布于|著作权归作者所有"  # every stamp has one; the full pattern runs only where one is
_STAMPS_SEARCH_CHARS = 160  # room for two stamps and a copyright notice


@dataclass
class DedupeOptions:
    """How questions and answers are merged (see the module docstring for the method)."""

    mode: DedupeMode = "near"
    """"near": exact + fuzzy near-duplicate answers; "exact": identical answer text only; "off": every
    question_id and answer_id stands alone. Questions are grouped by their cosmetic fold in "near" and
    "exact" alike."""
    answer_threshold: float = 90.0
    """Two answers are near-duplicates when rapidfuzz fuzz.ratio on their bodies (greeting and stamps
    removed) is at least this (0-100). 90 keeps a punctuation-edited copy and rejects two answers that
    share a quote but otherwise differ."""
    answer_window: int = 80
    """Characters taken from each end of an answer's body for blocking; long enough that a near-copy with
    a few edited characters still shares most shingles of each end."""
    answer_shingle: int = 24
    """Shingle length, in folded characters, for answer blocking: long enough to span sentences, so that a
    shingle is specific to one text (and its copies), not to a stock sentence that many answers use."""
    answer_sample: int = 8
    """Keep about 1 in `answer_sample` answer shingles, chosen by content (see the module docstring)."""
    max_bucket: int = 32
    """A shingle shared by more texts than this is treated as boilerplate and not used for blocking."""
    min_overlap: float = 0.2
    """Candidates must have at least this Jaccard overlap of their informative kept shingles (those in at
    most max_bucket texts) before rapidfuzz compares them (near-copies share most of them; texts that
    merely share one sentence share few)."""


def dedupe(answers: pl.DataFrame, opts: DedupeOptions) -> tuple[pl.DataFrame, dict]:
    """Add question_group and answer_cluster (Int64) to the canonical answer table; every row is kept.

    Returns (table, stats) with stats = {"mode", "question_groups", "questions_merged" (question ids folded
    into another id's group), "answer_clusters", "answers_merged" (answers in a cluster with another
    answer), "answer_threshold"}.
    """
    missing = [c for c in ("question_id", "answer_id", "question", "answer") if c not in answers.columns]
    if missing:
        raise UserError(f"dedupe needs the canonical answer table; missing column(s): {', '.join(missing)}")
    if opts.mode == "off":
        table = answers.with_columns(question_group=pl.col("question_id"), answer_cluster=pl.col("answer_id"))
    else:
        # Both steps return one id per row, so the (large) text table is never joined or copied. They are
        # independent and partly single-threaded (numpy, Python), so they run side by side.
        with ThreadPoolExecutor(max_workers=2) as pool:
            groups = pool.submit(_question_groups, answers.select("question_id", "question"))
            clusters = pool.submit(_answer_clusters, answers, opts, opts.mode == "near")
            table = answers.with_columns(question_group=groups.result(), answer_cluster=clusters.result())
    return table, _stats(table, opts)


def check_dedupe_options(opts: DedupeOptions) -> None:
    """UserError naming the first option that cannot work (BuildOptions.validate calls it; dedupe() trusts them)."""
    if opts.mode not in ("exact", "near", "off"):
        raise UserError(f"--dedupe must be one of exact, near, off; got {opts.mode!r}")
    if not 0.0 <= opts.answer_threshold <= 100.0:
        raise UserError(f"--answer-threshold must be a rapidfuzz score in [0, 100], got {opts.answer_threshold}")
    for name in ("answer_window", "answer_shingle", "answer_sample"):
        if getattr(opts, name) < 1:
            raise UserError(f"dedupe option {name} must be at least 1, got {getattr(opts, name)}")
    if opts.max_bucket < 2:
        raise UserError(f"dedupe option max_bucket must be at least 2, got {opts.max_bucket}")


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
    }


# ---------------------------------------------------------------------------------------------
# Questions


def question_key(title: pl.Expr) -> pl.Expr:
    """A title with its cosmetic differences folded away (see the module docstring): two titles ask the same
    question exactly when their keys are equal. A title that folds to nothing is its own key."""
    folded = title.str.normalize("NFKC").str.to_lowercase().str.replace_all(_TITLE_COSMETIC, "$1")
    key = folded.str.replace(_LEADING_PARTICLES, "").str.replace(_TRAILING_PARTICLES, "")
    return pl.when(key != "").then(key).otherwise(title)


def _question_groups(questions: pl.DataFrame) -> pl.Series:
    """The question_group of each row: the smallest question_id with the same title key."""
    ids = questions.group_by("question_id").agg(pl.col("question").min())  # one title per id
    ids = ids.with_columns(key=question_key(pl.col("question")))
    group_of_id = ids.with_columns(question_group=pl.col("question_id").min().over("key"))
    return questions.select("question_id").join(
        group_of_id.select("question_id", "question_group"), on="question_id", how="left", maintain_order="left"
    )["question_group"]


# ---------------------------------------------------------------------------------------------
# Answers


def _answer_ends(texts: pl.Series, chars: pl.Series, window: int) -> pl.DataFrame:
    """Per answer (`chars`: its length): where its body starts ("start") and how long it is ("chars"),
    greeting and stamps excluded, and the body's first and last `window` characters ("head", "tail").

    Most answers have neither greeting nor stamps, so the windows are cut as if the whole text were the body,
    and only the answers whose head window holds a greeting (at most about 27 characters) or whose tail
    window holds a stamp's word (the last one lies within 75 characters of the end) are measured and cut
    again. An answer that is nothing but greeting and stamps is its own body.
    """
    head, tail = texts.str.slice(0, window), texts.str.slice(-window)
    greeting = head.str.extract(f"({_GREETING})").str.len_chars().fill_null(0).cast(pl.Int64)
    ends = pl.DataFrame({"start": pl.zeros(len(texts), pl.Int64, eager=True), "chars": chars.cast(pl.Int64),
                         "head": head, "tail": tail})
    wrapped = ((greeting > 0) | tail.str.contains(_STAMP_WORDS)).arg_true()
    if len(wrapped) == 0:
        return ends
    text = pl.col("text")
    # The stamp pattern is slow where the end has no line break (seconds on texts whose paragraphs were joined by
    # spaces), so it only runs on ends that hold a stamp's word (null elsewhere: skipped).
    last = text.str.slice(-_STAMPS_SEARCH_CHARS)
    stamp_search = pl.when(last.str.contains(_STAMP_WORDS)).then(last)
    measured = pl.DataFrame({"text": texts.gather(wrapped), "chars": ends["chars"].gather(wrapped),
                             "greeting": greeting.gather(wrapped)}).with_columns(
        stamps=stamp_search.str.extract(f"({_STAMPS})").str.len_chars().fill_null(0).cast(pl.Int64)
    )
    has_body = pl.col("chars") > pl.col("greeting") + pl.col("stamps")
    recut = (
        measured.with_columns(start=pl.when(has_body).then("greeting").otherwise(0),
                              stamps=pl.when(has_body).then("stamps").otherwise(0))
        .with_columns(chars=pl.col("chars") - pl.col("start") - pl.col("stamps"))
        .with_columns(window=pl.col("chars").clip(upper_bound=window))
        .select("start", "chars", head=text.str.slice("start", "window"),
                tail=text.str.slice(pl.col("start") + pl.col("chars") - pl.col("window"), "window"))
    )
    return ends.with_columns(ends[name].scatter(wrapped, recut[name]) for name in ends.columns)


def _answer_clusters(answers: pl.DataFrame, opts: DedupeOptions, near: bool) -> pl.Series:
    """The answer_cluster of each row.

    Works on row numbers into the answer column: the texts themselves (gigabytes) are never copied;
    blocking reads a short window at each end of the body, verification only the bodies of candidate pairs.
    """
    texts = answers["answer"]
    chars = texts.str.len_chars()
    # Exact copies first: identical texts share a 64-bit hash and a length (a false merge would need a
    # 64-bit collision between two texts of equal length); each distinct text is represented by its
    # smallest id.
    rows = pl.DataFrame({"answer_id": answers["answer_id"], "hash": texts.hash(seed=0), "chars": chars})
    distinct = (
        rows.with_row_index("row")
        .group_by("hash", "chars")
        .agg(first_id=pl.col("answer_id").min(), first_row=pl.col("row").sort_by("answer_id").first())
        .sort("first_id")
        .with_row_index("text")
    )
    text_of_row = rows.join(distinct, on=["hash", "chars"], how="left", maintain_order="left")["text"].to_numpy()
    first_id = distinct["first_id"].to_numpy()
    if not near:
        return pl.Series(first_id[text_of_row], dtype=pl.Int64)
    first_row = distinct["first_row"].to_numpy()
    n_texts = len(first_row)
    # Head and tail windows of every row's body (short strings; cheaper than gathering the distinct texts
    # first); a row's shingles count for its distinct text. When the two windows overlap (a short body),
    # the repeated shingles are dropped as duplicates in _candidate_pairs.
    ends = _answer_ends(texts, chars, opts.answer_window)
    head_rows, head_keys = _shingle_keys(ends["head"], opts.answer_shingle, opts.answer_sample)
    tail_rows, tail_keys = _shingle_keys(ends["tail"], opts.answer_shingle, opts.answer_sample)
    a, b = _candidate_pairs(
        text_of_row[np.concatenate([head_rows, tail_rows])], np.concatenate([head_keys, tail_keys]), n_texts,
        opts.max_bucket, opts.min_overlap,
    )
    accepted = _verify(texts, ends, first_row[a], first_row[b], opts.answer_threshold)
    root = _union(n_texts, a[accepted], b[accepted])
    cluster_of_text = np.full(n_texts, np.iinfo(np.int64).max)
    np.minimum.at(cluster_of_text, root, first_id)
    return pl.Series(cluster_of_text[root][text_of_row], dtype=pl.Int64)


# ---------------------------------------------------------------------------------------------
# Blocking: content-anchored shingles -> candidate pairs


@lru_cache(maxsize=1)
def _fold_table() -> np.ndarray:
    """Code point -> folded code point, for every code point (0 = dropped).

    The folding of `_DROP_PATTERN` (NFKC, lower case, drop punctuation/symbols/separators/controls), per
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
    """All texts' folded code points, concatenated, and where each text ends in that array."""
    # One joined string, encoded once: no per-row Python objects.
    raw = np.frombuffer(texts.str.join("").item().encode("utf-32-le"), dtype=np.uint32)
    folded = _fold_table()[raw]
    kept = folded != 0
    kept_before = np.concatenate([[0], np.cumsum(kept, dtype=np.int64)])
    return folded[kept], kept_before[np.cumsum(texts.str.len_chars().to_numpy())]


_ANCHOR = 8  # leading characters of a shingle whose hash decides whether it is kept
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so every power of it is too: no bits are lost when multiplying


def _span_hashes(codes: np.ndarray, longest: int) -> dict[int, np.ndarray]:
    """Polynomial hashes (mod 2^64) of every window of 1, 2, 4, ... up to `longest` codes:
    levels[span][i] covers codes[i : i + span]. Built by doubling, a few array passes in all."""
    levels = {1: codes.astype(np.uint64)}
    span = 1
    while 2 * span <= longest:
        level = levels[span]
        levels[2 * span] = level[:-span] * _BASE**span + level[span:]
        span *= 2
    return levels


def _shingle_hashes(levels: dict[int, np.ndarray], positions: np.ndarray, shingle: int) -> np.ndarray:
    """Hash of the `shingle`-code window at each of `positions`, chained from the span hashes."""
    h, covered = np.zeros(len(positions), dtype=np.uint64), 0
    for span in sorted(levels, reverse=True):
        while covered + span <= shingle:
            h = h * _BASE**span + levels[span][positions + covered]
            covered += span
    # A polynomial hash is linear (shingles differing in their last character differ by 1), so mix it
    # before its bits are cut for the packed sort key in _candidate_pairs.
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(32))


def _shingle_keys(texts: pl.Series, shingle: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, key): the kept shingle hashes of each text (row = position in `texts`).

    A shingle is kept when the hash of its first `_ANCHOR` characters falls in the first 1/`sample` of
    the hash range: chosen by content, so a prefix that shifts the text keeps the same ones, and only the
    kept shingles are hashed in full. A text with no kept shingle gets its smallest shingle hash instead,
    so that short texts get one too. Texts are processed in chunks to bound the memory of the arrays;
    numpy releases the GIL inside its array loops, so a thread per core works on the chunks at once.
    """
    def chunk_keys(start: int) -> tuple[np.ndarray, np.ndarray]:
        return _chunk_shingle_keys(texts.slice(start, _CHUNK_ROWS), start, shingle, sample)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        chunks = list(pool.map(chunk_keys, range(0, len(texts), _CHUNK_ROWS)))
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate([rows for rows, _ in chunks]), np.concatenate([keys for _, keys in chunks])


def _chunk_shingle_keys(texts: pl.Series, first_row: int, shingle: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """`_shingle_keys` of one chunk of texts; rows are numbered from `first_row`."""
    rows, keys = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
    anchor = min(_ANCHOR, 1 << (shingle.bit_length() - 1))
    with np.errstate(over="ignore"):
        codes, ends = _folded_codes(texts)
        if len(codes) < shingle:
            return rows[0], keys[0]
        levels = _span_hashes(codes, anchor)
        starts = np.concatenate([[0], ends[:-1]])
        # Shingles that run past the end of their text into the next one are not shingles.
        last = ends - shingle  # last valid start of each text (< its start: text too short)
        if sample > 1:
            sampled = np.flatnonzero(levels[anchor] * np.uint64(0x94D049BB133111EB) < np.uint64(2**64 // sample))
        else:
            sampled = np.arange(len(codes) - shingle + 1)
        row_of = np.searchsorted(ends, sampled, side="right")
        valid = sampled <= last[row_of]
        rows.append(row_of[valid] + first_row)
        keys.append(_shingle_hashes(levels, sampled[valid], shingle))
        bare = np.flatnonzero(last >= starts)
        bare = bare[np.isin(bare, row_of[valid], invert=True)]
        if len(bare):
            # Every shingle position of the bare texts, then the smallest hash of each.
            counts = last[bare] - starts[bare] + 1
            offsets = np.cumsum(counts) - counts
            positions = np.arange(counts.sum()) - np.repeat(offsets - starts[bare], counts)
            rows.append(bare + first_row)
            keys.append(np.minimum.reduceat(_shingle_hashes(levels, positions, shingle), offsets))
    return np.concatenate(rows).astype(np.int64), np.concatenate(keys)


def _candidate_pairs(
    rows: np.ndarray, keys: np.ndarray, n_rows: int, max_bucket: int, min_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) that share a key held by at most `max_bucket` rows and whose informative keys
    (those held by at most max_bucket rows) overlap (Jaccard) by at least `min_overlap`."""
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Pack (key, row) into one uint64 (the key's top bits, then the row) and sort once: equal keys end
    # up adjacent with their rows ascending, and duplicate (row, key) entries become adjacent too.
    row_bits = max(int(n_rows - 1).bit_length(), 1)
    packed = (keys >> np.uint64(row_bits) << np.uint64(row_bits)) | rows.astype(np.uint64)
    packed = pl.Series(packed).unique().sort().to_numpy()
    key = packed >> np.uint64(row_bits)
    member = (packed & np.uint64(2**row_bits - 1)).astype(np.int64)
    bucket_start, bucket_size = _runs(key)
    informative = np.repeat(bucket_size <= max_bucket, bucket_size)
    keys_per_row = np.bincount(member[informative], minlength=n_rows)
    # Every pair inside each bucket of 2..max_bucket rows, one bucket size at a time (vectorised).
    pair_codes = []
    for size in range(2, max_bucket + 1):
        first = bucket_start[bucket_size == size]
        if len(first) == 0:
            continue
        i, j = np.triu_indices(size, 1)
        pair_codes.append((member[first[:, None] + i] * n_rows + member[first[:, None] + j]).ravel())
    if not pair_codes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # How many keys each pair shares: the run lengths of the sorted codes (polars sorts on every core).
    codes = pl.Series(np.concatenate(pair_codes)).sort().to_numpy()
    run_start, shared = _runs(codes)
    code = codes[run_start]
    a, b = code // n_rows, code % n_rows
    union = keys_per_row[a] + keys_per_row[b] - shared
    overlapping = shared >= min_overlap * union
    return a[overlapping], b[overlapping]


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values starts in a sorted array, and how long it is."""
    start = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
    return start, np.diff(np.append(start, len(sorted_values)))


# ---------------------------------------------------------------------------------------------
# Verification and union-find


def _verify(texts: pl.Series, ends: pl.DataFrame, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Which pairs of rows (a[i], b[i]) of `texts` have bodies (`start` and `chars` of `_answer_ends`) with a
    fuzz.ratio of at least `threshold`."""
    accepted = np.zeros(len(a), dtype=bool)
    chars = ends["chars"].to_numpy()
    len_a, len_b = chars[a].astype(np.float64), chars[b].astype(np.float64)
    # fuzz.ratio can reach at most 200 * shorter / (sum of lengths): skip pairs that cannot pass.
    possible = np.flatnonzero(200.0 * np.minimum(len_a, len_b) / np.maximum(len_a + len_b, 1.0) >= threshold)
    if len(possible) == 0:
        return accepted
    # Each text involved is fetched once; the pair lists hold references to the same Python strings.
    involved, position = np.unique(np.concatenate([a[possible], b[possible]]), return_inverse=True)
    bodies = pl.DataFrame({"text": texts.gather(involved), "start": ends["start"].gather(involved),
                           "chars": ends["chars"].gather(involved)})
    strings = bodies.select(pl.col("text").str.slice("start", "chars"))["text"].to_list()
    scores = process.cpdist(
        [strings[i] for i in position[: len(possible)]], [strings[i] for i in position[len(possible) :]],
        scorer=fuzz.ratio, score_cutoff=threshold, workers=-1,
    )
    accepted[possible] = scores >= threshold
    return accepted


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
