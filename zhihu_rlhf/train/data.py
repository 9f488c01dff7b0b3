"""Training rows and their order: splits from a built folder, a Hub id or the sample; padding; batches.

    load_split(data, split, kind) -> list[dict[str, str]]      folder we built | Hub dataset id | "sample"
    looks_local(name) -> bool                                   a path on this machine, never a Hub id
    quiet_hub()                                                 Hub loading without retry/progress chatter
    pad_ids(seqs, value, side="right") -> (ids, attention_mask)  [N, longest] torch.long, on the CPU
    position_ids_from(attention_mask) -> position ids            0, 1, 2, ... over the real tokens of each row
    epoch_permutation(n, seed, epoch) -> np.ndarray             deterministic data order per epoch
    shuffled_batches(n, batch_size, seed, epoch) -> list[list[int]]   that order cut into fixed-size batches
    iter_chunks(items, size)                                    consecutive slices (evaluation batches)

A split's rows carry the text columns the trainers read, zhihu_rlhf.schema.TEXT_COLUMNS. The only edge from train/
to the data-building side is _sample_root(), which builds the embedded sample.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from zhihu_rlhf.errors import UserError, first_line

DataKind = Literal["instruct", "pairs"]


def load_split(data: str, split: str, kind: DataKind) -> list[dict[str, str]]:
    """Rows of one split with the text columns the trainers need.

    data: a folder written by `python -m zhihu_rlhf.build` (OUT/data/<split>-*.parquet), a Hub dataset id
    (datasets.load_dataset), or "sample" (the embedded sample, built on the fly into a temporary folder).
    """
    from zhihu_rlhf.schema import TEXT_COLUMNS  # imports polars (the schema's types): only once data is read

    columns = TEXT_COLUMNS[kind]
    if data == "sample":
        return load_split(str(_sample_root() / kind), split, kind)
    folder = Path(data).expanduser()
    if folder.exists():
        return _load_folder_split(folder, split, kind, columns)
    if looks_local(data):
        raise UserError(f"--data {data!r}: no such folder (a Hub dataset id is org/name)")
    return _load_hub_split(data, split, columns)


def looks_local(name: str) -> bool:
    """Whether `name` can only mean a path on this machine, so that a missing one fails at once instead of being
    tried on the Hub (tens of seconds of retries): it starts with . / or ~, has more separators than a Hub id's
    org/name, or its first part is a folder here (out/instruct_typo)."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Hub downloads without their retry and progress chatter: a missing id ends in the one line we raise."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_folder_split(folder: Path, split: str, kind: str, columns: Sequence[str]) -> list[dict[str, str]]:
    import polars as pl

    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise UserError(
            f"{folder}: no data/{split}-*.parquet (expected a {kind} folder built by `python -m zhihu_rlhf.build`)"
        )
    rows: list[dict[str, str]] = []
    for file in files:
        try:
            schema = pl.read_parquet_schema(file)
        except Exception as err:  # noqa: BLE001 - any unreadable parquet is the user's file problem
            raise UserError(f"{file}: not a readable parquet file ({first_line(err)})") from None
        for col in columns:
            if col not in schema:
                raise UserError(f"{file}: missing column {col!r} ({kind} data needs {', '.join(columns)})")
        frame = pl.read_parquet(file, columns=list(columns))
        rows.extend(_checked_rows(frame.to_dicts(), str(file), columns))
    if not rows:
        raise UserError(f"{folder}: split {split!r} is empty ({', '.join(str(f) for f in files)})")
    return rows


def _load_hub_split(dataset_id: str, split: str, columns: Sequence[str]) -> list[dict[str, str]]:
    import datasets

    try:
        with quiet_hub():
            ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not found / no such split"
        raise UserError(f"cannot load Hub dataset {dataset_id!r} split {split!r}: {first_line(err)}") from None
    for col in columns:
        if col not in ds.column_names:
            raise UserError(f"Hub dataset {dataset_id!r} split {split!r}: missing column {col!r}")
    rows = _checked_rows(ds.select_columns(list(columns)).to_list(), f"{dataset_id}[{split}]", columns)
    if not rows:
        raise UserError(f"Hub dataset {dataset_id!r}: split {split!r} is empty")
    return rows


def _checked_rows(rows: list[dict], where: str, columns: Sequence[str]) -> list[dict[str, str]]:
    for i, row in enumerate(rows):
        for col in columns:
            if not isinstance(row[col], str) or not row[col].strip():
                raise UserError(f"{where}: row {i}: column {col!r} is empty or not text")
    return rows


@lru_cache(maxsize=None)
def _sample_root() -> Path:
    """Build both sets from the embedded sample once per process into a temporary folder.

    The one place train/ reaches into the data-building side (zhihu_rlhf.build and its pipelines).
    """
    from zhihu_rlhf.build import BuildOptions, build

    root = Path(tempfile.mkdtemp(prefix="zhihu-rlhf-sample-"))
    build("all", BuildOptions(source="sample", out=root))
    return root

def pad_ids(
    seqs: Sequence[Sequence[int]], value: int, side: Literal["right", "left"] = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> [N, longest] ids filled with `value` on `side`, and the attention mask (1 on real tokens).

    Both torch.long on the CPU (callers move them). The mask comes from the lengths, never from `value`: the pad
    id is often the eos id, which also appears as a real token. Left padding right-aligns the rows, so generated
    tokens all start at the same column (PPO prompts).
    """
    ids = [torch.tensor(s, dtype=torch.long) for s in seqs]
    ones = [torch.ones(len(s), dtype=torch.long) for s in seqs]
    padded = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=value, padding_side=side)
    mask = torch.nn.utils.rnn.pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side)
    return padded, mask


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B, L) positions 0, 1, 2, ... over the real tokens (0 on padding), left or right padded.

    Exactly how `generate` numbers left-padded prompts, so a scored or re-read rollout sees the positions it was
    sampled with.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of n examples in an epoch: a pure function of (seed, epoch), so a resumed run sees the same."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's micro-batches of example indices: epoch_permutation cut into batch_size pieces (last may be short)."""
    order = epoch_permutation(n, seed, epoch).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items (evaluation batches)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
