"""Dedupe quality and speed on synthetic worlds with known truth; optionally against datasketch MinHashLSH.

    python benchmarks/bench_dedupe.py --world templates --rows 200000        # one preset (file made once, cached)
    python benchmarks/bench_dedupe.py --data bench_data/zhihu_kol_full.parquet --peer-rows 50000
    python benchmarks/bench_dedupe.py --data bench_data/zhihu_kol_full.parquet --repeat 3 --baseline 1545b07

Reads a synthetic Zhihu-KOL file (zhihu_rlhf.synth; `--world NAME --rows N --seed S` makes it with the synth
CLI under bench_data/ if it is not there yet) and its .truth.parquet, builds the canonical table with
zhihu_rlhf.sources, then reports for our dedupe on the whole file: wall time (best of --repeat), peak RSS
of the process, and
  - answers: pairwise precision/recall/F1 over same-cluster pairs, and per planted near-duplicate kind the
    share of its rows put in their true cluster;
  - questions (distinct question ids): pairwise precision/recall/F1 over same-group pairs, and the recall
    on the planted re-asks split by whether the two titles have the same letters and digits after NFKC
    (computed here independently of dedupe: punctuation, width and spacing re-asks) or not (reworded
    re-asks, and in the `templates` world the 请问/吗 ones, which are cosmetic too).
With --baseline COMMIT, zhihu_rlhf/dedupe.py as it was at that commit runs on the same table too, its runs
interleaved with ours (before/after timings under the same machine load), and is reported the same way.
With --peer-rows N (0 = all), also ours and datasketch on the first N answers (datasketch in pure Python is
far too slow for a million texts; the ratio is measured on the same subsample in the same run). The peer
is what a user would write: MinHash (num_perm=128) of each answer's character 3-gram set,
MinHashLSH(threshold=0.8), every answer queried, candidate pairs joined by union-find (no verification).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import types
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl

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


def letters_and_digits(title: str) -> str:
    """Letters and digits of a title after NFKC and lower-casing."""
    return "".join(c for c in unicodedata.normalize("NFKC", title).lower() if c.isalnum())


def reask_recall(questions: pl.DataFrame) -> dict:
    """Recall over true same-question pairs, split by whether the two titles have the same letters and digits."""
    questions = questions.with_columns(
        characters=pl.col("question").map_elements(letters_and_digits, return_dtype=pl.String)
    )
    true_pairs = same_cluster_pairs(questions, ["true_group"])
    same = same_cluster_pairs(questions, ["true_group", "characters"])
    same_found = same_cluster_pairs(questions, ["true_group", "characters", "question_group"])
    found = same_cluster_pairs(questions, ["true_group", "question_group"])
    return {
        "same_characters_pairs": same, "recall": round(same_found / max(same, 1), 4),
        "other_pairs": true_pairs - same, "other_recall": round((found - same_found) / max(true_pairs - same, 1), 4),
    }


def kind_recall(joined: pl.DataFrame) -> dict:
    """Per planted answer kind: the share of its rows whose predicted cluster holds exactly the (kept) rows of
    its true cluster: a copy joined with its source, a shared-quote answer left alone."""
    both = pl.len().over("answer_cluster", "true_cluster")
    exact = (pl.len().over("answer_cluster") == both) & (pl.len().over("true_cluster") == both)
    kinds = (
        joined.with_columns(exact=exact)
        .filter(pl.col("dup_kind").is_not_null())
        .group_by("dup_kind")
        .agg(rows=pl.len(), exact=pl.col("exact").mean().round(4))
    )
    return {row["dup_kind"]: (row["rows"], row["exact"]) for row in kinds.sort("dup_kind").to_dicts()}


def peer_clusters(answers: pl.DataFrame, threshold: float, num_perm: int) -> pl.DataFrame:
    from datasketch import MinHash, MinHashLSH  # benchmark-only peer (pip install -e .[bench]), only with --peer-rows

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


def dedupe_at(commit: str) -> types.ModuleType:
    """zhihu_rlhf/dedupe.py as it was at `commit`, imported as a module of its own."""
    path = "zhihu_rlhf/dedupe.py"
    source = subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"dedupe_at_{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def report(name: str, times: list[float], cpu: list[float], table: pl.DataFrame, stats: dict, truth: pl.DataFrame) -> None:
    joined = table.join(truth, on="answer_id")
    questions = joined.unique("question_id")
    print(f"{name}, all {table.height:,} answers: {min(times):.2f}s wall (runs {', '.join(f'{t:.2f}' for t in times)}), "
          f"{min(cpu):.2f}s CPU (runs {', '.join(f'{t:.2f}' for t in cpu)})")
    print(f"  stats {stats}")
    print("  answers  ", prf(joined, "answer_cluster", "true_cluster"))
    print("  answer kinds (rows, share clustered exactly as the truth)", kind_recall(joined))
    print("  questions", prf(questions, "question_group", "true_group"))
    print("  re-asks  ", reask_recall(questions))


def world_file(world: str, rows: int, seed: int) -> Path:
    """bench_data/synth-{world}-{rows}-s{seed}.parquet, made with the synth CLI the first time."""
    path = Path("bench_data") / f"synth-{world}-{rows}-s{seed}.parquet"
    if not path.exists():
        command = [sys.executable, "-m", "zhihu_rlhf.synth", "--world", world, "--rows", str(rows),
                   "--seed", str(seed), "--out", str(path)]
        print("making", path, "with", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a synthetic parquet file with its .truth.parquet")
    parser.add_argument("--world", help="a zhihu_rlhf.synth preset, instead of --data")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the --world file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --world file")
    parser.add_argument("--repeat", type=int, default=1, help="timed dedupe runs on the whole file (best is reported)")
    parser.add_argument("--baseline", metavar="COMMIT", help="also time dedupe.py as it was at this commit")
    parser.add_argument("--peer-rows", type=int, help="also compare with datasketch on the first N answers (0 = all)")
    parser.add_argument("--peer-threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()
    if (args.data is None) == (args.world is None):
        parser.error("give exactly one of --data and --world")
    data = args.data if args.data is not None else world_file(args.world, args.rows, args.seed)

    truth = pl.read_parquet(synth.truth_path_for(data)).select(
        "answer_id", "dup_kind", true_cluster="answer_cluster", true_group="question_group"
    )
    started = time.perf_counter()
    answers, _ = sources.load_answers(str(data))
    print(f"{data}: canonical table of {answers.height:,} answers [{time.perf_counter() - started:.1f}s, not counted]")

    opts = DedupeOptions()
    versions = {"ours": (dedupe, opts)}
    if args.baseline:
        baseline = dedupe_at(args.baseline)
        versions[f"baseline {args.baseline}"] = (baseline.dedupe, baseline.DedupeOptions())
    # Wall time, and CPU time of the process (all threads): on a machine shared with other jobs the CPU time
    # varies less between runs.
    times: dict[str, list[float]] = {name: [] for name in versions}
    cpu: dict[str, list[float]] = {name: [] for name in versions}
    results = {}
    for _ in range(args.repeat):
        for name, (run, options) in versions.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = run(answers, options)
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    for name, (table, stats) in results.items():
        report(name, times[name], cpu[name], table, stats, truth)
    if args.baseline:
        base = f"baseline {args.baseline}"
        print(f"ours / baseline (best of each): wall {min(times['ours']) / min(times[base]):.3f}, "
              f"CPU {min(cpu['ours']) / min(cpu[base]):.3f}")
    print(f"peak RSS after loading and dedupe: {peak:.2f} GB")

    if args.peer_rows is None:
        return
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
