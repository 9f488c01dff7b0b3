"""GRPO (and RLOO) generated + trained tokens/s on a CPU: `python -m zhihu_rlhf.train grpo` vs TRL's GRPOTrainer.

    OMP_NUM_THREADS=1 flock /tmp/heavy.lock python benchmarks/bench_rl_cpu.py --json bench_rl_cpu.json

Same run, same process (so the same threads), each trainer --repeat times, alternating which goes first: the same
~4M-parameter Llama built from a config (bench_train_cpu.llama_4m_config; saved once, loaded by both) with the
byte-level ByT5 tokenizer, the same prompts (the first --prompts distinct questions of the embedded sample's pairs,
in our plain template, handed to TRL as that text), the same K samples per prompt, --max-new-tokens, prompts per
iteration, one optimisation pass per rollout (TRL: num_iterations=1), one optimizer step per rollout, fp32, the
same rule-based reward, no KL term (beta 0: TRL's default; no reference model is loaded on either side) and
TRL's default loss (dapo) on both. TRL otherwise runs with its defaults, except gradient checkpointing (its
config turns it on, ours only with --grad-ckpt) and bf16 (its config autocasts, also on a CPU; ours is fp32 on a
CPU unless --precision bf16): both off, as in bench_train_cpu.

Throughput = (response tokens generated + tokens through the update) / wall time of the iterations, the first
--skip iterations left out (warm-up). Ours: from its metrics.jsonl (each iteration's response_tokens,
trained_tokens and their rates). TRL: a callback timing each optimizer step (generation happens inside it) and its
_generate_and_score_completions output counted (completion tokens; prompt + completion tokens trained).
TRL is a benchmark/test extra (`pip install -e '.[bench]'`); the library never imports it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_sft_gpu import print_results
from bench_train_cpu import alternating_runs, llama_4m_workdir, ours_over_trl, write_split_folder
from zhihu_rlhf.train import grpo, options, report
from zhihu_rlhf.train.data import load_split
from zhihu_rlhf.train.prompts import render_prompt


def letter_share(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """The reward both trainers score with: share of ASCII letters in the response (cheap, rule-based).
    (TRL passes completions by keyword; ours imports this as --reward-fn bench_rl_cpu:letter_share.)"""
    return [sum(c.isascii() and c.isalpha() for c in r) / max(len(r), 1) for r in completions]


def run_ours(argv: list[str], skip: int) -> dict:
    opts = options.parse_options(grpo.GRPOOptions, argv, "grpo", "")
    t0 = time.perf_counter()
    grpo.train(opts)
    run_seconds = time.perf_counter() - t0
    records = [r for r in report.read_metrics(opts.out) if r["split"] == "train"][skip:]
    generated = sum(r["response_tokens"] for r in records)
    trained = sum(r["trained_tokens"] for r in records)
    seconds = sum(r["response_tokens"] / r["rollout_tokens_per_s"] + r["trained_tokens"] / r["train_tokens_per_s"] for r in records)
    return {"iterations": len(records), "generated": generated, "trained": trained, "seconds": seconds, "run_seconds": run_seconds}


def run_trl(model_dir: Path, prompts: list[str], work: Path, args) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    generated: list[int] = []
    trained: list[int] = []
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    class Counting(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            generated.append(int(out["completion_mask"].sum()))
            trained.append(int(out["completion_mask"].sum() + out["prompt_mask"].sum()))
            return out

    n_sequences = args.rollout_prompts * args.k
    config = GRPOConfig(
        output_dir=str(work), use_cpu=True, report_to="none", save_strategy="no", logging_steps=10, seed=42,
        per_device_train_batch_size=n_sequences, gradient_accumulation_steps=1, num_generations=args.k,
        max_completion_length=args.max_new_tokens, max_steps=args.iterations, learning_rate=1e-5,
        bf16=False, gradient_checkpointing=False,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_kernels=False)
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    trainer = Counting(model=model, reward_funcs=[letter_share], args=config, train_dataset=dataset,
                       processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    run_seconds = time.perf_counter() - t0
    kept = list(zip(generated, trained, times, strict=True))[args.skip :]
    return {
        "iterations": len(kept), "generated": sum(g for g, _, _ in kept), "trained": sum(t for _, t, _ in kept),
        "seconds": sum(s for _, _, s in kept), "run_seconds": run_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="distinct questions of the sample's pairs")
    parser.add_argument("--rollout-prompts", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--skip", type=int, default=1, help="warm-up iterations left out of the timing")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each trainer, alternating which goes first")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with llama_4m_workdir("bench-rl-cpu-") as (work, tokenizer, n_params):
        questions = list(dict.fromkeys(r["prompt"] for r in load_split("sample", "train", "pairs")))[: args.prompts]
        rows = [{"prompt": q, "chosen": "-", "rejected": "-"} for q in questions]
        data = write_split_folder(work / "prompts", rows, rows)
        rendered = [render_prompt(tokenizer, q, "plain") for q in questions]
        sequences = args.rollout_prompts * args.k

        def run(name: str, repeat: int) -> dict:
            out = work / f"{name}-{repeat}"
            if name == "zhihu_rlhf":
                argv = [
                    "--policy", str(work / "model"), "--reward-fn", "bench_rl_cpu:letter_share", "--data", str(data),
                    "--out", str(out), "--device", "cpu", "--template", "plain", "--num-generations", str(args.k),
                    "--rollout-batch-size", str(args.rollout_prompts), "--micro-batch-size", str(sequences),
                    "--grad-accum", "1", "--ppo-epochs", "1", "--max-new-tokens", str(args.max_new_tokens),
                    "--max-iterations", str(args.iterations), "--lr", "1e-5", "--save-steps", "0", "--beta", "0",
                ]
                result = run_ours(argv, args.skip)
            else:
                result = run_trl(work / "model", rendered, out, args)
            result["tokens_per_s"] = (result["generated"] + result["trained"]) / result["seconds"]
            return result

        runs = alternating_runs(["zhihu_rlhf", "trl"], args.repeat, run)
        results = {
            "threads": torch.get_num_threads(), "params": n_params, "k": args.k, "max_new_tokens": args.max_new_tokens,
            "rollout_prompts": args.rollout_prompts, "runs": runs,
            "median_tokens_per_s": {n: statistics.median(r["tokens_per_s"] for r in done) for n, done in runs.items()},
            "ours_over_trl_per_repeat": ours_over_trl(runs),
        }
        print_results(results, args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
