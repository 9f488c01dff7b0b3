"""The vote model: what an answer's upvotes say about its quality once exposure and author reach are taken out.

Zhihu votes are not a count of quality alone; the reference article says so itself (知乎的点赞受许多因素影响，例如
答题人粉丝数，答题时间). Each answer's upvotes v_i are modelled as Poisson counts around a log rate that is a sum:

    log E[v_i] = question + exposure + author + quality + luck
               =   mu_q   +  b . x_i  +  a_A  +   q_i   + e_i

- question mu_q: how many readers the question has. Answers are only compared within one question group, so it is
  a free constant per group, estimated and never interpreted.
- exposure b . x_i: how long and how prominently the answer was shown before the crawl. x_i is EXPOSURE_FEATURES:
  log1p(answers to the question written before it), and the days after the question's first answer and the days
  before the crawl, each at three time scales (the shape of exposure over time is not known). The crawl time is
  not in the data: per source it is the latest creation time. One b for the whole table.
- author a_A ~ N(0, omega^2): the author's reach (followers, the feed), a factor on the votes of every answer they
  write that does not shrink as votes grow. Where the source has follower counts (`author_followers`),
  log1p(followers) is a measured part of it, with its own slope. The rest is learnt from the author's OTHER
  answers (other texts: a cross-post of the same text is not another answer), with partial pooling: the author's
  mean residual there, shrunk by B = omega^2 / (omega^2 + that mean's variance). An author with no other answer
  gets B = 0, no correction; one with hundreds gets B near 1, nearly their own mean. omega^2 is the mean product
  of the residuals of two different answers by one author (no noise model needed for that).
- quality q_i: what we want, relative to the question.
- luck e_i ~ N(0, luck_sd^2): how far an answer happened to travel (a share by a big account, a lucky hour). Votes
  cannot tell luck from quality, so its size is an assumption (`luck_sd`). It keeps the model from trusting large
  counts blindly: 20,000 over 10,000 votes is only as certain as luck allows. The Poisson count noise on top
  makes few votes say little.

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

The author share s (`author_share`). An author's mean votes are partly how well they write: where reach is pure
popularity the whole author effect should go, where readers follow good writers part of it is quality, and votes
cannot tell which. The default, 0.75, is the share with the best worst case over the synthetic worlds (kol:
reach half quality; popularity: none; default: follower counts) in pair accuracy, calibration and the instruct
choice, measured at 200k rows: benchmarks/RESULTS.md, "Vote model".

Levels (`model`): "raw" takes the votes as they are (count noise and luck only: the article's plain votes, ranked
by a probability); "exposure" removes exposure; "authors" removes author effects; "full" removes both.

What it cannot fix: an author's reach is only learnt from their other answers (or follower counts), so where
authors never repeat it stays in the noise, unrecognised, and the probabilities are too sure; luck looks like
quality; and where nothing but reach and exposure move votes there is no quality signal to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from zhihu_rlhf.errors import UserError

VoteModel = Literal["raw", "exposure", "authors", "full"]
VOTE_MODELS: tuple[VoteModel, ...] = ("raw", "exposure", "authors", "full")
QUALITY_COLUMNS = ["estimated_quality", "quality_sd"]
# Also added to the answer table, to inspect the model: the estimated log-vote terms removed (before the share).
EFFECT_COLUMNS = ["exposure_effect", "author_effect"]

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
    author_share: float = 0.75
    """Share of the estimated author effect removed (0-1); the rest counts as quality. Reach that is pure popularity
    wants 1, reach earned by writing well wants less, and votes cannot tell them apart: 0.75 has the best worst
    case over the synthetic worlds (benchmarks/RESULTS.md, "Vote model")."""
    luck_sd: float = 0.3
    """Assumed sd of log votes that is neither quality, exposure, author nor count noise. Not identifiable from
    votes; larger makes every probability more modest."""


def check_vote_options(options: VoteModelOptions) -> None:
    if options.model not in VOTE_MODELS:
        raise UserError(f"--vote-model must be one of {', '.join(VOTE_MODELS)}, got {options.model!r}")
    if not 0.0 <= options.author_share <= 1.0:
        raise UserError(f"--author-share must be in [0, 1], got {options.author_share}")
    if options.luck_sd < 0:
        raise UserError(f"--luck-sd must be at least 0, got {options.luck_sd}")


def quality_lead(chosen_prefix: str, rejected_prefix: str) -> pl.Expr:
    """How many sds the first answer's estimated quality leads the second's, from their QUALITY_COLUMNS."""
    chosen, chosen_sd = pl.col(f"{chosen_prefix}estimated_quality"), pl.col(f"{chosen_prefix}quality_sd")
    rejected, rejected_sd = pl.col(f"{rejected_prefix}estimated_quality"), pl.col(f"{rejected_prefix}quality_sd")
    return (chosen - rejected) / (chosen_sd.pow(2) + rejected_sd.pow(2)).sqrt()


def normal_cdf(z: pl.Expr) -> pl.Expr:
    """Phi(z): turns a lead in sds into P(first is truly better)."""
    return (-z / np.sqrt(2.0)).erfc() / 2


def log_normal_cdf(z: pl.Expr) -> pl.Expr:
    """log Phi(z), accurate in both tails: for z > 0 as log1p(-Phi(-z)), so a lead of 8 sds still differs from one of
    9 (Phi itself rounds both to 1); for z <= 0 as log Phi(z), which stays finite far down the tail."""
    return pl.when(z > 0).then((-normal_cdf(-z)).log1p()).otherwise(normal_cdf(z).log())


# Exposure is a function of time whose shape is unknown: each time is given at three scales (a day, a month, a
# year), so votes that saturate within days and votes that keep coming for years are both fitted.
TIME_SCALES_DAYS = (1, 30, 365)
EXPOSURE_FEATURES = [
    "log1p(earlier answers)",
    *(f"log1p(days after the first answer / {d})" for d in TIME_SCALES_DAYS),
    *(f"log1p(days before the crawl / {d})" for d in TIME_SCALES_DAYS),
]


def exposure_features(answers: pl.DataFrame, question: np.ndarray) -> np.ndarray:
    """Per answer, EXPOSURE_FEATURES (answers x 7, NaN where the creation time is unknown): earlier answers to its
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
    return np.log1p(np.hstack([earlier[:, None], days[:, :1] / scales, days[:, 1:] / scales]))


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
    share = options.author_share if use_authors else 0.0
    rows = answers.height
    if rows == 0:
        return answers.with_columns(pl.lit(None, pl.Float64).alias(c) for c in QUALITY_COLUMNS + EFFECT_COLUMNS), {}

    # Everything below runs on rows sorted by question group, so each question is one contiguous run.
    question_code = _codes(answers["question_group"])
    order = np.argsort(question_code, kind="stable")
    questions = _Runs.of(question_code[order])
    votes = answers["upvotes"].cast(pl.Float64).to_numpy()[order]

    # Covariates: the exposure columns and, with the author terms, log1p(followers) where the source has them.
    # Centred within questions over the known values; an unknown value sits at its question's mean (no adjustment).
    exposure = exposure_features(answers, question_code)[order] if use_exposure else np.zeros((rows, 0))
    has_followers = use_authors and "author_followers" in answers.columns and answers["author_followers"].null_count() < rows
    followers = (
        answers["author_followers"].cast(pl.Float64).log1p().to_numpy()[order, None] if has_followers else np.zeros((rows, 0))
    )
    covariates = np.hstack([exposure, followers])
    known = ~np.isnan(covariates)
    covariates = np.where(known, questions.demean(np.where(known, covariates, 0.0), known.astype(float)), 0.0)
    n_exposure = exposure.shape[1]

    # Authors: an unknown author stands alone; a "text" is one author's answer cluster (cross-posts are one text).
    author_code = _codes(answers.select(
        pl.when(pl.col("author_id").is_null()).then(pl.format("\0{}", pl.col("answer_id"))).otherwise("author_id")
    ).to_series())
    text_code = _codes(pl.Series(_codes(answers["answer_cluster"]) * (int(author_code.max()) + 1) + author_code))
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
    followers_term = covariates[:, n_exposure:] @ slopes[n_exposure:]  # measured reach: known exactly (B = 1)
    followers_var = float(np.var(followers_term))
    author_term = author_term + followers_term
    exposure_term = covariates[:, :n_exposure] @ slopes[:n_exposure]

    # z = y - exposure - s * (author effect) measures mu_q + Q, where Q is the answer's own quality plus the share
    # (1 - s) of its author's effect that counts as quality. Per answer, with B the author effect's shrink factor:
    #   Var(z - mu_q)    = u2 + count variance + omega2 (1 - s B (2 - s))     (what z varies by)
    #   Cov(Q, z - mu_q) = u2 - luck^2 + (1 - s) omega2 (1 - s B)            (how much of that is quality)
    #   Var(Q)           = u2 - luck^2 + (1 - s)^2 omega2
    # (followers' part likewise, with B = 1), so E[Q - mu_q | z] = Cov / Var(z) * (z - mu_q) and the variance
    # left is Var(Q) - Cov^2 / Var(z).
    kept = 1 - share
    own_quality = max(fit.answer_variance - options.luck_sd**2, _MIN_TAU2)
    z = fit.working_log_rate - exposure_term - share * author_term
    z_var = (fit.answer_variance + fit.count_variance + omega2 * (1 - share * shrink * (2 - share))
             + followers_var * kept**2)
    if n_exposure and known[:, 0].any():  # an unknown creation time leaves the exposure term unknown
        z_var = z_var + np.where(known[:, 0], 0.0, float(np.var(exposure_term[known[:, 0]])))
    quality_cov = own_quality + kept * (omega2 * (1 - share * shrink) + followers_var * kept)
    quality_var = own_quality + kept**2 * (omega2 + followers_var)
    keep = quality_cov / z_var
    estimated = keep * (z - questions.spread(questions.mean(z, 1.0 / z_var)))
    quality_sd = np.sqrt(np.maximum(quality_var - keep * quality_cov, _MIN_TAU2))
    summary = {
        "model": options.model,
        "author_share": share,
        "luck_sd": options.luck_sd,
        "quality_sd": round(float(np.sqrt(quality_var)), 4),
        "answer_sd": round(float(np.sqrt(fit.answer_variance)), 4),
        "exposure_effect_sd": round(float(np.std(exposure_term)), 4) if n_exposure else None,
        "exposure_slopes": dict(zip(EXPOSURE_FEATURES, np.round(slopes[:n_exposure], 4).tolist(), strict=True)) if n_exposure else {},
        "followers_slope": round(float(slopes[n_exposure]), 4) if has_followers else None,
        "author_effect_sd": round(float(np.sqrt(fit.author_variance)), 4) if use_authors else None,
        "answers_with_author_correction": int((others_weight > 0).sum()),
        "iterations": fit.iterations,
    }
    unsorted = lambda values: pl.Series(values[np.argsort(order)])  # noqa: E731
    return answers.with_columns(
        estimated_quality=unsorted(estimated),
        quality_sd=unsorted(quality_sd),
        exposure_effect=unsorted(exposure_term),
        author_effect=unsorted(author_term),
    ), summary


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
