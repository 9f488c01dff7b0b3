"""PPO, RLOO and GRPO on one GPU: generated + trained tokens/s and peak memory, Qwen2.5-0.5B (full) and 1.5B (LoRA).

    python benchmarks/bench_rl_gpu.py --json rl_gpu.json      # one GPU; both sizes, all three stages
    python benchmarks/bench_rl_gpu.py --smoke                  # 2-layer model on the CPU: checks the script only

No download: each policy is built from a config with Qwen2.5's shapes (0.5B: 24 layers, hidden 896, 14 / 2 heads,
MLP 4864; 1.5B: 28 layers, hidden 1536, 12 / 2 heads, MLP 8960; vocab 151936, tied embeddings; a Llama config with
attention_bias, so the folder reloads with the byte-level ByT5 tokenizer), random init, and the reward model is the
same shapes as a one-output classifier (random init: throughput and memory do not depend on what it prefers).
Prompts: 512 synthetic Chinese questions (bench_rlhf_gpu.synthetic_sets). Every stage runs the CLI's code path
with the same sampling (--max-new-tokens, prompts per iteration, K = 4 samples per prompt for RLOO/GRPO and 1 for
PPO, so PPO gets 4x the prompts for the same sequences per iteration), --grad-ckpt, bf16 autocast.

Per stage: generated tokens/s (response tokens / rollout time, policy and reference and RM passes included),
trained tokens/s, both from OUT/metrics.jsonl, and torch.cuda.max_memory_allocated over the stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench_rlhf_gpu import synthetic_sets
from zhihu_rlhf.train import grpo, options, ppo, report, rloo

SHAPES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
STAGES = {"ppo": (ppo, ppo.PPOOptions), "rloo": (rloo, rloo.RLOOOptions), "grpo": (grpo, grpo.GRPOOptions)}


def qwen25_like(folder: Path, size: str, kind: str) -> Path:
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = ByT5Tokenizer()
    config = LlamaConfig(
        vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        attention_bias=True, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, num_labels=1, **SHAPES[size],
    )
    (LlamaForCausalLM if kind == "causal-lm" else LlamaForSequenceClassification)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_stage(stage: str, argv: list[str], device: str) -> dict:
    import torch

    module, opts_cls = STAGES[stage]
    opts = options.parse_options(opts_cls, argv, stage, "")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    module.train(opts)
    seconds = time.perf_counter() - t0
    records = [r for r in report.read_metrics(opts.out) if r["split"] == "train"][1:]  # the first is warm-up
    rollout_s = sum(r["response_tokens"] / r["rollout_tokens_per_s"] for r in records)
    update_s = sum(r["trained_tokens"] / r["train_tokens_per_s"] for r in records)
    generated, trained = sum(r["response_tokens"] for r in records), sum(r["trained_tokens"] for r in records)
    return {
        "seconds": seconds,
        "generated_tokens_per_s": generated / rollout_s,
        "trained_tokens_per_s": trained / update_s,
        "generated_plus_trained_per_s": (generated + trained) / (rollout_s + update_s),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2-layer model on the CPU (checks the script only)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=16, help="RLOO/GRPO prompts per iteration (x K = 4 samples)")
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    runs = [("smoke", False)] if args.smoke else [("0.5B", False), ("1.5B", True)]
    if args.smoke:
        args.max_new_tokens, args.prompts, args.iterations = 8, 2, 2
    work = Path(tempfile.mkdtemp(prefix="bench-rl-gpu-"))
    _, pairs = synthetic_sets(work, 8, 512, seed=0)
    results: dict = {"device": device, "max_new_tokens": args.max_new_tokens, "k": 4, "runs": {}}
    for size, lora in runs:
        policy, rm = qwen25_like(work / f"policy-{size}", size, "causal-lm"), qwen25_like(work / f"rm-{size}", size, "reward")
        for stage in STAGES:
            k = 1 if stage == "ppo" else 4
            argv = [
                "--policy", str(policy), "--reward", str(rm), "--data", str(pairs), "--out", str(work / f"{stage}-{size}"),
                "--device", device, "--save-steps", "0", "--max-new-tokens", str(args.max_new_tokens),
                "--rollout-batch-size", str(args.prompts * 4 // k), "--micro-batch-size", "16", "--grad-accum", "4",
                "--max-iterations", str(args.iterations), "--grad-ckpt",
            ]
            argv += ["--ppo-epochs", "1"] if stage == "ppo" else ["--num-generations", str(k)]
            argv += ["--beta", "0.04"] if stage == "grpo" else []
            argv += ["--lora", "--lr", "1e-5"] if lora else []
            key = f"{stage} {size}{' LoRA' if lora else ''}"
            try:
                results["runs"][key] = run_stage(stage, argv, device)
            except Exception as err:  # noqa: BLE001 - one stage's failure is reported; the others still run
                traceback.print_exc()
                results["runs"][key] = {"error": f"{type(err).__name__}: {err}"}
            print(key, json.dumps(results["runs"][key]), flush=True)
            if args.json:  # after every stage, so that a run cut off later keeps what it measured
                args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))  # the JSON file was written after the last stage
    return 0


if __name__ == "__main__":
    sys.exit(main())
