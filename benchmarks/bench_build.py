"""`build all` against a bare polars scan of the same file, in one run; peak RSS of the build.

    python benchmarks/bench_build.py bench_data/zhihu_kol_full.parquet [--dedupe near|exact|off]
    python benchmarks/bench_build.py --world hot                    # bench_data/hot_1006218.parquet, made if missing
    python benchmarks/bench_build.py --world default,hot --sizes 250000,500000,1006218,2000000
    python benchmarks/bench_build.py --world default,hot --steps     # where the time goes, step by step
    python benchmarks/bench_build.py --world default,kol --cache     # rebuilds from the step cache
    python benchmarks/bench_build.py --world default --rebuild-parts # where a pair rebuild's time goes

The baseline reads every column of every row (string lengths summed, so nothing is skipped) with
polars' streaming engine. The build runs as `python -m zhihu_rlhf.build all` in a child process, so
its wall time includes start-up and writing the folders, and its peak RSS is the child's own.

One file: also timed, in the same run and also in a child process, the canonical answer table alone
(reading, parsing METADATA and normalising the texts, the first step every build needs), to show how
much of the budget that step leaves to deduplication, selection and writing.

`--sizes`: a table of preset world x size -> build time, its ratio to the bare scan of the same file
(measured in the same run), the build's peak RSS, and both per row, to check that time and memory grow
linearly with the rows. A missing `bench_data/<world>_<rows>.parquet` is first made with
`python -m zhihu_rlhf.synth --world <world> --rows <rows> --seed 0` (not timed).

`--steps`: each step of `build all`, timed one after another in this process with the library calls the CLI makes
(`build()` and the recipes: load, dedupe, vote model, each set's selection, then each set's recipe, which selects
again and writes the folder: its time less the selection's is the writing), each as a ratio to the bare scan of the
same file just before (the better of two), with its CPU use (user + system over wall: 2.0 = both cores busy);
start-up (importing the CLI's modules) is timed in a child process. The card's libraries (datasets, matplotlib) are
imported by the first folder written, so their import counts in "instruct set: writing the folder" here; the CLI's
`build()` imports them on a second thread while the answers are read.

`--rebuild-parts`: per world file, with a cache filled by one build, where a pair-option rebuild's time goes, each part
timed alone and interleaved with the bare scan and the rebuild in the CLI: Python's start and exit, importing the
CLI's modules and the card's libraries (each in a child process), and in this process loading the cached steps, the
kept instruct set, the pair selection, and writing the pairs folder (with its plots timed apart). It prints what the
goal (<= 3x the scan) leaves for the selection once the other parts are paid.

`--cache`: per world file, in one run, each `build all` in a child process with an empty cache folder of its own:
the build with `--no-cache`; the first build with the cache on (and the cache's size on disk); a rebuild with changed
pair options (`--min-ratio 3 --max-days-apart 14`) after it, into the same --out as a user iterating on a recipe
does, which takes every stored step (the instruct selection included) from the cache and keeps the instruct folder,
checked byte for byte (both folders) against the same options with `--no-cache`; and a rebuild with a changed vote
option (`--author-share 0.5`), into the same --out, against the uncached build with the same option less the
canonical table's and dedupe's time as its progress lines give them (the vote model's time depends on its options;
each budget from one run's figures, the smallest over the runs),
also checked byte for byte against that build; the budget from the default options' uncached build (its progress
lines, or the two steps timed in a child process) is printed beside it. The load average is printed at the start and
the end.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

FULL_ROWS = 1_006_218  # the real Zhihu-KOL
RATIO_BUDGET = 10  # issue 10: build all <= 10x the bare scan, peak RSS <= 6 GiB, on every preset
RSS_BUDGET_GIB = 6


def bare_scan(path: Path) -> float:
    # Read the file's bytes first (not timed): the scan then times decoding, not the disk, as the build (which
    # reads the file right after the scan) does. The machine may drop cold pages from its cache between runs.
    with path.open("rb") as file:
        while file.read(1 << 24):
            pass
    started = time.perf_counter()
    columns = pl.scan_parquet(path).collect_schema().names()
    pl.scan_parquet(path).select(pl.col(c).cast(pl.String).str.len_bytes().sum() for c in columns).collect(engine="streaming")
    return time.perf_counter() - started


def run_child(command: list[str], output: list[str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of a command in a child process; `output`: gets its progress lines (stderr)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stderr=None if output is None else subprocess.PIPE, text=True)
    if output is not None:
        for line in child.stderr:  # shown as it comes, and kept
            sys.stderr.write(line)
            output.append(line.rstrip("\n"))
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return elapsed, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def build_all(path: Path, dedupe: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        return run_child([sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", str(path), "--out", out,
                          "--dedupe", dedupe, "--no-cache"])


def canonical_table(path: Path) -> float:
    code = f"from zhihu_rlhf.sources import load_answers; load_answers({str(path)!r})"
    return run_child([sys.executable, "-c", code])[0]


def world_file(data_dir: Path, world: str, rows: int) -> Path:
    """bench_data/<world>_<rows>.parquet, generated with the synth CLI (seed 0) if it is missing."""
    path = data_dir / f"{world}_{rows}.parquet"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", flush=True)
        command = [sys.executable, "-m", "zhihu_rlhf.synth", "--world", world, "--rows", str(rows), "--seed", "0", "--out", str(path)]
        subprocess.run(command, check=True)
    return path


def rows_in(path: Path) -> int:
    return pl.scan_parquet(path).select(pl.len()).collect().item()


def one_file(path: Path, dedupe: str, repeat: int) -> None:
    scans, tables, builds = [], [], []
    for _ in range(repeat):  # interleaved, so all see the same machine state
        scans.append(bare_scan(path))
        tables.append(canonical_table(path))
        builds.append(build_all(path, dedupe))
    scan, table = min(scans), min(tables)
    build = min(b for b, _ in builds)
    print(f"\nfile: {path} ({path.stat().st_size / 2**30:.2f} GiB parquet, {rows_in(path):,} rows), "
          f"cores: {os.cpu_count()}, dedupe: {dedupe}")
    print(f"bare scan: {scan:.1f}s (runs: {', '.join(f'{s:.1f}' for s in scans)})")
    print(f"canonical table alone: {table:.1f}s (runs: {', '.join(f'{t:.1f}' for t in tables)}), {table / scan:.2f}x the bare scan")
    print(f"build all: {build:.1f}s (runs: {', '.join(f'{b:.1f}' for b, _ in builds)}), peak RSS {max(r for _, r in builds):.2f} GiB")
    print(f"ratio: {build / scan:.2f}x the bare scan (budget {RATIO_BUDGET}x), peak RSS budget {RSS_BUDGET_GIB} GiB")


def size_table(data_dir: Path, worlds: list[str], sizes: list[int], dedupe: str, repeat: int) -> None:
    files = {(world, rows): world_file(data_dir, world, rows) for world in worlds for rows in sizes}
    print(f"\ncores: {os.cpu_count()}, dedupe: {dedupe}, best of {repeat} (scan and build interleaved)")
    print("| world | rows | bare scan | build all | ratio | peak RSS | build per row | RSS per row |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (world, rows), path in files.items():
        scans, builds = [], []
        for _ in range(repeat):
            scans.append(bare_scan(path))
            builds.append(build_all(path, dedupe))
        scan, build, rss = min(scans), min(b for b, _ in builds), max(r for _, r in builds)
        print(f"| {world} | {rows:,} | {scan:.2f} s | {build:.1f} s | {build / scan:.1f}x | {rss:.2f} GiB "
              f"| {build / rows * 1e6:.1f} µs | {rss * 2**20 / rows:.2f} KiB |", flush=True)
    print(f"budgets: ratio <= {RATIO_BUDGET}x, peak RSS <= {RSS_BUDGET_GIB} GiB; per-row figures within ±25% across sizes")


def step_table(path: Path, dedupe_mode: str) -> None:
    from zhihu_rlhf.build import BuildOptions, _params
    from zhihu_rlhf.dedupe import DedupeOptions, dedupe
    from zhihu_rlhf.instruct import select_instruct
    from zhihu_rlhf.pairs import select_pairs
    from zhihu_rlhf.pipelines.answers import answers_per_question
    from zhihu_rlhf.pipelines.instruct import build_instruct_set
    from zhihu_rlhf.pipelines.pairs import build_pairs_set
    from zhihu_rlhf.sources import load_answers
    from zhihu_rlhf.votes import estimate_quality

    scan = min(bare_scan(path), bare_scan(path))
    python_alone = run_child([sys.executable, "-c", "pass"])[0]
    times = {"start-up (importing the CLI's modules)": run_child([sys.executable, "-c", "import zhihu_rlhf.build"])[0] - python_alone}
    options = BuildOptions(source=str(path), dedupe=DedupeOptions(mode=dedupe_mode))
    cpu_use: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), _cpu_seconds()

    def lap(step: str) -> None:
        nonlocal started, cpu_started
        times[step] = time.perf_counter() - started
        cpu_use[step] = (_cpu_seconds() - cpu_started) / times[step]
        started, cpu_started = time.perf_counter(), _cpu_seconds()

    answers, stats = load_answers(options.source)
    lap("canonical answer table (read, parse, normalise)")
    answers, stats["dedupe"] = dedupe(answers, options.dedupe)
    stats["answers_per_question"] = answers_per_question(answers)
    lap("dedupe (question groups and answer clusters)")
    answers, stats["vote_model"] = estimate_quality(answers, options.votes)
    lap("vote model")
    select_instruct(answers, options.instruct, options.lengths)
    lap("instruct selection")
    select_pairs(answers, options.pairs, options.lengths)
    lap("pairs selection")
    with tempfile.TemporaryDirectory() as out:
        build_instruct_set(answers, answers.lazy(), stats, options.instruct, options.lengths, out=Path(out) / "instruct",
                           params=_params(options, "instruct"), output=options.output())
        lap("instruct set: writing the folder")
        build_pairs_set(answers, answers.lazy(), stats, options.pairs, options.lengths, out=Path(out) / "pairs",
                        params=_params(options, "pairs"), output=options.output())
        lap("pairs set: writing the folder")
    # Each recipe selects its rows again before writing them: count that time once, under the selection.
    times["instruct set: writing the folder"] -= times["instruct selection"]
    times["pairs set: writing the folder"] -= times["pairs selection"]
    print(f"\nfile: {path} ({rows_in(path):,} rows), cores: {os.cpu_count()}, dedupe: {dedupe_mode}, bare scan {scan:.2f} s")
    print("| step | time | x bare scan | CPU use (of 2 cores) |\n|---|---:|---:|---:|")
    for step, seconds in times.items():
        use = f"{cpu_use[step]:.2f}" if step in cpu_use and "writing" not in step else "-"
        print(f"| {step} | {seconds:.2f} s | {seconds / scan:.2f}x | {use} |")
    print(f"| all steps | {sum(times.values()):.2f} s | {sum(times.values()) / scan:.2f}x | |", flush=True)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cache_table(path: Path, repeat: int) -> None:
    """The step cache's rebuilds against the uncached build and the bare scan, all in this run."""
    build = [sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", str(path)]
    pair_change, vote_change = ["--min-ratio", "3", "--max-days-apart", "14"], ["--author-share", "0.5"]
    reading_and_dedupe = (
        "import time; from zhihu_rlhf.sources import load_answers; from zhihu_rlhf.dedupe import DedupeOptions, dedupe\n"
        f"t = time.perf_counter(); a, _ = load_answers({str(path)!r}); dedupe(a, DedupeOptions())\n"
        "print(time.perf_counter() - t)"
    )
    runs: dict[str, list[float]] = {}
    budgets: dict[str, list[float]] = {}  # per run, so that no budget mixes two runs' figures
    load_at_start, identical = os.getloadavg()[0], True
    for _ in range(repeat):  # interleaved, so all see the same machine state
        with tempfile.TemporaryDirectory() as work:
            work_dir, cache = Path(work), ["--cache-dir", str(Path(work) / "cache")]
            runs.setdefault("bare scan", []).append(bare_scan(path))
            progress: list[str] = []
            uncached = run_child([*build, "--out", work + "/a", "--no-cache"], progress)[0]
            runs.setdefault("build all --no-cache", []).append(uncached)
            share = _step_seconds(progress, ("answers", "dedupe"))
            runs.setdefault("canonical table + dedupe (the uncached build's progress lines)", []).append(share)
            budgets.setdefault("default options", []).append(uncached - share)
            shares = subprocess.run([sys.executable, "-c", reading_and_dedupe], capture_output=True, text=True, check=True)
            runs.setdefault("canonical table + dedupe (in a child)", []).append(float(shares.stdout))
            budgets.setdefault("in a child", []).append(uncached - float(shares.stdout))
            runs.setdefault("first build, cache on", []).append(run_child([*build, "--out", work + "/b", *cache])[0])
            cache_bytes = sum(f.stat().st_size for f in (work_dir / "cache").rglob("*") if f.is_file())
            runs.setdefault("rebuild, pair options changed", []).append(
                run_child([*build, "--out", work + "/b", *cache, *pair_change])[0])
            run_child([*build, "--out", work + "/c-ref", "--no-cache", *pair_change])
            identical = identical and _same_tree(work_dir / "b", work_dir / "c-ref")
            runs.setdefault("rebuild, vote option changed", []).append(
                run_child([*build, "--out", work + "/b", *cache, *vote_change])[0])
            # The vote model's time depends on its options, so the rebuild's budget comes from the same options uncached.
            vote_progress: list[str] = []
            vote_uncached = run_child([*build, "--out", work + "/d-ref", "--no-cache", *vote_change], vote_progress)[0]
            runs.setdefault("build all --no-cache, vote option changed", []).append(vote_uncached)
            vote_share = _step_seconds(vote_progress, ("answers", "dedupe"))
            runs.setdefault("its canonical table + dedupe (progress lines)", []).append(vote_share)
            budgets.setdefault("same option", []).append(vote_uncached - vote_share)
            identical = identical and _same_tree(work_dir / "b", work_dir / "d-ref")
            shutil.rmtree(work_dir / "cache")
    best = {name: min(times) for name, times in runs.items()}
    scan, uncached = best["bare scan"], best["build all --no-cache"]
    print(f"\nfile: {path} ({rows_in(path):,} rows), cores: {os.cpu_count()}, best of {repeat} (interleaved); "
          f"cache on disk {cache_bytes / 2**30:.2f} GiB; both rebuilds byte-identical to --no-cache: {identical}; "
          f"load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print("| run | time | x bare scan | x uncached build |\n|---|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} s (runs: {', '.join(f'{t:.2f}' for t in runs[name])}) | {seconds / scan:.2f}x "
              f"| {seconds / uncached:.2f}x |")
    # the strictest run's budget
    budget, default_budget, child_budget = (min(budgets[name]) for name in ("same option", "default options", "in a child"))
    print(f"goals: first build <= 1.1x uncached; pair rebuild <= 3x the scan; vote rebuild <= {budget:.2f} s (the "
          f"uncached build with the same vote option less the canonical table and dedupe as its progress lines time "
          f"them; from the default options' uncached build: {default_budget:.2f} s, or {child_budget:.2f} s with the two "
          "steps timed in a child process)", flush=True)


