"""The step cache: a rebuild with any option changed is byte-identical to a build without the cache, reuses exactly
the steps whose inputs did not change, and never trusts an entry that is truncated, corrupt, foreign or half-written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from zhihu_rlhf import cache as step_cache
from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.cache import STEP_VERSIONS, TEXTS_FILE, StepCache
from zhihu_rlhf.dedupe import DedupeOptions
from zhihu_rlhf.instruct import InstructOptions, LengthFilter, select_instruct
from zhihu_rlhf.pairs import PairOptions
from zhihu_rlhf.pipelines.answers import prepare_answers
from zhihu_rlhf.sources import CANONICAL_SCHEMA, CANONICAL_TEXT_COLUMNS, load_answers, texts_of
from zhihu_rlhf.votes import VoteModelOptions

STEPS = ("answers", "dedupe", "votes", "instruct")


def _build(tmp_path: Path, name: str, cache_dir: Path | None, **changes) -> tuple[Path, list[str]]:
    lines: list[str] = []
    options = BuildOptions(source="sample", out=tmp_path / name, use_cache=cache_dir is not None,
                           cache_dir=cache_dir, **changes)
    build("all", options, log=lines.append)
    return options.out, lines


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _origin(lines: list[str]) -> dict[str, str]:
    """{step: "cache" | "computed"} from the build's progress lines."""
    return {line.split(":")[0].strip(): "cache" if "from the cache" in line else "computed"
            for line in lines if line.strip().split(":")[0] in STEPS}


@pytest.mark.parametrize(
    ("changes", "recomputed"),
    [
        ({"pairs": PairOptions(min_ratio=3.0, max_days_apart=14.0)}, set()),
        ({"formats": ["trl", "llamafactory"], "test_fraction": 0.1}, set()),
        ({"instruct": InstructOptions(limit=40, min_upvotes=3)}, {"instruct"}),
        ({"lengths": LengthFilter(min_answer_chars=60)}, {"instruct"}),
        ({"votes": VoteModelOptions(model="authors", author_share=0.5)}, {"votes", "instruct"}),
        ({"dedupe": DedupeOptions(mode="exact")}, {"dedupe", "votes", "instruct"}),
    ],
)
def test_rebuild_reuses_unchanged_steps_and_is_byte_identical(tmp_path: Path, changes: dict, recomputed: set) -> None:
    cache_dir = tmp_path / "cache"
    _, first = _build(tmp_path, "first", cache_dir)
    assert _origin(first) == dict.fromkeys(STEPS, "computed")

    # into the first build's folder, as a user iterating does: each set is kept or written again
    cached, lines = _build(tmp_path, "first", cache_dir, **changes)
    uncached, _ = _build(tmp_path, "uncached", None, **changes)
    assert _origin(lines) == {step: "computed" if step in recomputed else "cache" for step in STEPS}
    assert _files(cached) == _files(uncached)


def test_a_rebuild_keeps_a_set_folder_whose_inputs_did_not_change(tmp_path: Path) -> None:
    cache_dir, pair_change = tmp_path / "cache", {"pairs": PairOptions(min_ratio=3.0, max_days_apart=14.0)}
    out, _ = _build(tmp_path, "out", cache_dir)
    card = out / "instruct" / "README.md"
    first_card = card.stat().st_ino
    uncached, _ = _build(tmp_path, "uncached", None, **pair_change)

    _, lines = _build(tmp_path, "out", cache_dir, **pair_change)
    assert [line.split(":")[0].strip() for line in lines if "unchanged" in line] == ["instruct set"]
    assert card.stat().st_ino == first_card  # not written again
    assert _files(out) == _files(uncached)

    _, lines = _build(tmp_path, "out", cache_dir, **pair_change)  # the same command again
    assert [line.split(":")[0].strip() for line in lines if "unchanged" in line] == ["instruct set", "pairs set"]

    # A folder the user edited, added to or removed is written again, whole.
    for touch in (lambda: (out / "instruct" / "stats.json").write_text("{}"),
                  lambda: (out / "instruct" / "plots" / "mine.png").write_bytes(b""),
                  lambda: shutil.rmtree(out / "instruct")):
        touch()
        _, lines = _build(tmp_path, "out", cache_dir, **pair_change)
        assert [line.split(":")[0].strip() for line in lines if "unchanged" in line] == ["pairs set"]
        assert _files(out) == _files(uncached)


