"""python -m zhihu_rlhf.synth --world NAME --rows N --seed S --out F.parquet  (+ F.truth.parquet); --list-worlds."""

from __future__ import annotations

import argparse
from pathlib import Path

from zhihu_rlhf.errors import cli_main
from zhihu_rlhf.synth import FULL_ROWS, MEAN_ANSWER_CHARS, WORLDS, SynthOptions, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zhihu_rlhf.synth",
        description="Write a synthetic Zhihu-KOL-shaped parquet and its truth file (<stem>.truth.parquet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--list-worlds", action="store_true", help="print the preset worlds and what each stresses")
    parser.add_argument("--world", default="default", choices=list(WORLDS), help="preset world (see --list-worlds)")
    parser.add_argument("--rows", type=int, help=f"number of rows (the real Zhihu-KOL has {FULL_ROWS:,}); required")
    parser.add_argument("--out", type=Path, help="data parquet to write; truth goes to <stem>.truth.parquet; required")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, world and options -> identical bytes)")
    parser.add_argument(
        "--mean-answer-chars", type=int, default=MEAN_ANSWER_CHARS, help="mean answer length in characters (heavy-tailed)"
    )
    parser.add_argument("--no-truth", action="store_true", help="do not write the truth file")
    args = parser.parse_args(argv)
    if args.list_worlds:
        for name, world in WORLDS.items():
            print(f"{name:12} {world.description}")
        return 0
    if args.rows is None or args.out is None:
        parser.error("--rows and --out are required (or --list-worlds)")
    options = SynthOptions(
        rows=args.rows, out=args.out, seed=args.seed, world=args.world, mean_answer_chars=args.mean_answer_chars,
        write_truth=not args.no_truth,
    )
    data_path, truth_path = write(
        options.rows, options.out, options.seed, options.world, options.mean_answer_chars, options.write_truth
    )
    print(f"wrote {data_path}" + (f" and {truth_path}" if truth_path else ""))
    return 0


if __name__ == "__main__":
    cli_main(main)