def rebuild_parts(path: Path, repeat: int) -> None:
    """Where a pair-option rebuild's time goes, against the 3x-the-scan goal: the parts no faster selection can remove
    (Python's start and exit, importing the CLI and the card's libraries, loading the cached steps, writing the
    folder) and the selection itself, each timed alone, interleaved with the bare scan and the rebuild in the CLI."""
    from zhihu_rlhf.build import BuildOptions, _params
    from zhihu_rlhf.cache import StepCache
    from zhihu_rlhf.cards import write_plots
    from zhihu_rlhf.export import canonical_path
    from zhihu_rlhf.pairs import PairOptions, select_pairs
    from zhihu_rlhf.pipelines.answers import chained_answers
    from zhihu_rlhf.pipelines.instruct import build_instruct_set
    from zhihu_rlhf.pipelines.pairs import build_pairs_set

    build = [sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", str(path), "--min-ratio", "3"]
    imports = {
        "Python's start and exit": "pass",
        "the same, importing the CLI": "import zhihu_rlhf.build",
        "the same, importing the CLI and the card's libraries": "import zhihu_rlhf.build, zhihu_rlhf.cards",
    }
    runs: dict[str, list[float]] = {}
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        out, cache_dir = Path(work) / "out", Path(work) / "cache"
        run_child([*build, "--out", str(out), "--cache-dir", str(cache_dir), "--max-days-apart", "15"])  # fills it
        for round_ in range(repeat):  # interleaved, so all see the same machine state
            # Another window each round, so that every rebuild writes its pairs folder (the instruct one is kept).
            days = 14 - round_ % 2
            runs.setdefault("bare scan", []).append(bare_scan(path))
            runs.setdefault("pair rebuild in the CLI", []).append(run_child(
                [*build, "--out", str(out), "--cache-dir", str(cache_dir), "--max-days-apart", str(days)])[0])
            for name, code in imports.items():
                runs.setdefault(name, []).append(run_child([sys.executable, "-c", code])[0])
            # The same steps in this process, the libraries already imported.
            options = BuildOptions(source=str(path), pairs=PairOptions(min_ratio=3, max_days_apart=days))
            cache = StepCache(cache_dir, 0, warn=print)
            started = time.perf_counter()
            answers, texts, stats, chain = chained_answers(options.source, options.dedupe, options.votes, cache=cache)
            runs.setdefault("loading the cached steps", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            build_instruct_set(answers, texts, stats, options.instruct, options.lengths, out=out / "instruct",
                               params=_params(options, "instruct"), output=options.output(), chain=chain)
            runs.setdefault("the instruct set, kept", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            select_pairs(answers, options.pairs, options.lengths, texts)
            selection = time.perf_counter() - started
            runs.setdefault("the pair selection", []).append(selection)
            written = Path(work) / f"pairs{round_}"
            started = time.perf_counter()
            build_pairs_set(answers, texts, stats, options.pairs, options.lengths, out=written,
                            params=_params(options, "pairs"), output=options.output())
            runs.setdefault("writing the pairs folder (card, parquet, plots)", []).append(
                time.perf_counter() - started - selection)  # it selects again first
            splits = {split: pl.read_parquet(written / canonical_path(split)) for split in ("train", "test")}
            started = time.perf_counter()
            write_plots(Path(work), "pairs", splits, json.loads((written / "stats.json").read_text()))
            runs.setdefault("the plots alone, on the written pairs", []).append(time.perf_counter() - started)
            cache.wait()
    best = {name: min(times) for name, times in runs.items()}
    scan = best["bare scan"]
    print(f"\nfile: {path} ({rows_in(path):,} rows), cores: {os.cpu_count()}, best of {repeat} (interleaved); load "
          f"average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print("| part | time | x bare scan |\n|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} s (runs: {', '.join(f'{t:.2f}' for t in runs[name])}) | {seconds / scan:.2f}x |")
    # The CLI imports the card's libraries on a second thread beside the loading and the selection, so the budget
    # left for the selection lies between these two: that import one after the other, and wholly hidden.
    steps = sum(best[name] for name in ("loading the cached steps", "the instruct set, kept",
                                        "writing the pairs folder (card, parquet, plots)"))
    serial = steps + best["the same, importing the CLI and the card's libraries"]
    hidden = steps + best["the same, importing the CLI"]
    print(f"3x the scan: {3 * scan:.2f} s; the parts but the selection: {serial:.2f} s one after another, {hidden:.2f} s "
          f"with the card's libraries imported out of sight; left for the selection: {3 * scan - serial:.2f} to "
          f"{3 * scan - hidden:.2f} s, against its {best['the pair selection']:.2f} s", flush=True)


def _step_seconds(progress: list[str], steps: tuple[str, ...]) -> float:
    """Seconds the build's progress lines give these steps (`  dedupe: computed (cache off) [21.3s]`)."""
    timed = [re.match(r"\s*(\w+): computed.*\[([\d.]+)s\]$", line) for line in progress]
    found = {match[1]: float(match[2]) for match in timed if match and match[1] in steps}
    if set(found) != set(steps):
        raise SystemExit(f"the build's progress lines did not time {sorted(set(steps) - set(found))}")
    return sum(found.values())


def _same_tree(left: Path, right: Path) -> bool:
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file()) and all(
        filecmp.cmp(left / f, right / f, shallow=False) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="?", help="a parquet file (default: the --world file)")
    parser.add_argument("--world", default="default", help="synth preset(s), comma-separated with --sizes (default: default)")
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="rows of the --world file (default: %(default)s)")
    parser.add_argument("--sizes", help="comma-separated row counts: print the world x size table")
    parser.add_argument("--data-dir", type=Path, default=Path("bench_data"), help="where world files live (default: bench_data)")
    parser.add_argument("--dedupe", default="near", choices=["near", "exact", "off"])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    parser.add_argument("--steps", action="store_true", help="time each step of the build, per --world file")
    parser.add_argument("--cache", action="store_true", help="time rebuilds from the step cache, per --world file")
    parser.add_argument("--rebuild-parts", action="store_true",
                        help="where a pair-option rebuild's time goes, part by part, per --world file")
    args = parser.parse_args()

    worlds = args.world.split(",")
    if args.steps:
        for world in worlds:
            step_table(args.data or world_file(args.data_dir, world, args.rows), args.dedupe)
    elif args.cache:
        for world in worlds:
            cache_table(args.data or world_file(args.data_dir, world, args.rows), args.repeat)
    elif args.rebuild_parts:
        for world in worlds:
            rebuild_parts(args.data or world_file(args.data_dir, world, args.rows), args.repeat)
    elif args.sizes:
        size_table(args.data_dir, worlds, [int(size) for size in args.sizes.split(",")], args.dedupe, args.repeat)
    else:
        one_file(args.data or world_file(args.data_dir, worlds[0], args.rows), args.dedupe, args.repeat)


if __name__ == "__main__":
    main()
