"""Data card (OUT/README.md) and its plots (OUT/plots/*.png) for one built set.

The YAML front matter is made by huggingface_hub's DatasetCardData (license, language, task categories, size) plus
datasets' own `configs` / `dataset_info` writers, the same ones `Dataset.push_to_hub` uses; the body is the Jinja
template data_cards/dataset_card.md, rendered by DatasetCard.from_template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from datasets import Features
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData
import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from zhihu_rlhf import schema

# Zhihu-KOL declares no license on the Hub (checked: its card has none), and the answers' copyright stays with their
# Zhihu authors, so the honest Hub value is "unknown"; the card's licensing section says so.
LICENSE = "unknown"
# Written in the card's loading examples; publish replaces it with the real --repo-id.
REPO_PLACEHOLDER = "<your-name>/<repo>"
TEMPLATE = "dataset_card.md"
# TRL's RewardTrainer (1.x, trl/trainer/reward_trainer.py) silently filters out every pair whose tokenized
# prompt + chosen or prompt + rejected is longer than RewardConfig.max_length, default 1024. The card counts such
# pairs in the build. No tokenizer ships offline, so tokens are estimated from characters at each tokenizer's rate on
# synthetic Zhihu-style Chinese as benchmarks/token_lengths.py measured it (Qwen2.5 1.60-1.62, Llama 3 1.285-1.29;
# benchmarks/RESULTS.md), rounded down: fewer characters per token means more tokens, so the counts lean high.
REWARD_MAX_LENGTH = 1024
CHARS_PER_TOKEN = {"Qwen2.5": 1.5, "Llama 3": 1.25}

# Hub size_categories values (the list datasets ships in datasets/utils/resources/size_categories.json).
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"))


def size_category(rows: int) -> str:
    for limit, name in _SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "10M<n<100M"


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plot:
    title: str
    path: str  # relative to OUT
    caption: str


def _figure() -> Figure:
    # Fixed margins that fit these plots' labels: tight_layout would measure every label, a third of the plot time.
    fig = Figure(figsize=(7, 3.6))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.17, top=0.91)
    return fig


def _count_histogram(fig: Figure) -> Axes:
    """Axes for a histogram of counts: its y ticks are whole numbers (a small set would otherwise show 2.5 pairs)."""
    ax = fig.add_subplot()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def _save(fig: Figure, folder: Path, name: str) -> str:
    path = f"plots/{name}.png"
    (folder / "plots").mkdir(exist_ok=True)
    # No "Software" entry and no timestamp: the same data gives the same bytes.
    fig.savefig(folder / path, dpi=100, metadata={"Software": None})
    return path


def _log_bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    low, high = max(values.min(), 1), max(values.max(), 2)
    return np.geomspace(low, high * 1.001, count)


def _length_plot(folder: Path, kind: str, frame: pl.DataFrame) -> Plot:
    fig = _figure()
    ax = _count_histogram(fig)
    lengths = {c: frame[c].str.len_chars().to_numpy() for c in schema.TEXT_COLUMNS[kind]}
    bins = _log_bins(np.concatenate(list(lengths.values())))
    for column, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"{column} (median {int(np.median(values))})")
    ax.set_xscale("log")
    ax.set_xlabel("length in characters (log scale)")
    ax.set_ylabel("rows")
    ax.set_title("Prompt and response lengths")
    ax.legend()
    return Plot("Prompt and response lengths", _save(fig, folder, "lengths"),
                "Characters per field, all splits; Chinese text has roughly 1-1.5 characters per token.")


def _ratio_plot(folder: Path, frame: pl.DataFrame) -> Plot | None:
    ratios = frame["upvote_ratio"].drop_nulls().to_numpy()
    finite = ratios[np.isfinite(ratios)]
    if finite.size == 0:
        return None
    fig = _figure()
    ax = _count_histogram(fig)
    ax.hist(finite, bins=_log_bins(finite), color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("chosen upvotes / rejected upvotes (log scale)")
    ax.set_ylabel("pairs")
    ax.set_title(f"Upvote ratio of the pairs (median {np.median(finite):.1f}x)")
    return Plot("Upvote ratio", _save(fig, folder, "upvote_ratio"),
                "How far the chosen answer leads the rejected one in votes (rejected with 0 votes counted as 1).")


def _time_gap_plot(folder: Path, frame: pl.DataFrame) -> Plot | None:
    gap_days = (
        frame.select(((pl.col("chosen_created_at") - pl.col("rejected_created_at")).dt.total_seconds() / 86400)
                     .alias("gap"))["gap"].drop_nulls().to_numpy()
    )
    if gap_days.size == 0:
        return None
    fig = _figure()
    ax = _count_histogram(fig)
    ax.hist(gap_days, bins=40, color="tab:orange")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("chosen created minus rejected created (days); > 0: chosen is newer")
    ax.set_ylabel("pairs")
    ax.set_title("Time between the two answers of a pair")
    return Plot("Time gap", _save(fig, folder, "time_gap"),
                "Pairs with a positive gap are the safe ones: the chosen answer won despite less time to collect votes.")


# --- vote model -----------------------------------------------------------------------------------------------------

def _p_chosen_better_plot(folder: Path, frame: pl.DataFrame) -> Plot | None:
    """The reliability diagram that can be drawn without truth: per bin of p, the pairs and how many of them the model
    itself expects to be wrong; and for each threshold on p, the share right the model expects above it."""
    p = frame["p_chosen_better"].drop_nulls().to_numpy() if "p_chosen_better" in frame.columns else np.array([])
    if p.size == 0:
        return None
    fig = Figure(figsize=(9, 3.6))
    fig.subplots_adjust(left=0.08, right=0.92, bottom=0.17, top=0.88, wspace=0.45)
    edges = np.linspace(0, 1, 11)
    in_bin = np.clip(np.digitize(p, edges) - 1, 0, 9)
    pairs = np.bincount(in_bin, minlength=10)
    expected_wrong = np.bincount(in_bin, 1 - p, minlength=10)
    left = fig.add_subplot(1, 2, 1)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.bar(edges[:-1], pairs, width=0.1, align="edge", color="tab:purple", label="pairs")
    left.bar(edges[:-1], expected_wrong, width=0.1, align="edge", color="tab:red", label="of which wrong, expected")
    left.set_xlabel("p_chosen_better (bins of 0.1)")
    left.set_ylabel("pairs")
    left.set_title(f"Pairs by p (mean {p.mean():.3f})")
    left.legend(fontsize=8)
    ordered = np.sort(p)[::-1]
    kept = np.arange(1, ordered.size + 1)
    right = fig.add_subplot(1, 2, 2)
    share = np.cumsum(ordered) / kept
    right.plot(ordered, share, color="tab:purple")
    # From a coin flip (or lower) to all right: where every p is ~1 the autoscaled axis would span 1e-12 around 1,
    # labelled with an offset that says nothing.
    right.set_ylim(min(0.5, float(share.min())) - 0.02, 1.02)
    right.set_xlabel("threshold t on p_chosen_better")
    right.set_ylabel("expected share right of pairs with p >= t", color="tab:purple")
    right.set_xlim(1, max(0.0, float(ordered[-1]) - 0.02))
    kept_axis = right.twinx()
    kept_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    kept_axis.plot(ordered, kept, color="tab:gray", linestyle="--")
    kept_axis.set_ylabel("pairs kept", color="tab:gray")
    right.set_title("Keeping the pairs above a threshold")
    return Plot("p_chosen_better", _save(fig, folder, "p_chosen_better"),
                "What the vote model expects of these pairs under the assumptions above, not a measurement: no truth "
                "is known for them. Left: pairs per bin of p, and the sum of 1 - p over each bin, the pairs the model "
                "itself expects to have the worse answer chosen. Right: for a threshold t, the model's expected share "
                "of right pairs among those with p >= t (the mean of their p), and how many there are. On synthetic "
                "data with known truth the measured shares are compared with these in benchmarks/RESULTS.md of "
                "zhihu-rlhf.")


def _pair_lengths_plot(folder: Path, frame: pl.DataFrame, length: dict) -> Plot | None:
    if not length or length.get("chosen_longer_share") is None:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    lengths = {side: frame[side].str.len_chars().to_numpy() for side in ("chosen", "rejected")}
    bins = _log_bins(np.concatenate(list(lengths.values())))
    for side, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"{side} (median {int(np.median(values))})")
    ax.set_xscale("log")
    ax.set_xlabel("answer length in characters (log scale)")
    ax.set_ylabel("pairs")
    ax.set_title(f"Chosen longer in {length['chosen_longer_share']:.1%} of pairs; "
                 f"median length ratio {length['median_length_ratio']:.2f}")
    ax.legend()
    return Plot("Length: chosen vs rejected", _save(fig, folder, "pair_lengths"),
                "A reward model trained on these pairs may learn to prefer what separates the two curves; where chosen "
                "answers are much longer, it may learn to pay for length.")


# ------------------------------------------------------------------------------------------------------------------

def _answers_per_question_plot(folder: Path, counts: dict) -> Plot:
    pairs = sorted((int(answers), int(questions)) for answers, questions in counts.items())
    fig = _figure()
    ax = fig.add_subplot()
    # Dots on log-log axes: the tail runs to hundreds of answers, and a bar per count would be slow to draw.
    ax.plot([a for a, _ in pairs], [q for _, q in pairs], "o", markersize=4, color="tab:green")
    ax.set_yscale("log")
    if pairs and pairs[-1][0] > 50:
        ax.set_xscale("log")
    ax.set_xlabel("answers per question (source, after cleaning)")
    ax.set_ylabel("questions (log scale)")
    ax.set_title("Answers per question in the source")
    return Plot("Answers per question", _save(fig, folder, "answers_per_question"),
                "Only questions with two or more answers can give pairs.")


def write_plots(folder: Path, kind: str, splits: dict[str, pl.DataFrame], stats: dict) -> list[Plot]:
    """Write the set's plots as PNG under folder/plots and return them in card order."""
    frame = pl.concat(list(splits.values()))
    if frame.height == 0:
        return []
    # Titles at a fixed height: placing them automatically measures every tick label (a fifth of the plot time), and
    # these plots have no tick labels above the axes for a title to clear.
    with matplotlib.rc_context({"axes.titley": 1.0}):
        plots: list[Plot | None] = [_length_plot(folder, kind, frame)]
        if kind == "pairs":
            plots += [_ratio_plot(folder, frame), _time_gap_plot(folder, frame), _p_chosen_better_plot(folder, frame),
                      _pair_lengths_plot(folder, frame, stats.get("length") or {})]
        if stats.get("answers_per_question"):
            plots.append(_answers_per_question_plot(folder, stats["answers_per_question"]))
    return [plot for plot in plots if plot is not None]


