"""The builder end to end: on the embedded sample and on synthetic data, through the library and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest

from zhihu_rlhf import publish, synth
from zhihu_rlhf.build import BuildOptions, build, main
from zhihu_rlhf.errors import cli_main
from zhihu_rlhf.pairs import PairOptions
from zhihu_rlhf.train.__main__ import COMMANDS as TRAIN_COMMANDS
from zhihu_rlhf.train.__main__ import main as train_main


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build("all", BuildOptions(source="sample", out=tmp_path_factory.mktemp("out")), log=lambda _: None)


def _read(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (pl.read_parquet(folder / "data" / "train-00000-of-00001.parquet"),
            pl.read_parquet(folder / "data" / "test-00000-of-00001.parquet"))


def test_sample_builds_both_sets_that_load_with_datasets(built: dict[str, Path]) -> None:
    for name, columns in (
        ("instruct", ["question_id", "answer_id", "prompt", "completion", "upvotes", "created_at"]),
        ("pairs", ["question_id", "prompt", "chosen", "rejected", "chosen_answer_id", "rejected_answer_id",
                   "chosen_upvotes", "rejected_upvotes", "chosen_created_at", "rejected_created_at", "upvote_ratio"]),
    ):
        folder = built[name]
        loaded = datasets.load_dataset(str(folder))
        assert set(loaded) == {"train", "test"}
        assert loaded["train"].num_rows > 0 and loaded["test"].num_rows > 0
        assert set(columns) <= set(loaded["train"].column_names)
        assert not any("author" in c for c in loaded["train"].column_names), "author ids are dropped by default"


@pytest.mark.parametrize("name", ["instruct", "pairs"])
def test_stats_account_for_every_row(built: dict[str, Path], name: str) -> None:
    stats = json.loads((built[name] / "stats.json").read_text())
    assert stats["rows_in"] == stats["rows_kept"] + sum(stats["rows_dropped"].values())
    train, test = _read(built[name])
    assert stats["splits"] == {"train": train.height, "test": test.height}
    # the embedded sample carries planted malformed rows; they are dropped and named
    assert stats["rows_dropped"]["invalid_metadata_json"] > 0


def test_pairs_obey_every_rule(built: dict[str, Path]) -> None:
    pairs = pl.concat(_read(built["pairs"]))
    rules = PairOptions()
    assert pairs.height > 50
    assert (pairs["chosen_upvotes"] >= rules.min_ratio * pairs["rejected_upvotes"]).all()
    assert (pairs["chosen_upvotes"] >= rules.min_chosen_upvotes).all()
    gap_days = (pairs["chosen_created_at"] - pairs["rejected_created_at"]).dt.total_seconds().abs() / 86400
    assert (gap_days <= rules.max_days_apart).all()
    used = pl.concat([pairs["chosen_answer_id"], pairs["rejected_answer_id"]])
    assert used.n_unique() == used.len(), "a response appears in two pairs"
    texts = pl.concat([pairs["chosen"], pairs["rejected"]])
    assert texts.n_unique() == texts.len(), "the same text appears twice"
    assert (pairs["chosen"] != pairs["rejected"]).all()
    funnel = json.loads((built["pairs"] / "stats.json").read_text())["funnel"]
    assert funnel[-1]["left"] == pairs.height
    # The sample's matching leaves pairs the vote model doubts; none is published, and the card counts them.
    assert (pairs["p_chosen_better"] >= rules.min_p_chosen_better).all()
    doubted = next(step for step in funnel if step["rule"] == "min_p_chosen_better")
    assert doubted["removed"] > 0
    card = (built["pairs"] / "README.md").read_text(encoding="utf-8")
    assert f"| min_p_chosen_better | {doubted['description']} | {doubted['removed']:,} | {doubted['left']:,} |" in card
    assert "fewer pairs, each more surely right" in card


def test_no_published_text_keeps_a_nbsp_and_the_cards_say_what_became_of_it(built: dict[str, Path]) -> None:
    # The sample's answers carry NBSP (raw and as &nbsp;), many between two Han characters.
    for name, columns in (("instruct", ["prompt", "completion"]), ("pairs", ["prompt", "chosen", "rejected"])):
        rows = pl.concat(_read(built[name]))
        for column in columns:
            assert not rows[column].str.contains("\u00a0", literal=True).any(), (name, column)
        card = " ".join((built[name] / "README.md").read_text(encoding="utf-8").split())
        assert ("no-break space removed between two CJK characters or a CJK character and CJK punctuation and made a "
                "plain space elsewhere") in card


def test_instruct_is_one_answer_per_question_and_no_question_in_both_splits(built: dict[str, Path]) -> None:
    train, test = _read(built["instruct"])
    rows = pl.concat([train, test])
    assert rows["question_id"].n_unique() == rows.height
    assert rows["completion"].n_unique() == rows.height
    assert set(train["prompt"]).isdisjoint(test["prompt"])
    pairs_train, pairs_test = _read(built["pairs"])
    assert set(pairs_train["prompt"]).isdisjoint(pairs_test["prompt"])


def test_same_input_gives_byte_identical_parquet(built: dict[str, Path], tmp_path: Path) -> None:
    again = build("all", BuildOptions(source="sample", out=tmp_path), log=lambda _: None)
    for name in ("instruct", "pairs"):
        for split in ("train", "test"):
            file = Path("data") / f"{split}-00000-of-00001.parquet"
            assert (built[name] / file).read_bytes() == (again[name] / file).read_bytes()


def test_synthetic_truth_chosen_mostly_better(tmp_path: Path) -> None:
    data, truth = synth.write(30_000, tmp_path / "synth.parquet", seed=3)
    out = build("pairs", BuildOptions(source=str(data), out=tmp_path / "pairs"), log=lambda _: None)["pairs"]
    pairs = pl.concat(_read(out))
    quality = pl.read_parquet(truth).select("answer_id", "quality")
    scored = pairs.join(quality.rename({"answer_id": "chosen_answer_id", "quality": "qc"}), on="chosen_answer_id").join(
        quality.rename({"answer_id": "rejected_answer_id", "quality": "qr"}), on="rejected_answer_id"
    )
    assert scored.height == pairs.height > 100
    assert (scored["qc"] > scored["qr"]).mean() > 0.8


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhihu_rlhf.build", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "missing.parquet"], "missing.parquet: no such file"),
        (["--source", "notes.txt"], "unsupported file type"),
        (["--source", "fake.parquet"], "not a readable parquet"),
        (["--source", "sample", "--format", "bogus"], "bogus"),
        (["--source", "sample", "--test-fraction", "1.5"], "--test-fraction"),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_no_output(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.parquet").write_text("not parquet at all")
    result = _cli("pairs", *args, "--out", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()


# Each value BuildOptions.validate() refuses, as a flag: (command and flags, what the one line names).
BAD_OPTIONS = [
    (["pairs", "--test-fraction", "1.5"], "--test-fraction must be in [0, 1), got 1.5"),
    (["pairs", "--test-fraction", "-0.1"], "--test-fraction must be in [0, 1), got -0.1"),
    (["pairs", "--format", "trl,alpaca"], "unknown export format 'alpaca'"),
    (["pairs", "--answer-threshold", "150"], "--answer-threshold must be a rapidfuzz score in [0, 100], got 150.0"),
    (["pairs", "--min-answer-chars", "-1"], "--min-answer-chars and --max-answer-chars must satisfy 0 <= min <= max"),
    (["instruct", "--min-answer-chars", "500", "--max-answer-chars", "100"], "got 500 and 100"),
    (["instruct", "--limit", "-1"], "instruct --limit (--instruct-limit with `all`) must be 0 (all) or more, got -1"),
    (["all", "--pairs-limit", "-5"], "pairs --limit (--pairs-limit with `all`) must be 0 (all) or more, got -5"),
    (["pairs", "--max-days-apart", "-1"], "--max-days-apart must be a number of days >= 0 (inf: no time rule), got -1.0"),
    (["pairs", "--max-days-apart", "nan"], "--max-days-apart must be a number of days >= 0 (inf: no time rule), got nan"),
    (["pairs", "--min-p-chosen-better", "1.5"], "--min-p-chosen-better must be a probability in [0, 1], got 1.5"),
    (["pairs", "--max-pairs-per-question", "0"], "--max-pairs-per-question must be at least 1, got 0"),
    (["pairs", "--cache-max-gb", "-1"], "--cache-max-gb must be 0 (no bound) or a positive size in GB, got -1.0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS)
def test_each_bad_option_is_refused_with_one_line_before_anything_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    # The source does not exist: the option is refused before the source is looked at.
    with pytest.raises(SystemExit) as done:
        cli_main(main, [*args, "--source", "nothing.parquet", "--out", "out", "--cache-dir", "cache"])
    assert done.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == [], "no output, no cache"


def test_failed_build_keeps_the_previous_output(tmp_path: Path) -> None:
    good = _cli("pairs", "--source", "sample", "--out", "out", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    bad = _cli("pairs", "--source", "nothing.parquet", "--out", "out", cwd=tmp_path)
    assert bad.returncode == 2
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name != "out"] == [], "no temporary folder left behind"


def test_help_documents_every_option_with_its_default(tmp_path: Path) -> None:
    result = _cli("pairs", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in (("--max-days-apart", "30.0"), ("--min-ratio", "2.0"), ("--limit", "3000"),
                          ("--source", "wangrui6/Zhihu-KOL"), ("--test-fraction", "0.05"), ("--dedupe", "near"),
                          ("--min-p-chosen-better", "0.5")):
        assert flag in text
        assert f"default: {default}" in text.split(flag, 2)[-1].split(" --", 1)[0]
    assert "fewer pairs, each more surely right" in text.split("--min-p-chosen-better", 2)[-1]


def test_recipe_params_do_not_depend_on_the_output_folder(built: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = build("pairs", BuildOptions(source="sample", out=tmp_path / "somewhere" / "else"), log=lambda _: None)["pairs"]
    for name in ("params.json", "README.md", "stats.json"):
        assert (elsewhere / name).read_bytes() == (built["pairs"] / name).read_bytes(), name
    params = json.loads((built["pairs"] / "params.json").read_text())["params"]
    assert "pairs" in params and "instruct" not in params and "out" not in params
    assert "instruct" in json.loads((built["instruct"] / "params.json").read_text())["params"]


# This project's own issue numbers mean nothing to a reader of a card, the README or --help.
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
README = Path(__file__).resolve().parents[1] / "README.md"


def test_cards_and_readme_name_no_issue_number(built: dict[str, Path]) -> None:
    for text, where in [((folder / "README.md").read_text(encoding="utf-8"), name) for name, folder in built.items()] + [
        (README.read_text(encoding="utf-8"), "README.md")
    ]:
        assert "## Vote model" in text or where == "README.md"  # the section that once carried such a note
        assert not ISSUE_NUMBER.search(text), (where, ISSUE_NUMBER.findall(text))


@pytest.mark.parametrize(
    ("entry", "argv"),
    [(main, [what, "--help"]) for what in ("instruct", "pairs", "all")]
    + [(publish.main, ["--help"])]
    + [(train_main, [command, "--help"]) for command in TRAIN_COMMANDS],
)
def test_help_names_no_issue_number(entry, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        entry(argv)
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--" in text and not ISSUE_NUMBER.search(text), argv
