"""Dedupe quality and speed: ours vs datasketch MinHashLSH over character shingles, same data, same truth.

    python benchmarks/bench_dedupe.py --data bench_data/zhihu_kol_full.parquet --peer-rows 50000

Reads a synthetic Zhihu-KOL file (zhihu_rlhf.synth) and its .truth.parquet, builds the canonical table
with zhihu_rlhf.sources, then reports pairwise precision/recall/F1 over same-cluster pairs (answers and
questions) and wall time for:
  - ours on the whole file (and the peak RSS of the process),
  - ours and datasketch on the first --peer-rows answers (datasketch in pure Python is far too slow for
    a million texts; the ratio is measured on the same subsample in the same run).
The peer is what a user would write: MinHash (num_perm=128) of each answer's character 3-gram set,
MinHashLSH(threshold=0.8), every answer queried, candidate pairs joined by union-find (no verification).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl
from datasketch import MinHash, MinHashLSH  # benchmark-only peer

from zhihu_rlhf import sources, synth
from zhihu_rlhf.dedupe import DedupeOptions, _union, dedupe


def same_cluster_pairs(frame: pl.DataFrame, columns: list[str]) -> int:
    sizes = frame.group_by(columns).len()["len"]
    return int((sizes * (sizes - 1) // 2).sum())


def prf(frame: pl.DataFrame, predicted: str, true: str) -> dict:
    both = same_cluster_pairs(frame, [predicted, true])
    pred, real = same_cluster_pairs(frame, [predicted]), same_cluster_pairs(frame, [true])
    p, r = both / max(pred, 1), both / max(real, 1)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-12), 4),
            "true_pairs": real, "predicted_pairs": pred}


def peer_clusters(answers: pl.DataFrame, threshold: float, num_perm: int) -> pl.DataFrame:
    texts = answers["answer"]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for start in range(0, len(texts), 10_000):  # shingle sets in chunks: all at once would need tens of GB at 1M rows
        chunk = texts.slice(start, 10_000).to_list()
        shingles = [{t[i : i + 3].encode() for i in range(max(1, len(t) - 2))} for t in chunk]
        for i, h in enumerate(MinHash.bulk(shingles, num_perm=num_perm), start=start):
            lsh.insert(i, h)
            hashes.append(h)
    a, b = [], []
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            if j > i:
                a.append(i)
                b.append(j)
    root = _union(len(texts), np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    ids = answers["answer_id"].to_numpy()
    cluster = np.full(len(texts), np.iinfo(np.int64).max)
    np.minimum.at(cluster, root, ids)
    return answers.select("answer_id").with_columns(answer_cluster=pl.Series(cluster[root]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench_data/zhihu_kol_full.parquet"))
    parser.add_argument("--peer-rows", type=int, default=50_000, help="rows for the datasketch comparison (0 = all)")
    parser.add_argument("--peer-threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()

    truth = pl.read_parquet(synth.truth_path_for(args.data)).select(
        "answer_id", true_cluster="answer_cluster", true_group="question_group"
    )
    started = time.perf_counter()
    answers, _ = sources.load_answers(str(args.data))
    print(f"canonical table: {answers.height:,} answers [{time.perf_counter() - started:.1f}s, not counted]")

    opts = DedupeOptions()
    started = time.perf_counter()
    table, stats = dedupe(answers, opts)
    ours_full = time.perf_counter() - started
    joined = table.join(truth, on="answer_id")
    print(f"ours, all {answers.height:,} answers: {ours_full:.1f}s, stats {stats}")
    print("  answers  ", prf(joined, "answer_cluster", "true_cluster"))
    print("  questions", prf(joined.unique("question_id"), "question_group", "true_group"))
    print(f"  peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")

    sub = answers.head(args.peer_rows) if args.peer_rows else answers
    started = time.perf_counter()
    ours_sub, _ = dedupe(sub, opts)
    ours_time = time.perf_counter() - started
    started = time.perf_counter()
    peer = peer_clusters(sub, args.peer_threshold, args.num_perm)
    peer_time = time.perf_counter() - started
    ours_q = prf(ours_sub.join(truth, on="answer_id"), "answer_cluster", "true_cluster")
    peer_q = prf(peer.join(truth, on="answer_id"), "answer_cluster", "true_cluster")
    print(f"first {sub.height:,} answers: ours {ours_time:.2f}s {ours_q}")
    print(f"  datasketch MinHashLSH(threshold={args.peer_threshold}, num_perm={args.num_perm}), char 3-grams: "
          f"{peer_time:.2f}s {peer_q}")
    print(f"  speed-up {peer_time / ours_time:.1f}x")


if __name__ == "__main__":
    main()
