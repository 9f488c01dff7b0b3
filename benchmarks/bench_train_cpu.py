"""SFT, RM and DPO tokens/s on a CPU: `python -m zhihu_rlhf.train` vs TRL's SFTTrainer, RewardTrainer, DPOTrainer.

    OMP_NUM_THREADS=1 flock /tmp/heavy.lock python benchmarks/bench_train_cpu.py --json bench_train_cpu.json

Same run, same process (so the same threads), each task --repeat times, ours then TRL, then TRL then ours: the
same ~4M-parameter Llama built from a config (saved once, loaded by both), the same data (our embedded sample: the instruct set for SFT, the pairs set for
RM and DPO), tokenized once by our code (prompts.encode_example, plain template, byte-level ByT5 tokenizer) and
handed to TRL pre-tokenized (SFT, RM; TRL's DPOTrainer takes only text, so it gets our plain-template prompt and the
responses, and tokenizes them to the same lengths); the same max length and about the same tokens per
optimizer step (batch size x accumulation below), sdpa attention (transformers' default, ours "auto" on CPU), and
the same precision: fp32 (ours' CPU default; TRL with bf16=False) and bf16 autocast over fp32 weights (TRL's default,
also on a CPU; ours with --precision bf16).
TRL runs without gradient checkpointing (its configs default to it; ours only with --grad-ckpt) and with
its defaults otherwise (SFT: padded batches, full logits, its token-accuracy/entropy metrics; DPO:
reference forward every step; RM: its defaults). Ours with its CPU defaults: padded, length-bucketed micro-batches,
log-probs only at target positions, DPO reference log-probs computed once before training.

Throughput = real (non-padding) tokens of the timed optimizer steps / their wall time, the first --skip-steps steps
left out (warm-up). Ours: from its metrics.jsonl (each step's tokens and tokens/s); TRL: a callback around each
optimizer step and the attention masks of the batches it trains on. "run" = the whole train() call (loading,
tokenizing, DPO's reference pass, eval), for context.
TRL is a benchmark-only dependency (`pip install -e '.[bench]'`); the library never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import torch

from bench_sft_gpu import print_results, save_model
from zhihu_rlhf.train import dpo, options, report, rm, sft
from zhihu_rlhf.train.data import load_split
from zhihu_rlhf.train.prompts import encode_example, render_prompt


def llama_4m_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=5, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )


def write_split_folder(root: Path, train: list[dict], test: list[dict]) -> Path:
    (root / "data").mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        pl.DataFrame(rows).write_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


@contextlib.contextmanager
def llama_4m_workdir(prefix: str) -> Iterator[tuple[Path, Any, int]]:
    """A temporary folder holding the ~4M Llama (seed 0) and the ByT5 tokenizer in model/, both trainers' start;
    removed afterwards. Yields (folder, tokenizer, parameter count). torch's threads follow OMP_NUM_THREADS."""
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    tokenizer = ByT5Tokenizer()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(llama_4m_config(tokenizer), dtype=torch.float32)
        n_params = save_model(model, tokenizer, work / "model")
        del model
        yield work, tokenizer, n_params
    finally:
        shutil.rmtree(work, ignore_errors=True)


def alternating_runs(trainers: list[str], repeat: int, run: Callable[[str, int], dict], *label: str) -> dict[str, list[dict]]:
    """run(trainer, repeat) for each trainer, `repeat` times, alternating which goes first: on a shared machine load
    changes over minutes, and each repeat compares two runs made one right after the other. Prints each run."""
    runs: dict[str, list[dict]] = {name: [] for name in trainers}
    for index in range(repeat):
        for name in trainers if index % 2 == 0 else trainers[::-1]:
            result = run(name, index)
            runs[name].append(result)
            print(*label, name, json.dumps(result), flush=True)
    return runs


