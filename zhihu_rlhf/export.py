"""Write one built set (instruct or pairs) as a Hub-ready folder, atomically and deterministically.

Layout of OUT (the canonical parquet and the card are always written; `formats/` holds what --format asks for):

    OUT/README.md                                    data card (YAML front matter: configs, features, license, ...)
    OUT/stats.json                                   the builder's counts (rows in/kept/dropped, funnel, dedupe, ...)
    OUT/params.json                                  kind, build parameters, formats and their hash (publish names it)
    OUT/plots/*.png                                  plots embedded in the card
    OUT/data/{train,test}-00000-of-00001.parquet     zhihu_rlhf.schema's columns -> config "default"
    OUT/formats/trl/{split}-00000-of-00001.parquet            prompt/chosen/rejected | prompt/completion -> config "trl"
    OUT/formats/trl-chat/{split}-00000-of-00001.parquet       the same as {role, content} message lists -> config "trl-chat"
    OUT/formats/llamafactory/zhihu_rlhf_{kind}[_test].json    alpaca JSON array + dataset_info.json
    OUT/formats/deepspeed-chat/data/{train,eval}.json         JSON array "Human: q Assistant:", answer (test: eval)
    OUT/formats/zhihu_rlhf_3k/{split}-00000-of-00001.parquet  liyucheng/zhihu_rlhf_3k columns (pairs only)

The canonical parquet holds exactly the set's columns in zhihu_rlhf.schema, in its order and with its types (author
ids after them only on request), looked up when a folder is written: a column added there reaches the parquet, the
card's column table and its declared features with no change here.

`datasets.load_dataset(OUT)` loads the canonical parquet (config "default"); `load_dataset(OUT, "trl")` etc. load a
parquet format, declared as a config in the card. The JSON formats are files for their tools (their configs would
make datasets read the whole repository as JSON); `load_dataset("json", data_files=...)` reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from zhihu_rlhf import schema
from zhihu_rlhf.errors import UserError
from zhihu_rlhf.schema import Kind

SPLITS = ("train", "test")

# The name the LLaMA-Factory dataset_info.json registers (plus "_test" for the test split).
LLAMAFACTORY_NAME = "zhihu_rlhf_{kind}"


def canonical_path(split: str) -> str:
    return f"data/{split}-00000-of-00001.parquet"


@dataclass(frozen=True)
class OutputSettings:
    """What every set of one build shares about its output (BuildOptions.output() makes it from valid options)."""

    test_fraction: float
    """Share of question groups in the test split."""
    formats: tuple[str, ...]
    """Export formats written next to the canonical parquet, each named once."""
    keep_author_ids: bool
    """Write the author id columns (personal data)."""


# ---------------------------------------------------------------------------------------------------------------
# Formats. Each one turns the canonical split frames into files under OUT/formats/<name>/ and returns, per split,
# the path it wrote (relative to OUT), which becomes the format's config in the card. None: not for this kind.
# ---------------------------------------------------------------------------------------------------------------

def _user(text: pl.Expr) -> pl.Expr:
    return pl.struct(role=pl.lit("user"), content=text)


def _assistant(text: pl.Expr) -> pl.Expr:
    return pl.struct(role=pl.lit("assistant"), content=text)


def _trl(kind: Kind, split: str, frame: pl.DataFrame, folder: Path) -> str:
    path = f"formats/trl/{split}-00000-of-00001.parquet"
    write_parquet(frame.select(schema.TEXT_COLUMNS[kind]), folder / path)
    return path


def _trl_chat(kind: Kind, split: str, frame: pl.DataFrame, folder: Path) -> str:
    # Instruct rows are conversational prompt/completion, not `messages`: TRL's SFTTrainer then puts the loss on the
    # completion only (as our own SFT does), where `messages` would train on the question too.
    if kind == "instruct":
        chat = frame.select(
            prompt=pl.concat_list(_user(pl.col("prompt"))),
            completion=pl.concat_list(_assistant(pl.col("completion"))),
        )
    else:
        chat = frame.select(
            prompt=pl.concat_list(_user(pl.col("prompt"))),
            chosen=pl.concat_list(_assistant(pl.col("chosen"))),
            rejected=pl.concat_list(_assistant(pl.col("rejected"))),
        )
    path = f"formats/trl-chat/{split}-00000-of-00001.parquet"
    write_parquet(chat, folder / path)
    return path


def _llamafactory(kind: Kind, split: str, frame: pl.DataFrame, folder: Path) -> str:
    # Alpaca format: the question is the instruction, `input` stays empty.
    if kind == "instruct":
        rows = frame.select(instruction="prompt", input=pl.lit(""), output="completion")
    else:
        rows = frame.select(instruction="prompt", input=pl.lit(""), chosen="chosen", rejected="rejected")
    name = LLAMAFACTORY_NAME.format(kind=kind) + ("" if split == "train" else f"_{split}")
    path = f"formats/llamafactory/{name}.json"
    write_bytes(folder / path, rows.write_json().encode())  # a JSON array of row objects, as LLaMA-Factory reads

    info_path = folder / "formats/llamafactory/dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    entry: dict[str, object] = {"file_name": f"{name}.json", "formatting": "alpaca"}
    if kind == "pairs":
        entry["ranking"] = True
        entry["columns"] = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    else:
        entry["columns"] = {"prompt": "instruction", "query": "input", "response": "output"}
    info[name] = entry
    write_bytes(info_path, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode())
    return path


def _deepspeed_chat(kind: Kind, split: str, frame: pl.DataFrame, folder: Path) -> str:
    # DeepSpeed-Chat's local/jsonfile loader reads <DeepSpeed-Chat>/data/train.json and eval.json and adds the spaces
    # itself (" " + prompt, " " + prompt + " " + answer), so the fields carry none: what the model then sees equals
    # its own Zhihu-KOL dataset's " Human: " + question + " Assistant: " + answer.
    prompt = pl.concat_str(pl.lit("Human: "), pl.col("prompt"), pl.lit(" Assistant:")).alias("prompt")
    if kind == "instruct":
        # `rejected` present but null: step 2 skips such rows, where a missing key would stop it with a KeyError.
        rows = frame.select(prompt, chosen="completion", rejected=pl.lit(None, dtype=pl.String))
    else:
        rows = frame.select(prompt, "chosen", "rejected")
    path = f"formats/deepspeed-chat/data/{'train' if split == 'train' else 'eval'}.json"
    write_bytes(folder / path, rows.write_json().encode())  # one JSON array, the layout its README shows
    return path


def _zhihu_rlhf_3k(kind: Kind, split: str, frame: pl.DataFrame, folder: Path) -> str | None:
    # liyucheng/zhihu_rlhf_3k is a pairs set; there is no instruct counterpart with these names.
    if kind != "pairs":
        return None
    path = f"formats/zhihu_rlhf_3k/{split}-00000-of-00001.parquet"
    write_parquet(frame.select("prompt", "chosen", "rejected"), folder / path)
    return path


FormatWriter = Callable[[Kind, str, pl.DataFrame, Path], "str | None"]
FORMATS: dict[str, FormatWriter] = {
    "trl": _trl,
    "trl-chat": _trl_chat,
    "llamafactory": _llamafactory,
    "deepspeed-chat": _deepspeed_chat,
    "zhihu_rlhf_3k": _zhihu_rlhf_3k,
}


def check_formats(formats: Sequence[str]) -> None:
    """UserError naming the first format that is not one of FORMATS."""
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise UserError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------------------------
# Deterministic file writing
# ---------------------------------------------------------------------------------------------------------------

def _standard_type(dtype: pa.DataType) -> pa.DataType:
    """Polars writes large_string/large_list; the Hub's own files use string/list, which every reader accepts."""
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        return pa.list_(_standard_type(dtype.value_type))
    if pa.types.is_struct(dtype):
        return pa.struct([pa.field(f.name, _standard_type(f.type), f.nullable) for f in dtype])
    return dtype


