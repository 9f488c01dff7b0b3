"""SFT throughput and MFU: `python -m zhihu_rlhf.train sft` vs TRL's SFTTrainer, same model, same data, one GPU.

    python benchmarks/bench_sft_gpu.py                     # Qwen2.5-0.5B-sized model, random init, H100
    python benchmarks/bench_sft_gpu.py --smoke             # 2-layer model on CPU: checks the script end to end

No download: the model is built from a config with Qwen2.5-0.5B's shapes (24 layers, hidden 896, 14 heads / 2 KV
heads, MLP 4864, vocab 151936, q/k/v bias, tied embeddings; written as a Llama config with attention_bias so the
saved folder reloads with its byte-level ByT5 tokenizer). Data: synthetic Chinese prompt/answer pairs, written once
as an instruct folder for our trainer and, tokenized by the same code (identical ids and completion masks), as a
pre-tokenized dataset for TRL (`input_ids` + `completion_mask`, packing="bfd", completion_only_loss).

Both runs: bf16 autocast over fp32 weights, AdamW, cosine schedule, `--batch-tokens` tokens per optimizer step,
no gradient checkpointing. Attention `--attn-impl auto` (the trainer's default): flash_attention_2 when flash-attn is
installed on the GPU, else sdpa, the same kernel for both. Ours then runs packed rows with their sequence boundaries
passed to the kernel (flash) or padded length buckets of at most --batch-tokens tokens with padding (sdpa, and the
CPU smoke run); TRL one packed row of max_length (padding-free with position ids, as its packing="bfd" does).
Throughput = tokens / wall time over optimizer steps after the first `--skip-steps` (warm-up).
MFU = model FLOPs / time / peak, model FLOPs per step = 6 * N * tokens + 6 * layers * hidden * sum(len_i^2)
(N includes the LM head, i.e. the usual convention that counts logits for every token; our trainer computes logits
only for completion tokens, so part of its lead is work it does not do).
TRL is a benchmark-only dependency (`pip install trl`); the library never imports it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from zhihu_rlhf.train import options, prompts, report, sft

CHARS = "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感"

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM


def qwen25_05b_like_config(vocab_size: int, pad_id: int, eos_id: int, smoke: bool):
    from transformers import LlamaConfig

    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if not smoke:
        dims = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        attention_bias=True,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        **dims,
    )


def synthetic_rows(n: int, seed: int, max_prompt_chars: int, max_answer_chars: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    text = lambda k: "".join(rng.choice(CHARS) for _ in range(k))  # noqa: E731
    return [
        {"prompt": text(rng.randint(10, max_prompt_chars)) + "？", "completion": text(rng.randint(max_answer_chars // 8, max_answer_chars))}
        for _ in range(n)
    ]


def write_instruct(root: Path, train: list[dict], test: list[dict]) -> Path:
    (root / "data").mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        pl.DataFrame(rows).write_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def run_ours(args, model_dir: Path, data_dir: Path, work: Path) -> dict:
    out = work / "ours"
    argv = [
        "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--epochs", "1",
        "--batch-tokens", str(args.batch_tokens), "--max-len", str(args.max_len), "--grad-accum", "1",
        "--lr", "2e-5", "--save-steps", "0", "--attn-impl", args.attn_impl, "--device", args.device,
    ]
    sft.train(options.parse_options(sft.SFTOptions, argv, "sft", ""))
    records = [r for r in report.read_metrics(out) if r["split"] == "train"]
    # `tokens` is cumulative; each step's own count over its tokens_per_s is its wall time.
    step_tokens = [r["tokens"] - prev for r, prev in zip(records, [0] + [r["tokens"] for r in records[:-1]], strict=True)]
    kept = list(zip(records, step_tokens, strict=True))[args.skip_steps :]
    return {
        "steps": len(kept),
        "tokens": sum(tok for _, tok in kept),
        "seconds": sum(tok / r["tokens_per_s"] for r, tok in kept),
    }


def run_trl(args, model_dir: Path, tokenizer, train_rows: list[dict], work: Path) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ids, masks = [], []
    for row in train_rows:
        input_ids, prompt_len = prompts.encode_example(tokenizer, row["prompt"], row["completion"], "plain", args.max_len)
        ids.append(input_ids)
        masks.append([0] * prompt_len + [1] * (len(input_ids) - prompt_len))
    dataset = datasets.Dataset.from_dict({"input_ids": ids, "completion_mask": masks})

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    class CountingTrainer(SFTTrainer):
        step_tokens: list[int] = []

        def training_step(self, model, inputs, *rest, **kw):
            CountingTrainer.step_tokens.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *rest, **kw)

    # use_kernels=False as our loader does: both trainers run the model's own torch layers, no Hub kernels.
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=trl_attn_impl(args), use_kernels=False
    )
    config = SFTConfig(
        output_dir=str(work / "trl"), num_train_epochs=1, per_device_train_batch_size=1, gradient_accumulation_steps=1,
        max_length=args.batch_tokens, packing=True, packing_strategy="bfd", completion_only_loss=True,
        learning_rate=2e-5, lr_scheduler_type="cosine", warmup_steps=0.03, bf16=args.device == "cuda",
        use_cpu=args.device == "cpu", logging_steps=10, save_strategy="no", report_to="none",
        dataloader_num_workers=2, seed=42,
    )
    timer = Timer()
    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    kept_tokens = CountingTrainer.step_tokens[args.skip_steps :]
    kept_times = timer.times[args.skip_steps :]
    return {"steps": len(kept_times), "tokens": sum(kept_tokens), "seconds": sum(kept_times)}


def trl_attn_impl(args) -> str:
    """The kernel our "auto" resolves to on this machine (batching.choose_attention), for TRL's model too."""
    from transformers.utils import is_flash_attn_2_available

    if args.attn_impl != "auto":
        return args.attn_impl
    return "flash_attention_2" if args.device == "cuda" and is_flash_attn_2_available() else "sdpa"



