"""benchmarks/rlhf_outcome.py --quick: the learning check of the outcome benchmark. A reward model trained on
truth-labelled pairs of the readable world must order held-out answers by their gold quality better than chance;
if it cannot, no comparison of recipes made with this setup says anything."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "rlhf_outcome.py"


def test_quick_oracle_reward_model_beats_chance_on_gold(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("rlhf_outcome", BENCHMARK)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["rlhf_outcome"] = bench  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(bench)
    out = tmp_path / "records.json"
    bench.main(["--quick", "--json", str(out), "--workdir", str(tmp_path / "work")])
    [row] = json.loads(out.read_text())
    assert set(row) == set(bench.RECORD_FIELDS)
    assert (row["world"], row["recipe"], row["stage"]) == ("readable", "oracle", "rm")
    # 300 held-out pairs: chance is 0.5 with a standard error under 0.03
    assert row["gold_accuracy"] > 0.6, row
    assert row["gold_gain"] is None and row["kl"] is None
