"""The data card: front matter the Hub's card classes and datasets accept, the numbers of the build in the body,
plots that exist and are embedded, personal-data notes that follow keep_author_ids."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import datasets
import polars as pl
import pytest
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from test_export import ALL_FORMATS, PARAMS, instruct_frames, make_stats, pairs_frames, write
from zhihu_rlhf import cards, export

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


def test_pairs_card_states_the_length_skew(folders):
    body = (folders["pairs"] / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[1]
    both = pl.concat(pairs_frames())
    ratios = sorted(len(c) / len(r) for c, r in zip(both["chosen"], both["rejected"], strict=True))
    median = (ratios[3] + ratios[4]) / 2  # 8 pairs
    longer = sum(len(c) > len(r) for c, r in zip(both["chosen"], both["rejected"], strict=True)) / both.height
    assert f"The chosen answer is the longer one in **{100 * longer:.1f}%** of the pairs" in body
    assert f"the median chosen/rejected length ratio is **{median:.2f}**" in body
    assert "no bound\n  on how much longer one answer of a pair may be than the other in this build" in body
    stats = json.loads((folders["pairs"] / "stats.json").read_text())
    assert stats["length"]["chosen_longer_share"] == pytest.approx(longer, abs=1e-4)
    assert stats["length"]["median_length_ratio"] == pytest.approx(median, abs=1e-3)


def test_pairs_card_states_a_length_bound(tmp_path):
    train, test = pairs_frames()
    params = {**PARAMS, "pairs": {**PARAMS["pairs"], "max_length_ratio": 3.0}}
    out = export.write_dataset(tmp_path / "out", "pairs", train, test, make_stats("pairs", train, test), params)
    assert "the longer answer is at most **3.0×** as long as the shorter one" in (out / "README.md").read_text(encoding="utf-8")


def test_instruct_card_has_no_pair_sections(folders):
    body = (folders["instruct"] / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[1]
    assert "# Zhihu instruct set" in body and "SFTTrainer" in body
    assert "### Pair rules" not in body and "upvote_ratio.png" not in body
    assert "Requested but not applicable to this set: zhihu_rlhf_3k" in body


@pytest.mark.parametrize(("kind", "plots"), [
    ("instruct", {"lengths", "answers_per_question"}),
    ("pairs", {"lengths", "upvote_ratio", "time_gap", "p_chosen_better", "pair_lengths", "answers_per_question"}),
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


def card_body(folder: Path) -> str:
    return (folder / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[1]


@pytest.mark.parametrize(("kind", "formats", "absent"), [
    ("pairs", ["trl"], ["trl-chat", "llamafactory", "LLaMA-Factory", "deepspeed-chat", "### DeepSpeed-Chat",
                        "local/jsonfile", "zhihu_rlhf_3k", "JSON files", "dataset_info"]),
    ("instruct", ["deepspeed-chat"], ["`trl`", "trl-chat", "### TRL", "SFTTrainer", "llamafactory", "LLaMA-Factory",
                                      "dataset_info"]),
    ("pairs", ["zhihu_rlhf_3k"], ["`trl`", "trl-chat", "### TRL", "llamafactory", "deepspeed-chat", "JSON files"]),
])
def test_card_mentions_only_the_formats_built(tmp_path, kind, formats, absent):
    body = card_body(write(tmp_path / "out", kind, formats=formats))
    for text in absent:
        assert text not in body, text
    assert f"| `{formats[0]}` |" in body


def test_json_line_names_the_json_formats_built(folders, tmp_path):
    assert "The JSON files (llamafactory, deepspeed-chat) are for their tools" in card_body(folders["pairs"])
    body = card_body(write(tmp_path / "out", "pairs", formats=["trl", "deepspeed-chat"]))
    assert "The JSON files (deepspeed-chat) are for their tools" in body


def test_trl_section_states_the_separator_the_cpu_case_and_the_length(folders):
    for kind in ("instruct", "pairs"):
        body = card_body(folders[kind])
        assert "**no\nseparator**" in body and "for a\nmodel with a chat template use `trl-chat`" in body
        assert "bf16 on by default" in body
        config = "SFTConfig" if kind == "instruct" else "DPOConfig"
        assert f'args = {config}(output_dir="{"sft" if kind == "instruct" else "dpo"}", num_train_epochs=1)' in body
        assert "max_steps=10, use_cpu=True, bf16=False)   # no GPU" in body
    assert "loss on the answer only" in card_body(folders["instruct"])
    assert "RewardTrainer drops long pairs" in card_body(folders["pairs"])


def test_reward_trainer_note_counts_the_pairs_over_1024_tokens(tmp_path):
    # Every prompt here is 15 characters. At 1.5 characters per token (Qwen2.5) a pair is over 1,024 tokens above
    # 1,536 characters; at 1.25 (Llama 3) above 1,280. Characters counted: prompt + the longer answer.
    train, test = pairs_frames()
    assert set(pl.concat([train, test])["prompt"].str.len_chars()) == {15}
    chosen = [100, 1265, 1266, 1521, 1522, 5000, 10, 10]   # prompt + chosen: 115, 1280, 1281, 1536, 1537, 5015, ...
    rejected = [5, 5, 5, 5, 5, 5, 2000, 5]                  # row 6: 2,015 through the rejected answer
    # over 1,536: rows 4, 5, 6 -> 3 of 8; over 1,280: rows 2, 3, 4, 5, 6 -> 5 of 8
    both = pl.concat([train, test]).with_columns(
        chosen=pl.Series(["答" * n for n in chosen]), rejected=pl.Series(["否" * n for n in rejected]))
    out = export.write_dataset(tmp_path / "out", "pairs", both.head(6), both.tail(2),
                               make_stats("pairs", both.head(6), both.tail(2)), PARAMS, formats=["trl"])
    body = card_body(out)
    assert "- **3** (37.5%) are over 1,024 tokens at 1.5 characters per token (Qwen2.5's tokenizer)" in body
    assert "- **5** (62.5%) are over 1,024 tokens at 1.25 characters per token (Llama 3's tokenizer)" in body


def test_deepspeed_chat_section_says_which_step_reads_which_file(folders):
    instruct = card_body(folders["instruct"])
    assert "for **step 1** (SFT on prompt + answer) and **step 3**" in instruct and "--data_split 10,0,0" in instruct
    pairs_body = card_body(folders["pairs"])
    assert "for **step 2** (the reward model" in pairs_body and "--data_split 0,10,0" in pairs_body
    for body in (instruct, pairs_body):
        assert '`" Human: " + question + " Assistant: " + answer`' in body


def test_count_histograms_have_whole_number_ticks(tmp_path, monkeypatch):
    # Three pairs: matplotlib's default locator would tick the count axis at 0.5, 1.5, 2.5 ...
    train, test = pairs_frames(n_train=2, n_test=1)
    figures = {}
    save = cards._save

    def keep_figure(fig, folder, name):
        figures[name] = fig
        return save(fig, folder, name)

    monkeypatch.setattr(cards, "_save", keep_figure)
    cards.write_plots(tmp_path, "pairs", {"train": train, "test": test}, make_stats("pairs", train, test))
    assert {"lengths", "upvote_ratio", "time_gap", "p_chosen_better"} <= set(figures)
    for name in ("lengths", "upvote_ratio", "time_gap", "p_chosen_better"):
        count_axes = [ax for ax in figures[name].axes if ax.get_ylabel() in ("rows", "pairs", "pairs kept")]
        assert count_axes, name
        for ax in count_axes:
            ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ax.get_ylabel(), ticks)