def ours_over_trl(runs: dict[str, list[dict]]) -> list[float]:
    """Our tokens/s over TRL's, repeat by repeat."""
    return [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(runs["zhihu_rlhf"], runs["trl"], strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# Ours


def run_ours(task: str, argv: list[str], skip_steps: int) -> dict:
    module = {"sft": sft, "rm": rm, "dpo": dpo}[task]
    opts_cls = {"sft": sft.SFTOptions, "rm": rm.RMOptions, "dpo": dpo.DPOOptions}[task]
    opts = options.parse_options(opts_cls, argv, task, "")
    t0 = time.perf_counter()
    module.train(opts)
    run_seconds = time.perf_counter() - t0
    records = [r for r in report.read_metrics(opts.out) if r["split"] == "train"]
    # `tokens` is cumulative; each step's own count over its tokens_per_s is its wall time.
    step_tokens = [r["tokens"] - prev for r, prev in zip(records, [0] + [r["tokens"] for r in records[:-1]], strict=True)]
    kept = list(zip(records, step_tokens, strict=True))[skip_steps:]
    return {
        "steps": len(kept),
        "tokens": sum(tok for _, tok in kept),
        "seconds": sum(tok / r["tokens_per_s"] for r, tok in kept),
        "run_seconds": run_seconds,
    }


# ----------------------------------------------------------------------------------------------------------------
# TRL


def run_trl(task: str, model_dir: Path, tokenizer, dataset, work: Path, args, precision: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    step_tokens: list[int] = []
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = 0.0

        def on_step_begin(self, *a, **k):
            step_tokens.append(0)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t0)

    def counting(trainer_cls):
        class Counting(trainer_cls):
            def training_step(self, model, inputs, *rest, **kw):
                step_tokens[-1] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
                return super().training_step(model, inputs, *rest, **kw)

        return Counting

    common = dict(
        output_dir=str(work), num_train_epochs=1, per_device_train_batch_size=args.batch_size[task],
        gradient_accumulation_steps=args.grad_accum[task], lr_scheduler_type="cosine", warmup_steps=0.03,
        gradient_checkpointing=False,  # TRL's configs turn it on by default; ours is off unless --grad-ckpt
        bf16=precision == "bf16",  # TRL's configs default to bf16 autocast, on a CPU too
        use_cpu=True, logging_steps=10, save_strategy="no", report_to="none", seed=42, max_length=args.max_len,
    )
    if task == "sft":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_kernels=False)
        config, trainer_cls = SFTConfig(learning_rate=2e-5, **common), SFTTrainer
    elif task == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, num_labels=1, use_kernels=False)
        model.config.pad_token_id = tokenizer.pad_token_id
        config, trainer_cls = RewardConfig(learning_rate=1e-5, **common), RewardTrainer
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_kernels=False)
        config, trainer_cls = DPOConfig(learning_rate=1e-6, **common), DPOTrainer
    trainer = counting(trainer_cls)(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    run_seconds = time.perf_counter() - t0
    kept = list(zip(step_tokens, step_times, strict=True))[args.skip_steps :]
    return {"steps": len(kept), "tokens": sum(t for t, _ in kept), "seconds": sum(s for _, s in kept), "run_seconds": run_seconds}


def trl_dataset(task: str, tokenizer, rows: list[dict], max_len: int):
    """Our token ids, in the pre-tokenized columns each TRL trainer accepts."""
    import datasets

    if task == "sft":
        ids, masks = [], []
        for row in rows:
            input_ids, prompt_len = encode_example(tokenizer, row["prompt"], row["completion"], "plain", max_len)
            ids.append(input_ids)
            masks.append([0] * prompt_len + [1] * (len(input_ids) - prompt_len))
        return datasets.Dataset.from_dict({"input_ids": ids, "completion_mask": masks})
    if task == "rm":
        chosen = [encode_example(tokenizer, r["prompt"], r["chosen"], "plain", max_len)[0] for r in rows]
        rejected = [encode_example(tokenizer, r["prompt"], r["rejected"], "plain", max_len)[0] for r in rows]
        return datasets.Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    # TRL 1.16's DPOTrainer takes text only: our plain prompt, the responses; it appends the eos and cuts
    # prompt + response to max_length from the start (ours keeps the prompt's end): same token counts.
    return datasets.Dataset.from_dict({
        "prompt": [render_prompt(tokenizer, r["prompt"], "plain") for r in rows],
        "chosen": [r["chosen"] for r in rows],
        "rejected": [r["rejected"] for r in rows],
    })


# ----------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", default="sft,rm,dpo", help="comma-separated: sft, rm, dpo")
    parser.add_argument("--max-len", type=int, default=512, help="tokens per example / per side of a pair")
    parser.add_argument("--sft-rows", type=int, default=256, help="first N instruct rows of the sample for SFT (of 1,142)")
    parser.add_argument("--pair-rows", type=int, default=160, help="first N pairs of the sample for RM and DPO (of 247)")
    parser.add_argument("--skip-steps", type=int, default=2, help="warm-up steps left out of the timing")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="also run TRL's trainers")
    parser.add_argument("--precisions", default="fp32,bf16", help="for each: ours --precision P and TRL bf16=(P == bf16)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each trainer per task, alternating which goes first")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    # Examples (SFT) or pairs (RM, DPO) per micro-batch and micro-batches per step: ~15k tokens per step for both.
    args.batch_size = {"sft": 8, "rm": 8, "dpo": 8}
    args.grad_accum = {"sft": 4, "rm": 2, "dpo": 2}
    with llama_4m_workdir("bench-train-cpu-") as (work, tokenizer, n_params):
        model_dir = work / "model"
        instruct = load_split("sample", "train", "instruct")[: args.sft_rows]
        pairs = load_split("sample", "train", "pairs")[: args.pair_rows]
        data = {
            "sft": write_split_folder(work / "instruct", instruct, load_split("sample", "test", "instruct")[:16]),
            "rm": write_split_folder(work / "pairs", pairs, load_split("sample", "test", "pairs")[:16]),
        }
        data["dpo"] = data["rm"]
        results: dict = {"threads": torch.get_num_threads(), "params": n_params, "max_len": args.max_len, "tasks": {}}
        for task in args.tasks.split(","):
            rows = instruct if task == "sft" else pairs
            # Ours: its --batch-tokens budget counts padding (rows x longest), 8 rows of max_len for SFT.
            size = ["--batch-tokens", str(8 * args.max_len)] if task == "sft" else ["--batch-size", str(args.batch_size[task])]
            lr = {"sft": "2e-5", "rm": "1e-5", "dpo": "1e-6"}[task]
            dataset = trl_dataset(task, tokenizer, rows, args.max_len)
            for precision in args.precisions.split(","):
                key = f"{task} {precision}"

                def run(name: str, repeat: int) -> dict:
                    out = work / f"{name}-{task}-{precision}-{repeat}"
                    if name == "zhihu_rlhf":
                        argv = [
                            "--model", str(model_dir), "--data", str(data[task]), "--out", str(out), "--epochs", "1",
                            "--max-len", str(args.max_len), "--grad-accum", str(args.grad_accum[task]), "--lr", lr,
                            "--save-steps", "0", "--device", "cpu", "--precision", precision, "--template", "plain", *size,
                        ]
                        result = run_ours(task, argv, args.skip_steps)
                    else:
                        result = run_trl(task, model_dir, tokenizer, dataset, out, args, precision)
                    result["tokens_per_s"] = result["tokens"] / result["seconds"]
                    return result

                runs = alternating_runs(["zhihu_rlhf", "trl"] if args.peer else ["zhihu_rlhf"], args.repeat, run, key)
                summary: dict = {
                    name: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in done)} for name, done in runs.items() if done
                }
                if args.peer:
                    summary["ours_over_trl_per_repeat"] = ours_over_trl(runs)
                    summary["ours_over_trl_median"] = summary["zhihu_rlhf"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
                results["tasks"][key] = {"runs": runs, "summary": summary}
                print(key, json.dumps(summary), flush=True)
        print_results(results, args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