def save_model(model: torch.nn.Module, tokenizer, directory: Path) -> int:
    """Save a model built from a config, with its tokenizer, as a Hub-style folder both trainers load; its parameters."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def print_results(results: dict, json_path: Path | None) -> None:
    print(json.dumps(results, indent=2))
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--examples", type=int, default=4000, help="training examples")
    parser.add_argument("--max-len", type=int, default=2048, help="tokens per example")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tokens per optimizer step (one packed row)")
    parser.add_argument("--skip-steps", type=int, default=3, help="warm-up steps left out of the timing")
    parser.add_argument("--attn-impl", default="auto", help="attention kernel for both trainers (auto: as the trainer picks)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="also run TRL SFTTrainer")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="peak bf16 TFLOP/s (0 = from the GPU name)")
    parser.add_argument("--smoke", action="store_true", help="2-layer model, 48 short examples, CPU")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.smoke:
        args.examples, args.max_len, args.batch_tokens, args.device, args.skip_steps = 48, 256, 1024, "cpu", 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU (run with --smoke for the CPU check)", file=sys.stderr)
        return 2

    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:
        # Byte tokens: a Chinese character is 3 tokens. Prompts up to ~1/4 of max_len, answers the rest.
        rows = synthetic_rows(args.examples + 64, seed=0, max_prompt_chars=args.max_len // 12, max_answer_chars=args.max_len // 4)
        data_dir = write_instruct(work / "data", rows[: args.examples], rows[args.examples :])
        config = qwen25_05b_like_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, args.smoke)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model_dir = work / "model"
        n_params = save_model(model, tokenizer, model_dir)
        del model
        lengths = [len(prompts.encode_example(tokenizer, r["prompt"], r["completion"], "plain", args.max_len)[0]) for r in rows[: args.examples]]
        avg_sq = sum(n * n for n in lengths) / sum(lengths)  # attention cost per token ~ length

        device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), 0.0)
        flops_per_token = 6.0 * n_params + 6.0 * config.num_hidden_layers * config.hidden_size * avg_sq
        results = {"device": device_name, "params": n_params, "examples": args.examples, "dataset_tokens": sum(lengths),
                   "batch_tokens": args.batch_tokens, "attn_impl": trl_attn_impl(args),
                   "flops_per_token": flops_per_token, "peak_tflops": peak, "runs": {}}

        def record(name: str, run: dict) -> None:
            """Add a finished run with its throughput and MFU, and write the figures so far (a later failure keeps them)."""
            run["tokens_per_s"] = run["tokens"] / run["seconds"]
            run["mfu"] = run["tokens_per_s"] * flops_per_token / (peak * 1e12) if peak else None
            results["runs"][name] = run
            print_results(results, args.json)

        record("zhihu_rlhf", run_ours(args, model_dir, data_dir, work))
        if args.peer:
            try:
                import trl  # noqa: F401
            except ImportError:
                print("trl not installed: peer skipped (pip install trl)", file=sys.stderr)
            else:
                record("trl_sfttrainer", run_trl(args, model_dir, tokenizer, rows[: args.examples], work))
                runs = results["runs"]
                results["speedup_vs_trl"] = runs["zhihu_rlhf"]["tokens_per_s"] / runs["trl_sfttrainer"]["tokens_per_s"]
        print_results(results, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