def test_a_changed_source_file_is_read_again(tmp_path: Path) -> None:
    source = tmp_path / "answers.parquet"
    table = pl.read_parquet(Path(step_cache.__file__).parent / "data" / "sample.parquet")
    table.write_parquet(source)
    options = BuildOptions(source=str(source), out=tmp_path / "out", cache_dir=tmp_path / "cache")
    build("pairs", options, log=lambda _: None)

    table.head(table.height - 50).write_parquet(source)  # the user re-exported a smaller dump over the same name
    lines: list[str] = []
    out = build("pairs", replace(options, out=tmp_path / "again"), log=lines.append)["pairs"]
    fresh = build("pairs", replace(options, out=tmp_path / "fresh", use_cache=False), log=lambda _: None)["pairs"]
    assert _origin(lines)["answers"] == "computed"
    assert _files(out) == _files(fresh)


def _entry(cache_dir: Path, step: str) -> Path:
    (folder,) = [p for p in cache_dir.iterdir() if p.name.startswith(f"{step}-")]
    return folder


def _cut(entry: Path, name: str = "table.parquet") -> None:
    (entry / name).write_bytes((entry / name).read_bytes()[:-100])


def _flip_one_byte(entry: Path, name: str = "table.parquet") -> None:
    data = bytearray((entry / name).read_bytes())
    data[len(data) // 2] ^= 1
    (entry / name).write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("step", "damage"),
    [
        ("answers", _cut),
        ("answers", _flip_one_byte),
        ("answers", lambda entry: _cut(entry, TEXTS_FILE)),
        ("answers", lambda entry: _flip_one_byte(entry, TEXTS_FILE)),
        ("answers", lambda entry: (entry / TEXTS_FILE).unlink()),
        ("votes", _flip_one_byte),
        ("dedupe", lambda entry: (entry / "manifest.json").write_text("{not json")),
        ("votes", lambda entry: (entry / "manifest.json").unlink()),
        ("instruct", _flip_one_byte),
    ],
    ids=["truncated", "answers-flipped-byte", "texts-truncated", "texts-flipped-byte", "texts-missing", "flipped-byte", "bad-manifest", "no-manifest", "instruct-flipped-byte"],
)
def test_a_damaged_entry_is_recomputed_with_one_warning(tmp_path: Path, step: str, damage) -> None:
    cache_dir = tmp_path / "cache"
    reference, _ = _build(tmp_path, "first", cache_dir)
    damage(_entry(cache_dir, step))
    out, lines = _build(tmp_path, "again", cache_dir)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and f"recomputing {step}" in warnings[0]
    assert _origin(lines)[step] == "computed"
    assert _files(out) == _files(reference)
    _, third = _build(tmp_path, "third", cache_dir)  # the recomputed entry was stored again, whole
    assert _origin(third) == dict.fromkeys(STEPS, "cache")


