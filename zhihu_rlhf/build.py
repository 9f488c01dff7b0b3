"""`python -m zhihu_rlhf.build instruct|pairs|all`: Zhihu answers -> Hub-ready instruct and pairs folders.

    python -m zhihu_rlhf.build all   --source sample             --out out/   # out/instruct + out/pairs
    python -m zhihu_rlhf.build pairs --source wangrui6/Zhihu-KOL --out out/pairs
    python -m zhihu_rlhf.build cache info                                 # what the step cache holds

The CLI only maps flags onto `BuildOptions`, which `validate()` checks, once, for the whole build; `build()` is the
library entry point tests call.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zhihu_rlhf import __version__
from zhihu_rlhf.cache import StepCache, check_max_gb, default_cache_dir, describe
from zhihu_rlhf.dedupe import DedupeOptions, check_dedupe_options
from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.export import FORMATS, OutputSettings, check_formats
from zhihu_rlhf.instruct import InstructOptions, LengthFilter
from zhihu_rlhf.pairs import PairOptions, check_pair_options
from zhihu_rlhf.pipelines.answers import chained_answers
from zhihu_rlhf.pipelines.instruct import build_instruct_set
from zhihu_rlhf.pipelines.pairs import build_pairs_set
from zhihu_rlhf.sources import DEFAULT_SOURCE
from zhihu_rlhf.votes import (
    FALLBACK_LUCK_SD,
    MIN_LUCK_COPY_PAIRS,
    VOTE_MODELS,
    VoteModelOptions,
    author_share_range,
    check_vote_options,
    parse_author_share,
    parse_luck_sd,
)

What = Literal["instruct", "pairs", "all"]


@dataclass
class BuildOptions:
    source: str = DEFAULT_SOURCE
    """Hub dataset id, parquet file/folder/glob, a MediaCrawler crawl (data folder, file, workbook, SQLite db), or
    `sample`."""
    out: Path = Path("out")
    """Output folder (for `all`: the parent of instruct/ and pairs/)."""
    test_fraction: float = 0.05
    """Share of question groups in the test split (by a deterministic hash of the group id)."""
    formats: list[str] = field(default_factory=lambda: ["trl"])
    """Extra export formats written next to the canonical parquet."""
    keep_author_ids: bool = False
    """Author ids are personal data: dropped from the outputs unless asked for."""
    dedupe: DedupeOptions = field(default_factory=DedupeOptions)
    votes: VoteModelOptions = field(default_factory=VoteModelOptions)
    lengths: LengthFilter = field(default_factory=LengthFilter)
    """Which answers either set may use, by length."""
    instruct: InstructOptions = field(default_factory=InstructOptions)
    pairs: PairOptions = field(default_factory=PairOptions)
    use_cache: bool = True
    """Reuse the stored canonical table, dedupe and vote model when their inputs are unchanged (zhihu_rlhf.cache)."""
    cache_dir: Path | None = None
    """Where the cache lives; None: $ZHIHU_RLHF_CACHE, else under $HF_HOME or ~/.cache (see cache.default_cache_dir)."""
    cache_max_gb: float = 20.0
    """Bound on the cache's size; the entries used longest ago are removed first (0: no bound)."""

    def validate(self) -> None:
        """Raise UserError, one line naming the flag and the value, on any option that cannot work. The one place the
        build's options are checked: build() calls it before reading anything, and the steps take them as valid."""
        if not 0.0 <= self.test_fraction < 1.0:
            raise UserError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        check_formats(self.formats)
        check_dedupe_options(self.dedupe)
        check_vote_options(self.votes)
        if not 0 <= self.lengths.min_answer_chars <= self.lengths.max_answer_chars:
            raise UserError(f"--min-answer-chars and --max-answer-chars must satisfy 0 <= min <= max, got "
                            f"{self.lengths.min_answer_chars} and {self.lengths.max_answer_chars}")
        for kind, limit in (("instruct", self.instruct.limit), ("pairs", self.pairs.limit)):
            if limit < 0:
                raise UserError(f"the {kind} --limit (--{kind}-limit with `all`) must be 0 (all) or more, got {limit}")
        check_pair_options(self.pairs)
        if self.pairs.max_pairs_per_question < 1:
            raise UserError(f"--max-pairs-per-question must be at least 1, got {self.pairs.max_pairs_per_question}")
        check_max_gb(self.cache_max_gb)

    def output(self) -> OutputSettings:
        """What both sets share about their output; a format named twice is written once."""
        return OutputSettings(self.test_fraction, tuple(dict.fromkeys(self.formats)), self.keep_author_ids)


