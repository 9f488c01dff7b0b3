"""Padding left by batching.length_buckets for several BUCKET_SPAN values, over several example-length worlds.

    python benchmarks/bucket_padding.py

Padding overhead = padded tokens (rows x longest, summed over batches) / real tokens - 1, for the SFT defaults'
budget (--batch-tokens 16384, --max-len 2048) and the CPU benchmark's (4096, 512). No model runs: lengths only.
Worlds: our sample's instruct set under the tiny model's byte tokenizer (plain template), and synthetic lengths
(uniform, log-normal, bimodal short/long, nearly all at max length). Span 1 = sorted within one batch's worth only
(about no bucketing); a larger span sorts over more batches (less padding, but an optimizer step then sees examples
of similar length).
"""

from __future__ import annotations

import numpy as np

from zhihu_rlhf.train import batching
from zhihu_rlhf.train.data import epoch_permutation, load_split
from zhihu_rlhf.train.models import load_tokenizer
from zhihu_rlhf.train.prompts import encode_example

SPANS = (1, 4, 16, 64, 10**9)


def worlds(max_len: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(0)
    n = 20000
    tokenizer = load_tokenizer("tiny")
    sample = [
        len(encode_example(tokenizer, r["prompt"], r["completion"], "plain", max_len)[0])
        for r in load_split("sample", "train", "instruct")
    ]
    clip = lambda xs: np.clip(xs, 8, max_len).astype(int).tolist()  # noqa: E731
    return {
        "sample instruct (bytes)": sample,
        "uniform": clip(rng.integers(8, max_len + 1, n)),
        "log-normal": clip(rng.lognormal(np.log(max_len / 6), 0.8, n)),
        "bimodal 10%/90% of max": clip(np.where(rng.random(n) < 0.5, max_len * 0.1, max_len * 0.9) * rng.uniform(0.7, 1.1, n)),
        "mostly at max": clip(np.where(rng.random(n) < 0.85, max_len, rng.integers(8, max_len, n))),
    }


def overhead(lengths: list[int], batch_tokens: int, span: int) -> float:
    batching.BUCKET_SPAN = span
    order = epoch_permutation(len(lengths), 0, 0).tolist()
    batches = batching.length_buckets(order, lengths, batch_tokens)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return padded / sum(lengths) - 1


def main() -> None:
    for batch_tokens, max_len in ((16384, 2048), (4096, 512)):
        print(f"\n--batch-tokens {batch_tokens} --max-len {max_len}: padding overhead by BUCKET_SPAN")
        print("| world | " + " | ".join("all" if s == 10**9 else str(s) for s in SPANS) + " |")
        print("|---|" + "---:|" * len(SPANS))
        for name, lengths in worlds(max_len).items():
            print(f"| {name} | " + " | ".join(f"{overhead(lengths, batch_tokens, s):.1%}" for s in SPANS) + " |")


if __name__ == "__main__":
    main()
