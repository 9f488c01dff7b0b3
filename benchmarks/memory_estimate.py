"""GPU memory per training stage, ESTIMATED from bytes per parameter (nothing here is measured on a GPU).

    python benchmarks/memory_estimate.py            # the README's memory table (markdown)

Parameter counts are exact: each model is built on the meta device (no memory) from the shapes of the Qwen2.5
configs (hidden, MLP, layers, heads, KV heads, vocabulary, tied embeddings), as a causal LM and as the one-output
sequence classifier an RM or value model is; LoRA's trainable count comes from peft itself (r=16, all-linear, what
`--lora` adds), and the 4-bit share is the Linear weights inside the transformer blocks (what bitsandbytes
quantises; embeddings, norms and the heads stay bf16).

Bytes per parameter, as the trainer holds them:
    trained weight, full fine-tuning   16   fp32 weight 4 + fp32 gradient 4 + AdamW moments 8 (bf16 compute by autocast)
    frozen weight (RM, LoRA base)       2   bf16
    PPO's full-fine-tuning reference    4   fp32, the policy's own dtype, so KL at iteration 0 is exactly 0
    NF4 weight (QLoRA base)             0.516  4 bits + 8-bit absmax per 64 (double-quantised) + fp32 per 64x256
    LoRA adapter / RM score head       16   fp32, trained
Stages: SFT and DPO hold one trained causal LM (DPO's reference log-probs are computed once, before training, by
the same weights); RM one trained classifier; PPO a trained policy, a frozen reference, a trained value model and a
frozen RM, where with LoRA the reference is the policy's base and the RM the value model's base (adapters off),
so two bases instead of four. RLOO and GRPO (column RLOO/GRPO) hold no value model: a trained policy, its frozen
reference (with LoRA: the policy's base, adapters off) and a frozen RM; counted with both (GRPO with --beta 0 loads
no reference, and --reward-fn no RM: those runs hold less).
8 GPUs: full fine-tuning uses --shard (FSDP2: every byte above / 8), plus one gathered bf16 copy (2 bytes per
parameter) of the model being evaluated (SFT, RM, DPO) or generating (PPO's policy). LoRA and QLoRA use data
parallel (torchrun without --shard): each GPU holds what one GPU holds and the run is 8x faster; sharding a LoRA
run saves nothing at these sizes (its gathered bf16 copy outweighs the shards' savings), and 4-bit does not shard.
Every cell adds ACTIVATIONS_GB for activations, logits, the CUDA context and (PPO) the KV cache, with
--grad-ckpt and micro-batches of at most ~16k tokens: an allowance, not a measurement. "fits" = total <= 80 GB.
"""

from __future__ import annotations

import argparse

import torch

GB = 1e9
GPU_GB = 80.0
ACTIVATIONS_GB = 10.0
TRAINED, FROZEN, REFERENCE, NF4, ADAPTER = 16.0, 2.0, 4.0, 0.5 + 1 / 64 + 4 / (64 * 256), 16.0

# Shapes of the Qwen2.5 base configs: hidden, MLP, layers, attention heads, KV heads, vocabulary, tied embeddings.
QWEN25 = {
    "0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "3B": (2048, 11008, 36, 16, 2, 151936, True),
    "7B": (3584, 18944, 28, 28, 4, 152064, False),
    "14B": (5120, 13824, 48, 40, 8, 152064, False),
}


def count(size: str, kind: str) -> dict[str, int]:
    """Parameters of one model: total, 4-bit-quantisable (block Linear weights), LoRA trainable (r=16, all-linear)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config

    hidden, mlp, layers, heads, kv_heads, vocab, tied = QWEN25[size]
    config = Qwen2Config(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=tied, num_labels=1,
    )
    auto_cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto_cls.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # parameters() counts a tied weight once
    quantisable = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    task = TaskType.CAUSAL_LM if kind == "causal-lm" else TaskType.SEQ_CLS
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type=task)
    adapted = get_peft_model(model, lora, low_cpu_mem_usage=True)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    return {"total": total, "quantisable": quantisable, "lora": trainable}


def stage_bytes(stage: str, mode: str, gpus: int, lm: dict[str, int], cls: dict[str, int]) -> float:
    """Bytes one GPU holds for weights, gradients and optimizer states (plus the gathered copy when sharded)."""
    trained = [lm] if stage in ("SFT", "DPO", "RLOO/GRPO") else [cls] if stage == "RM" else [lm, cls]
    if mode == "full":
        held = sum(TRAINED * m["total"] for m in trained)
        if stage in ("PPO", "RLOO/GRPO"):  # the frozen reference (policy-shaped) and RM (classifier-shaped)
            held += REFERENCE * lm["total"] + FROZEN * cls["total"]
    elif mode == "LoRA":
        held = sum(FROZEN * m["total"] + ADAPTER * m["lora"] for m in trained)
    else:  # QLoRA: the quantised blocks, the rest of the base in bf16, the adapters
        held = sum(NF4 * m["quantisable"] + FROZEN * (m["total"] - m["quantisable"]) + ADAPTER * m["lora"] for m in trained)
    if stage == "RLOO/GRPO" and mode != "full":  # the frozen RM: PPO's is its value model's base, here a model of its own
        held += FROZEN * cls["total"]
    if gpus == 1 or mode != "full":
        return held
    return held / gpus + FROZEN * trained[0]["total"]  # sharded, plus the gathered model evaluating / generating


def table() -> str:
    columns = [(stage, gpus) for stage in ("SFT", "DPO", "RM", "PPO", "RLOO/GRPO") for gpus in (1, 8)]
    header = "| model | mode | " + " | ".join(f"{stage} {gpus}x80GB" for stage, gpus in columns) + " |"
    lines = [header, "|---|---|" + "---:|" * len(columns)]
    for size in QWEN25:
        lm, cls = count(size, "causal-lm"), count(size, "reward")
        for mode in ("full", "LoRA", "QLoRA"):
            cells = []
            for stage, gpus in columns:
                total = stage_bytes(stage, mode, gpus, lm, cls) / GB + ACTIVATIONS_GB
                cells.append(f"{total:,.0f} {'✓' if total <= GPU_GB else '✗'}")
            lines.append(f"| {size} ({lm['total'] / 1e9:.2f}B) | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(table())


if __name__ == "__main__":
    main()
