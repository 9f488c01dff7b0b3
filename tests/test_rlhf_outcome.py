"""benchmarks/rlhf_outcome.py --quick: the learning check of the outcome benchmark, and every policy stage run once
on tiny sizes. A reward model trained on truth-labelled pairs of the readable world must order held-out answers by
their gold quality better than chance; if it cannot, no comparison of recipes made with this setup says anything.
The policy stages must give complete, finite records measured the same way for every policy."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "rlhf_outcome.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("rlhf_outcome", BENCHMARK)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["rlhf_outcome"] = bench  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(bench)
    return bench


def test_quick_run_learns_and_measures_every_policy_stage(tmp_path: Path, capsys) -> None:
    bench = _load_benchmark()
    out, plot, work = tmp_path / "records.json", tmp_path / "curves.png", tmp_path / "work"
    bench.main(["--quick", "--stages", "rm,sft,dpo,ppo,rloo,grpo", "--json", str(out), "--plot", str(plot),
                "--workdir", str(work), "--dpo-beta", "0.2"])
    printed = capsys.readouterr().out
    assert bench.QUICK.dpo_beta != 0.2 and "| `beta` | `0.2` |" in (work / "readable-oracle-0" / "dpo" / "README.md").read_text()
    records = json.loads(out.read_text())
    assert all(set(r) == set(bench.RECORD_FIELDS) for r in records)
    assert {(r["world"], r["seed"]) for r in records} == {("readable", 0)}
    by_stage = {stage: [r for r in records if r["stage"] == stage] for stage in bench.STAGES}

    [rm] = by_stage["rm"]
    assert rm["recipe"] == "oracle"
    # 300 held-out pairs: chance is 0.5 with a standard error under 0.03
    assert rm["gold_accuracy"] > 0.6, rm
    assert math.isfinite(rm["style_sensitivity"]) and math.isfinite(rm["length_sensitivity"])
    assert rm["gold_gain"] is None and rm["kl"] is None

    max_tokens = bench.QUICK.max_new_tokens
    policies = [r for stage in ("sft", "dpo", *bench.RL_STAGES) for r in by_stage[stage]]
    for r in policies:
        assert all(math.isfinite(r[f]) for f in ("gold", "gold_gain", "kl", "length")), r
        assert -2 <= r["gold"] <= 2 and 0 < r["length"] <= max_tokens, r
        assert r["gold_accuracy"] is None and r["style_sensitivity"] is None

    sft = {r["recipe"]: r for r in by_stage["sft"]}
    assert set(sft) == {"project", "article"}
    assert sft["article"]["gold_gain"] == 0.0  # the comparison is against the article rule's SFT
    assert sft["project"]["gold_gain"] == sft["project"]["gold"] - sft["article"]["gold"]
    # A policy measured against itself: the KL estimate is exactly 0.
    assert sft["project"]["kl"] == 0.0 and sft["article"]["kl"] == 0.0 and sft["project"]["proxy"] is None

    dpo_run = sorted(by_stage["dpo"], key=lambda r: r["step"])
    # the SFT start, the checkpoint kept halfway (96 pairs, 16 a step: 6 steps), the final policy
    assert [r["step"] for r in dpo_run] == [0, 3, 6], dpo_run
    assert dpo_run[0]["kl"] == 0.0 and dpo_run[0]["gold"] == sft["project"]["gold"]
    dpo = dpo_run[-1]
    assert dpo["gold_gain"] == dpo["gold"] - sft["project"]["gold"]
    assert all(math.isfinite(r["proxy"]) for r in dpo_run)  # the recipe's RM exists: DPO's responses are scored too
    assert bench.final_records(dpo_run) == [dpo]  # the tables report the final policy, not a point on the way

    starts = []
    for stage in bench.RL_STAGES:
        runs = sorted(by_stage[stage], key=lambda r: r["step"])
        # the SFT start, the checkpoint kept at every iteration, the final policy
        assert [r["step"] for r in runs] == list(range(bench.QUICK.rl_iterations + 1)), runs
        start = runs[0]
        # The start is the project-rule SFT policy, measured on the same prompts with the same sampling.
        assert start["kl"] == 0.0 and start["gold_gain"] == 0.0 and start["gold"] == sft["project"]["gold"], start
        assert all(math.isfinite(r["proxy"]) for r in runs)
        starts.append(start["proxy"])
    assert starts[0] == starts[1] == starts[2]  # same start, same RM, same prompts and random stream
    assert plot.stat().st_size > 0
    # The records alone give the same tables again, with nothing trained; a file given twice counts once.
    tables = printed[printed.index("\nrm\n"):]
    bench.main(["--report", f"{out},{out}"])
    assert capsys.readouterr().out == tables

    # The RM is read at the end of the whole text, past the training window: padding there changes the score.
    prompt = "如何评价这个问题？"
    long_answer = "\n\n".join(["作为过来人，聊几句。", *["因此，先小成本试一试，看看效果再说。"] * 40, "祝好。"])
    plain, padded = bench.rm_scores(work / "readable-oracle-0" / "rm", [prompt] * 2,
                                    [long_answer, bench.synth.pad_with_asides(long_answer, bench.ASIDE_PAD)], "cpu")
    assert plain != padded


@pytest.mark.parametrize("family", ["gpt-neox", "gpt2"])  # rotary positions; a learned table of 1024
def test_a_pretrained_start_runs_every_stage_through_its_own_tokenizer(tmp_path: Path, fixture_model_dir,
                                                                       family: str) -> None:
    """--model: the path a GPU run takes (a saved Hub-style folder instead of the small start built here), on tiny
    models with their own byte-level tokenizers and no chat template (a ChatML template's system prompt is longer
    than the quick budget's 64-token prompts in a tiny tokenizer). The RM probes are scored whole, longer than the
    tiny GPT-2's position table holds, so it reads them cut to its table. A random tiny model learns nothing, so
    this checks that every stage runs and is measured, not what it learns."""
    bench = _load_benchmark()
    out, work = tmp_path / "records.json", tmp_path / "work"
    bench.main(["--quick", "--model", str(fixture_model_dir(family)), "--stages", "rm,sft,dpo,ppo",
                "--json", str(out), "--workdir", str(work)])
    records = json.loads(out.read_text())
    assert {r["stage"] for r in records} == {"rm", "sft", "dpo", "ppo"}
    assert not (work / "start-readable").exists()  # no small start was built beside the given one
    for r in records:
        measured = ("gold_accuracy", "style_sensitivity") if r["stage"] == "rm" else ("gold", "gold_gain", "kl", "length")
        assert all(math.isfinite(r[f]) for f in measured), r


def test_budget_sizes_only_the_small_start(capsys) -> None:
    """--budget larger resizes the small random start; with --quick or --model it would be silently ignored, so it
    is refused with a usage error before anything is built."""
    bench = _load_benchmark()
    for extra in (["--quick"], ["--model", "some/model"]):
        try:
            bench.main(["--budget", "larger", *extra])
        except SystemExit as stop:
            assert stop.code == 2
        else:
            raise AssertionError(f"--budget larger {extra} ran")
        assert "--budget" in capsys.readouterr().err


def test_probes_are_the_same_in_every_process() -> None:
    """Runs that compare policies measure them on the same held-out prompts: the probe draw must not depend on the
    row order a process's joins happen to give (two runs of one command once shared 34 of 59 test questions)."""
    import subprocess

    script = (
        "import sys, tempfile; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from test_rlhf_outcome import _load_benchmark; b = _load_benchmark();"
        "t = tempfile.mkdtemp(); w = b.load_world('readable_popularity', b.QUICK, Path(t)); p = b.make_probes(w, b.QUICK);"
        "print(repr((p.pairs.rows(), p.policy_prompts, p.answers, p.swapped)))"
    )
    root = BENCHMARK.parent.parent
    drawn = [subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True).stdout
             for _ in range(2)]
    assert drawn[0] == drawn[1] and len(drawn[0]) > 1000


