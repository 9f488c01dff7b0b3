"""`build all` against a bare polars scan of the same file, in one run; peak RSS of the build.

    python -m zhihu_rlhf.synth --rows 1006218 --out bench_data/zhihu_kol_full.parquet --seed 0
    python benchmarks/bench_build.py bench_data/zhihu_kol_full.parquet [--dedupe near|exact|off]

The baseline reads every column of every row (string lengths summed, so nothing is skipped) with
polars' streaming engine. The build runs as `python -m zhihu_rlhf.build all` in a child process, so
its wall time includes start-up and writing the folders, and its peak RSS is the child's own.

Also timed, in the same run and also in a child process: the canonical answer table alone (reading,
parsing METADATA and normalising the texts, the first step every build needs), to show how much of
the budget that step leaves to deduplication, selection and writing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl


def bare_scan(path: Path) -> float:
    started = time.perf_counter()
    columns = pl.scan_parquet(path).collect_schema().names()
    pl.scan_parquet(path).select(pl.col(c).cast(pl.String).str.len_bytes().sum() for c in columns).collect(engine="streaming")
    return time.perf_counter() - started


def run_child(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of a command in a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return elapsed, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def build_all(path: Path, dedupe: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        return run_child([sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", str(path), "--out", out, "--dedupe", dedupe])


def canonical_table(path: Path) -> float:
    code = f"from zhihu_rlhf.sources import load_answers; load_answers({str(path)!r})"
    return run_child([sys.executable, "-c", code])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--dedupe", default="near", choices=["near", "exact", "off"])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    args = parser.parse_args()

    rows = pl.scan_parquet(args.data).select(pl.len()).collect().item()
    scans, tables, builds = [], [], []
    for _ in range(args.repeat):  # interleaved, so all see the same machine state
        scans.append(bare_scan(args.data))
        tables.append(canonical_table(args.data))
        builds.append(build_all(args.data, args.dedupe))
    scan, table = min(scans), min(tables)
    build = min(b for b, _ in builds)
    print(f"\nfile: {args.data} ({args.data.stat().st_size / 2**30:.2f} GiB parquet, {rows:,} rows), "
          f"cores: {os.cpu_count()}, dedupe: {args.dedupe}")
    print(f"bare scan: {scan:.1f}s (runs: {', '.join(f'{s:.1f}' for s in scans)})")
    print(f"canonical table alone: {table:.1f}s (runs: {', '.join(f'{t:.1f}' for t in tables)}), {table / scan:.2f}x the bare scan")
    print(f"build all: {build:.1f}s (runs: {', '.join(f'{b:.1f}' for b, _ in builds)}), peak RSS {max(r for _, r in builds):.2f} GiB")
    print(f"ratio: {build / scan:.2f}x the bare scan (budget 5x), peak RSS budget 6 GiB")


if __name__ == "__main__":
    main()
