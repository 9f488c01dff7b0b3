"""Characters per token of our pairs, and how many exceed RewardTrainer's max_length: the card's estimate checked.

TRL's RewardTrainer silently drops every pair whose prompt + chosen or prompt + rejected is longer than max_length
tokens (default 1024). No tokenizer ships offline, so the data card estimates that count from characters at the
rates in `zhihu_rlhf.cards.CHARS_PER_TOKEN`. This script measures those rates with real tokenizers on built pairs
(the string RewardTrainer tokenizes in the standard form: prompt + answer) and on plain text files, and compares the
count over max_length by tokens with the card's estimate on the same pairs.

    python benchmarks/token_lengths.py --tokenizer Qwen2.5=Qwen/Qwen2.5-0.5B \\
        --tokenizer "Llama 3=meta-llama/Meta-Llama-3-8B" --rows 100000 --mean-answer-chars 400,800,1600 \\
        [--pairs out/pairs] [--text some_chinese_text.md]

Each --tokenizer is NAME=anything AutoTokenizer.from_pretrained loads (a Hub id in your cache or a local folder).
Without --pairs, synthetic worlds are generated (one per --mean-answer-chars value) and their pairs built with the
default options. Counted without special or template tokens, as the card's estimate is.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl
from transformers import AutoTokenizer

from zhihu_rlhf import cards, synth
from zhihu_rlhf.build import BuildOptions, build


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def measure_pairs(name: str, tokenizer, world: str, frame: pl.DataFrame, max_length: int) -> dict:
    with_chosen = (frame["prompt"] + frame["chosen"]).to_list()
    with_rejected = (frame["prompt"] + frame["rejected"]).to_list()
    tokens_chosen, tokens_rejected = token_counts(tokenizer, with_chosen), token_counts(tokenizer, with_rejected)
    characters = sum(map(len, with_chosen)) + sum(map(len, with_rejected))
    over = sum(max(c, r) > max_length for c, r in zip(tokens_chosen, tokens_rejected, strict=True))
    estimated = {item.tokenizer: item.count for item in cards.pairs_over_token_limit(frame, max_length)}
    return {
        "text": world, "tokenizer": name, "pairs": frame.height,
        "chars_per_token": characters / (sum(tokens_chosen) + sum(tokens_rejected)),
        "over_by_tokens": over, "over_by_card": estimated.get(name),
    }


def measure_text(name: str, tokenizer, path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return {"text": path.name, "tokenizer": name, "pairs": None,
            "chars_per_token": len(text) / token_counts(tokenizer, [text])[0], "over_by_tokens": None,
            "over_by_card": None}


def synthetic_worlds(rows: int, seed: int, mean_chars: list[int], folder: Path) -> dict[str, pl.DataFrame]:
    worlds = {}
    for chars in mean_chars:
        data, _ = synth.write(rows, folder / f"synth_{chars}.parquet", seed, mean_answer_chars=chars, write_truth=False)
        out = build("pairs", BuildOptions(source=str(data), out=folder / f"pairs_{chars}"), log=lambda *_: None)
        worlds[f"synth {rows:,} rows, mean answer {chars} chars"] = read_pairs(out["pairs"])
    return worlds


def read_pairs(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "data" / "*.parquet", columns=["prompt", "chosen", "rejected"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", action="append", required=True, help="NAME=PATH_OR_ID (repeatable)")
    parser.add_argument("--pairs", type=Path, action="append", default=[], help="built pairs folder(s)")
    parser.add_argument("--text", type=Path, action="append", default=[], help="plain text file(s) to measure too")
    parser.add_argument("--rows", type=int, default=100_000, help="rows per synthetic world (without --pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-answer-chars", default="400,800,1600", help="one synthetic world per value")
    parser.add_argument("--max-length", type=int, default=cards.REWARD_MAX_LENGTH)
    args = parser.parse_args()

    tokenizers = {name: AutoTokenizer.from_pretrained(path)
                  for name, path in (spec.split("=", 1) for spec in args.tokenizer)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.pairs:
            worlds = {str(folder): read_pairs(folder) for folder in args.pairs}
        else:
            chars = [int(value) for value in args.mean_answer_chars.split(",")]
            worlds = synthetic_worlds(args.rows, args.seed, chars, Path(tmp))
        rows = [measure_pairs(name, tok, world, frame, args.max_length)
                for world, frame in worlds.items() for name, tok in tokenizers.items()]
    rows += [measure_text(name, tok, path) for path in args.text for name, tok in tokenizers.items()]
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200, float_precision=3):
        print(pl.DataFrame(rows))
    print(f"card rates (characters per token): {cards.CHARS_PER_TOKEN}; max_length {args.max_length}")


if __name__ == "__main__":
    main()