def test_a_table_read_undecoded_gives_each_asked_row_its_own_texts(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _build(tmp_path, "first", cache_dir)
    step, key = _entry(cache_dir, "answers").name.split("-", 1)
    table, stats, texts = StepCache(cache_dir, 0, warn=print).load(step, key, undecoded=True)
    shutil.rmtree(_entry(cache_dir, "answers"))  # another build evicts the entry before the texts are read
    answers, source_stats = load_answers("sample")
    assert stats == source_stats and table.equals(answers.drop(CANONICAL_TEXT_COLUMNS))
    asked = answers["answer_id"].sample(50, seed=1)  # in another order than the table's
    got = texts_of(texts, asked).sort("answer_id")
    assert got.equals(answers.filter(pl.col("answer_id").is_in(asked.implode())).select("answer_id", *CANONICAL_TEXT_COLUMNS)
                      .sort("answer_id"))


def test_a_foreign_entry_under_a_key_is_not_used(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _build(tmp_path, "first", cache_dir, votes=VoteModelOptions(model="raw"))
    reference, _ = _build(tmp_path, "reference", None)
    default_votes = _build(tmp_path, "probe", tmp_path / "probe-cache")[0]  # learn the default options' votes key
    wanted = _entry(tmp_path / "probe-cache", "votes").name
    shutil.copytree(_entry(cache_dir, "votes"), cache_dir / wanted)  # the raw model's columns under the full model's key
    out, lines = _build(tmp_path, "again", cache_dir)
    assert any("for another step, key or version" in line for line in lines)
    assert _files(out) == _files(reference) == _files(default_votes)


def test_a_build_killed_while_storing_leaves_nothing_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    real_write = step_cache._write_file

    def dies_before_the_manifest(path: Path, data: bytes) -> None:
        if path.name == "manifest.json":  # the table is written by now
            raise KeyboardInterrupt  # what a kill looks like from inside: nothing after this line runs
        real_write(path, data)

    monkeypatch.setattr(step_cache, "_write_file", dies_before_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, "killed", cache_dir)
    monkeypatch.undo()
    assert not [p for p in cache_dir.iterdir() if not p.name.startswith(".tmp-")]

    # A real kill skips the clean-up too: a temporary folder with a complete-looking entry inside is never read.
    (cache_dir / ".tmp-answers-0-dead").mkdir()
    _, lines = _build(tmp_path, "after", cache_dir)
    assert _origin(lines) == dict.fromkeys(STEPS, "computed")
    assert StepCache(cache_dir, 0, print).entries() and all(e.step in (*STEPS, "folder") for e in StepCache(cache_dir, 0, print).entries())


def test_two_builds_at_once_share_the_cache(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "ZHIHU_RLHF_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "zhihu_rlhf.build", "all", "--source", "sample", "--out"]
    runs = [subprocess.Popen([*command, str(tmp_path / f"out{i}")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    assert _files(tmp_path / "out0") == _files(tmp_path / "out1")
    entries = StepCache(cache_dir, 0, print).entries()
    steps = [e.step for e in entries]
    assert sorted(s for s in steps if s != "folder") == sorted(STEPS), "one entry per step, whichever build stored it"
    assert steps.count("folder") == 4  # the two folders each build wrote
    assert not list(cache_dir.glob(".tmp-*"))
    _, lines = _build(tmp_path, "third", cache_dir)
    assert _origin(lines) == dict.fromkeys(STEPS, "cache")


def test_least_recently_used_entries_are_evicted_first(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _build(tmp_path, "a", cache_dir, votes=VoteModelOptions(luck_sd=0.25))
    old_votes = _entry(cache_dir, "votes")
    os.utime(old_votes / "manifest.json", (1, 1))  # used long ago
    sizes = {e.folder.name: e.size_bytes for e in StepCache(cache_dir, 0, print).entries()}
    # room for everything stored so far plus about half a votes entry: a second votes entry fits only once the old
    # one, used longest ago, is gone
    bound_gb = (sum(sizes.values()) + sizes[old_votes.name] // 2) / 1e9
    _, lines = _build(tmp_path, "b", cache_dir, votes=VoteModelOptions(luck_sd=0.35), cache_max_gb=bound_gb)
    assert _origin(lines) == {"answers": "cache", "dedupe": "cache", "votes": "computed", "instruct": "computed"}
    assert not old_votes.exists()
    assert {e.step for e in StepCache(cache_dir, 0, print).entries()} == {*STEPS, "folder"}


def test_no_cache_writes_nothing(tmp_path: Path) -> None:
    _, lines = _build(tmp_path, "out", None)
    assert _origin(lines) == dict.fromkeys(STEPS, "computed")
    assert not Path(os.environ["ZHIHU_RLHF_CACHE"]).exists() or not any(Path(os.environ["ZHIHU_RLHF_CACHE"]).iterdir())


def test_cache_cli_info_and_clear(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zhihu_rlhf.build", *args], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "ZHIHU_RLHF_CACHE": str(tmp_path / "cache")})

    assert "no cache entries" in cli("cache", "info").stdout
    built = cli("pairs", "--source", "sample", "--out", "out")
    assert built.returncode == 0, built.stderr
    assert "answers: computed" in built.stderr
    info = cli("cache", "info").stdout.splitlines()
    assert info[0].startswith(f"{tmp_path / 'cache'}: 4 entries")
    # no instruct set built; the pairs folder written is recorded
    assert sorted(line.split()[0] for line in info[2:]) == ["answers", "dedupe", "folder", "votes"]
    again = cli("pairs", "--source", "sample", "--out", "out2", "--min-ratio", "3")
    assert "votes: from the cache" in again.stderr
    assert "removed" in cli("cache", "clear").stdout
    assert "no cache entries" in cli("cache", "info").stdout
    bad = cli("pairs", "--source", "sample", "--out", "out3", "--cache-max-gb", "-1")
    assert bad.returncode == 2 and "--cache-max-gb" in bad.stderr and not (tmp_path / "out3").exists()


def test_cache_options_are_not_part_of_the_recipe(tmp_path: Path) -> None:
    cached, _ = _build(tmp_path, "cached", tmp_path / "cache", cache_max_gb=1.0)
    uncached, _ = _build(tmp_path, "uncached", None)
    params = json.loads((cached / "pairs" / "params.json").read_text())["params"]
    assert not {"use_cache", "cache_dir", "cache_max_gb"} & set(params)
    assert _files(cached) == _files(uncached)


# ---------------------------------------------------------------------------------------------
# A step's version must change when its output does, or users would get a stale entry.
#
# What each step gives on the sample is recorded in tests/step_outputs/: STEP.json holds the version it was recorded at,
# a digest of every column but the floats, and the stats; STEP.parquet the float columns. Floats are compared within
# FLOAT_TOLERANCE, not to the last bit: the vote model's fit differs in the fifth digit from one CPU to another
# (OpenBLAS picks its kernels by CPU; on the sample, its Haswell and Sandybridge kernels differ by up to 2e-5), so a
# digest of rounded floats changed with the machine the tests ran on, while a change of the code moves them far more.

RECORDED = Path(__file__).with_name("step_outputs")
FLOAT_TOLERANCE = 1e-3  # absolute and relative


def _step_outputs() -> dict[str, tuple[pl.DataFrame, dict]]:
    answers, stats = prepare_answers("sample", DedupeOptions(), VoteModelOptions())
    instruct_rows, instruct_dropped = select_instruct(answers, InstructOptions(), LengthFilter())
    dedupe_stats, vote_stats = stats.pop("dedupe"), stats.pop("vote_model")
    stats.pop("answers_per_question")
    canonical, deduped = [*CANONICAL_SCHEMA, "answer_chars"], ["question_group", "answer_cluster"]
    return {
        "answers": (answers.select(canonical), stats),
        "dedupe": (answers.select(deduped), dedupe_stats),
        "votes": (answers.drop(canonical, *deduped), vote_stats),
        # Its order (by p_best_in_question) is decided by near-equal floats, float noise too: compared by answer.
        "instruct": (instruct_rows.sort("answer_id"), {"rows_dropped": instruct_dropped}),
    }


def _exact_and_floats(table: pl.DataFrame) -> tuple[str, pl.DataFrame]:
    """(digest of the columns that are not floats, in row order; the float columns)."""
    floats = [name for name, dtype in table.schema.items() if dtype.is_float()]
    others = [name for name in table.columns if name not in floats]
    digest = hashlib.blake2b(table.select(others).write_csv().encode(), digest_size=16).hexdigest()
    return digest, table.select(floats)


def _json(stats: dict) -> dict:
    return json.loads(json.dumps(stats, sort_keys=True, default=str))


def _close(recorded, now) -> bool:
    """JSON values equal, floats within FLOAT_TOLERANCE (NaN equal to NaN)."""
    if isinstance(recorded, float) or isinstance(now, float):
        if not (isinstance(recorded, float | int) and isinstance(now, float | int)):
            return False
        if math.isnan(recorded) or math.isnan(now):
            return math.isnan(recorded) and math.isnan(now)
        return abs(recorded - now) <= FLOAT_TOLERANCE * max(1.0, abs(recorded))
    if isinstance(recorded, dict):
        return isinstance(now, dict) and recorded.keys() == now.keys() and all(_close(recorded[k], now[k]) for k in recorded)
    if isinstance(recorded, list):
        return isinstance(now, list) and len(recorded) == len(now) and all(map(_close, recorded, now))
    return recorded == now


def _what_changed(recorded: dict, recorded_floats: pl.DataFrame, table: pl.DataFrame, stats: dict) -> list[str]:
    digest, floats = _exact_and_floats(table)
    changed = [] if digest == recorded["digest"] else ["the columns that are not floats"]
    if floats.schema != recorded_floats.schema or floats.height != recorded_floats.height:
        changed.append("the float columns' names, types or rows")
    else:
        for name in floats.columns:
            now, then = floats[name], recorded_floats[name]
            close = ((now - then).abs() <= FLOAT_TOLERANCE * then.abs().clip(1.0)) | (now.is_nan() & then.is_nan())
            if not now.is_null().equals(then.is_null()) or not close.drop_nulls().all():
                changed.append(f"{name}, beyond {FLOAT_TOLERANCE:g}")
    if not _close(recorded["stats"], _json(stats)):
        changed.append("the stats")
    return changed


def _recorded(step: str) -> tuple[dict, pl.DataFrame]:
    if not (RECORDED / f"{step}.json").exists():  # a new step: nothing recorded yet
        return {"version": None}, pl.DataFrame()
    return json.loads((RECORDED / f"{step}.json").read_text()), pl.read_parquet(RECORDED / f"{step}.parquet")


def record_step_outputs(steps: list[str]) -> None:
    """Record what `steps` give on the sample now, at their current STEP_VERSIONS."""
    outputs = _step_outputs()
    RECORDED.mkdir(exist_ok=True)
    for step in steps:
        table, stats = outputs[step]
        digest, floats = _exact_and_floats(table)
        record = {"version": STEP_VERSIONS[step], "digest": digest, "stats": _json(stats)}
        (RECORDED / f"{step}.json").write_text(json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        floats.write_parquet(RECORDED / f"{step}.parquet", compression="zstd", compression_level=19, statistics=False)


def test_a_step_whose_output_changed_has_a_new_version() -> None:
    for step, (table, stats) in _step_outputs().items():
        recorded, recorded_floats = _recorded(step)
        record_it = f"python tests/test_cache.py record {step}"
        if recorded["version"] != STEP_VERSIONS[step]:
            pytest.fail(f"STEP_VERSIONS[{step!r}] changed: record the new output with {record_it}")
        changed = _what_changed(recorded, recorded_floats, table, stats)
        assert not changed, (
            f"the {step} step's output on the sample changed ({'; '.join(changed)}) but STEP_VERSIONS[{step!r}] did "
            f"not: cached entries of the old output would be reused. Bump it in zhihu_rlhf/cache.py, then {record_it}")


def test_float_noise_is_not_a_change_of_output_and_a_real_change_is() -> None:
    recorded, floats = _recorded("votes")
    table, stats = floats, recorded["stats"]
    assert _what_changed(recorded, floats, table, stats) == []
    noisy = table.with_columns(pl.col("estimated_quality") * (1 + 2e-5) + 2e-5)  # more than two CPUs differ by
    assert _what_changed(recorded, floats, noisy, {**stats, "quality_sd": stats["quality_sd"] + 1e-4}) == []
    moved = table.with_columns(pl.col("estimated_quality").shift(-1, fill_value=0.0).alias("estimated_quality"))
    assert _what_changed(recorded, floats, moved, stats) == ["estimated_quality, beyond 0.001"]
    one_row = table.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.col("quality_sd") * 1.01)
                                 .otherwise(pl.col("quality_sd")).alias("quality_sd"))
    assert _what_changed(recorded, floats, one_row, stats) == ["quality_sd, beyond 0.001"]
    assert _what_changed(recorded, floats, table, {**stats, "iterations": stats["iterations"] + 1}) == ["the stats"]
    assert _close({"sd": math.nan}, {"sd": math.nan}) and not _close({"sd": math.nan}, {"sd": 1.0})
    assert not _close({"sd": None}, {"sd": 1.0}) and not _close({"sd": 1.0}, {"sd": "1.0"})
    nan_row = pl.when(pl.int_range(pl.len()) == 3).then(float("nan")).otherwise(pl.col("author_effect"))
    with_nan = table.with_columns(nan_row.alias("author_effect"))
    assert _what_changed(recorded, with_nan, with_nan, stats) == []
    assert _what_changed(recorded, floats, with_nan, stats) == ["author_effect, beyond 0.001"]
    instruct, instruct_floats = _recorded("instruct")
    assert _what_changed(instruct, instruct_floats, table, recorded["stats"]) == [
        "the columns that are not floats", "the float columns' names, types or rows", "the stats"]


def test_changed_writing_code_means_the_folder_is_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept folder must be what today's code writes: the package's modules and card template are part of its key."""
    from zhihu_rlhf import cache as cache_module, cards

    code = {path.name for path in cache_module._code_files()}
    assert {cards.TEMPLATE, "cards.py", "export.py", "schema.py"} <= code

    template = tmp_path / "dataset_card.md"
    template.write_text("# {{ pretty_name }}\n")
    monkeypatch.setattr(cache_module, "_code_files", lambda: [template])
    frame = pl.DataFrame({"prompt": ["问"], "response": ["答"]})

    def key() -> str:
        cache_module._writers_digest.cache_clear()
        return cache_module.folder_key(tmp_path / "out", [frame], {"kind": "instruct"})

    before = key()
    assert key() == before
    template.write_text("# {{ pretty_name }}\n\nA new section.\n")
    assert key() != before
    cache_module._writers_digest.cache_clear()  # the next test sees the real files again


def test_the_writing_code_key_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    """A source checkout holds `<name>.egg-info`: running the build from it or from anywhere else must give the same
    folder key, or a rebuild from another folder writes every set again."""
    checkout = tmp_path / "checkout"
    (checkout / "zhihu_rlhf.egg-info").mkdir(parents=True)
    (checkout / "other-1.0.dist-info").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    digests = set()
    for folder in (checkout, elsewhere):
        # run as a script, so that sys.path[0] is its folder, as `python -m` puts the working directory there
        script = folder / "show_digest.py"
        script.write_text("from zhihu_rlhf.cache import _writers_digest\nprint(_writers_digest())\n")
        digests.add(subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True,
                                   check=True).stdout)
    assert len(digests) == 1


if __name__ == "__main__":  # python tests/test_cache.py record STEP...: what the failing version test asks for
    if sys.argv[1:2] != ["record"] or not set(sys.argv[2:]) <= set(STEPS):
        raise SystemExit(f"usage: python tests/test_cache.py record STEP... (steps: {', '.join(STEPS)})")
    record_step_outputs(sys.argv[2:] or list(STEPS))
