"""Chosen/rejected pairs from votes, following the reference method and tightening it.

The rules, in the order the funnel in stats.json reports them:

1. same question: both answers belong to one question group (re-asked questions merged by dedupe);
   the answer with more upvotes is the candidate `chosen`; tied votes say nothing and are dropped.
2. not near-copies: chosen and rejected are not in one near-duplicate cluster.
3. created close in time: both have a creation time and were written at most `max_days_apart` apart.
   Zhihu votes depend on exposure; answers written at the same time competed for the same readers.
4. chosen not earlier (optional, Stanford SHP's rule): the chosen answer is no older than the
   rejected one, so its lead cannot come from a head start.
5. enough votes: the chosen answer has at least `min_chosen_upvotes`.
6. upvote ratio: chosen has at least `min_ratio` times the rejected's upvotes.
6b. length ratio (optional): the longer answer of the pair is at most `max_length_ratio` times as long as the
   shorter one (characters). Votes reward length beyond quality, and a reward model learns from the pairs whose two
   answers differ much in length to pay for length (or, where the shorter one won, to penalise it); pairs of
   comparable length teach quality without it. Either way round, so where votes do not reward length the bound
   takes out as many "longer wins" as "shorter wins" pairs.
7. each response once: a response (a near-duplicate cluster) appears in at most one pair, in
   either slot, and a question gives at most `max_pairs_per_question` pairs. Conflicts are
   resolved greedily by rank, best pair first.
8. sure enough: the vote model's `p_chosen_better` (below) is at least `min_p_chosen_better`. Pairs are
   ranked by it, so every pair it removes ranks below every pair it keeps: applied after the matching,
   it gives the same pairs as applied before, and counts only pairs that would otherwise be published.
9. limit: the `limit` best-ranked pairs are kept.

Confidence. Votes are not quality: exposure and the author's reach multiply them too (the article: 点赞受
许多因素影响，例如答题人粉丝数，答题时间). The vote model (zhihu_rlhf.votes) turns each answer's votes into an
estimated quality with an sd, and a pair's

    confidence      = (quality_c - quality_r) / sqrt(sd_c^2 + sd_r^2)    the model's lead in sds
    p_chosen_better = Phi(confidence)                                   P(chosen is truly the better answer)

Pairs are ranked by it (`RANK_BY`; `confidence` orders exactly as `p_chosen_better` and still separates pairs whose
probability rounds to 1). A 2x lead of 2000 over 1000 votes is far more certain than 4 over 2, but not more
certain than the luck of an answer's spread allows; and a lead that the chosen author's reach or a head start
explains counts for little. With `--vote-model raw` the votes are taken as they are.

Bounded memory. A hot question has 10,000+ answers, so "every two answers of a question" is 50M+
candidates for it alone. They are never all kept, and those that cannot pass are never made:

- Band join. With a question's answers sorted by creation time, the answers close enough in time to
  one are a run of its successors, found with one `searchsorted`. Only those pairs are made, about
  PAIRS_PER_BATCH at a time, and rules 1-6 are applied to each batch as it is made. Answers without
  a creation time cannot pass rule 3 and are not paired at all. Pairs outside the bands are only
  counted: tied pairs and same-cluster pairs follow from group sizes, and every other pair outside a
  band fails rule 3, so the funnel keeps the exact counts of the exhaustive construction.
- Best candidates per question. Of the pairs that pass, a question keeps at first its best
  `(2 * max_pairs_per_question + 1) * answers` by rank, and any tied with the last of those: always
  all of its candidates down to some rank (its floor, raised as batches come). The one-use
  matching then runs on what is kept. A question that lost candidates and still fell short of its
  cap gets its budget doubled, its bands joined again and the matching re-run, until none is left.

  Why that is exact. Run the greedy over all candidates A and over the kept ones T side by side, in
  rank order. They hold the same state (used clusters, pairs per question) until the first dropped
  candidate x (in A, not in T) that the greedy over A accepts: before it, dropped candidates were
  all refused by it and changed nothing, and T's greedy never saw them. Every candidate T kept
  for x's question ranks above x, so when x comes, that question has accepted exactly the pairs it
  accepts in T's final result; if that is the cap, x is refused. So when each question that lost
  candidates reached its cap in T's result, no such x exists, and both runs accept the same pairs
  (the pairs of every other question, and one-use across questions via cross-posted clusters,
  included). The budget bounds how far down a question's list the greedy usually goes: each pair
  it refuses before the cap has a cluster already used, by one of the <= 2 * cap clusters of the
  question's own pairs (each in fewer than `answers` of its pairs) or by another question's pair.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, overload

import numpy as np
import polars as pl

from zhihu_rlhf import schema
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.instruct import LengthFilter, length_drop_reason
from zhihu_rlhf.sources import Texts, texts_of
from zhihu_rlhf.votes import QUALITY_COLUMNS, normal_cdf, quality_lead

SECONDS_PER_DAY = 86_400
LONGEST_GAP_US = int(np.iinfo(np.int64).max)  # creation times are int64 microseconds
# Pairs made and filtered at a time: each column of a batch (2 MB) stays in the CPU's cache between the
# numpy passes over it, and the per-batch overhead is still small against the work.
PAIRS_PER_BATCH = 1 << 18
# Candidates that pass the rules are ranked and cut to each question's budget once this many have piled
# up (16-24 bytes each).
PRUNE_ABOVE = 4_000_000


@dataclass
class PairOptions:
    limit: int = 3_000
    """Keep this many pairs, the most confident first (0 = all)."""
    max_days_apart: float = 30.0
    """Both answers were created at most this many days apart (the article: 创建时间相近)."""
    min_ratio: float = 2.0
    """The chosen answer has at least this many times the rejected's upvotes (the article: 至少两倍)."""
    min_chosen_upvotes: int = 10
    """Below this a vote lead is mostly noise, however large the ratio."""
    max_pairs_per_question: int = 5
    """Spread the pairs over many questions instead of a few very popular ones."""
    chosen_not_earlier: bool = False
    """Stanford SHP's rule: the chosen answer was written no earlier than the rejected one."""
    min_p_chosen_better: float = 0.5
    """Publish a pair only if the vote model puts P(chosen is truly better) at least this high. Below 0.5 the model
    thinks the rejected answer more likely the better one; higher values give fewer pairs, each more surely right."""
    max_length_ratio: float = math.inf
    """The longer answer of a pair is at most this many times as long as the shorter one, in characters (inf: no
    bound)."""


