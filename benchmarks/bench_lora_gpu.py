"""LoRA and QLoRA SFT of a Qwen2.5-7B-shaped model on one GPU: peak GPU memory and tokens/s (issue 14).

    python benchmarks/bench_lora_gpu.py                 # 7B shapes, random init, --lora then --lora --load-in-4bit
    python benchmarks/bench_lora_gpu.py --smoke         # 2-layer model on the CPU, LoRA only: checks the script

No download: the model is built from a config with Qwen2.5-7B's shapes (28 layers, hidden 3584, 28 heads / 4 KV
heads, MLP 18944, vocab 152064, q/k/v bias, untied embeddings; written as a Llama config with attention_bias so the
saved folder reloads with its byte-level ByT5 tokenizer) and saved once in bf16. Data: the synthetic Chinese
prompt/answer pairs of bench_sft_gpu.py. Both runs: `python -m zhihu_rlhf.train sft --lora --grad-ckpt`, packed
rows of --batch-tokens, one optimizer step per row. Peak memory = torch.cuda.max_memory_allocated over the run
(loading, training, saving); tokens/s over the steps after the first --skip-steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from bench_sft_gpu import print_results, save_model, synthetic_rows, write_instruct
from zhihu_rlhf.train import options, report, sft


def qwen25_7b_like_config(vocab_size: int, pad_id: int, eos_id: int, smoke: bool):
    from transformers import LlamaConfig

    dims = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064)
    if smoke:
        dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=vocab_size)
    return LlamaConfig(
        max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, attention_bias=True,
        tie_word_embeddings=False, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None, **dims,
    )


def run(args, model_dir: Path, data_dir: Path, out: Path, four_bit: bool) -> dict:
    argv = [
        "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--epochs", "1", "--lora",
        "--grad-ckpt", "--batch-tokens", str(args.batch_tokens), "--max-len", str(args.max_len), "--grad-accum", "1",
        "--lr", "1e-4", "--save-steps", "0", "--device", args.device,
    ]
    if four_bit:
        argv.append("--load-in-4bit")
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sft.train(options.parse_options(sft.SFTOptions, argv, "sft", ""))
    records = [r for r in report.read_metrics(out) if r["split"] == "train"]
    # `tokens` is cumulative; each step's own count over its tokens_per_s is its wall time.
    step_tokens = [r["tokens"] - p for r, p in zip(records, [0] + [r["tokens"] for r in records[:-1]], strict=True)]
    kept = list(zip(records, step_tokens, strict=True))[args.skip_steps :]
    tokens, seconds = sum(t for _, t in kept), sum(t / r["tokens_per_s"] for r, t in kept)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    return {"steps": len(kept), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_gib": peak, "final_train_loss": records[-1]["loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--examples", type=int, default=600, help="training examples")
    parser.add_argument("--max-len", type=int, default=2048, help="tokens per example")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tokens per optimizer step (one packed row)")
    parser.add_argument("--skip-steps", type=int, default=3, help="warm-up steps left out of the timing")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="2-layer model, 48 short examples, CPU, LoRA only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.smoke:
        args.examples, args.max_len, args.batch_tokens, args.device, args.skip_steps = 48, 256, 1024, "cpu", 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU (run with --smoke for the CPU check)", file=sys.stderr)
        return 2

    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    try:
        rows = synthetic_rows(args.examples + 32, seed=0, max_prompt_chars=args.max_len // 12,
                              max_answer_chars=args.max_len // 4)
        data_dir = write_instruct(work / "data", rows[: args.examples], rows[args.examples :])
        config = qwen25_7b_like_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, args.smoke)
        torch.manual_seed(0)
        with torch.device(args.device):  # random init straight on the GPU, saved in bf16 like a Hub checkpoint
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model_dir = work / "model"
        n_params = save_model(model, tokenizer, model_dir)
        del model
        results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "params": n_params,
                   "batch_tokens": args.batch_tokens, "max_len": args.max_len}
        results["lora"] = run(args, model_dir, data_dir, work / "lora", four_bit=False)
        print_results(results, args.json)  # written now, so that a failed QLoRA run keeps the LoRA figures
        if args.device == "cuda" and importlib.util.find_spec("bitsandbytes") is None:
            print("bitsandbytes not installed: QLoRA skipped (pip install -e '.[qlora]')", file=sys.stderr)
        elif args.device == "cuda":
            results["qlora"] = run(args, model_dir, data_dir, work / "qlora", four_bit=True)
        print_results(results, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
