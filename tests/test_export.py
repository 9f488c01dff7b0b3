"""export.write_dataset: the folder loads with datasets, every format loads the way its consumer reads it (the
consumers' rules written out here, from their documentation and source: TRL and DeepSpeed-Chat are not installed),
author ids stay out, writes are deterministic and atomic."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import datasets
import polars as pl
import pytest

from zhihu_rlhf import cards, export, pairs, schema
from zhihu_rlhf.build import BuildOptions, build
from zhihu_rlhf.errors import UserError

UTC = dt.timezone.utc
ALL_FORMATS = list(export.FORMATS)
SECRET_AUTHOR = "people/secret-author-"  # author ids contain this; it must appear in no file by default
README = Path(__file__).resolve().parents[1] / "README.md"


def pairs_frames(n_train: int = 6, n_test: int = 2) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Pairs in the contract's columns plus the author columns the builder passes."""
    def frame(start: int, n: int) -> pl.DataFrame:
        rows = []
        for i in range(start, start + n):
            rejected_upvotes = 10 * (i + 1)
            rows.append({
                "question_id": 1000 + i,
                "prompt": f"问题{i}：如何评价“机器学习”？",
                "chosen": f"先学好线性代数。\n\n第{i}个回答，含 emoji 🙂 和 \"引号\"。" * (i % 3 + 1),
                "rejected": f"随便学学{i}。",
                "chosen_answer_id": 2 * i,
                "rejected_answer_id": 2 * i + 1,
                "chosen_upvotes": 3 * rejected_upvotes,
                "rejected_upvotes": rejected_upvotes,
                "chosen_created_at": dt.datetime(2023, 1, 1 + i, 8, 30, tzinfo=UTC),
                "rejected_created_at": None if i == 1 else dt.datetime(2023, 1, 3, tzinfo=UTC),
                "upvote_ratio": 3.0,
                "confidence": 1.5 + i,
                "p_chosen_better": 0.9,
                "chosen_author_id": f"{SECRET_AUTHOR}{2 * i}",
                "rejected_author_id": f"{SECRET_AUTHOR}{2 * i + 1}",
            })
        return pl.DataFrame(rows, schema_overrides={
            "chosen_created_at": pl.Datetime("us", "UTC"), "rejected_created_at": pl.Datetime("us", "UTC")})
    return frame(0, n_train), frame(n_train, n_test)


def instruct_frames(n_train: int = 6, n_test: int = 2) -> tuple[pl.DataFrame, pl.DataFrame]:
    def frame(start: int, n: int) -> pl.DataFrame:
        rows = [{
            "question_id": i,
            "answer_id": 100 + i,
            "prompt": f"问题{i}：怎么入门深度学习？",
            "completion": f"回答{i}：多读论文，多写代码。" * (i + 1),
            "upvotes": 7 * i,
            "created_at": None if i % 3 == 0 else dt.datetime(2022, 5, 1, tzinfo=UTC),
            "author_id": f"{SECRET_AUTHOR}{i}",
        } for i in range(start, start + n)]
        return pl.DataFrame(rows, schema_overrides={"created_at": pl.Datetime("us", "UTC")})
    return frame(0, n_train), frame(n_train, n_test)


def make_stats(kind: str, train: pl.DataFrame, test: pl.DataFrame) -> dict:
    kept = train.height + test.height
    stats = {
        "rows_in": kept + 17, "rows_kept": kept, "rows_dropped": {"invalid_json": 12, "blank_response": 5},
        "splits": {"train": train.height, "test": test.height},
        "dedupe": {"answer_clusters_merged": 4, "question_groups_merged": 2},
        "answers_per_question": {"1": 40, "2": 9, "3": 3, "12": 1},
    }
    if kind == "pairs":
        stats["length"] = pairs.length_skew(pl.concat([train, test]))
        stats["funnel"] = [
            {"rule": "same_question", "description": "two answers to one question group", "removed": 0, "left": 321},
            {"rule": "max_days_apart", "description": "created at most 30 days apart", "removed": 123, "left": 198},
        ]
    return stats


PARAMS = {"source": "sample", "test_fraction": 0.05, "pairs": {"min_ratio": 2.0, "max_days_apart": 30.0},
          "tool_version": "0.1.0"}


def write(out: Path, kind: str, formats=("trl",), keep_author_ids: bool = False) -> Path:
    train, test = pairs_frames() if kind == "pairs" else instruct_frames()
    return export.write_dataset(out, kind, train, test, make_stats(kind, train, test), PARAMS,
                                formats=formats, keep_author_ids=keep_author_ids)


def load(path: Path, cache: Path, name: str | None = None) -> datasets.DatasetDict:
    return datasets.load_dataset(str(path), name, cache_dir=str(cache))