def check_pair_options(opts: PairOptions) -> None:
    if not opts.max_days_apart >= 0:
        raise UserError(f"--max-days-apart must be a number of days >= 0 (inf: no time rule), got {opts.max_days_apart}")
    if not 0.0 <= opts.min_p_chosen_better <= 1.0:
        raise UserError(f"--min-p-chosen-better must be a probability in [0, 1], got {opts.min_p_chosen_better}")
    if not opts.max_length_ratio >= 1:
        raise UserError(f"--max-length-ratio must be at least 1 (inf: no bound), got {opts.max_length_ratio}")


# Pairs are ranked best first by RANK_KEY, an expression over chosen_*/rejected_* QUALITY_COLUMNS; the answer ids
# make the order total, so every run selects the same pairs.
RANK_KEY = quality_lead("chosen_", "rejected_").alias("confidence")
RANK_BY = [RANK_KEY.meta.output_name(), "chosen_answer_id", "rejected_answer_id"]
RANK_DESCENDING = [True, False, False]


class BandedAnswers(NamedTuple):
    """The answers that can be paired, as numpy columns in band order (see `time_bands`)."""

    answer_id: np.ndarray
    group: np.ndarray  # 0, 1, 2, ... one number per question group
    upvotes: np.ndarray
    estimated_quality: np.ndarray  # the vote model's QUALITY_COLUMNS, for the rank key
    quality_sd: np.ndarray
    quality_share_shift: np.ndarray
    cluster: np.ndarray  # 0, 1, 2, ... one number per near-duplicate cluster (across groups)
    created_us: np.ndarray  # microseconds since 1970; 0 where `timed` is False
    timed: np.ndarray  # has a creation time
    chars: np.ndarray  # length of the answer text in characters
    band_end: np.ndarray  # the position after the last later answer of the same group close enough in time


class _GatheredOnFirstRead:
    """A batch's column, computed when first read and then stored on the batch. functools.cached_property does the
    same, but before Python 3.12 it holds one lock for every instance: the worker threads' batches would wait on each
    other."""

    def __init__(self, compute: Callable[[PairBatch], np.ndarray]) -> None:
        self.compute = compute

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, batch: None, owner: type) -> _GatheredOnFirstRead: ...
    @overload
    def __get__(self, batch: PairBatch, owner: type | None = None) -> np.ndarray: ...
    def __get__(self, batch: PairBatch | None, owner: type | None = None) -> np.ndarray | _GatheredOnFirstRead:
        if batch is None:  # read on the class
            return self
        value = self.compute(batch)
        batch.__dict__[self.name] = value  # found before this descriptor from now on (it defines no __set__)
        return value


