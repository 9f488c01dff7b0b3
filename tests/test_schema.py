"""zhihu_rlhf.schema is what every writer and reader of a built set uses: the selections, the files, the card, the
trainers; and the length filter is one option for both sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from test_export import pairs_frames
from zhihu_rlhf import export, schema
from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.instruct import LengthFilter
from zhihu_rlhf.train.data import load_split

KINDS = ("instruct", "pairs")
LENGTHS = LengthFilter(min_answer_chars=60, max_answer_chars=3000)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    options = BuildOptions(source="sample", out=tmp_path_factory.mktemp("schema"), keep_author_ids=True,
                           formats=list(export.FORMATS), lengths=LENGTHS, use_cache=False)
    return build("all", options, log=lambda _: None)


@pytest.mark.parametrize("kind", KINDS)
def test_built_files_hold_the_schema_columns_with_their_types(built: dict[str, Path], kind: str) -> None:
    expected = [(c.name, c.dtype) for c in (*schema.columns(kind), *schema.AUTHOR_IDS[kind])]  # ids: kept on request
    for split in ("train", "test"):
        frame = pl.read_parquet(built[kind] / "data" / f"{split}-00000-of-00001.parquet")
        assert frame.height > 0
        assert list(frame.schema.items()) == expected, (kind, split)


@pytest.mark.parametrize("kind", KINDS)
def test_the_card_gives_the_schema_meaning_of_every_column(built: dict[str, Path], kind: str) -> None:
    card = (built[kind] / "README.md").read_text(encoding="utf-8")
    table = card.split("## Columns", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", table, flags=re.MULTILINE)
    columns = pl.read_parquet_schema(built[kind] / "data" / "train-00000-of-00001.parquet")
    assert [name for name, _ in rows] == list(columns)
    meanings = schema.meanings(kind)
    assert all(meaning.strip() for meaning in meanings.values())
    assert dict(rows) == {name: meanings[name] for name in columns}


@pytest.mark.parametrize("kind", KINDS)
def test_trainers_and_the_trl_format_read_the_schema_text_columns(built: dict[str, Path], kind: str) -> None:
    text = schema.TEXT_COLUMNS[kind]
    types = {c.name: c.dtype for c in schema.columns(kind)}
    assert all(types.get(name) == pl.String for name in text)  # text columns of the published set
    rows = load_split(str(built[kind]), "train", kind)
    assert rows and all(tuple(row) == text for row in rows)
    trl = pl.read_parquet_schema(built[kind] / "formats" / "trl" / "train-00000-of-00001.parquet")
    assert trl.names() == list(text)


def test_a_frame_whose_type_differs_from_the_schema_is_not_written(tmp_path: Path) -> None:
    train, test = pairs_frames()
    narrow = train.with_columns(pl.col("chosen_upvotes").cast(pl.Int32))
    with pytest.raises(ValueError, match=r"chosen_upvotes \(Int32, not Int64\)"):
        export.write_dataset(tmp_path / "out", "pairs", narrow, test, {}, {})
    assert list(tmp_path.iterdir()) == []


def test_one_length_filter_applies_to_both_sets_and_is_listed_in_each_recipe(built: dict[str, Path]) -> None:
    for kind, texts in (("instruct", ["completion"]), ("pairs", ["chosen", "rejected"])):
        rows = pl.concat([pl.read_parquet(built[kind] / "data" / f"{split}-00000-of-00001.parquet")
                          for split in ("train", "test")])
        for column in texts:
            lengths = rows[column].str.len_chars()
            assert LENGTHS.min_answer_chars <= lengths.min() and lengths.max() <= LENGTHS.max_answer_chars, column
        recipe = json.loads((built[kind] / "params.json").read_text(encoding="utf-8"))["params"]
        assert "lengths" not in recipe
        assert recipe[kind]["min_answer_chars"] == 60 and recipe[kind]["max_answer_chars"] == 3000