# Options that change where or how fast a set is built, never what it holds: not part of its recipe.
_NOT_RECIPE = ("out", "use_cache", "cache_dir", "cache_max_gb")


def build(what: What, options: BuildOptions, *, log=print) -> dict[str, Path]:
    """Build the requested set(s); returns {"instruct": path, "pairs": path} for what was written."""
    options.validate()
    _import_card_libraries_meanwhile()
    cache = _step_cache(options, log) if options.use_cache else None
    started = time.perf_counter()
    log(f"reading {options.source} ...")
    answers, texts, source_stats, chain = chained_answers(options.source, options.dedupe, options.votes, cache=cache,
                                                          log=log)
    dropped = sum(source_stats["rows_dropped"].values())
    log(f"  {source_stats['rows_in']:,} rows in, {answers.height:,} usable answers, {dropped:,} dropped "
        f"({_reasons(source_stats['rows_dropped'])}) [{time.perf_counter() - started:.1f}s]")

    output = options.output()
    written = {}
    if what in ("instruct", "all"):
        out = options.out / "instruct" if what == "all" else options.out
        written["instruct"] = build_instruct_set(
            answers, texts, source_stats, options.instruct, options.lengths, out=out, params=_params(options, "instruct"),
            output=output, chain=chain, log=log,
        )
        log(f"  instruct set -> {out} [{time.perf_counter() - started:.1f}s]")
    if what in ("pairs", "all"):
        out = options.out / "pairs" if what == "all" else options.out
        written["pairs"] = build_pairs_set(
            answers, texts, source_stats, options.pairs, options.lengths, out=out, params=_params(options, "pairs"),
            output=output, cache=cache, log=log,
        )
        log(f"  pairs -> {out} [{time.perf_counter() - started:.1f}s]")
    if cache:
        cache.wait()  # the entries were written while the sets were selected
    return written


def _import_card_libraries_meanwhile() -> None:
    """Import what writing the folders needs (datasets, huggingface_hub, matplotlib: about 2 s, all of it Python) on
    a second thread while the answers are read and the sets selected, work that mostly runs in polars and numpy with
    the GIL released. Whoever imports the module first does the work; the other waits for it (Python's import lock)."""
    threading.Thread(target=importlib.import_module, args=("zhihu_rlhf.cards",), name="import-cards").start()


def _step_cache(options: BuildOptions, log) -> StepCache:
    return StepCache(options.cache_dir or default_cache_dir(), int(options.cache_max_gb * 1e9), warn=log)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n:,}" for reason, n in sorted(counts.items())) or "none"


def _params(options: BuildOptions, kind: Literal["instruct", "pairs"]) -> dict:
    """The recipe of one set as written into params.json and its card (JSON-able, stable key order).

    Only what shapes this set: not the output folder, not the other set's options, so the same data built
    elsewhere has the same parameters hash (and re-publishing it is a no-op).
    """
    params = dataclasses.asdict(options)
    for name in _NOT_RECIPE:
        del params[name]
    del params["pairs" if kind == "instruct" else "instruct"]
    # The length filter is listed among the set's own options, where every set built so far has it: the same recipe
    # keeps the same parameters hash.
    params[kind] = {**params.pop("lengths"), **params[kind]}
    params["tool_version"] = __version__
    return params