def to_arrow(frame: pl.DataFrame) -> pa.Table:
    table = frame.to_arrow()
    schema = pa.schema([pa.field(f.name, _standard_type(f.type), f.nullable) for f in table.schema])
    return table.cast(schema)


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Same frame -> same bytes: pyarrow writes no timestamp; one row group keeps the row order as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_arrow(frame), path, compression="zstd", row_group_size=max(frame.height, 1))


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def params_hash(kind: str, params: dict, formats: Sequence[str], keep_author_ids: bool) -> str:
    """Short hash of everything that decides the folder's content (publish names it in the commit message)."""
    blob = json.dumps(
        {"kind": kind, "params": params, "formats": list(formats), "keep_author_ids": keep_author_ids},
        sort_keys=True, ensure_ascii=False, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------------------------

def _check_frame(kind: Kind, split: str, frame: pl.DataFrame) -> None:
    """The builder made every schema column with its type; anything else is a bug in the builder, not bad input."""
    wrong = [f"{column.name} ({frame.schema.get(column.name, 'missing')}, not {column.dtype})"
             for column in schema.columns(kind) if frame.schema.get(column.name) != column.dtype]
    if wrong:
        raise ValueError(f"{kind} {split} frame does not match zhihu_rlhf.schema: {', '.join(wrong)}")


def _check_replaceable(out: Path) -> None:
    """Replace OUT only if it is ours (a previous output): never wipe a user's unrelated folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another --out")
    if any(out.iterdir()) and not (out / "stats.json").exists():
        raise UserError(f"{out} is a non-empty folder that is not a zhihu_rlhf output (no stats.json); "
                        "choose another --out or remove it")


def write_dataset(out: Path, kind: Kind, train: pl.DataFrame, test: pl.DataFrame, stats: dict, params: dict,
                  formats: Sequence[str] = ("trl",), keep_author_ids: bool = False,
                  on_complete: Callable[[Path], None] = lambda _folder: None) -> Path:
    """Write the set's folder (layout in the module docstring) and return its path.

    Everything goes to a hidden sibling folder first; OUT is replaced by a rename only once the new one is complete,
    so a failed or killed run never leaves a half-written OUT. on_complete(folder) sees the complete folder just
    before it becomes OUT.
    """
    if kind not in ("instruct", "pairs"):
        raise ValueError(f"kind must be 'instruct' or 'pairs', not {kind!r}")
    formats = list(formats)
    out = Path(out)
    _check_replaceable(out)
    splits = {"train": train, "test": test}
    for split, frame in splits.items():
        _check_frame(kind, split, frame)
    # The schema's columns in its order; author ids (personal data) only on request.
    splits = {
        split: frame.select(
            *schema.names(kind), *(c for c in schema.author_id_names(kind) if keep_author_ids and c in frame.columns)
        )
        for split, frame in splits.items()
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _write_folder(partial, kind, splits, stats, params, formats, keep_author_ids)
        on_complete(partial)
        _replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _write_folder(folder: Path, kind: Kind, splits: dict[str, pl.DataFrame], stats: dict, params: dict,
                  formats: list[str], keep_author_ids: bool) -> None:
    configs: dict[str, dict[str, str]] = {"default": {}}
    for split, frame in splits.items():
        configs["default"][split] = canonical_path(split)
        write_parquet(frame, folder / canonical_path(split))
    written: list[str] = []
    for name in formats:
        for split, frame in splits.items():
            path = FORMATS[name](kind, split, frame, folder)
            if path is None:
                continue
            if name not in written:
                written.append(name)
            # Only parquet formats become configs: datasets picks one builder for the whole repository, and a JSON
            # config next to parquet ones makes it read the parquet files as JSON.
            if path.endswith(".parquet"):
                configs.setdefault(name, {})[split] = path

    write_bytes(folder / "stats.json", (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode())
    build = {
        "kind": kind,
        "params": params,
        "formats": formats,
        "formats_written": written,
        "keep_author_ids": keep_author_ids,
        "params_hash": params_hash(kind, params, formats, keep_author_ids),
    }
    write_bytes(folder / "params.json", (json.dumps(build, indent=2, ensure_ascii=False, default=str) + "\n").encode())

    # The card's libraries (datasets, huggingface_hub, matplotlib) take seconds to import: only a build that writes
    # a folder pays for them, and build() has them imported on a second thread meanwhile (zhihu_rlhf.build).
    from zhihu_rlhf import cards

    plots = cards.write_plots(folder, kind, splits, stats)
    card = cards.render_card(kind, splits, stats, build, configs, plots, folder)
    write_bytes(folder / "README.md", card.encode())


def _replace(partial: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old)
    else:
        os.rename(partial, out)