# ---------------------------------------------------------------------------------------------------------------
# Pairs too long for RewardTrainer
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LongPairs:
    tokenizer: str
    chars_per_token: float
    count: int


def pairs_over_token_limit(frame: pl.DataFrame, max_length: int = REWARD_MAX_LENGTH) -> list[LongPairs]:
    """Per tokenizer rate: pairs whose question + longer answer has more than max_length estimated tokens."""
    characters = pl.col("prompt").str.len_chars() + pl.max_horizontal(
        pl.col("chosen").str.len_chars(), pl.col("rejected").str.len_chars())
    longest = frame.select(characters.alias("characters"))["characters"]
    return [LongPairs(name, rate, int((longest > max_length * rate).sum())) for name, rate in CHARS_PER_TOKEN.items()]


# ---------------------------------------------------------------------------------------------------------------
# Card
# ---------------------------------------------------------------------------------------------------------------

def card_data(kind: str, configs: dict[str, dict[str, str]], folder: Path, rows: int, params: dict) -> DatasetCardData:
    """Front matter: Hub metadata, one config per format (default = canonical parquet) and the parquet features."""
    source = str(params.get("source", ""))
    data = DatasetCardData(
        language=["zh"],
        license=LICENSE,
        pretty_name=f"Zhihu RLHF {'instruct set' if kind == 'instruct' else 'preference pairs'}",
        size_categories=[size_category(rows)],
        task_categories=["text-generation", "question-answering"] if kind == "instruct"
        else ["text-generation", "reinforcement-learning"],
        tags=["zhihu", "chinese", "sft"] if kind == "instruct" else ["zhihu", "chinese", "rlhf", "dpo", "preference"],
        source_datasets=[source] if "/" in source and not Path(source).exists() else None,
    )
    infos = DatasetInfosDict()
    for name, files in configs.items():
        if not all(path.endswith(".parquet") for path in files.values()):
            continue  # JSON configs: datasets infers their features when loading
        splits = SplitDict()
        download_size = dataset_size = 0
        features = None
        for split, path in files.items():
            table = pq.read_table(folder / path)
            features = Features.from_arrow_schema(table.schema)
            splits.add(SplitInfo(name=split, num_bytes=table.nbytes, num_examples=table.num_rows))
            download_size += (folder / path).stat().st_size
            dataset_size += table.nbytes
        infos[name] = DatasetInfo(config_name=name, features=features, splits=splits,
                                  download_size=download_size, dataset_size=dataset_size)
    infos.to_dataset_card_data(data)
    MetadataConfigs({
        name: {"data_files": [{"split": split, "path": path} for split, path in files.items()],
               **({"default": True} if name == "default" else {})}
        for name, files in configs.items()
    }).to_dataset_card_data(data)
    return data


