"""The canonical answer table (`sources.load_answers`) against a bare polars scan of the same file, in one run.

    python benchmarks/bench_sources.py bench_data/zhihu_kol_full.parquet
    git worktree add /tmp/baseline main    # or any commit: the code to compare with
    python benchmarks/bench_sources.py bench_data/zhihu_kol_full.parquet --baseline /tmp/baseline

Each load runs in a child process (the time is `load_answers` alone, without start-up and imports; the peak RSS is the
child's). Its CPU time (user + system, all threads) is reported too: on a machine shared with other jobs it moves far
less than the wall time. With `--baseline`, the same load also runs with that checkout's `zhihu_rlhf` first on the
path, interleaved with ours and the scan, so a before/after comparison sees the same machine state. The bare scan is
the one of bench_build.py: every column of every row read, string lengths summed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

CHILD = """
import resource, sys, time
sys.path[:0] = sys.argv[2:]  # the baseline's code first: `python -c` puts the working directory before PYTHONPATH
import zhihu_rlhf.sources
from zhihu_rlhf.sources import load_answers
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started, started_cpu = time.perf_counter(), cpu()
answers, stats = load_answers(sys.argv[1])
print(zhihu_rlhf.sources.__file__, time.perf_counter() - started, cpu() - started_cpu, answers.height,
      stats["rows_dropped"])
"""


def bare_scan(path: Path) -> float:
    started = time.perf_counter()
    columns = pl.scan_parquet(path).collect_schema().names()
    lengths = [pl.col(c).cast(pl.String).str.len_bytes().sum() for c in columns]
    pl.scan_parquet(path).select(lengths).collect(engine="streaming")
    return time.perf_counter() - started


def canonical_table(path: Path, code: Path | None) -> tuple[float, float, float, str]:
    """(wall and CPU seconds in load_answers, peak RSS in GiB, what it kept and dropped) with `code`'s zhihu_rlhf."""
    command = [sys.executable, "-c", CHILD, str(path), *([str(code.resolve())] if code else [])]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: load_answers({path}) with {code or 'this checkout'}")
    module, seconds, cpu_seconds, kept, dropped = output.strip().split(" ", 4)
    if code and not Path(module).is_relative_to(code.resolve()):
        raise SystemExit(f"the baseline run imported {module}, not the code under {code}")
    return float(seconds), float(cpu_seconds), usage.ru_maxrss / 2**20, f"{int(kept):,} kept, dropped {dropped}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--baseline", type=Path, help="a checkout whose zhihu_rlhf is the 'before'")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    args = parser.parse_args()

    versions = {"this checkout": None} | ({f"baseline {args.baseline}": args.baseline} if args.baseline else {})
    scans: list[float] = []
    runs: dict[str, list[tuple[float, float, float, str]]] = {name: [] for name in versions}
    for _ in range(args.repeat):  # interleaved, so all see the same machine state
        scans.append(bare_scan(args.data))
        for name, code in versions.items():
            runs[name].append(canonical_table(args.data, code))
    rows = pl.scan_parquet(args.data).select(pl.len()).collect().item()
    scan = min(scans)
    print(f"\nfile: {args.data} ({rows:,} rows), cores: {os.cpu_count()}")
    print(f"bare scan: {scan:.2f}s (runs: {', '.join(f'{s:.2f}' for s in scans)})")
    for name, measured in runs.items():
        best = min(wall for wall, _, _, _ in measured)
        best_cpu = min(cpu for _, cpu, _, _ in measured)
        runs_shown = ", ".join(f"{wall:.2f}/{cpu:.2f}" for wall, cpu, _, _ in measured)
        peak = max(rss for _, _, rss, _ in measured)
        print(f"canonical table, {name}: {best:.2f}s = {best / scan:.2f}x the bare scan, CPU {best_cpu:.2f}s "
              f"(runs, wall/CPU: {runs_shown}), peak RSS {peak:.2f} GiB; {measured[0][3]}")


if __name__ == "__main__":
    main()
