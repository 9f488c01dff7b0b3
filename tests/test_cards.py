"""The data card: front matter the Hub's card classes and datasets accept, the numbers of the build in the body,
plots that exist and are embedded, personal-data notes that follow keep_author_ids."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import datasets
import pytest
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from test_export import ALL_FORMATS, PARAMS, instruct_frames, make_stats, pairs_frames, write
from zhihu_rlhf import cards

# Hub size categories as datasets ships them (not our own table).
HUB_SIZE_CATEGORIES = json.loads(
    resources.files("datasets.utils.resources").joinpath("size_categories.json").read_text())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cards")
    return {kind: write(root / kind, kind, formats=ALL_FORMATS) for kind in ("instruct", "pairs")}


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_front_matter_is_valid_hub_metadata(folders, kind):
    card = DatasetCard.load(folders[kind] / "README.md")
    data = card.data
    assert data.language == ["zh"]
    assert data.license == cards.LICENSE
    assert data.size_categories == ["n<1K"] and set(data.size_categories) <= set(HUB_SIZE_CATEGORIES)
    assert "text-generation" in data.task_categories
    # The same readers datasets uses when it loads the repository.
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert configs.get_default_config_name() == "default"
    assert configs["default"]["data_files"] == [
        {"split": "train", "path": "data/train-00000-of-00001.parquet"},
        {"split": "test", "path": "data/test-00000-of-00001.parquet"},
    ]
    for config in configs.values():
        for data_file in config["data_files"]:
            assert (folders[kind] / data_file["path"]).is_file()
    infos = DatasetInfosDict.from_dataset_card_data(data)
    assert set(infos) == set(configs)


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_declared_features_and_counts_match_what_datasets_loads(folders, kind, tmp_path):
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(folders[kind] / "README.md").data)
    for name, info in infos.items():
        loaded = datasets.load_dataset(str(folders[kind]), name, cache_dir=str(tmp_path))
        assert info.features == loaded["train"].features, name
        assert {split: info.splits[split].num_examples for split in info.splits} == \
            {split: loaded[split].num_rows for split in loaded}


def test_size_category_boundaries_use_hub_names():
    assert cards.size_category(999) == "n<1K"
    assert cards.size_category(1_000) == "1K<n<10K"
    assert cards.size_category(3_460) == "1K<n<10K"
    assert cards.size_category(26_000) == "10K<n<100K"
    assert cards.size_category(1_006_218) == "1M<n<10M"
    for rows in (0, 5_000, 50_000, 500_000, 5_000_000, 50_000_000):
        assert cards.size_category(rows) in HUB_SIZE_CATEGORIES


def test_pairs_card_reports_the_build(folders):
    text = (folders["pairs"] / "README.md").read_text(encoding="utf-8")
    train, test = pairs_frames()
    stats = make_stats("pairs", train, test)
    body = text.split("\n---\n", 1)[1]
    assert f"**{train.height + test.height}** Chinese preference pairs" in body
    for step in stats["funnel"]:
        assert f"| {step['rule']} | {step['description']} | {step['removed']:,} | {step['left']:,} |" in body
    for reason, count in stats["rows_dropped"].items():
        assert f"| {reason} | {count:,} |" in body
    for key, value in stats["dedupe"].items():
        assert f"| {key} | {value} |" in body
    assert "| `pairs.min_ratio` | `2.0` |" in body and "| `source` | `\"sample\"` |" in body
    assert "at least **2.0×** the rejected" in body and "at most **30.0 days** apart" in body
    build = json.loads((folders["pairs"] / "params.json").read_text())
    assert build["params_hash"] in body and "Tool version **0.1.0**" in body
    for section in ("## Limitations and biases", "popularity, not correctness", "## Personal and sensitive",
                    "### TRL", "### LLaMA-Factory", "### DeepSpeed-Chat", '"ranking": true'):
        assert section in body


def test_instruct_card_has_no_pair_sections(folders):
    body = (folders["instruct"] / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[1]
    assert "# Zhihu instruct set" in body and "SFTTrainer" in body
    assert "### Pair rules" not in body and "upvote_ratio.png" not in body
    assert "Requested but not applicable to this set: zhihu_rlhf_3k" in body


@pytest.mark.parametrize(("kind", "plots"), [
    ("instruct", {"lengths", "answers_per_question"}),
    ("pairs", {"lengths", "upvote_ratio", "time_gap", "answers_per_question"}),
])
def test_plots_are_png_files_embedded_in_the_card(folders, kind, plots):
    text = (folders[kind] / "README.md").read_text(encoding="utf-8")
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(path).stem for path in embedded} == plots
    for path in embedded:
        content = (folders[kind] / path).read_bytes()
        assert content.startswith(b"\x89PNG\r\n\x1a\n")
        assert b"tIME" not in content  # no timestamp chunk: rebuilding gives the same bytes


def test_no_answers_per_question_plot_without_the_stat(tmp_path):
    from zhihu_rlhf import export
    train, test = instruct_frames()
    stats = make_stats("instruct", train, test)
    del stats["answers_per_question"]
    out = export.write_dataset(tmp_path / "out", "instruct", train, test, stats, PARAMS)
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["lengths.png"]


def test_author_id_note_follows_keep_author_ids(folders, tmp_path):
    dropped = (folders["pairs"] / "README.md").read_text(encoding="utf-8")
    assert "Author ids are **removed**" in dropped
    kept = (write(tmp_path / "kept", "pairs", keep_author_ids=True) / "README.md").read_text(encoding="utf-8")
    assert "Author ids were kept on request" in kept and "Author ids are **removed**" not in kept
