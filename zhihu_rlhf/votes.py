"""The vote model: what an answer's upvotes say about its quality once exposure and author reach are taken out.

Zhihu votes are not a count of quality alone; the reference article says so itself (知乎的点赞受许多因素影响，例如
答题人粉丝数，答题时间). Each answer's upvotes v_i are modelled as Poisson counts around a log rate that is a sum:

    log E[v_i] = question + exposure + author + length + quality + luck
               =   mu_q   +  b . x_i  +  a_A  + c l_i  +   q_i   + e_i

- question mu_q: how many readers the question has. Answers are only compared within one question group, so it is
  a free constant per group, estimated and never interpreted.
- exposure b . x_i: how long and how prominently the answer was shown before the crawl. x_i is EXPOSURE_FEATURES:
  log1p(answers to the question written before it) with a term of its own for each of the first five places (the
  first answers sit at the top of the page while it fills: a head start of any shape there), and the days after
  the question's first answer and the days before the crawl, each at three time scales (the shape of exposure over
  time is not known). The crawl time is not in the data: per source it is the latest creation time. Where each
  question was crawled on its own date, that is wrong by the gap, but the gap is shared by a question's answers
  (all that is ever compared) and changes log1p(days / 30) little once a crawl is months old; on the synthetic
  world built for it (`earned`) the probabilities were as well calibrated as anywhere once the author share was
  right (benchmarks/RESULTS.md). One b for the whole table.
- author a_A ~ N(0, omega^2): the author's reach (followers, the feed), a factor on the votes of every answer they
  write that does not shrink as votes grow. Where the source has follower counts (`author_followers`),
  log1p(followers) is a measured part of it, with its own slope. The rest is learnt from the author's OTHER
  answers (other texts: a cross-post of the same text is not another answer), with partial pooling: the author's
  mean residual there, shrunk by B = omega^2 / (omega^2 + that mean's variance). An author with no other answer
  gets B = 0, no correction; one with hundreds gets B near 1, nearly their own mean. omega^2 is the mean product
  of the residuals of two different answers by one author (no noise model needed for that).
- length c l_i: l_i = log(characters of the answer), centred within its question. Long, detailed answers collect
  more votes than short ones of the same quality (Singhal et al. 2023 find length correlations in every vote- and
  rater-based preference set), and a reward model trained on pairs that carry that lead learns to pay for length.
  One slope c for the whole table. What the slope measures is length's whole association with votes: the direct
  effect, plus quality's where better answers are also longer. Votes cannot separate the two (see the length share).
- quality q_i: what we want, relative to the question.
- luck e_i ~ N(0, luck_sd^2): how far an answer happened to travel (a share by a big account, a lucky hour). The
  votes of one answer cannot tell luck from quality, but copies of one text can (cross-posts and re-crawls that
  dedupe puts in one cluster): they share their quality, so the spread of their residuals is luck and count noise
  (`luck_from_copies`). `luck_sd="auto"` measures it where at least MIN_LUCK_COPY_PAIRS pairs of copies can be
  compared, and falls back to an assumed FALLBACK_LUCK_SD otherwise; stats.json and the card say which, and from
  how many pairs. It keeps the model from trusting large counts blindly: 20,000 over 10,000 votes is only as
  certain as luck allows. The Poisson count noise on top makes few votes say little. It also decides how much of
  the answer-level variance u2 is quality (u2 - luck^2): where copies vary as much as answers do, votes say
  little about quality and every probability stays near 0.5.

Fitting (`_fit`), numpy over rows sorted by question: penalised quasi-likelihood for this Poisson log-normal
model. Each round turns every count into a Gaussian working observation of its log rate theta_i,
y_i = theta_i + (v_i - e^theta_i) / e^theta_i with variance e^-theta_i, so that 0 votes in a busy question is strong
evidence and 0 votes in a quiet one none (log(0 + 1/2) would say the same for both); fits b and the author effects
by weighted least squares with the question constants profiled out (conjugate gradients); and moves theta_i to the
mode of its posterior. The answer-level variance u2 = Var(q + e) comes from those posteriors, counting that each
question's constant is fitted from its own answers. Only questions with two or more answers and some votes are
fitted. A million answers take seconds (benchmarks/RESULTS.md).

Scoring. z_i = y_i - b . x_i - s * (the author's estimated effect) measures mu_q + Q_i, where Q_i, the quality we
report, is q_i plus the share (1 - s) of the author's effect taken to be quality. Everything is Gaussian given the
fit, so each answer gets the posterior mean and sd of Q_i - mu_q: `estimated_quality` and `quality_sd` (the exact
covariances are written out in `estimate_quality`; an author effect known from few other answers adds its own
variance). A pair's `p_chosen_better` = P(Q_chosen > Q_rejected) = Phi(lead / sd of the lead), its `confidence`
the lead in sds.

The length share s_L (`length_share`). Like the author share: the estimated length term c l_i is removed with share
s_L, the rest counts as quality (z subtracts s_L c l_i; the kept (1 - s_L) c l_i enters Q like measured reach does).
s_L = 1 says length never shows quality, so the pairs keep none of the length lead votes give, including what
better answers' extra length earned; s_L = 0 says all of it is quality, the model before length was fitted. Where
votes do not follow length (every preset but `length`) c is near 0 and the share changes nothing. The default,
0.4, is measured, not estimated: on the `length` world it is the share whose top pairs are as often, and as much,
longer as pairs chosen by true quality. It is not the world's direct part of c (about 0.65 there): the top pairs
of any vote-based ranking are chosen partly for luck, which has nothing to do with length, so they show less of
quality's length skew than the truth does, and 0.4 leaves some length bias in to make up for it. Where votes reward
length and quality does not lengthen answers, 0.4 leaves a skew in; where length is all quality, it removes some;
votes cannot say which world they are (benchmarks/RESULTS.md, "Length").

The author share s (`author_share`). An author's mean votes are partly how well they write: where reach is pure
popularity the whole author effect should go, where readers follow good writers part of it is quality, and votes
cannot tell which (copies share their author too). So s is not one assumed value but a range (lo, hi), taken as
uniform: estimates use its middle, and each answer's `quality_share_shift` is how far its estimate moves per sd of
s (the slope between the range's ends times (hi - lo) / sqrt(12)). A pair's lead then has the extra variance
(shift_chosen - shift_rejected)^2 (`quality_lead`): nothing where both authors' effects are alike, most where the
lead hinges on one author's reach, whose p_chosen_better goes toward 0.5. This Gaussian stand-in for the uniform
mixture of Phi(lead(s) / sd) gave the same reliability tables as the mixture itself on the synthetic worlds. The
default range, 0 to 1 (nothing assumed), has the best worst case over the synthetic worlds, whose best single
shares run from about 0.25 (`earned`: reach earned by writing well) to 1 (`default`: reach from follower
counts): benchmarks/RESULTS.md, "Calibration of p_chosen_better". No range is right for every world: a world whose share sits at an
end of the range gets probabilities pulled toward 0.5 from the side of the truth (too modest where reach is
earned, too sure where it is pure popularity) for the pairs that hinge on reach.

Levels (`model`): "raw" takes the votes as they are (count noise and luck only: the article's plain votes, ranked
by a probability); "exposure" removes exposure; "authors" removes author effects; "full" removes both and the
length share of the length term.

What it cannot fix: an author's reach is only learnt from their other answers (or follower counts), so where
authors never repeat it stays in the noise (copies by different authors then count it as luck, which keeps the
probabilities honest, not sharper); luck is only measured where copies exist; how much of an author's reach is
quality is unknown and only carried as a range; and where nothing but reach and exposure move votes there is no
quality signal to find, yet the share of the author effect kept as quality still looks like one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from zhihu_rlhf.errors import UserError

VoteModel = Literal["raw", "exposure", "authors", "full"]
VOTE_MODELS: tuple[VoteModel, ...] = ("raw", "exposure", "authors", "full")
# Per answer: the estimated quality, its sd, and how far the estimate moves when the author share moves by one sd
# of its assumed range (0 where the share is taken as known).
QUALITY_COLUMNS = ["estimated_quality", "quality_sd", "quality_share_shift"]
# Also added to the answer table, to inspect the model: the estimated log-vote terms removed (before the share).
EFFECT_COLUMNS = ["exposure_effect", "author_effect", "length_effect"]

SECONDS_PER_DAY = 86_400
_MAX_ITERATIONS = 60
_MAX_CG_STEPS = 500
_TOLERANCE = 1e-4  # largest change of any fitted effect (log votes) that counts as converged
_MIN_ANSWERS_PER_SLOPE = 20
_MIN_TAU2 = 1e-4


@dataclass
class VoteModelOptions:
    """How votes are turned into estimated quality (see the module docstring for the model)."""

    model: VoteModel = "full"
    """"raw": plain votes (the article's behaviour); "exposure": exposure removed; "authors": author effects
    removed; "full": both."""
    author_share: float | tuple[float, float] = (0.0, 1.0)
    """Share of the estimated author effect removed (0-1); the rest counts as quality. Reach that is pure popularity
    wants 1, reach earned by writing well wants less, and votes cannot tell them apart. A range (lo, hi) says the
    share is not known: estimates use its middle and every probability carries its spread (see "The author
    share"); a single number is taken as known."""
    luck_sd: float | Literal["auto"] = "auto"
    """Sd of log votes that is neither quality, exposure, author nor count noise. "auto": measured from copies of
    one text (see the module docstring), or FALLBACK_LUCK_SD where fewer than MIN_LUCK_COPY_PAIRS pairs of copies can be
    compared; a number is taken as known. Larger makes every probability more modest."""
    length_share: float = 0.4
    """Share of the estimated length term (log votes per log character, fitted by the "full" model) removed; the
    rest counts as quality. Votes cannot tell length rewarded for itself from the quality longer answers carry:
    0.4 keeps the pairs' length skew near what true quality gives on the `length` world (benchmarks/RESULTS.md,
    "Length")."""


# Luck from copies: fewer pairs of copies than this and "auto" falls back to FALLBACK_LUCK_SD (the value assumed
# before it was measured). With N pairs and little count noise the measured sd has a standard error of about
# sd / sqrt(2 N) (Var(D^2) = 2 E[D^2]^2): 0.015 at 200 pairs and sd 0.3, twice that where count noise is as large.
MIN_LUCK_COPY_PAIRS = 200
FALLBACK_LUCK_SD = 0.3


def author_share_range(options: VoteModelOptions) -> tuple[float, float]:
    """The author share as (lo, hi); a single number is a range of width 0."""
    share = options.author_share
    return (float(share), float(share)) if isinstance(share, (int, float)) else (float(share[0]), float(share[1]))


def check_vote_options(options: VoteModelOptions) -> None:
    if options.model not in VOTE_MODELS:
        raise UserError(f"--vote-model must be one of {', '.join(VOTE_MODELS)}, got {options.model!r}")
    share = options.author_share
    if not (isinstance(share, (int, float)) or (isinstance(share, (tuple, list)) and len(share) == 2)):
        raise UserError(f"--author-share must be a number or a range LO:HI, got {share!r}")
    low, high = author_share_range(options)
    if not 0.0 <= low <= high <= 1.0:
        raise UserError(f"--author-share must lie in [0, 1] (a range LO:HI with LO <= HI), got {share!r}")
    if options.luck_sd != "auto" and not (isinstance(options.luck_sd, (int, float)) and options.luck_sd >= 0):
        raise UserError(f"--luck-sd must be 'auto' or a number at least 0, got {options.luck_sd!r}")
    if not 0.0 <= options.length_share <= 1.0:
        raise UserError(f"--length-share must be in [0, 1], got {options.length_share}")


def parse_author_share(text: str) -> float | tuple[float, float]:
    """--author-share as written: a number ("0.75") or a range ("0.5:1")."""
    try:
        if ":" in text:
            low, high = text.split(":")
            return (float(low), float(high))
        return float(text)
    except ValueError:
        raise UserError(f"--author-share must be a number or a range LO:HI such as 0.5:1, got {text!r}") from None


def parse_luck_sd(text: str) -> float | Literal["auto"]:
    """--luck-sd as written: "auto" or a number."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--luck-sd must be 'auto' or a number such as 0.3, got {text!r}") from None


def quality_lead(chosen_prefix: str, rejected_prefix: str) -> pl.Expr:
    """How many sds the first answer's estimated quality leads the second's, from their QUALITY_COLUMNS.

    The lead's variance is both answers' own plus what the unknown author share adds: the lead moves by the
    difference of their shifts per sd of the share, so two answers by authors of equal reach lose nothing and a
    lead that hinges on one author's reach loses most."""
    chosen, chosen_sd = pl.col(f"{chosen_prefix}estimated_quality"), pl.col(f"{chosen_prefix}quality_sd")
    rejected, rejected_sd = pl.col(f"{rejected_prefix}estimated_quality"), pl.col(f"{rejected_prefix}quality_sd")
    share_shift = pl.col(f"{chosen_prefix}quality_share_shift") - pl.col(f"{rejected_prefix}quality_share_shift")
    return (chosen - rejected) / (chosen_sd.pow(2) + rejected_sd.pow(2) + share_shift.pow(2)).sqrt()


def normal_cdf(z: pl.Expr) -> pl.Expr:
    """Phi(z): turns a lead in sds into P(first is truly better)."""
    return (-z / np.sqrt(2.0)).erfc() / 2


def log_normal_cdf(z: pl.Expr) -> pl.Expr:
    """log Phi(z), accurate in both tails: for z > 0 as log1p(-Phi(-z)), so a lead of 8 sds still differs from one of
    9 (Phi itself rounds both to 1); for z <= 0 as log Phi(z), which stays finite far down the tail."""
    return pl.when(z > 0).then((-normal_cdf(-z)).log1p()).otherwise(normal_cdf(z).log())


# Exposure is a function of time whose shape is unknown: each time is given at three scales (a day, a month, a
# year), so votes that saturate within days and votes that keep coming for years are both fitted. The first few
# answers of a question sit at the top of its page while it fills: each of the first FIRST_ANSWERS places has its
# own term, so a head start of any shape there is fitted, not only the smooth decline log1p(earlier answers) allows.
TIME_SCALES_DAYS = (1, 30, 365)
FIRST_ANSWERS = 5
EXPOSURE_FEATURES = [
    "log1p(earlier answers)",
    *(f"answer number {k + 1}" for k in range(FIRST_ANSWERS)),
    *(f"log1p(days after the first answer / {d})" for d in TIME_SCALES_DAYS),
    *(f"log1p(days before the crawl / {d})" for d in TIME_SCALES_DAYS),
]


def exposure_features(answers: pl.DataFrame, question: np.ndarray) -> np.ndarray:
    """Per answer, EXPOSURE_FEATURES (NaN where the creation time is unknown): earlier answers to its
    question (`question`: one integer code per question group), days after the question's first answer, days
    before the crawl. The crawl time of each source is its latest creation time (no answer can be newer than the
    crawl that found it)."""
    created = pl.col("created_at")
    days = answers.select(
        after_first=(created - created.min().over("question_group")).dt.total_seconds() / SECONDS_PER_DAY,
        before_crawl=(created.max().over("source") - created).dt.total_seconds() / SECONDS_PER_DAY,
    ).to_numpy()
    earlier = _earlier_answers(question, answers["created_at"].dt.epoch("us").to_numpy().astype(float))
    scales = np.array(TIME_SCALES_DAYS, dtype=float)
    place = np.where(np.isnan(earlier[:, None]), np.nan, (earlier[:, None] == np.arange(FIRST_ANSWERS)).astype(float))
    return np.hstack([np.log1p(earlier[:, None]), place, np.log1p(np.hstack([days[:, :1] / scales, days[:, 1:] / scales]))])


def answer_log_length(answers: pl.DataFrame) -> np.ndarray:
    """Per answer, log(characters of its text): the length covariate (the text as normalised, at least 1 char)."""
    return answers["answer_chars"].clip(lower_bound=1).cast(pl.Float64).log().to_numpy()


def _earlier_answers(question: np.ndarray, created: np.ndarray) -> np.ndarray:
    """How many answers to the same question were written strictly before each answer (NaN: no creation time).

    One sort by (question, time) instead of a rank per question group, which is ten times slower in polars.
    """
    order = np.lexsort((np.nan_to_num(created, nan=np.inf), question))
    q, t = question[order], created[order]
    position = np.arange(len(order))
    new_question = np.r_[True, q[1:] != q[:-1]]
    new_time = new_question | np.r_[True, t[1:] != t[:-1]]
    first_of_question = np.maximum.accumulate(np.where(new_question, position, 0))
    first_of_time = np.maximum.accumulate(np.where(new_time, position, 0))  # ties count as written together
    earlier = np.empty(len(order))
    earlier[order] = first_of_time - first_of_question
    return np.where(np.isnan(created), np.nan, earlier)


def estimate_quality(answers: pl.DataFrame, options: VoteModelOptions) -> tuple[pl.DataFrame, dict]:
    """answers + QUALITY_COLUMNS + EFFECT_COLUMNS; and the fitted model, for stats.json and the card."""
    use_exposure = options.model in ("exposure", "full")
    use_authors = options.model in ("authors", "full")
    share_low, share_high = author_share_range(options) if use_authors else (0.0, 0.0)
    rows = answers.height
    if rows == 0:
        return answers.with_columns(pl.lit(None, pl.Float64).alias(c) for c in QUALITY_COLUMNS + EFFECT_COLUMNS), {}

    # Everything below runs on rows sorted by question group, so each question is one contiguous run.
    question_code = _codes(answers["question_group"])
    order = np.argsort(question_code, kind="stable")
    questions = _Runs.of(question_code[order])
    votes = answers["upvotes"].cast(pl.Float64).to_numpy()[order]

    # Covariates: the exposure columns, log length (full model, where the table has lengths) and, with the author
    # terms, log1p(followers) where the source has them. Centred within questions over the known values; an
    # unknown value sits at its question's mean (no adjustment).
    exposure = exposure_features(answers, question_code)[order] if use_exposure else np.zeros((rows, 0))
    use_length = options.model == "full" and "answer_chars" in answers.columns
    length = answer_log_length(answers)[order, None] if use_length else np.zeros((rows, 0))
    has_followers = use_authors and "author_followers" in answers.columns and answers["author_followers"].null_count() < rows
    followers = (
        answers["author_followers"].cast(pl.Float64).log1p().to_numpy()[order, None] if has_followers else np.zeros((rows, 0))
    )
    covariates = np.hstack([exposure, length, followers])
    known = ~np.isnan(covariates)
    covariates = np.where(known, questions.demean(np.where(known, covariates, 0.0), known.astype(float)), 0.0)
    n_exposure, n_length = exposure.shape[1], length.shape[1]
    length_columns = slice(n_exposure, n_exposure + n_length)

    # Authors: an unknown author stands alone; a "text" is one author's answer cluster (cross-posts are one text).
    author_code = _codes(answers.select(
        pl.when(pl.col("author_id").is_null()).then(pl.format("\0{}", pl.col("answer_id"))).otherwise("author_id")
    ).to_series())
    cluster = _codes(answers["answer_cluster"])
    text_code = _codes(pl.Series(cluster * (int(author_code.max()) + 1) + author_code))
    author, text = author_code[order], text_code[order]
    fit = _fit(votes, _Design(questions, covariates, author, text, use_authors))

    # Each answer's author effect from the author's OTHER texts: alpha_hat = B * (their weighted mean residual), with
    # B = omega2 / (omega2 + that mean's variance): 0 for an author with no other text, near 1 for hundreds.
    slopes, omega2 = fit.slopes, fit.author_variance
    others_weight, shrink, author_term = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    if omega2 > 0:
        residual = fit.working_log_rate - questions.spread(fit.question_effect) - covariates @ slopes
        others_weight, others_sum = _other_texts(author, text, fit.weight, residual)
        shrink = others_weight / (others_weight + 1.0 / omega2)
        author_term = others_sum / (others_weight + 1.0 / omega2)
    followers_term = covariates[:, length_columns.stop:] @ slopes[length_columns.stop:]  # measured reach: B = 1
    author_term = author_term + followers_term
    exposure_term = covariates[:, :n_exposure] @ slopes[:n_exposure]
    length_term = covariates[:, length_columns] @ slopes[length_columns]
    length_share = options.length_share if use_length else 0.0
    exposure_unknown_var = np.zeros(rows)
    if n_exposure and known[:, 0].any():  # an unknown creation time leaves the exposure term unknown
        exposure_unknown_var = np.where(known[:, 0], 0.0, float(np.var(exposure_term[known[:, 0]])))
    terms = _Terms(
        fit.working_log_rate, fit.count_variance, exposure_term, author_term, shrink, exposure_unknown_var,
        fit.answer_variance, omega2, float(np.var(followers_term)), length_share * length_term,
        (1 - length_share) ** 2 * float(np.var(length_term)),
    )

    # Copies without a creation time have an unknown exposure term: they would measure it as luck.
    copy_pairs, measured_luck = luck_from_copies(
        fit.working_log_rate - exposure_term - author_term - length_term, fit.count_variance,
        fit.weight * (exposure_unknown_var == 0), questions, cluster[order]
    )
    luck_sd = options.luck_sd
    if luck_sd == "auto":
        luck_sd = measured_luck if copy_pairs >= MIN_LUCK_COPY_PAIRS else FALLBACK_LUCK_SD

    share = (share_low + share_high) / 2
    estimated, quality_sd = _posterior_quality(terms, questions, share, luck_sd**2)
    share_shift = np.zeros(rows)
    if share_high > share_low:  # the estimate's slope in the share, times the sd of a uniform share over the range
        at_high = _posterior_quality(terms, questions, share_high, luck_sd**2)[0]
        at_low = _posterior_quality(terms, questions, share_low, luck_sd**2)[0]
        share_shift = (at_high - at_low) / np.sqrt(12.0)
    quality_var = (fit.answer_variance - luck_sd**2 + (1 - share) ** 2 * (omega2 + terms.followers_variance)
                   + terms.kept_length_variance)
    summary = {
        "model": options.model,
        "author_share": share,
        "author_share_range": [share_low, share_high],
        "luck_sd": round(float(luck_sd), 4),
        "luck_sd_from": "assumed" if options.luck_sd != "auto" else "copies" if copy_pairs >= MIN_LUCK_COPY_PAIRS else "fallback",
        "luck_copy_pairs": copy_pairs,
        "luck_sd_measured": round(float(measured_luck), 4) if copy_pairs else None,
        "quality_sd": round(float(np.sqrt(max(quality_var, _MIN_TAU2))), 4),
        "answer_sd": round(float(np.sqrt(fit.answer_variance)), 4),
        "exposure_effect_sd": round(float(np.std(exposure_term)), 4) if n_exposure else None,
        "exposure_slopes": dict(zip(EXPOSURE_FEATURES, np.round(slopes[:n_exposure], 4).tolist(), strict=True)) if n_exposure else {},
        "followers_slope": round(float(slopes[length_columns.stop]), 4) if has_followers else None,
        "length_share": length_share,
        "length_slope": round(float(slopes[n_exposure]), 4) if use_length else None,
        "length_effect_sd": round(float(np.std(length_term)), 4) if use_length else None,
        "author_effect_sd": round(float(np.sqrt(fit.author_variance)), 4) if use_authors else None,
        "answers_with_author_correction": int((others_weight > 0).sum()),
        "iterations": fit.iterations,
    }
    unsorted = lambda values: pl.Series(values[np.argsort(order)])  # noqa: E731
    return answers.with_columns(
        estimated_quality=unsorted(estimated),
        quality_sd=unsorted(quality_sd),
        quality_share_shift=unsorted(share_shift),
        exposure_effect=unsorted(exposure_term),
        author_effect=unsorted(author_term),
        length_effect=unsorted(length_term),
    ), summary


@dataclass
class _Terms:
    """What scoring needs from the fit, per answer (sorted by question) and for the whole table."""

    working_log_rate: np.ndarray
    count_variance: np.ndarray
    exposure_term: np.ndarray
    author_term: np.ndarray  # estimated author effect, followers' part included
    shrink: np.ndarray  # B: how much of the author's effect their other texts reveal
    exposure_unknown_var: np.ndarray  # variance of the exposure term where the creation time is unknown
    answer_variance: float  # u2 = Var(quality + luck)
    author_variance: float  # omega2
    followers_variance: float  # variance of the followers' part of reach
    removed_length_term: np.ndarray  # s_L c l: the share of the length term taken out of the votes
    kept_length_variance: float  # Var((1 - s_L) c l): the length term's part that counts as quality


def _posterior_quality(terms: _Terms, questions: _Runs, share: float, luck_var: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of Q - mu_q per answer, for author share `share` and luck variance `luck_var`.

    z = y - exposure - s * (author effect) measures mu_q + Q, where Q is the answer's own quality plus the share
    (1 - s) of its author's effect that counts as quality. Per answer, with B the author effect's shrink factor:
      Var(z - mu_q)    = u2 + count variance + omega2 (1 - s B (2 - s))     (what z varies by)
      Cov(Q, z - mu_q) = u2 - luck^2 + (1 - s) omega2 (1 - s B)            (how much of that is quality)
      Var(Q)           = u2 - luck^2 + (1 - s)^2 omega2
    (followers' part likewise, with B = 1, and the kept length term (1 - s_L) c l the same way), so
    E[Q - mu_q | z] = Cov / Var(z) * (z - mu_q) and the variance left is Var(Q) - Cov^2 / Var(z).
    """
    kept = 1 - share
    omega2, followers_var, shrink = terms.author_variance, terms.followers_variance, terms.shrink
    own_quality = max(terms.answer_variance - luck_var, _MIN_TAU2)
    kept_length_var = terms.kept_length_variance
    z = terms.working_log_rate - terms.exposure_term - share * terms.author_term - terms.removed_length_term
    z_var = (terms.answer_variance + terms.count_variance + omega2 * (1 - share * shrink * (2 - share))
             + followers_var * kept**2 + kept_length_var + terms.exposure_unknown_var)
    quality_cov = own_quality + kept * (omega2 * (1 - share * shrink) + followers_var * kept) + kept_length_var
    quality_var = own_quality + kept**2 * (omega2 + followers_var) + kept_length_var
    keep = quality_cov / z_var
    estimated = keep * (z - questions.spread(questions.mean(z, 1.0 / z_var)))
    return estimated, np.sqrt(np.maximum(quality_var - keep * quality_cov, _MIN_TAU2))


def luck_from_copies(
    residual: np.ndarray, count_variance: np.ndarray, weight: np.ndarray, questions: _Runs, cluster: np.ndarray
) -> tuple[int, float]:
    """(pairs of copies compared, luck sd they measure), from copies of one text: cross-posts and re-crawls that
    dedupe put in one answer cluster. Copies share their quality, so what differs between their votes, once
    question, exposure and author are taken out, is luck and count noise (and reach the model could not learn,
    which to the model is luck too).

    `residual` is log votes less exposure and the author effect (rows sorted by question). Each copy is measured
    against its question's other answers outside its cluster: r = residual - their weighted mean, whose variance
    is 1 / their total weight (two copies in one question share that mean, which then cancels). For consecutive
    copies of a cluster, D = r1 - r2 has E[D^2] = 2 luck^2 + the two count variances (+ the two means'
    variances), so luck^2 is a weighted mean of (D^2 - those) / 2, weighted by 1 / Var(D^2) (Gaussian: 2 E[D^2]^2,
    refined from the estimate). Only fitted answers count (questions with two or more answers and some votes).
    """
    in_fit = weight > 0
    question = questions.spread(np.arange(len(questions.sizes)))
    # The question's weighted sums outside each answer's cluster.
    n_clusters = int(cluster.max()) + 1 if len(cluster) else 0
    qc = question.astype(np.int64) * n_clusters + cluster
    _, qc_code = np.unique(qc, return_inverse=True)
    w = np.where(in_fit, weight, 0.0)
    wr = w * np.where(in_fit, residual, 0.0)
    outside_weight = questions.spread(questions.sums(w)) - np.bincount(qc_code, w)[qc_code]
    outside_sum = questions.spread(questions.sums(wr)) - np.bincount(qc_code, wr)[qc_code]
    # Whether any fitted answer lies outside the cluster is counted, not read off outside_weight: that difference
    # of two float sums can come out a few ulps above or below 0 depending on the BLAS thread count that fitted
    # the weights, which changed which copies were used from one machine setting to another.
    fitted = in_fit.astype(np.int64)
    outside_fitted = questions.spread(questions.sums(fitted)) - np.bincount(qc_code, fitted)[qc_code]
    usable = in_fit & (outside_fitted > 0)
    r = residual - outside_sum / np.where(usable, outside_weight, 1.0)
    mean_var = 1.0 / np.where(usable, outside_weight, np.inf)

    # Consecutive usable copies of one cluster.
    rows = np.flatnonzero(usable)
    rows = rows[np.argsort(cluster[rows], kind="stable")]
    first, second = rows[:-1], rows[1:]
    copies = cluster[first] == cluster[second]
    first, second = first[copies], second[copies]
    if len(first) == 0:
        return 0, 0.0
    same_question = question[first] == question[second]
    if same_question.sum() >= MIN_LUCK_COPY_PAIRS:
        first, second, same_question = first[same_question], second[same_question], same_question[same_question]
    difference = np.where(same_question, (residual[first] - residual[second]), r[first] - r[second])
    known_var = count_variance[first] + count_variance[second] + np.where(same_question, 0.0, mean_var[first] + mean_var[second])
    luck_var = FALLBACK_LUCK_SD**2
    for _ in range(10):
        pair_weight = 1.0 / (2 * luck_var + known_var) ** 2
        luck_var = max(float(np.sum(pair_weight * (difference**2 - known_var) / 2) / np.sum(pair_weight)), 0.0)
    return len(first), float(np.sqrt(luck_var))


def _codes(values: pl.Series) -> np.ndarray:
    """Dense integer codes 0..k-1 in sorted order of the values (equal values, equal code)."""
    if values.dtype == pl.String:  # through an Enum of the distinct values: 5x faster than ranking strings
        return values.cast(pl.Enum(values.unique().sort())).to_physical().to_numpy().astype(np.int64)
    return (values.rank("dense").to_numpy() - 1).astype(np.int64)


@dataclass(frozen=True)
class _Runs:
    """Rows sorted so that each question is one contiguous run: per-question sums are one np.add.reduceat."""

    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, sorted_codes: np.ndarray) -> _Runs:
        starts = np.flatnonzero(np.diff(sorted_codes, prepend=-1))
        return cls(starts, np.diff(starts, append=len(sorted_codes)))

    def sums(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.starts, axis=0)

    def spread(self, per_run: np.ndarray) -> np.ndarray:
        """One value per run -> that value on every row of the run."""
        return np.repeat(per_run, self.sizes, axis=0)

    def mean(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Weighted mean per run (0 where a run has no weight); values may be columns, weights per row or per cell."""
        total = self.sums(weights)
        if weights.ndim < values.ndim:
            weights, total = weights[:, None], total[:, None]
        return self.sums(weights * values) / np.where(total > 0, total, 1.0)

    def demean(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return values - self.spread(self.mean(values, weights))

    def subset(self, keep_runs: np.ndarray) -> _Runs:
        """The runs where keep_runs (one bool per run) holds, as rows of the filtered array."""
        sizes = self.sizes[keep_runs]
        return _Runs(np.cumsum(sizes) - sizes, sizes)


@dataclass
class _Design:
    questions: _Runs
    covariates: np.ndarray  # answers x features, centred within questions
    author: np.ndarray  # per answer: author code
    text: np.ndarray  # per answer: (author, answer cluster) code
    author_effects: bool  # fit author effects at all


@dataclass
class _Fit:
    working_log_rate: np.ndarray  # per answer: Gaussian stand-in for the count, on the log scale
    count_variance: np.ndarray  # its variance from count noise
    question_effect: np.ndarray  # per question (0 outside the fit)
    slopes: np.ndarray
    author_variance: float  # omega^2
    answer_variance: float  # u^2 = quality + luck
    weight: np.ndarray  # per answer: 1 / (u^2 + count variance), 0 outside the fit
    iterations: int


def _fit(votes: np.ndarray, design: _Design) -> _Fit:
    """The Poisson log-normal model, fitted by penalised quasi-likelihood.

    Each round: (1) every count becomes a Gaussian working observation of its log rate theta_i,
    y_i = theta_i + (v_i - e^theta_i) / e^theta_i with variance e^-theta_i (so 0 votes in a busy question is strong
    evidence and 0 votes in a quiet one none, where log(0 + 1/2) would claim the same for both); (2) slopes and
    author effects solve the weighted least squares on y, question constants profiled out (conjugate gradients);
    (3) theta_i moves to the mode of its posterior given v_i and the prediction eta_i (Newton steps), and the
    answer-level variance u2 is re-estimated from those posteriors. Only questions with two or more answers and
    some votes are fitted: a lone answer says nothing beyond its own question's constant.
    """
    all_questions = design.questions
    fitted_question = (all_questions.sizes >= 2) & (all_questions.sums(votes) > 0)
    in_fit = all_questions.spread(fitted_question)
    questions = all_questions.subset(fitted_question)
    v, x, author, text = votes[in_fit], design.covariates[in_fit], design.author[in_fit], design.text[in_fit]
    if len(v) < _MIN_ANSWERS_PER_SLOPE * x.shape[1]:  # too few answers to fit the slopes: no adjustment
        x = np.zeros_like(x)
    part = _Design(questions, x, author, text, design.author_effects)

    theta = np.log(v + 0.5)
    coefficients = np.zeros(x.shape[1] + (int(design.author.max()) + 1 if design.author_effects else 0))
    question_effect = np.zeros(len(questions.sizes))
    u2, omega2 = 1.0, 0.0
    iteration = 0
    for iteration in range(1, _MAX_ITERATIONS + 1 if len(v) else 1):
        rate = np.exp(theta)
        y = theta + (v - rate) / rate
        weight = 1.0 / (u2 + 1.0 / rate)
        new = _solve(part, y, weight, omega2, coefficients)
        slopes, author_effect = new[: x.shape[1]], new[x.shape[1]:]
        predicted = x @ slopes + (author_effect[author] if len(author_effect) else 0.0)
        question_effect = questions.mean(y - predicted, weight)
        if design.author_effects:
            omega2 = _author_variance(y - questions.spread(question_effect) - x @ slopes, author, text)
        eta = questions.spread(question_effect) + predicted
        deviation, deviation_var = _posterior_deviation(v, eta, u2, theta - eta)
        theta = eta + deviation
        # EM update of u2. The question constant is fitted from the same answers, so each deviation also carries
        # its share of that constant's uncertainty, (1 - V/u2)^2 / (the question's total weight).
        constant_var = (1.0 - deviation_var / u2) ** 2 / questions.spread(questions.sums(weight))
        new_u2 = max(float((deviation**2 + deviation_var + constant_var).mean()), 1e-3) if len(v) else 1.0
        change = max(np.abs(new - coefficients).max(initial=0.0), abs(new_u2 - u2))
        coefficients, u2 = new, new_u2
        if change < _TOLERANCE:
            break

    all_theta = np.log(votes + 0.5)
    all_theta[in_fit] = theta
    rate = np.exp(all_theta)
    all_question_effect = np.zeros(len(all_questions.sizes))
    all_question_effect[fitted_question] = question_effect
    return _Fit(
        working_log_rate=all_theta + (votes - rate) / rate,
        count_variance=1.0 / rate,
        question_effect=all_question_effect,
        slopes=coefficients[: x.shape[1]],
        author_variance=omega2,
        answer_variance=u2,
        weight=np.where(in_fit, 1.0 / (u2 + 1.0 / rate), 0.0),
        iterations=iteration,
    )


def _solve(design: _Design, y: np.ndarray, weight: np.ndarray, omega2: float, start: np.ndarray) -> np.ndarray:
    """(slopes, author effects) minimising sum_i w_i (P(y - X b - a_A))_i^2 + |a|^2 / omega2.

    P subtracts the weighted mean within each question, which is the same as fitting a free constant per question.
    Preconditioned conjugate gradients on the normal equations, from `start` (last round's answer); each step is
    a few sums over the rows. Without author effects (or omega2 = 0) only the slopes remain: a small dense solve.
    """
    questions, author, k = design.questions, design.author, design.covariates.shape[1]
    target = weight * questions.demean(y, weight)
    if not design.author_effects or omega2 <= 0:
        x = questions.demean(design.covariates, weight) if k else design.covariates
        slopes = np.linalg.lstsq((x * weight[:, None]).T @ x, x.T @ target, rcond=None)[0] if k else np.zeros(0)
        return np.concatenate([slopes, np.zeros(len(start) - k)])
    # X'W P v = X'(W P v) because W P is symmetric, so the covariates need no re-centering with these weights.
    x, n_authors = design.covariates, len(start) - k

    def normal_matrix_times(coefficients: np.ndarray) -> np.ndarray:
        fitted = weight * questions.demean(x @ coefficients[:k] + coefficients[k:][author], weight)
        return np.concatenate([x.T @ fitted, np.bincount(author, fitted, minlength=n_authors) + coefficients[k:] / omega2])

    own_share = weight / questions.spread(questions.sums(weight))
    diagonal = np.concatenate([  # Jacobi preconditioner (the slopes' part from the unweighted centring: close enough)
        (weight[:, None] * x**2).sum(axis=0) + 1e-12,
        np.bincount(author, weight * (1.0 - own_share), minlength=n_authors) + 1.0 / omega2,
    ])
    rhs = np.concatenate([x.T @ target, np.bincount(author, target, minlength=n_authors)])
    solution = start.copy()
    residual = rhs - normal_matrix_times(solution)
    preconditioned = residual / diagonal
    direction = preconditioned.copy()
    rz = residual @ preconditioned
    tolerance = _TOLERANCE * np.sqrt(rhs @ rhs)
    for _ in range(_MAX_CG_STEPS):
        if np.sqrt(residual @ residual) <= tolerance:
            break
        product = normal_matrix_times(direction)
        step = rz / (direction @ product)
        solution += step * direction
        residual -= step * product
        preconditioned = residual / diagonal
        rz, previous = residual @ preconditioned, rz
        direction = preconditioned + (rz / previous) * direction
    return solution


def _posterior_deviation(votes, eta, prior_var, start) -> tuple[np.ndarray, np.ndarray]:
    """Mode and curvature variance of d in v ~ Poisson(exp(eta + d)), d ~ N(0, prior_var) (Newton; concave)."""
    d = start
    for _ in range(4):
        rate = np.exp(np.minimum(eta + d, 20.0))
        d = d + np.clip((votes - rate - d / prior_var) / (rate + 1.0 / prior_var), -2.0, 2.0)
    rate = np.exp(np.minimum(eta + d, 20.0))
    return d, 1.0 / (rate + 1.0 / prior_var)


def _other_texts(author: np.ndarray, text: np.ndarray, weight: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per answer: total weight and weighted residual sum of its author's OTHER texts."""
    n_authors, n_texts = int(author.max()) + 1, int(text.max()) + 1
    weighted = weight * residual
    author_weight, author_sum = np.bincount(author, weight, minlength=n_authors), np.bincount(author, weighted, minlength=n_authors)
    text_weight, text_sum = np.bincount(text, weight, minlength=n_texts), np.bincount(text, weighted, minlength=n_texts)
    return np.maximum(author_weight[author] - text_weight[text], 0.0), author_sum[author] - text_sum[text]


def _author_variance(residual: np.ndarray, author: np.ndarray, text: np.ndarray) -> float:
    """omega^2 = mean product of the residuals of two different texts by one author (authors with >= 2 texts).

    A product of two different answers carries no answer-level noise, so this needs no noise model. Each author
    with m texts counts m - 1 times, so one prolific KOL does not drown everyone else.
    """
    n_authors, n_texts = int(author.max()) + 1, int(text.max()) + 1
    text_sum, text_n = np.bincount(text, residual, minlength=n_texts), np.bincount(text, minlength=n_texts).astype(float)
    text_author = np.zeros(n_texts, dtype=np.int64)
    text_author[text] = author
    texts = np.bincount(text_author, text_n > 0, minlength=n_authors)
    cross = np.bincount(text_author, text_sum, minlength=n_authors) ** 2 - np.bincount(text_author, text_sum**2, minlength=n_authors)
    pairs = np.bincount(text_author, text_n, minlength=n_authors) ** 2 - np.bincount(text_author, text_n**2, minlength=n_authors)
    repeat = (texts >= 2) & (pairs > 0)
    if not repeat.any():
        return 0.0
    return max(float(np.average(cross[repeat] / pairs[repeat], weights=texts[repeat] - 1)), 0.0)