def test_matched_kl_reads_each_run_where_it_first_gets_that_far(capsys) -> None:
    """DPO on cleaner pairs moves further at the same beta and lr, so final gains are compared at one KL that
    every run reaches: the smallest final KL, read off each run's measured curve, linear between points."""
    bench = _load_benchmark()

    def run(recipe: str, seed: int, points: list[tuple[float, float]]) -> list[dict]:
        return [bench.record("w", recipe, 10, seed, "dpo", step=step, kl=kl, gold_gain=gain)
                for step, (kl, gain) in enumerate(points)]

    records = [*run("project", 0, [(0.0, 0.0), (2.0, 0.4), (6.0, 0.6), (20.0, 0.9)]),
               *run("project", 1, [(0.0, 0.0), (4.0, 0.3), (8.0, 0.4), (22.0, 1.0)]),
               *run("article", 0, [(0.0, 0.0), (1.0, 0.1), (3.0, 0.3), (4.0, 0.5)]),
               *run("article", 1, [(0.0, 0.0), (1.0, 0.2), (5.0, 0.44), (10.0, 0.4)])]
    curve = [r for r in records if r["recipe"] == "project" and r["seed"] == 0]
    assert bench.gain_at_kl(curve, 4.0) == 0.5  # halfway between (2, 0.4) and (6, 0.6)
    assert bench.gain_at_kl(curve, 25.0) is None  # never got that far
    # An RL run can overshoot and come back: the first time it gets that far counts.
    back = run("x", 0, [(0.0, 0.0), (10.0, 1.0), (3.0, 0.5), (12.0, 2.0)])
    assert bench.gain_at_kl(back, 5.0) == 0.5
    bench.print_matched_kl(records, "dpo")
    table = capsys.readouterr().out
    # The smallest final KL is article seed 0's 4.0. There project gains 0.5 and 0.3, article 0.5 and 0.38
    # (a quarter of the way from (5, 0.44) back to (1, 0.2)): article minus project 0.0 and 0.08.
    assert "matched KL of 4.00 nats" in table
    assert "| project | 21.000 ± 12.710 | 0.400 ± 1.271 | – | 2 of 2 |" in table
    assert "| article | 7.000 ± 38.130 | 0.440 ± 0.763 | 0.040 ± 0.508 | 2 of 2 |" in table