def canonical(kind: str, split: str) -> pl.DataFrame:
    train, test = pairs_frames() if kind == "pairs" else instruct_frames()
    return {"train": train, "test": test}[split]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {kind: write(root / kind, kind, formats=ALL_FORMATS) for kind in ("instruct", "pairs")}


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_folder_loads_with_datasets_and_keeps_canonical_columns(folders, kind, tmp_path):
    ds = load(folders[kind], tmp_path)
    assert set(ds) == {"train", "test"}
    expected = schema.names(kind)
    for split in ("train", "test"):
        assert ds[split].num_rows == canonical(kind, split).height
        assert list(expected) == ds[split].column_names[: len(expected)]
        assert not set(schema.author_id_names(kind)) & set(ds[split].column_names)
        assert ds[split]["prompt"] == canonical(kind, split)["prompt"].to_list()
    created = "created_at" if kind == "instruct" else "chosen_created_at"
    assert str(ds["train"].features[created].dtype).startswith("timestamp[us")


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_author_ids_appear_in_no_file_unless_kept(folders, kind, tmp_path):
    for path in folders[kind].rglob("*"):
        if path.is_file():
            assert SECRET_AUTHOR.encode() not in path.read_bytes(), path
    kept = write(tmp_path / "kept", kind, keep_author_ids=True)
    columns = load(kept, tmp_path / "cache")["train"].column_names
    assert set(columns) & set(schema.author_id_names(kind))


def test_trl_format_has_exactly_the_standard_columns(folders, tmp_path):
    pairs = load(folders["pairs"], tmp_path, "trl")
    assert pairs["train"].column_names == ["prompt", "chosen", "rejected"]
    assert pairs["train"]["chosen"] == canonical("pairs", "train")["chosen"].to_list()
    instruct = load(folders["instruct"], tmp_path, "trl")
    assert instruct["test"].column_names == ["prompt", "completion"]
    assert instruct["test"]["completion"] == canonical("instruct", "test")["completion"].to_list()


def test_trl_chat_format_is_conversational(folders, tmp_path):
    pairs_chat = load(folders["pairs"], tmp_path, "trl-chat")["train"]
    source = canonical("pairs", "train")
    assert pairs_chat.column_names == ["prompt", "chosen", "rejected"]
    row = pairs_chat[2]
    assert row["prompt"] == [{"role": "user", "content": source["prompt"][2]}]
    assert row["chosen"] == [{"role": "assistant", "content": source["chosen"][2]}]
    assert row["rejected"] == [{"role": "assistant", "content": source["rejected"][2]}]

    instruct = load(folders["instruct"], tmp_path, "trl-chat")["test"]
    source = canonical("instruct", "test")
    assert instruct.column_names == ["prompt", "completion"]  # conversational prompt/completion, not `messages`
    assert instruct[1]["prompt"] == [{"role": "user", "content": source["prompt"][1]}]
    assert instruct[1]["completion"] == [{"role": "assistant", "content": source["completion"][1]}]


# A ChatML template (Qwen2.5's layout) for a byte-level tokenizer: one token per byte, so masks map to text exactly.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_trl_chat_instruct_rows_put_the_sft_loss_on_the_answer_only(folders, tmp_path):
    # TRL's SFTTrainer on a conversational prompt/completion row (trl/trainer/sft_trainer.py, TRL 1.x):
    # prompt_ids = template(prompt, add_generation_prompt=True); ids = template(prompt + completion);
    # completion_only_loss defaults to True when the row has "prompt" and "completion": labels are -100 on the
    # first len(prompt_ids) tokens.
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = CHATML
    rows = load(folders["instruct"], tmp_path, "trl-chat")["train"]
    assert {"prompt", "completion"} <= set(rows.column_names)  # what SFTTrainer checks to turn the mask on
    source = canonical("instruct", "train")
    for i, row in enumerate(rows):
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                            return_dict=True)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
        trained = tokenizer.decode([t for t in labels if t != -100])
        assert trained == source["completion"][i] + "<|im_end|>\n"
        assert source["prompt"][i] in tokenizer.decode(prompt_ids)


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_llamafactory_format_loads_by_name_from_dataset_info(folders, kind, tmp_path):
    # LLaMA-Factory: look the name up in dataset_dir/dataset_info.json, map columns, load_dataset("json", file).
    dataset_dir = folders[kind] / "formats" / "llamafactory"
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    name = f"zhihu_rlhf_{kind}"
    assert set(info) == {name, f"{name}_test"}
    for entry_name, split in ((name, "train"), (f"{name}_test", "test")):
        entry = info[entry_name]
        assert entry["formatting"] == "alpaca"
        assert entry.get("ranking", False) is (kind == "pairs")
        rows = datasets.load_dataset("json", data_files=str(dataset_dir / entry["file_name"]), split="train",
                                     cache_dir=str(tmp_path))
        assert set(entry["columns"].values()) <= set(rows.column_names)
        source = canonical(kind, split)
        assert rows[entry["columns"]["prompt"]] == source["prompt"].to_list()
        assert set(rows[entry["columns"]["query"]]) == {""}
        if kind == "pairs":
            assert rows[entry["columns"]["chosen"]] == source["chosen"].to_list()
            assert rows[entry["columns"]["rejected"]] == source["rejected"].to_list()
        else:
            assert rows[entry["columns"]["response"]] == source["completion"].to_list()


