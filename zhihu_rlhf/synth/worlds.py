"""Named synthetic worlds: one `World` of documented knobs per preset, so every claim can be measured on
more than the world it was developed on. `WORLDS` maps each preset name to its World.

How votes are made in every world (per answer, before Poisson count noise):
    log rate = 1 + question popularity + quality_effect * quality + author log reach + log exposure
               + length_effect * (log length - its mean) + N(0, luck_sd)
with quality ~ N(0, 1) per answer (an author's skill is part of it when author_quality_sd > 0), the
author's log reach shared by all their answers, the exposure term made of the early-answer effect
(rank among the question's answers, days after its first answer, a bonus for the very first answers where
the world has one) and the time from writing to the crawl (one crawl per file, or one per question),
and the length term (0 unless the world sets length_effect), where length is the answer's number of body
sentences (about 30 characters each), lognormal, longer for better answers when quality_length > 0.
The truth file carries quality, `author_log_reach`, `log_exposure` and `log_length_effect` per row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.synth.text import CROSSPOST_PREFIXES


@dataclass(frozen=True)
class World:
    """Knobs of a synthetic world. The defaults are the `default` world (the project's original one)."""

    name: str = "default"
    description: str = "the original world: Zipf questions, many small authors, reach from follower counts"

    # Questions
    zipf_exponent: float = 2.2
    """Tail of answers per question (Zipf exponent, capped at ~500 answers at full size): most have 1."""
    hot_questions: int = 0
    """Hot questions added on top of the Zipf tail, each with `hot_answers` answers."""
    hot_answers: tuple[int, int] = (2_000, 12_000)
    """Range of a hot question's answer count (log-uniform). Small files shrink it: all hot questions
    together take at most `hot_max_row_share` of the rows, and at least one is always kept."""
    hot_max_row_share: float = 0.3
    """Cap on the share of rows in hot questions, so a small file still has ordinary questions."""
    hot_window_days: float = 21.0
    """A hot question's answers come within this many days of it being asked ..."""
    hot_in_window_share: float = 0.9
    """... this share of them (the rest trickle in as ordinary answers do)."""

    # Authors
    answers_per_author: float = 6.0
    """Mean answers per author (rows / this = number of authors)."""
    author_activity_sd: float = 1.6
    """Sd of log activity: how unevenly answers spread over authors (1.6: a few write hundreds)."""
    authors_repeat: bool = True
    """False: every answer has its own author (a copy of an answer too), so author effects cannot be estimated."""
    author_reach_sd: float | None = None
    """Sd of an author's log reach, the multiplier on the votes of all their answers. None: the default
    world's reach, 0.2 * log(1 + followers) with heavy-tailed follower counts that grow with activity."""
    reach_quality_share: float = 0.0
    """Share of the variance of log reach that is the author's skill (the rest is pure popularity); needs
    author_reach_sd. 0.5: reach is partly quality; 0: reach says nothing about how well they write."""
    author_quality_sd: float = 0.0
    """Sd of an author's skill inside answer quality (quality stays N(0, 1): the rest is per answer)."""
    unique_author_tokens: bool = False
    """Profile tokens never collide, as on Zhihu. Every preset but `default` sets it; `default` keeps its
    original bytes, in which two authors' pinyin slugs sometimes collide."""

    # Votes
    quality_effect: float = 1.0
    """Coefficient of quality on log votes (0: votes carry no quality at all)."""
    exposure_strength: float = 1.0
    """Multiplier on the early-answer effect: -0.3 * log(1 + rank) - 0.35 * log(1 + days after the first answer / 7)."""
    crawl_age_effect: float = 0.0
    """Coefficient on log(1 + days from writing to the crawl / 30): older answers had longer to collect votes."""
    early_answers: int = 0
    """The first this many answers to each question (by time) collect `early_answer_bonus` extra log votes ..."""
    early_answer_bonus: float = 0.0
    """... on top of the smooth early-answer effect: they sat at the top of the question page while it filled."""
    crawl_per_question: bool = False
    """Each question crawled on its own date (uniform between it being asked and the file's crawl date) instead of
    one crawl for the file: answers are never newer than their question's crawl, and crawl age counts from it."""
    luck_sd: float = 0.3
    """Sd of the per-answer luck on log votes (how far an answer happened to travel); 0.3 in every preset but
    `lucky`."""
    length_effect: float = 0.0
    """Coefficient of log answer length on log votes beyond quality: votes grow as length^length_effect (0.5: an
    answer twice as long gets 1.41x the votes at the same quality)."""
    quality_length: float = 0.0
    """How much quality itself lengthens an answer: log length += quality_length * quality (0.3: a 1-sd better
    answer is 1.35x as long). The length noise stays N(0, 1) on the log scale."""

    # Titles
    reask_share: float = 0.02
    """Share of questions that re-ask an earlier one with a punctuation, spacing or wording change."""
    cosmetic_reask_share: float = 0.0
    """Share of questions that re-ask an earlier one with cosmetic edits only (width, ？？ or no ？,
    spaces, a leading 请问, a trailing 吗)."""
    title_template_share: float = 0.0
    """Share of questions titled from shared templates (电影的未来会怎样？ / 摄影的未来会怎样？)."""

    # How the file is written
    metadata_spelling: Literal["kol", "pandas"] = "kol"
    """METADATA as the published Zhihu-KOL reads (`kol`) or as the pandas-based converter wrote it
    (`pandas`: NaN / Infinity tokens, float ids, an extra `url` key); see synth/metadata.py."""
    legacy_row_share: float = 0.0
    """Share of rows from the older crawler ({"回答点赞数": ..., "回答时间": ...}, no ids); truth marks
    them malformed = "legacy_no_ids"."""
    crosspost_prefixes: tuple[str, ...] = CROSSPOST_PREFIXES
    """Prefixes a cross-posted copy may start with (谢邀。, 泻药。, ...); suffixes are 编辑于 … / 发布于 …."""
    paragraph_join: Literal["newlines", "space"] = "newlines"
    """Paragraphs separated by the page's line breaks, or joined by one space as the scraper joined `<p>`."""

    # Text
    text_quality: float = 0.0
    """How well an answer's text shows its quality (0-1): the text is written from `shown quality` =
    text_quality * quality + sqrt(1 - text_quality^2) * N(0, 1), through features a reader can learn (see
    synth/readable.py), and every author writes in a visible style (opening, sign-off, paragraph marks) that
    says nothing about quality but follows the popular part of their reach. 0: text says nothing about quality
    (the original worlds, byte for byte)."""


DEFAULT = World()
_BASE = replace(  # what every new preset has beyond `default`, whose bytes stay as they were
    DEFAULT,
    unique_author_tokens=True,
    crosspost_prefixes=(*CROSSPOST_PREFIXES, "利益相关，匿了。", "利益相关，匿了。\n\n"),
)
_KOL = replace(  # a crawl that followed KOLs: few authors, many answers each, reach about as strong as quality
    _BASE, answers_per_author=60.0, author_activity_sd=1.0, author_reach_sd=1.0, author_quality_sd=0.5, crawl_age_effect=0.3
)

# The readable worlds: KOL-like, and an answer's text shows its quality (correlation 0.9 before the
# sentence-level noise), so a reward model can learn quality from text, and the author's style from votes.
_READABLE = replace(_KOL, text_quality=0.9)

WORLDS: dict[str, World] = {
    world.name: world
    for world in [
        DEFAULT,
        replace(
            _BASE, name="hot", hot_questions=6,
            description="a handful of hot questions with 2,000-12,000 answers each, most within three weeks",
        ),
        replace(
            _KOL, name="kol", reach_quality_share=0.5,
            description="KOL crawl: authors with many answers and a reach that is partly quality",
        ),
        replace(
            _KOL, name="popularity", reach_quality_share=0.0,
            description="as kol, but reach is pure popularity (says nothing about quality)",
        ),
        replace(
            _KOL, name="solo", reach_quality_share=0.5, authors_repeat=False,
            description="every answer by a different author: author effects cannot be estimated",
        ),
        replace(
            _KOL, name="unlearnable", reach_quality_share=0.0, quality_effect=0.0,
            description="votes from reach and exposure only; quality has no effect on votes",
        ),
        replace(
            _KOL, name="length", reach_quality_share=0.5, length_effect=0.5, quality_length=0.3,
            description="as kol, and votes grow with answer length beyond quality; better answers are also longer",
        ),
        replace(
            _KOL, name="earned", reach_quality_share=0.9, author_quality_sd=0.85, early_answers=3, early_answer_bonus=0.7,
            crawl_per_question=True,
            description="reach earned by writing well (quality mostly the author's skill), first answers collect extra "
            "votes, each question crawled on its own date",
        ),
        replace(
            _KOL, name="lucky", author_reach_sd=1.5, reach_quality_share=0.0, luck_sd=0.6,
            description="more luck than the vote model assumes (sd 0.6) and reach that is pure popularity, varying "
            "more than in kol",
        ),
        replace(
            _BASE, name="templates", title_template_share=0.6, reask_share=0.0, cosmetic_reask_share=0.04,
            description="titles from shared templates (differ in 2-3 characters) and cosmetic re-asks",
        ),
        replace(
            _READABLE, name="readable", reach_quality_share=0.5,
            description="as kol, and the text shows its quality; each author's style follows their popularity",
        ),
        replace(
            _READABLE, name="readable_popularity", reach_quality_share=0.0,
            description="as readable, but reach is pure popularity (says nothing about quality)",
        ),
        replace(
            _BASE, name="pandas", metadata_spelling="pandas", legacy_row_share=0.02, paragraph_join="space",
            description="METADATA as pandas wrote it (NaN, Infinity, float ids, url), legacy rows, space-joined paragraphs",
        ),
    ]
}


def world_named(name: str | World) -> World:
    """The preset called `name` (a World is returned as it is)."""
    if isinstance(name, World):
        return name
    if name not in WORLDS:
        raise UserError(f"--world {name!r} is not a preset; choose one of {', '.join(WORLDS)}")
    return WORLDS[name]
