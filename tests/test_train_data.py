"""Trainer data room: splits from a folder or the Hub and their errors, padding, batch order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train import data


def write_split(root: Path, split: str, frame: pl.DataFrame) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    path = root / "data" / f"{split}-00000-of-00001.parquet"
    frame.write_parquet(path)
    return path


def test_load_split_reads_the_contract_folder(tmp_path):
    write_split(tmp_path, "train", pl.DataFrame({"question_id": [1, 2], "prompt": ["问1", "问2"], "completion": ["答1", "答2"]}))
    assert data.load_split(str(tmp_path), "train", "instruct") == [
        {"prompt": "问1", "completion": "答1"},
        {"prompt": "问2", "completion": "答2"},
    ]


def test_load_split_errors_name_the_file_and_column(tmp_path):
    path = write_split(tmp_path, "train", pl.DataFrame({"prompt": ["问"], "chosen": ["好"], "reject": ["坏"]}))
    with pytest.raises(UserError, match=r"train-00000-of-00001\.parquet: missing column 'rejected'"):
        data.load_split(str(tmp_path), "train", "pairs")

    write_split(tmp_path, "test", pl.DataFrame({"prompt": ["问", "问"], "completion": ["答", None]}))
    with pytest.raises(UserError, match=r"test-00000-of-00001\.parquet: row 1: column 'completion'"):
        data.load_split(str(tmp_path), "test", "instruct")

    write_split(tmp_path, "test", pl.DataFrame({"prompt": [], "completion": []}, schema={"prompt": pl.String, "completion": pl.String}))
    with pytest.raises(UserError, match="split 'test' is empty"):
        data.load_split(str(tmp_path), "test", "instruct")

    with pytest.raises(UserError, match=r"no data/validation-\*\.parquet"):
        data.load_split(str(tmp_path), "validation", "instruct")
    with pytest.raises(UserError, match="no such folder"):
        data.load_split(str(tmp_path / "missing"), "train", "instruct")
    path.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="not a readable parquet"):
        data.load_split(str(tmp_path), "train", "pairs")


def test_hub_dataset_id_loads_through_datasets_and_errors_are_one_line(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(dataset_id, split):
        calls.append((dataset_id, split))
        if dataset_id == "someone/missing":
            raise FileNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub")
        return datasets.Dataset.from_dict({"prompt": ["问？"], "chosen": ["好"], "rejected": ["差"], "extra": [1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert data.load_split("liyucheng/zhihu_rlhf_3k", "train", "pairs") == [{"prompt": "问？", "chosen": "好", "rejected": "差"}]
    assert calls == [("liyucheng/zhihu_rlhf_3k", "train")]
    with pytest.raises(UserError, match="cannot load Hub dataset 'someone/missing' split 'train'"):
        data.load_split("someone/missing", "train", "pairs")
    with pytest.raises(UserError, match="missing column 'completion'"):
        data.load_split("liyucheng/zhihu_rlhf_3k", "train", "instruct")


def test_pad_ids_pads_either_side_and_masks_by_length_not_by_pad_value():
    # pad id 1 is also a real token here (pad = eos in most causal LMs): the mask must still count it.
    ids, mask = data.pad_ids([[5, 1], [7], [8, 9, 1]], 1)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 1, 1], [7, 1, 1], [8, 9, 1]]
    assert mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    ids, mask = data.pad_ids([[5, 1], [7], [8, 9, 1]], -100, side="left")
    assert ids.tolist() == [[-100, 5, 1], [-100, -100, 7], [8, 9, 1]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    first = data.epoch_permutation(50, seed=3, epoch=0)
    np.random.seed(123)  # global RNG state must not matter
    assert (data.epoch_permutation(50, seed=3, epoch=0) == first).all()
    assert sorted(first.tolist()) == list(range(50))
    assert not (data.epoch_permutation(50, seed=3, epoch=1) == first).all()


def test_shuffled_batches_cut_the_epoch_order_into_fixed_sizes():
    batches = data.shuffled_batches(10, 4, seed=3, epoch=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sum(batches, []) == data.epoch_permutation(10, seed=3, epoch=1).tolist()
    assert data.shuffled_batches(10, 4, seed=3, epoch=2) != batches


def test_a_path_that_looks_local_fails_at_once_without_trying_the_hub(tmp_path, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("tried the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for typo in ("out/instruct_typo", "./out_typo/instruct", "runs/a/b", "~/no/such", "/no/such/folder"):
        with pytest.raises(UserError, match="no such folder"):
            data.load_split(typo, "train", "instruct")
    assert data.looks_local("out/instruct") and not data.looks_local("liyucheng/zhihu_rlhf_3k")
    assert not data.looks_local("gpt2")


def test_quiet_hub_silences_hub_loggers_and_restores_them():
    import logging

    hub = logging.getLogger("huggingface_hub")
    before = hub.level
    with data.quiet_hub():
        assert hub.getEffectiveLevel() == logging.ERROR and not hub.isEnabledFor(logging.WARNING)
    assert hub.level == before