def _of_earlier(column: str) -> _GatheredOnFirstRead:
    """BandedAnswers.`column` of each pair's earlier answer: one value per answer, repeated for its partners."""
    return _GatheredOnFirstRead(lambda batch: np.repeat(getattr(batch.banded, column)[batch.answers], batch.partners))


def _of_later(column: str) -> _GatheredOnFirstRead:
    """BandedAnswers.`column` of each pair's later answer."""
    return _GatheredOnFirstRead(lambda batch: getattr(batch.banded, column)[batch.later])


class PairBatch:
    """Pairs of answers of one group, each answer at `answers` with the `partners` answers after it: the earlier and
    the later in band order (by time, answers without a time last), and the chosen one, the one with more upvotes (of
    tied ones, the earlier).

    A column is gathered when a rule first reads it, so a rule that is off costs nothing: on `hot` at 1M rows the
    bands hold 84M pairs, and gathering every column for each of them took twice as long as the rules themselves."""

    def __init__(self, banded: BandedAnswers, answers: np.ndarray, partners: np.ndarray) -> None:
        self.banded, self.answers, self.partners = banded, answers, partners
        self.earlier = np.repeat(answers, partners)  # (pairs,) positions in band order
        self.later = self.earlier + 1 + np.arange(len(self.earlier)) - np.repeat(np.cumsum(partners) - partners, partners)

    # Each answer's columns for the earlier and the later answer of every pair (numpy arrays of BandedAnswers).
    earlier_upvotes, later_upvotes = _of_earlier("upvotes"), _of_later("upvotes")
    earlier_cluster, later_cluster = _of_earlier("cluster"), _of_later("cluster")
    earlier_created_us, later_created_us = _of_earlier("created_us"), _of_later("created_us")
    earlier_timed, later_timed = _of_earlier("timed"), _of_later("timed")
    earlier_chars, later_chars = _of_earlier("chars"), _of_later("chars")

    @_GatheredOnFirstRead
    def chosen_is_later(self) -> np.ndarray:
        return self.later_upvotes > self.earlier_upvotes

    @_GatheredOnFirstRead
    def chosen_upvotes(self) -> np.ndarray:
        return np.maximum(self.earlier_upvotes, self.later_upvotes)

    @_GatheredOnFirstRead
    def rejected_upvotes(self) -> np.ndarray:
        return np.minimum(self.earlier_upvotes, self.later_upvotes)

    @_GatheredOnFirstRead
    def both_timed(self) -> np.ndarray:
        return self.earlier_timed & self.later_timed

    @_GatheredOnFirstRead
    def chosen_chars(self) -> np.ndarray:
        return np.where(self.chosen_is_later, self.later_chars, self.earlier_chars)

    @_GatheredOnFirstRead
    def rejected_chars(self) -> np.ndarray:
        return np.where(self.chosen_is_later, self.earlier_chars, self.later_chars)

    def chosen_and_rejected(self, passes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the chosen and the rejected answer of the pairs where `passes`."""
        at = np.flatnonzero(passes)  # few pass: indexing by their positions beats a boolean mask, once per column
        earlier, later = self.earlier[at], self.later[at]
        chosen_is_later = self.banded.upvotes[later] > self.banded.upvotes[earlier]
        return np.where(chosen_is_later, later, earlier), np.where(chosen_is_later, earlier, later)


# A rule says which pairs of a batch pass it.
Rule = Callable[[PairBatch], np.ndarray]


def pair_rules(opts: PairOptions) -> list[tuple[str, str, Rule]]:
    """(name, description, rule) for rules 1-6, in funnel order."""

    longest_gap_us = _longest_gap_us(opts.max_days_apart)

    def close_in_time(p: PairBatch) -> np.ndarray:
        if longest_gap_us is None:  # any two answers pass, with a creation time or without (time_bands pairs both)
            return np.ones(len(p.earlier), dtype=bool)
        # A missing time is infinitely far from any other: with a bounded window time_bands pairs only timed answers.
        return np.abs(p.later_created_us - p.earlier_created_us) <= longest_gap_us

    rules: list[tuple[str, str, Rule]] = [
        ("distinct_upvotes", "tied upvotes carry no preference", lambda p: p.chosen_upvotes > p.rejected_upvotes),
        ("not_near_copies", "chosen and rejected are not near-duplicates", lambda p: p.earlier_cluster != p.later_cluster),
        ("created_close_in_time", f"both have a creation time, at most {opts.max_days_apart:g} days apart", close_in_time),
    ]
    if opts.chosen_not_earlier:
        rules.append(
            (
                "chosen_not_earlier",
                "the chosen answer was written no earlier than the rejected one",
                lambda p: (p.chosen_is_later | (p.later_created_us == p.earlier_created_us)) & p.both_timed,
            )
        )
    rules += [
        (
            "min_chosen_upvotes",
            f"the chosen answer has at least {opts.min_chosen_upvotes} upvotes",
            lambda p: p.chosen_upvotes >= opts.min_chosen_upvotes,
        ),
        (
            "upvote_ratio",
            f"chosen has at least {opts.min_ratio:g}x the rejected's upvotes",
            lambda p: p.chosen_upvotes >= opts.min_ratio * p.rejected_upvotes,
        ),
    ]
    if opts.max_length_ratio < math.inf:
        rules.append(
            (
                "length_ratio",
                f"neither answer is more than {opts.max_length_ratio:g}x as long as the other",
                lambda p: (p.chosen_chars <= opts.max_length_ratio * p.rejected_chars)
                & (p.rejected_chars <= opts.max_length_ratio * p.chosen_chars),
            )
        )
    return rules


def _longest_gap_us(max_days_apart: float) -> int | None:
    """The longest gap in microseconds between two creation times that the time rule passes (None: every gap passes).

    The rule as the funnel has always counted it is `whole seconds apart (sub-second parts truncated) / 86400 <=
    max_days_apart`, in floats; its left side grows with the gap, so it passes exactly the gaps up to one bound, found
    here once instead of dividing for each of millions of pairs."""
    if max_days_apart * SECONDS_PER_DAY > LONGEST_GAP_US // 1_000_000:  # beyond any gap int64 microseconds can hold
        return None
    seconds = math.floor(max_days_apart * SECONDS_PER_DAY)
    while (seconds + 1) / SECONDS_PER_DAY <= max_days_apart:  # the product may round either way
        seconds += 1
    while seconds >= 0 and seconds / SECONDS_PER_DAY > max_days_apart:
        seconds -= 1
    # every gap that truncates to `seconds` or fewer whole seconds (kept within int64, where every gap is)
    return min((seconds + 1) * 1_000_000 - 1, LONGEST_GAP_US)


# ---------------------------------------------------------------------------------------------------------------
# Candidates: the band join with rules 1-6 on the way, and counts for the pairs outside the band
# ---------------------------------------------------------------------------------------------------------------


def _pairs_within(answers: pl.DataFrame, keys: list[str]) -> int:
    """How many two-answer pairs share all of `keys`."""
    # Lazy, so that only `keys` are read: an eager group_by over the whole table took twice as long.
    size = pl.col("len").cast(pl.Int64)
    return answers.lazy().group_by(keys).len().select((size * (size - 1) // 2).sum()).collect().item()


def _left_before_the_band(usable: pl.DataFrame) -> list[int]:
    """Pairs of every question group left after "same question", "distinct upvotes" and "not near-copies",
    counted from group sizes: in all, minus tied pairs, minus same-cluster pairs with distinct votes."""
    all_pairs = _pairs_within(usable, ["question_group"])
    untied = all_pairs - _pairs_within(usable, ["question_group", "upvotes"])
    same_cluster = _pairs_within(usable, ["question_group", "answer_cluster"])
    same_cluster_tied = _pairs_within(usable, ["question_group", "answer_cluster", "upvotes"])
    return [all_pairs, untied, untied - (same_cluster - same_cluster_tied)]


def time_bands(usable: pl.DataFrame, max_days_apart: float) -> tuple[pl.DataFrame, BandedAnswers]:
    """The answers that can pass the time rule, sorted by (question_group, created_at, answer_id), and their
    bands: for each answer, the later answers of its group it could pass the rule with.

    A band is a little wider than the rule (whole seconds, a spare second each side); the rule itself is
    applied to the pairs made, so a band only has to contain every pair that passes.
    """
    unbounded = max_days_apart == math.inf  # answers without a time pass too: all of a group is one band
    answers = usable if unbounded else usable.filter(pl.col("created_at").is_not_null())
    # nulls_last only where there are nulls to place: it makes polars' sort several times slower (0.26 s against
    # 0.08 s at 1M rows).
    answers = answers.sort("question_group", "created_at", "answer_id", nulls_last=unbounded)
    sizes = answers.group_by("question_group", maintain_order=True).len()["len"].to_numpy().astype(np.int64)
    group = np.repeat(np.arange(len(sizes)), sizes)
    band_end = np.repeat(np.cumsum(sizes), sizes)  # a whole group
    created_us = answers["created_at"].dt.epoch("us").fill_null(0).to_numpy()
    seconds = created_us // 1_000_000
    window_seconds = max_days_apart * SECONDS_PER_DAY
    band = math.floor(window_seconds) + 2 if window_seconds < math.inf else math.inf
    if answers.height and band <= seconds.max() - seconds.min():
        # One sorted key over all groups: each group's times shifted to lie more than a band after the previous group.
        group_start = np.cumsum(sizes) - sizes
        first, last = seconds[group_start], seconds[group_start + sizes - 1]
        shift = np.cumsum(last - first + band + 1) - (last - first + band + 1) - first
        key = seconds + shift[group]
        band_end = np.searchsorted(key, key + band, side="right")
    banded = BandedAnswers(
        answer_id=answers["answer_id"].to_numpy(),
        group=group,
        upvotes=answers["upvotes"].to_numpy(),
        estimated_quality=answers["estimated_quality"].to_numpy(),
        quality_sd=answers["quality_sd"].to_numpy(),
        quality_share_shift=answers["quality_share_shift"].to_numpy(),
        cluster=answers["answer_cluster"].rank("dense").to_numpy().astype(np.int64) - 1,
        created_us=created_us,
        timed=answers["created_at"].is_not_null().to_numpy(),
        chars=answers["answer_chars"].to_numpy(),
        band_end=band_end,
    )
    return answers.with_columns(group=pl.Series(group)), banded


def _band_slices(band_end: np.ndarray, positions: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(answers, partners of each): the answers at `positions` with later answers in their band and how
    many, cut into slices of about PAIRS_PER_BATCH pairs."""
    partners = np.maximum(band_end[positions] - positions - 1, 0)
    positions, partners = positions[partners > 0], partners[partners > 0]
    made_before = np.cumsum(partners) - partners
    start = 0
    while start < len(positions):
        stop = max(start + 1, int(np.searchsorted(made_before, made_before[start] + PAIRS_PER_BATCH)))
        yield positions[start:stop], partners[start:stop]
        start = stop


def _passing_pairs(
    banded: BandedAnswers, rules: list[tuple[str, str, Rule]], answers: np.ndarray, partners: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each answer at `answers` paired with the `partners` answers after it, through the rules: (pairs left
    after each rule, chosen and rejected positions of the pairs that pass them all, and their rank key)."""
    batch = PairBatch(banded, answers, partners)
    passes = np.ones(len(batch.earlier), dtype=bool)
    left = np.zeros(len(rules), dtype=np.int64)
    for i, (_, _, rule) in enumerate(rules):
        passes &= rule(batch)
        left[i] = np.count_nonzero(passes)
    chosen, rejected = batch.chosen_and_rejected(passes)
    return left, chosen, rejected, _rank_values(banded, chosen, rejected)


def _band_pairs(
    banded: BandedAnswers, positions: np.ndarray, rules: list[tuple[str, str, Rule]]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`_passing_pairs` over the bands of the answers at `positions`, slice by slice, in order; slices run
    on as many threads as polars uses (numpy and polars let go of the GIL inside each pass over a slice)."""
    threads = pl.thread_pool_size()
    with ThreadPoolExecutor(threads) as pool:
        running: deque[Future] = deque()
        for answers, partners in _band_slices(banded.band_end, positions):
            running.append(pool.submit(_passing_pairs, banded, rules, answers, partners))
            if len(running) > threads:
                yield running.popleft().result()
        while running:
            yield running.popleft().result()


def _rank_values(banded: BandedAnswers, chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """RANK_KEY of pairs of positions, from the answers' QUALITY_COLUMNS."""
    pairs = pl.DataFrame(
        {f"{side}_{column}": getattr(banded, column)[at] for side, at in (("chosen", chosen), ("rejected", rejected)) for column in QUALITY_COLUMNS}
    )
    return pairs.select(RANK_KEY).to_series().to_numpy()


def candidate_budget(answers: pl.DataFrame, cap: int) -> np.ndarray:
    """How many candidates each group (numbered as in `time_bands`) keeps at first: its best
    (2 * cap + 1) * answers (see the module docstring for why). n answers make fewer than n * n pairs,
    so a factor above the largest group keeps everything (and cannot overflow)."""
    sizes = np.bincount(answers["group"].to_numpy()).astype(np.int64)
    return max(1, min(2 * cap + 1, int(sizes.max(initial=0)))) * sizes


def _keep_best(
    banded: BandedAnswers, kept: tuple[np.ndarray, np.ndarray, np.ndarray], fresh: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    keep: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept candidates and the fresh ones, each (chosen, rejected, rank key), cut to each group's best `keep[g]`
    and the ones tied with the last of those.

    Candidates come group after group, so each group is one slice."""
    chosen, rejected, rank = (np.concatenate([kept[i], *(candidates[i] for candidates in fresh)]) for i in range(3))
    group = banded.group[chosen]
    floors = np.full(len(keep), -np.inf)
    bounds = np.flatnonzero(np.diff(group, prepend=-1, append=-1)).tolist()
    # A loop over groups, not candidates: a partial sort (np.partition) finds a group's keep-th best in linear time,
    # where a rank over every group (polars, tried) took 1.6-2.1 s more on `hot` at 1M rows, same result.
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        g = group[start]
        if end - start > keep[g]:  # the rank key of its keep-th best
            floors[g] = -np.partition(-rank[start:end], keep[g] - 1)[keep[g] - 1]
    best = rank >= floors[group]
    return chosen[best], rejected[best], rank[best]


def _band_candidates(
    banded: BandedAnswers, positions: np.ndarray, rules: list[tuple[str, str, Rule]], keep: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[int], np.ndarray]:
    """The band pairs of the answers at `positions` (in band order) through rules 1-6. Of those that pass,
    each group keeps at least its best `keep[group]`, and ties with the last one: what a group keeps is
    all of its candidates down to some rank.

    Returns ((chosen positions, rejected positions, rank key) of the kept candidates, pairs left after each
    rule, pairs passing every rule per group).
    """
    left = np.zeros(len(rules), dtype=np.int64)
    passed = np.zeros(len(keep), dtype=np.int64)
    kept = (positions[:0], positions[:0], np.empty(0))
    fresh: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # passed the rules, not cut yet
    piled, cut_above = 0, PRUNE_ABOVE
    for left_in_slice, chosen, rejected, rank in _band_pairs(banded, positions, rules):
        left += left_in_slice
        passed += np.bincount(banded.group[chosen], minlength=len(keep))
        fresh.append((chosen, rejected, rank))
        piled += len(chosen)
        if piled > cut_above:
            kept, fresh = _keep_best(banded, kept, fresh, keep), []
            piled = len(kept[0])
            cut_above = max(PRUNE_ABOVE, 2 * piled)
    return _keep_best(banded, kept, fresh, keep), left.tolist(), passed


def _pairs_frame(answers: pl.DataFrame, chosen: np.ndarray, rejected: np.ndarray, rank: np.ndarray) -> pl.DataFrame:
    """Selected pairs as a frame, from positions in `answers` (band order) and their rank key."""
    columns = {"question_group": answers["question_group"].gather(chosen)}
    for column in ("answer_id", "upvotes", "created_at"):
        columns[f"chosen_{column}"] = answers[column].gather(chosen)
        columns[f"rejected_{column}"] = answers[column].gather(rejected)
    return pl.DataFrame(columns).with_columns(
        # finite even over zero votes, so every export format can carry it
        upvote_ratio=pl.col("chosen_upvotes") / pl.max_horizontal(pl.col("rejected_upvotes"), 1),
        **{RANK_BY[0]: pl.Series(rank)},
    ).with_columns(p_chosen_better=normal_cdf(pl.col("confidence")))


# ---------------------------------------------------------------------------------------------------------------
# Rule 7: one use per response
# ---------------------------------------------------------------------------------------------------------------

def one_use_greedy(chosen_cluster: np.ndarray, rejected_cluster: np.ndarray, question: np.ndarray, cap: int) -> np.ndarray:
    """Rule 7 over pairs given best first, as dense integer codes: which pairs the sequential greedy
    accepts (each cluster in at most one pair, at most `cap` pairs per question).

    Sequential greedy over millions of candidates would be a Python loop; instead each round accepts
    every pair that sequential greedy is sure to accept, whatever happens before its turn: a pair that
    is the best remaining pair of *both* its responses ("locally dominant": nothing ranked above it
    can take its responses), and whose question stays under its cap even if every remaining pair of
    that question ranked above it were accepted first. Pairs whose response is used or whose question
    is full leave play. The best remaining pair always qualifies, so every round makes progress, and
    the result is identical to sequential greedy, in a handful of vectorised rounds.
    """
    pairs = len(chosen_cluster)
    clusters = int(max(chosen_cluster.max(initial=0), rejected_cluster.max(initial=0))) + 1
    cluster_used = np.zeros(clusters, dtype=bool)
    pairs_in_question = np.zeros(int(question.max(initial=0)) + 1, dtype=np.int64)
    accepted = np.zeros(pairs, dtype=bool)
    best = np.empty(clusters, dtype=np.int64)
    # Positions in rank order (smaller is better), grouped by question: within a group they stay in rank
    # order, so a pair's place in its group counts the pairs of its question still in play above it.
    # (a stable sort in polars: 0.04 s for 1.2M pairs where numpy's took 0.11 s)
    in_play = pl.DataFrame({"question": question}).with_row_index("position").sort("question", maintain_order=True)
    in_play = in_play["position"].to_numpy().astype(np.int64)
    while len(in_play):
        # The best (smallest) position in play of each response; a pair is dominant when it is the best of both.
        chosen, rejected = chosen_cluster[in_play], rejected_cluster[in_play]
        best[chosen] = best[rejected] = pairs
        np.minimum.at(best, chosen, in_play)
        np.minimum.at(best, rejected, in_play)
        dominant = (best[chosen] == in_play) & (best[rejected] == in_play)
        their_question = question[in_play]
        starts = np.flatnonzero(np.diff(their_question, prepend=-1))
        above_in_question = np.arange(len(in_play)) - np.repeat(starts, np.diff(starts, append=len(in_play)))
        now = in_play[dominant & (pairs_in_question[their_question] + above_in_question < cap)]
        accepted[now] = True
        np.add.at(pairs_in_question, question[now], 1)
        cluster_used[chosen_cluster[now]] = cluster_used[rejected_cluster[now]] = True
        in_play = in_play[~cluster_used[chosen] & ~cluster_used[rejected] & (pairs_in_question[their_question] < cap)]
    return accepted


def _match_within_budgets(
    answers: pl.DataFrame, banded: BandedAnswers, rules: list[tuple[str, str, Rule]], cap: int, keep: np.ndarray
) -> tuple[pl.DataFrame, list[int]]:
    """Rules 1-7: the band pairs through the rules, then the matching over each group's best candidates,
    widening the budget of a group wherever that could change the result (see "Why that is exact" in the
    module docstring). Returns (the selected pairs best first, pairs left after each of rules 1-6 in the bands)."""
    (chosen, rejected, rank), left, passed = _band_candidates(banded, np.arange(len(banded.group)), rules, keep)
    while True:
        by_rank = pl.DataFrame(
            {RANK_BY[0]: rank, RANK_BY[1]: banded.answer_id[chosen], RANK_BY[2]: banded.answer_id[rejected]}
        ).select(pl.arg_sort_by(RANK_BY, descending=RANK_DESCENDING)).to_series().to_numpy()
        chosen, rejected, rank = chosen[by_rank], rejected[by_rank], rank[by_rank]
        accepted = one_use_greedy(banded.cluster[chosen], banded.cluster[rejected], banded.group[chosen], cap)
        selected = np.bincount(banded.group[chosen[accepted]], minlength=len(keep))
        truncated = passed > np.bincount(banded.group[chosen], minlength=len(keep))
        short = np.flatnonzero(truncated & (selected < cap))
        if len(short) == 0:
            return _pairs_frame(answers, chosen[accepted], rejected[accepted], rank[accepted]), left
        keep[short] *= 2
        (more_chosen, more_rejected, more_rank), _, _ = _band_candidates(banded, np.flatnonzero(np.isin(banded.group, short)), rules, keep)
        others = ~np.isin(banded.group[chosen], short)
        chosen = np.concatenate([chosen[others], more_chosen])
        rejected = np.concatenate([rejected[others], more_rejected])
        rank = np.concatenate([rank[others], more_rank])


# ---------------------------------------------------------------------------------------------------------------
# All rules
# ---------------------------------------------------------------------------------------------------------------

def select_pairs(
    answers: pl.DataFrame, opts: PairOptions, lengths: LengthFilter = LengthFilter(), texts: Texts | None = None
) -> tuple[pl.DataFrame, dict[str, int], list[dict]]:
    """Returns (pairs, answer rows dropped by reason, funnel of candidate pairs per rule). `texts`: where the paired
    answers' texts are read (None: `answers` holds them)."""
    # Candidates are built from ids and votes only; texts (gigabytes) are attached to the kept pairs at the end.
    slim = answers.select(
        "question_group", "answer_id", "answer_cluster", "upvotes", "created_at", *QUALITY_COLUMNS,
        "answer_chars", drop_reason=length_drop_reason(lengths),
    )
    usable = slim.filter(pl.col("drop_reason").is_null()).drop("drop_reason")
    rules = pair_rules(opts)

    in_order, banded = time_bands(usable, opts.max_days_apart)
    keep = candidate_budget(in_order, opts.max_pairs_per_question)
    chosen_once, left_in_band = _match_within_budgets(in_order, banded, rules, opts.max_pairs_per_question, keep)
    # The first two rules are counted over all pairs; pairs outside the bands fail the time rule, so from
    # there on the band pairs are all the pairs left.
    lefts = [*_left_before_the_band(usable), *left_in_band[2:]]
    funnel = [{"rule": "same_question", "description": "two answers to one question group", "removed": 0, "left": lefts[0]}]
    for (name, description, _), before, after in zip(rules, lefts[:-1], lefts[1:], strict=True):
        funnel.append({"rule": name, "description": description, "removed": before - after, "left": after})

    funnel.append(
        {
            "rule": "each_response_once",
            "description": f"a response is in at most one pair; at most {opts.max_pairs_per_question} pairs per question",
            "removed": lefts[-1] - chosen_once.height,
            "left": chosen_once.height,
        }
    )
    sure = chosen_once.filter(pl.col("p_chosen_better") >= opts.min_p_chosen_better)
    funnel.append(
        {
            "rule": "min_p_chosen_better",
            "description": f"the vote model puts P(chosen is truly better) at {opts.min_p_chosen_better:g} or more",
            "removed": chosen_once.height - sure.height,
            "left": sure.height,
        }
    )
    kept = sure.head(opts.limit) if opts.limit else sure
    funnel.append({"rule": "limit", "description": "the most confident pairs", "removed": sure.height - kept.height, "left": kept.height})

    pairs = _attach_texts(kept, answers, answers if texts is None else texts)

    in_pair = pl.col("answer_id").is_in(pl.concat([kept["chosen_answer_id"], kept["rejected_answer_id"]]).implode())
    usable_in_question = pl.col("drop_reason").is_null().sum().over("question_group")
    no_time = pl.col("created_at").is_null() & (opts.max_days_apart < math.inf)
    reasons = slim.select(
        pl.coalesce(
            "drop_reason",
            pl.when(usable_in_question == 1).then(pl.lit("only_answer_to_its_question")),
            pl.when(no_time).then(pl.lit("no_creation_time")),
            pl.when(~in_pair).then(pl.lit("not_in_a_selected_pair")),
        ).alias("drop_reason")
    )["drop_reason"]
    dropped = reasons.drop_nulls().value_counts().sort("drop_reason")
    return pairs, dict(zip(dropped["drop_reason"], dropped["count"], strict=True)), funnel


def _attach_texts(kept: pl.DataFrame, answers: pl.DataFrame, texts: Texts) -> pl.DataFrame:
    """Join the question and the two answer texts onto the selected pairs (texts travel only now)."""
    in_pairs = texts_of(texts, pl.concat([kept["chosen_answer_id"], kept["rejected_answer_id"]]))
    ids = answers.select("answer_id", "question_id", "author_id").join(in_pairs, on="answer_id", how="inner")
    chosen = ids.select(
        chosen_answer_id="answer_id", question_id="question_id", prompt="question", chosen="answer", chosen_author_id="author_id"
    )
    rejected = ids.select(rejected_answer_id="answer_id", rejected="answer", rejected_author_id="author_id")
    return (
        kept.join(chosen, on="chosen_answer_id", how="left", maintain_order="left")
        .join(rejected, on="rejected_answer_id", how="left", maintain_order="left")
        .select(*schema.names("pairs"), *schema.author_id_names("pairs"), "question_group")
    )


def length_skew(pairs: pl.DataFrame) -> dict:
    """What the pairs may teach a reward model about length: the share whose chosen answer is longer (characters),
    the median chosen/rejected length ratio, and each side's median length. For stats.json and the card."""
    if pairs.height == 0:
        return {"chosen_longer_share": None, "median_length_ratio": None, "chosen_median_chars": None, "rejected_median_chars": None}
    chosen, rejected = pairs["chosen"].str.len_chars().cast(pl.Float64), pairs["rejected"].str.len_chars().cast(pl.Float64)
    return {
        "chosen_longer_share": round(float((chosen > rejected).mean()), 4),
        "median_length_ratio": round(float((chosen / rejected.clip(lower_bound=1)).median()), 3),
        "chosen_median_chars": float(chosen.median()),
        "rejected_median_chars": float(rejected.median()),
    }