# DeepSpeed-Chat (dschat/utils/data/raw_datasets.py), its rules written out. LocalJsonFileDataset reads
# data/train.json and data/eval.json and adds the spaces itself; its built-in Zhihu-KOL class is the reference.
def jsonfile_prompt(sample: dict) -> str | None:
    return None if sample["prompt"] is None else " " + sample["prompt"]


def jsonfile_prompt_and(sample: dict, answer: str) -> str | None:
    if sample["prompt"] is None or sample[answer] is None:
        return None
    return " " + sample["prompt"] + " " + sample[answer]


def zhihu_kol_prompt(question: str) -> str:
    return " Human: " + question + " Assistant:"


def zhihu_kol_prompt_and_answer(question: str, answer: str) -> str:
    return " Human: " + question + " Assistant: " + answer


def load_like_deepspeed_chat(chat_path: Path, cache: Path) -> datasets.DatasetDict:
    return datasets.load_dataset("json", data_files={"train": str(chat_path / "data/train.json"),
                                                     "eval": str(chat_path / "data/eval.json")},
                                 cache_dir=str(cache))


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_deepspeed_chat_strings_equal_its_own_zhihu_kol_class_byte_for_byte(folders, kind, tmp_path):
    chat_path = folders[kind] / "formats" / "deepspeed-chat"
    assert (chat_path / "data/train.json").read_text(encoding="utf-8").startswith("[{")  # one JSON list, as its README
    raw = load_like_deepspeed_chat(chat_path, tmp_path)
    for split, ds_split in (("train", "train"), ("test", "eval")):
        source = canonical(kind, split)
        answers = source["chosen"] if kind == "pairs" else source["completion"]
        assert raw[ds_split].num_rows == source.height
        for sample, question, answer in zip(raw[ds_split], source["prompt"], answers, strict=True):
            assert jsonfile_prompt(sample) == zhihu_kol_prompt(question)  # step 3 reads this
            assert jsonfile_prompt_and(sample, "chosen") == zhihu_kol_prompt_and_answer(question, answer)  # steps 1, 2
        if kind == "pairs":
            for sample, question, answer in zip(raw[ds_split], source["prompt"], source["rejected"], strict=True):
                assert jsonfile_prompt_and(sample, "rejected") == zhihu_kol_prompt_and_answer(question, answer)


def test_deepspeed_chat_instruct_file_does_not_break_step_2(folders, tmp_path):
    # Step 2 keeps a row only if both prompt+chosen and prompt+rejected are not None; `sample["rejected"]` must exist.
    raw = load_like_deepspeed_chat(folders["instruct"] / "formats" / "deepspeed-chat", tmp_path)
    for split in ("train", "eval"):
        kept = [s for s in raw[split]
                if jsonfile_prompt_and(s, "chosen") is not None and jsonfile_prompt_and(s, "rejected") is not None]
        assert kept == [] and raw[split].num_rows > 0
    pairs_raw = load_like_deepspeed_chat(folders["pairs"] / "formats" / "deepspeed-chat", tmp_path / "pairs")
    assert all(jsonfile_prompt_and(s, "rejected") is not None for s in pairs_raw["train"])


def test_zhihu_rlhf_3k_format_is_pairs_only(folders, tmp_path):
    ds = load(folders["pairs"], tmp_path, "zhihu_rlhf_3k")
    assert ds["train"].column_names == ["prompt", "chosen", "rejected"]
    assert ds["test"]["rejected"] == canonical("pairs", "test")["rejected"].to_list()
    assert not (folders["instruct"] / "formats" / "zhihu_rlhf_3k").exists()
    build = json.loads((folders["instruct"] / "params.json").read_text())
    assert "zhihu_rlhf_3k" in build["formats"] and "zhihu_rlhf_3k" not in build["formats_written"]