def _flatten(params: dict, prefix: str = "") -> dict:
    """{"pairs": {"min_ratio": 2}} -> {"pairs.min_ratio": 2}: one table row per option."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _finite(value: float | None) -> float | None:
    """An optional bound as the card shows it: None where it is off (infinite)."""
    return value if value is not None and np.isfinite(value) else None


def _template() -> str:
    return resources.files("zhihu_rlhf.data_cards").joinpath(TEMPLATE).read_text(encoding="utf-8")


def render_card(kind: str, splits: dict[str, pl.DataFrame], stats: dict, build: dict,
                configs: dict[str, dict[str, str]], plots: list[Plot], folder: Path) -> str:
    """The README.md text: front matter + the template filled with this set's counts, parameters and plots."""
    rows = sum(frame.height for frame in splits.values())
    params = build["params"]
    formats = build["formats_written"]
    every_split = pl.concat(list(splits.values()))
    data = card_data(kind, configs, folder, rows, params)
    card = DatasetCard.from_template(
        data,
        template_str=_template(),
        kind=kind,
        rows=rows,
        split_rows={split: frame.height for split, frame in splits.items()},
        stats_source=params.get("source", "unknown source"),
        columns=[(name, schema.meanings(kind)[name]) for name in splits["train"].columns],
        stats=stats,
        rows_dropped=sorted((stats.get("rows_dropped") or {}).items(), key=lambda item: -item[1]),
        dedupe=[(key, json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value)
                for key, value in (stats.get("dedupe") or {}).items()],
        funnel=stats.get("funnel") or [],
        params=[(key, json.dumps(value, ensure_ascii=False, default=str)) for key, value in _flatten(params).items()],
        rules=params.get("pairs") if isinstance(params.get("pairs"), dict) else params,
        tool_version=params.get("tool_version", "unknown"),
        params_hash=build["params_hash"],
        formats=formats,
        configs=[name for name in configs if name != "default"],
        json_formats=[name for name in formats if name not in configs],  # only parquet formats are configs
        long_pairs=pairs_over_token_limit(every_split) if kind == "pairs" else [],
        reward_max_length=REWARD_MAX_LENGTH,
        skipped_formats=[name for name in build["formats"] if name not in build["formats_written"]],
        keep_author_ids=build["keep_author_ids"],
        plots=plots,
        repo_id=REPO_PLACEHOLDER,
        llamafactory_name=f"zhihu_rlhf_{kind}",
        vote_model=stats.get("vote_model"),
        mean_p_chosen_better=every_split["p_chosen_better"].mean() if kind == "pairs" and rows else None,
        length=stats.get("length") if kind == "pairs" else None,
        length_bound=_finite(params.get("pairs", {}).get("max_length_ratio")) if isinstance(params.get("pairs"), dict) else None,
        instruct_ranking=stats.get("instruct_ranking") if kind == "instruct" else None,
    )
    return str(card) + "\n"