# ---------------------------------------------------------------------------------------------
# CLI: flags map one-to-one onto the dataclass fields above; defaults come from the dataclasses.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zhihu_rlhf.build",
        description="Build the instruct set and/or chosen/rejected pairs from Zhihu answers.",
        epilog="Each command's options, with their defaults: python -m zhihu_rlhf.build {instruct,pairs,all} --help",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="what", required=True, metavar="{instruct,pairs,all,cache}")
    for what, help_text in (
        ("instruct", "question -> best answer set (default ~26k rows)"),
        ("pairs", "chosen/rejected pairs (default ~3k rows)"),
        ("all", "both, into OUT/instruct and OUT/pairs"),
    ):
        sub = commands.add_parser(what, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _add_common(sub)
        if what in ("instruct", "all"):
            _add_instruct(sub, limit_flag="--limit" if what == "instruct" else "--instruct-limit")
        if what in ("pairs", "all"):
            _add_pairs(sub, limit_flag="--limit" if what == "pairs" else "--pairs-limit")
    cache = commands.add_parser("cache", help="list (info) or remove (clear) the stored steps",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cache.add_argument("action", choices=["info", "clear"])
    _add_cache_dir(cache)
    return parser


def _add_cache_dir(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--cache-dir", type=Path, default=None,
                     help=f"where the step cache lives (default: $ZHIHU_RLHF_CACHE, else under $HF_HOME or ~/.cache; "
                          f"here {default_cache_dir()})")


def _add_common(sub: argparse.ArgumentParser) -> None:
    defaults, dedupe, lengths = BuildOptions(), DedupeOptions(), LengthFilter()
    sub.add_argument("--source", default=defaults.source,
                     help="Hub dataset id, parquet file/folder/glob, a MediaCrawler crawl (its data folder, a contents "
                          "file, an excel workbook or its SQLite database), or 'sample'")
    sub.add_argument("--out", type=Path, default=defaults.out, help="output folder")
    sub.add_argument("--test-fraction", type=float, default=defaults.test_fraction,
                     help="share of question groups in the test split")
    sub.add_argument("--format", dest="formats", default=",".join(defaults.formats),
                     help=f"comma-separated export formats: {', '.join(FORMATS)} (canonical parquet is always written)")
    sub.add_argument("--keep-author-ids", action="store_true", help="keep author ids (personal data) in the outputs")
    sub.add_argument("--dedupe", default=dedupe.mode, choices=["near", "exact", "off"],
                     help="near-duplicate merging of answers (near: fuzzy, exact: identical text); re-asked questions are "
                          "merged in both when their titles differ only cosmetically")
    sub.add_argument("--answer-threshold", type=float, default=dedupe.answer_threshold,
                     help="rapidfuzz similarity (0-100) above which two answers are near-duplicates")
    votes = VoteModelOptions()
    sub.add_argument("--vote-model", default=votes.model, choices=VOTE_MODELS,
                     help="how votes become quality: raw (plain votes, the article's), exposure, authors, full (both, and a share of answer length)")
    low, high = author_share_range(votes)
    sub.add_argument("--author-share", default=f"{low:g}:{high:g}",
                     help="share (0-1) of the estimated author effect removed from the votes (the rest counts as quality): "
                          "a number taken as known, or a range LO:HI taken as unknown within it, which p_chosen_better carries")
    sub.add_argument("--luck-sd", default=str(votes.luck_sd),
                     help="sd of log votes due to luck (how far an answer happened to spread): auto = measured from copies of "
                          f"one answer, or {FALLBACK_LUCK_SD} where fewer than {MIN_LUCK_COPY_PAIRS} pairs of copies exist; "
                          "or a number taken as known")
    sub.add_argument("--length-share", type=float, default=votes.length_share,
                     help="share (0-1) of the estimated effect of answer length on votes removed (the rest counts as "
                          "quality: better answers are often longer); full model only")
    sub.add_argument("--min-answer-chars", type=int, default=lengths.min_answer_chars, help="shortest usable answer")
    sub.add_argument("--max-answer-chars", type=int, default=lengths.max_answer_chars, help="longest usable answer")
    _add_cache_dir(sub)
    sub.add_argument("--no-cache", dest="use_cache", action="store_false",
                     help="recompute every step and store nothing (the output is the same either way)")
    sub.add_argument("--cache-max-gb", type=float, default=defaults.cache_max_gb,
                     help="bound on the cache's size in GB, least recently used entries removed first (0: no bound)")


def _add_instruct(sub: argparse.ArgumentParser, limit_flag: str) -> None:
    defaults = InstructOptions()
    sub.add_argument(limit_flag, dest="instruct_limit", type=int, default=defaults.limit,
                     help="instruct rows to keep, questions whose answer is most surely their best first (0 = all)")
    sub.add_argument("--min-upvotes", type=int, default=defaults.min_upvotes, help="least upvotes of an instruct answer")


def _add_pairs(sub: argparse.ArgumentParser, limit_flag: str) -> None:
    defaults = PairOptions()
    sub.add_argument(limit_flag, dest="pairs_limit", type=int, default=defaults.limit,
                     help="pairs to keep, highest p_chosen_better first (0 = all)")
    sub.add_argument("--max-days-apart", type=float, default=defaults.max_days_apart,
                     help="chosen and rejected were created at most this many days apart")
    sub.add_argument("--min-ratio", type=float, default=defaults.min_ratio,
                     help="chosen has at least this many times the rejected's upvotes")
    sub.add_argument("--min-chosen-upvotes", type=int, default=defaults.min_chosen_upvotes,
                     help="least upvotes of a chosen answer")
    sub.add_argument("--max-pairs-per-question", type=int, default=defaults.max_pairs_per_question,
                     help="most pairs from one question group")
    sub.add_argument("--chosen-not-earlier", action="store_true",
                     help="Stanford SHP rule: chosen was written no earlier than rejected")
    sub.add_argument("--min-p-chosen-better", type=float, default=defaults.min_p_chosen_better,
                     help="publish only pairs whose p_chosen_better (the vote model's probability that chosen is truly "
                          "the better answer) is at least this; below 0.5 the model favours the rejected answer. "
                          "Higher: fewer pairs, each more surely right")
    sub.add_argument("--max-length-ratio", type=float, default=defaults.max_length_ratio,
                     help="the longer answer of a pair is at most this many times as long as the shorter, in "
                          "characters (inf: no bound); pairs of comparable length cannot teach that longer is better")


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    options = BuildOptions(
        source=args.source,
        out=args.out,
        test_fraction=args.test_fraction,
        formats=[f.strip() for f in args.formats.split(",") if f.strip()],
        keep_author_ids=args.keep_author_ids,
        dedupe=DedupeOptions(mode=args.dedupe, answer_threshold=args.answer_threshold),
        votes=VoteModelOptions(
            model=args.vote_model, author_share=parse_author_share(args.author_share), luck_sd=parse_luck_sd(args.luck_sd),
            length_share=args.length_share,
        ),
        lengths=LengthFilter(min_answer_chars=args.min_answer_chars, max_answer_chars=args.max_answer_chars),
        use_cache=args.use_cache,
        cache_dir=args.cache_dir,
        cache_max_gb=args.cache_max_gb,
    )
    if args.what in ("instruct", "all"):
        options.instruct = InstructOptions(limit=args.instruct_limit, min_upvotes=args.min_upvotes)
    if args.what in ("pairs", "all"):
        options.pairs = PairOptions(
            limit=args.pairs_limit,
            max_days_apart=args.max_days_apart,
            min_ratio=args.min_ratio,
            min_chosen_upvotes=args.min_chosen_upvotes,
            max_pairs_per_question=args.max_pairs_per_question,
            chosen_not_earlier=args.chosen_not_earlier,
            min_p_chosen_better=args.min_p_chosen_better,
            max_length_ratio=args.max_length_ratio,
        )
    return options


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.what == "cache":
        cache = StepCache(args.cache_dir or default_cache_dir(), max_bytes=0, warn=print)
        if args.action == "info":
            print(describe(cache))
        else:
            print(f"{cache.folder}: removed {cache.clear() / 2**20:.1f} MiB")
        return 0
    options = options_from_args(args)
    written = build(args.what, options, log=lambda msg: print(msg, file=sys.stderr))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    cli_main(main)