def test_unknown_format_is_a_user_error_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="unknown export format 'alpaca'"):
        build("pairs", BuildOptions(source="sample", out=tmp_path / "out", formats=["trl", "alpaca"]), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_same_frames_give_byte_identical_folders(tmp_path):
    first = write(tmp_path / "a", "pairs", formats=ALL_FORMATS)
    second = write(tmp_path / "b", "pairs", formats=ALL_FORMATS)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert any(str(f).endswith(".png") for f in files)
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_failed_write_leaves_the_previous_folder_untouched(tmp_path, monkeypatch):
    out = write(tmp_path / "out", "pairs")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cards, "render_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write(out, "pairs", formats=ALL_FORMATS)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left behind

    with pytest.raises(RuntimeError):
        write(tmp_path / "new", "pairs")
    assert not (tmp_path / "new").exists()


def test_rewrite_replaces_the_previous_output(tmp_path):
    out = write(tmp_path / "out", "pairs", formats=ALL_FORMATS)
    write(out, "pairs", formats=["trl"])
    assert not (out / "formats" / "trl-chat").exists()
    assert (out / "formats" / "trl").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_replace_a_folder_that_is_not_an_output(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a zhihu_rlhf output"):
        write(precious, "pairs")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_stats_and_params_are_written_as_given(tmp_path):
    train, test = pairs_frames()
    stats = make_stats("pairs", train, test)
    out = export.write_dataset(tmp_path / "out", "pairs", train, test, stats, PARAMS, formats=["trl-chat"])
    assert json.loads((out / "stats.json").read_text(encoding="utf-8")) == stats
    build = json.loads((out / "params.json").read_text(encoding="utf-8"))
    assert build["params"] == PARAMS and build["kind"] == "pairs" and build["formats"] == ["trl-chat"]
    other = export.params_hash("pairs", {**PARAMS, "test_fraction": 0.1}, ["trl-chat"], False)
    assert build["params_hash"] == export.params_hash("pairs", PARAMS, ["trl-chat"], False) != other


def test_a_column_added_to_pairs_columns_reaches_the_parquet_and_the_card(tmp_path, monkeypatch):
    # A column appended to the schema (as the vote model appended p_chosen_better) needs no edit here.
    monkeypatch.setattr(schema, "PAIRS", (*schema.PAIRS, schema.Column("new_score", pl.Float64(), "a new score")))
    train, test = (frame.with_columns(new_score=pl.lit(0.875)) for frame in pairs_frames())
    out = export.write_dataset(tmp_path / "out", "pairs", train, test, make_stats("pairs", train, test), PARAMS,
                               formats=ALL_FORMATS)
    ds = load(out, tmp_path / "cache")
    assert ds["train"].column_names[-1] == "new_score"
    assert set(ds["test"]["new_score"]) == {0.875}
    assert "| `new_score` | a new score |" in (out / "README.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="new_score"):  # the frames are checked against the same schema
        export.write_dataset(tmp_path / "bad", "pairs", *pairs_frames(), {}, PARAMS)


def readme_export_table() -> dict[str, tuple[str, str]]:
    """format -> its ("where in OUT", "for") cells, from the README's "Export and publish" table."""
    section = README.read_text(encoding="utf-8").split("## Export and publish", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`[^|]*\| ([^|]+) \| (.+) \|$", section, flags=re.MULTILINE)
    return {name: (where, purpose) for name, where, purpose in rows}


def built_columns(path: Path) -> set[str]:
    if path.suffix == ".parquet":
        return set(datasets.Dataset.from_parquet(str(path)).column_names)
    rows = json.loads(path.read_text(encoding="utf-8"))
    return set(rows[0]) if isinstance(rows, list) else set()  # dataset_info.json is an object, not rows


def test_readme_export_table_matches_what_is_built(folders):
    table = readme_export_table()
    assert list(table) == list(export.FORMATS)
    for name, (where, purpose) in table.items():
        paths = re.findall(r"`(formats/[^`]+)`", where)
        assert paths, name
        files: list[Path] = []
        for path in paths:
            # "{train,eval}" in a cell stands for each of the files
            expanded = [path.replace("{train,eval}", split) for split in ("train", "eval")] if "{" in path else [path]
            for relative in expanded:
                built = [folders[kind] / relative for kind in ("instruct", "pairs")]
                built = [candidate for candidate in built if candidate.exists()]
                assert built, (name, relative)
                files += [f for p in built for f in ([p] if p.is_file() else sorted(p.glob("*.*")))]
        # Every column the row names is a column of this format's files (for the instruct set or the pairs).
        named = {word for word in re.findall(r"`([a-z_]+)`", purpose)} - set(export.FORMATS)
        columns = set().union(*(built_columns(f) for f in files))
        assert named and named <= columns, (name, named - columns)
