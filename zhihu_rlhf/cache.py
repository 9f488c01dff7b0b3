"""A cache of the build's expensive steps, so a change of recipe reruns only what it changes.

Four steps are stored after they run, each under a key that fingerprints everything its output depends on:

    answers   the canonical answer table     key: the source files (path, size, mtime, sampled content), the step's version
    dedupe    question_group, answer_cluster key: the answers key, the dedupe options, the step's version
    votes     the vote model's columns       key: the dedupe key, the vote-model options, the step's version
    instruct  the instruct set's rows        key: the votes key, the instruct and length options, the step's version

and one record per output folder written (`folder`: each file's path, size and digest), keyed by the folder's path,
the digest of what was written into it and of the code that writes it. A rebuild that would write a folder with the
same inputs again keeps it as it is when its files are still those recorded: a pair-option rebuild does not rewrite
the instruct set, its plots and card; a folder the user removed or edited is written again.

A changed pair option reuses all four (the pairs are selected again: their selection is what the user is tuning, and
it reads the whole answer table); a changed instruct option reruns the instruct selection only; a changed vote option
reruns the vote model and what follows it; a changed dedupe option reruns dedupe and what follows it, never the
reading. Dedupe and the vote model add columns and keep every row, so their entries hold only the columns they add (a
few bytes per row), and the texts are stored once. The texts are most of the stored table's bytes and only dedupe
reads them all, so the answers entry keeps them in a file of their own: a rebuild that takes dedupe from the cache
checks that file where it lies, reads it on a background thread and decodes only the texts of the answers its sets
select (`cached_step_undecoded`).

An entry is a folder `<step>-<key>/` with `table.parquet`, for the answers step `texts.parquet`, and `manifest.json`
(step, key, rows, each file's size and XXH3-128 digest, the step's stats). It is written under a temporary name and renamed into place only when complete, so a
build that is killed leaves a temporary folder that is never read (and is swept later), and two builds writing the same
entry never see each other's half: the second rename fails and its copy is discarded; nobody waits on a lock. An entry
whose manifest, size, digest, key or row count does not match is not used: one warning line, the step is recomputed
(so a torn write after a power loss is caught without an fsync). When the cache grows past its limit, the entries used
longest ago are removed first.

Entries are written by one background thread while the build goes on (compressing and writing a million texts takes
seconds, and polars and file writes release the GIL); `StepCache.wait()` joins it before the build returns.

Each step's version string (`STEP_VERSIONS`) is part of its key: bump it whenever the step's output changes, or old
entries would be reused. tests/test_cache.py fails when a step's output on a fixed input changes and its version did not.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import mmap
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl
import xxhash

from zhihu_rlhf.errors import UserError

STEP_VERSIONS = {"answers": "4", "dedupe": "1", "votes": "2", "instruct": "1", "folder": "1"}
"""Bump a step's version whenever its output (table or stats) changes for the same input and options, or the layout of
its entry does (answers 4: its texts in a file apart, which older entries lack). (A `folder`
record's key holds the writing code's digest instead: its version changes only with the record's own layout.)"""

# What a written folder's content depends on besides its inputs: this package's code and card templates, and every
# installed library (the writers reach pillow through matplotlib, jinja2 and yaml through huggingface_hub, ...).
_PACKAGES = ("zhihu_rlhf", "zhihu_rlhf.pipelines", "zhihu_rlhf.data_cards")

ENTRY_FORMAT = 2  # the layout of an entry folder itself (2: XXH3-128 digests)
TEXTS_FILE = "texts.parquet"  # an entry's columns stored apart (`store(..., apart=...)`)
_SAMPLE_BLOCK = 1 << 16  # bytes read at each sampled offset of a large source file
_SAMPLE_BLOCKS = 64
_STALE_TEMPORARY_SECONDS = 6 * 3600  # a temporary folder this old belongs to a build that died


def default_cache_dir() -> Path:
    """$ZHIHU_RLHF_CACHE, else zhihu_rlhf/ under $HF_HOME, else under $XDG_CACHE_HOME or ~/.cache (as HF tools do)."""
    if os.environ.get("ZHIHU_RLHF_CACHE"):
        return Path(os.environ["ZHIHU_RLHF_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "zhihu_rlhf"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "zhihu_rlhf"


# ---------------------------------------------------------------------------------------------
# Keys


def source_fingerprint(paths: list[Path]) -> str:
    """A digest of the files a source reads: each one's resolved path, size, mtime and sampled content.

    Small files are hashed whole. A large file is hashed at its first and last MiB (a parquet file's footer, with
    every column chunk's offsets and statistics, is at its end) and at evenly spaced blocks in between: 2-6 MiB per
    file whatever its size, so a 1M-row dump is fingerprinted in milliseconds. An edit that keeps a file's size, its
    mtime and every sampled byte would go unnoticed; editors and writers change the mtime.
    """
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(p).resolve() for p in paths):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with path.open("rb") as file:
            if stat.st_size <= 2 * _SAMPLE_BLOCK * _SAMPLE_BLOCKS:
                digest.update(file.read())
                continue
            edge = 1 << 20
            offsets = [0, stat.st_size - edge] + [
                edge + i * (stat.st_size - 2 * edge) // _SAMPLE_BLOCKS for i in range(_SAMPLE_BLOCKS)
            ]
            for offset in offsets:
                file.seek(offset)
                digest.update(file.read(edge if offset in (0, stat.st_size - edge) else _SAMPLE_BLOCK))
    return digest.hexdigest()


def step_key(step: str, parent: str, *options: object) -> str:
    """The key of a step's entry: its name and version, the key (or source fingerprint) it reads, its options (each a
    dataclass)."""
    recipe = {
        "step": step,
        "version": STEP_VERSIONS[step],
        "parent": parent,
        "options": [dataclasses.asdict(each) for each in options],
    }
    return hashlib.blake2b(json.dumps(recipe, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class Entry:
    step: str
    key: str
    folder: Path
    rows: int
    size_bytes: int
    last_used: float
    source: str


class StepCache:
    """Entries under `folder`, bounded to `max_bytes` (0: no bound); `warn` prints a one-line warning."""

    def __init__(self, folder: Path, max_bytes: int, warn: Callable[[str], None]) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.warn = warn
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-reader")
        self._pending: list[Future] = []

    def load(self, step: str, key: str, rows: int | None = None, *,
             undecoded: bool = False) -> tuple[pl.DataFrame, dict, ReadAhead | None] | None:
        """The stored (table, stats, texts) of `step` under `key`, or None when absent or not trustworthy.

        `undecoded`: the entry was stored with columns apart (`store(..., apart=...)`), which the caller needs for a few
        rows only (the texts, most of an answer table's bytes). Their file is checked now, where it lies, and read on a
        background thread from a handle opened now (an entry another build evicts meanwhile stays readable); `texts`
        scans it, so that only the rows filtered for are decoded. None when not asked.
        """
        folder = self.folder / f"{step}-{key}"
        if not folder.is_dir():
            return None
        texts = None
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            data = (folder / "table.parquet").read_bytes()
            problem = _manifest_problem(manifest, step, key, data, rows)
            if problem is None and undecoded:
                problem, texts = self._read_ahead(folder / TEXTS_FILE, manifest.get("parts", {}).get(TEXTS_FILE))
            if problem is None:  # the bytes checked are the bytes read
                table = pl.read_parquet(io.BytesIO(data))
        except (OSError, ValueError, pl.exceptions.PolarsError) as err:
            problem = f"unreadable ({type(err).__name__})"
        if problem is None and table.height != manifest["rows"]:
            problem = "row count differs from its manifest"
        if problem:
            self.warn(f"warning: cache entry {folder} is {problem}; recomputing {step}")
            shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            os.utime(folder / "manifest.json")  # last used: what eviction orders by
        except OSError:  # evicted by another build since it was read: what was read is still whole
            pass
        return table, manifest["stats"], texts

    def _read_ahead(self, path: Path, record: object) -> tuple[str | None, ReadAhead | None]:
        """(what is wrong with an entry's file apart, or None; the file read ahead). Its content is checked where it
        lies (mapped, not copied), then read on the background reader from the handle that was checked."""
        file = path.open("rb")
        try:
            size = os.fstat(file.fileno()).st_size
            problem = _content_problem(record, size, _digest_open(file))
        except BaseException:
            file.close()
            raise
        if problem:
            file.close()
            return problem, None
        return None, ReadAhead(file, self._reader)

    def store(self, step: str, key: str, table: pl.DataFrame, stats: dict, source: str,
              apart: tuple[str, ...] = (), apart_by: str = "") -> None:
        """Queue an entry for the background writer (stats are serialised now: the caller goes on changing them).
        `apart`: columns stored in a file of their own, beside a copy of the column `apart_by` that rows are found by,
        and read back with `load(..., undecoded=True)`."""
        stats = json.loads(json.dumps(stats))
        self._pending.append(self._writer.submit(self._write_entry, step, key, table, stats, source, apart, apart_by))

    def wait(self) -> None:
        """Block until every queued entry is written (an error in the writer is raised here)."""
        pending, self._pending = self._pending, []
        try:
            for future in pending:
                future.result()
        except BaseException:
            for future in pending:  # after an entry failed to be written, store no more of this build's
                future.cancel()
            raise

    def _write_entry(self, step: str, key: str, table: pl.DataFrame, stats: dict, source: str,
                     apart: tuple[str, ...], apart_by: str) -> None:
        """Write an entry atomically; a concurrent writer of the same entry wins or loses whole. Then evict."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".tmp-{step}-{key}-{uuid.uuid4().hex}"
        temporary.mkdir()
        try:
            table.drop(apart).write_parquet(temporary / "table.parquet", compression="lz4", statistics=False)
            parts = {}
            if apart:
                table.select(apart_by, *apart).write_parquet(temporary / TEXTS_FILE, compression="lz4", statistics=False)
                parts[TEXTS_FILE] = _file_record(temporary / TEXTS_FILE)
            table_record = _file_record(temporary / "table.parquet")
            manifest = {
                "format": ENTRY_FORMAT, "step": step, "key": key, "version": STEP_VERSIONS[step], "source": source,
                "rows": table.height, "table_bytes": table_record["bytes"], "table_xxh3_128": table_record["xxh3_128"],
                "parts": parts, "stats": stats,
            }
            # the manifest last: a folder without one is never read
            _write_file(temporary / "manifest.json", json.dumps(manifest).encode())  # key order kept: stats.json shows it
            try:
                os.rename(temporary, self.folder / f"{step}-{key}")
            except OSError:  # another build stored the same entry first: theirs is as good as ours
                pass
        except OSError as err:  # a full disk or a read-only cache costs the cache, not the build
            self.warn(f"warning: could not write cache entry {step} in {self.folder} ({err.strerror or err}); "
                      "the build goes on without it")
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        self.evict()

    def entries(self) -> list[Entry]:
        """Complete entries, least recently used first."""
        found = []
        for folder in self.folder.glob("*-*") if self.folder.is_dir() else []:
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                manifest_path = folder / "manifest.json"
                manifest = json.loads(manifest_path.read_text())
                size = sum(f.stat().st_size for f in folder.iterdir())
                found.append(Entry(manifest["step"], manifest["key"], folder, manifest["rows"], size,
                                   manifest_path.stat().st_mtime, manifest.get("source", "")))
            except (OSError, ValueError, KeyError, TypeError):
                found.append(Entry("?", folder.name, folder, 0, _folder_size(folder), 0.0, "unreadable"))
        return sorted(found, key=lambda entry: entry.last_used)

    def evict(self) -> None:
        """Remove dead builds' temporary folders, then the least recently used entries past `max_bytes`."""
        now = time.time()
        for temporary in self.folder.glob(".tmp-*"):
            try:
                if now - temporary.stat().st_mtime > _STALE_TEMPORARY_SECONDS:
                    shutil.rmtree(temporary, ignore_errors=True)
            except OSError:
                pass
        if not self.max_bytes:
            return
        entries = self.entries()
        total = sum(entry.size_bytes for entry in entries)
        for entry in entries[:-1]:  # the newest entry stays even when it alone is over the bound
            if total <= self.max_bytes:
                break
            shutil.rmtree(entry.folder, ignore_errors=True)
            total -= entry.size_bytes

    def folder_unchanged(self, key: str, out: Path) -> bool:
        """Whether `out` holds exactly the files recorded under `key` (see `folder_key`), byte for byte."""
        stored = self.load("folder", key)
        if stored is None or not out.is_dir():
            return False
        recorded = {path: (size, digest) for path, size, digest in stored[0].iter_rows()}
        return _folder_files(out) == recorded

    def record_folder(self, key: str, out: Path, written: Path) -> None:
        """Record under `key` the files of the folder `written` for `out`, taken while complete and before it replaces
        `out`, so that a build writing to the same `out` meanwhile cannot have its files recorded as this one's."""
        files = [(path, size, digest) for path, (size, digest) in _folder_files(written).items()]
        table = pl.DataFrame(files, schema={"path": pl.String, "bytes": pl.Int64, "xxh3_128": pl.String}, orient="row")
        self.store("folder", key, table, {}, source=str(out))

    def clear(self) -> int:
        """Remove every entry and temporary folder; returns the bytes freed."""
        freed = 0
        for folder in [*self.folder.glob("*-*"), *self.folder.glob(".tmp-*")] if self.folder.is_dir() else []:
            if folder.is_dir():
                freed += _folder_size(folder)
                shutil.rmtree(folder, ignore_errors=True)
        return freed


def cached_step(
    cache: StepCache | None,
    step: str,
    key: str,
    compute: Callable[[], tuple[pl.DataFrame, dict]],
    *,
    base: pl.DataFrame | None,
    source: str,
    log: Callable[[str], None],
) -> tuple[pl.DataFrame, dict]:
    """`compute()`'s (table, stats), or the stored ones. With a `base` table the step only adds columns to it, and
    only those are stored; they are put back beside `base` on a hit."""
    started = time.perf_counter()
    stored = cache.load(step, key, rows=None if base is None else base.height) if cache else None
    if stored is not None:
        table, stats, _ = stored
        _log_step(log, step, "from the cache", started)
        return (table if base is None else base.hstack(table)), stats
    table, stats = compute()
    if cache:
        added = table if base is None else table.select(c for c in table.columns if c not in base.columns)
        cache.store(step, key, added, stats, source)
    _log_step(log, step, "computed" if cache else "computed (cache off)", started)
    return table, stats


def cached_step_undecoded(
    cache: StepCache | None,
    step: str,
    key: str,
    compute: Callable[[], tuple[pl.DataFrame, dict]],
    undecoded: tuple[str, ...],
    found_by: str,
    *,
    source: str,
    log: Callable[[str], None],
) -> tuple[pl.DataFrame, dict, pl.LazyFrame | ReadAhead]:
    """`cached_step` of a first step whose `undecoded` columns later steps read for a few rows only, found by the
    column `found_by`: (the table without them, stats, the `undecoded` columns beside `found_by`, which `.lazy()`
    scans). Stored, they are decoded only for the rows a later step filters for (`StepCache.load`)."""
    started = time.perf_counter()
    stored = cache.load(step, key, undecoded=True) if cache else None
    if stored is not None:
        _log_step(log, step, "from the cache", started)
        return stored
    table, stats = compute()
    if cache:
        cache.store(step, key, table, stats, source, apart=undecoded, apart_by=found_by)
    _log_step(log, step, "computed" if cache else "computed (cache off)", started)
    return table.drop(undecoded), stats, table.lazy().select(found_by, *undecoded)


class ReadAhead:
    """A stored file's bytes, read on a background thread from a handle opened (and its content checked) earlier, so
    that reading it overlaps the work before it is needed; `lazy()` scans them once read."""

    def __init__(self, file: BinaryIO, reader: ThreadPoolExecutor) -> None:
        self._data = reader.submit(_read_whole, file)

    def lazy(self) -> pl.LazyFrame:
        return pl.scan_parquet(io.BytesIO(self._data.result()))


def _read_whole(file: BinaryIO) -> bytes:
    with file:
        file.seek(0)
        return file.read()


def _log_step(log: Callable[[str], None], step: str, how: str, started: float) -> None:
    log(f"  {step}: {how} [{time.perf_counter() - started:.1f}s]")


def folder_key(out: Path, frames: list[pl.DataFrame], settings: dict) -> str:
    """The key of a written folder's record: its resolved path, the frames and settings (JSON-able, in the order
    they are written) it was written from, and the code and libraries that write it."""
    digest = xxhash.xxh3_128()
    recipe = {"version": STEP_VERSIONS["folder"], "out": str(Path(out).resolve()), "settings": settings,
              "writers": _writers_digest()}
    digest.update(json.dumps(recipe, default=str).encode())
    for frame in frames:
        # Row hashes, not the frame's bytes: the same strings can sit in differently laid out buffers. (They change
        # with the polars version, which is part of the key.)
        digest.update(str(frame.schema).encode())
        for seed in (0, 1):  # 128 bits per row
            digest.update(frame.hash_rows(seed=seed).to_numpy().tobytes())
    return digest.hexdigest()


@functools.cache
def _writers_digest() -> str:
    """XXH3-128 of this package's code and templates, Python's version and every installed distribution's version."""
    digest = xxhash.xxh3_128(sys.version.encode())
    for path in _code_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for distribution in _installed_distributions():
        digest.update(distribution.encode())
    return digest.hexdigest()


def _installed_distributions() -> list[str]:
    """The installed distributions' metadata folder names, which are `{name}-{version}.dist-info` (or .egg-info) by
    the packaging spec: their names and versions, without parsing each one's METADATA (which took 50-250 ms).

    Not from sys.path[0], the script's folder or the working directory (unless Python runs with -P): a build run from
    a source checkout would otherwise count its `*.egg-info` and keep no folder written from anywhere else."""
    installed = sys.path if getattr(sys.flags, "safe_path", False) else sys.path[1:]  # -P: Python 3.11 and later
    return sorted({path.name for entry in installed if os.path.isdir(entry) for path in Path(entry).iterdir()
                   if path.suffix in (".dist-info", ".egg-info")})


def _code_files() -> list[Path]:
    """The package's modules and card templates, wherever they are installed (an editable install maps
    zhihu_rlhf.pipelines and zhihu_rlhf.data_cards to folders of their own)."""
    files: list[Path] = []
    for package in _PACKAGES:
        folder = Path(importlib.util.find_spec(package).origin).parent
        files += sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".md") and "__pycache__" not in p.parts)
    return files


def _folder_files(folder: Path) -> dict[str, tuple[int, str]]:
    """{path relative to `folder`: (size, digest)} of every file under it."""
    return {str(path.relative_to(folder)): (path.stat().st_size, _digest(path))
            for path in sorted(folder.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------------------------------------
# `python -m zhihu_rlhf.build cache info|clear`


def describe(cache: StepCache) -> str:
    entries = cache.entries()
    if not entries:
        return f"{cache.folder}: no cache entries"
    lines = [f"{cache.folder}: {len(entries)} entries, {_gib(sum(e.size_bytes for e in entries))}"
             + (f" (bound {_gib(cache.max_bytes)})" if cache.max_bytes else ""),
             f"{'step':<8} {'key':<12} {'rows':>10} {'size':>10}  {'last used':<19}  source"]
    for entry in reversed(entries):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used)) if entry.last_used else "-"
        lines.append(f"{entry.step:<8} {entry.key[:12]:<12} {entry.rows:>10,} {_gib(entry.size_bytes):>10}  {used:<19}  "
                     f"{entry.source}")
    return "\n".join(lines)


def check_max_gb(max_gb: float) -> None:
    if not max_gb >= 0:
        raise UserError(f"--cache-max-gb must be 0 (no bound) or a positive size in GB, got {max_gb}")


def _manifest_problem(manifest: object, step: str, key: str, table: bytes, rows: int | None) -> str | None:
    """What makes an entry untrustworthy, or None. `table`: the bytes of its table (its files apart are checked when
    read ahead)."""
    if not isinstance(manifest, dict) or manifest.get("format") != ENTRY_FORMAT:
        return "of an unknown format"
    if manifest.get("step") != step or manifest.get("key") != key or manifest.get("version") != STEP_VERSIONS[step]:
        return "for another step, key or version"
    table_record = {"bytes": manifest.get("table_bytes"), "xxh3_128": manifest.get("table_xxh3_128")}
    if problem := _content_problem(table_record, len(table), xxhash.xxh3_128_hexdigest(table)):
        return problem
    if rows is not None and manifest.get("rows") != rows:
        return "for a table of another length"
    if not isinstance(manifest.get("stats"), dict):
        return "missing its stats"
    return None


def _file_record(path: Path) -> dict:
    """What the manifest records of a file it checks later."""
    return {"bytes": path.stat().st_size, "xxh3_128": _digest(path)}


def _content_problem(record: object, size: int, digest: str) -> str | None:
    """Whether a file's size and digest are not those recorded (`_file_record`)."""
    if not isinstance(record, dict) or record.get("bytes") != size or record.get("xxh3_128") != digest:
        return "truncated or corrupt (size or digest differs)"
    return None


def _digest(path: Path) -> str:
    """XXH3-128 of a file's bytes. Its job is to catch accidents (a torn write, a flipped bit), not forgeries, and
    a 128-bit XXH3 misses an accidental change no more often than SHA-256 would; it ran at 11 GB/s here where SHA-256
    ran at 0.8 GB/s, most of the check on a 0.6 GB entry (benchmarks/RESULTS.md)."""
    with path.open("rb") as file:
        return _digest_open(file)


def _digest_open(file: BinaryIO) -> str:
    """`_digest` of an open file, read where it lies (mapped, not copied)."""
    if os.fstat(file.fileno()).st_size == 0:  # mmap refuses an empty file
        return xxhash.xxh3_128_hexdigest(b"")
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return xxhash.xxh3_128_hexdigest(data)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**28 else f"{size / 2**20:.1f} MiB"
