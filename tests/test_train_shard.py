"""FSDP2 sharding (--shard) on the CPU: torchrun, 2 processes, the gloo backend, the tiny model.

FSDP2 runs on the CPU in the installed torch (2.13): fully_shard on a "cpu" device mesh, all-gather and
reduce-scatter over gloo. So these tests run the same sharding, loading, checkpoint and save code as a GPU run; what
they cannot cover is bf16 compute (the MixedPrecisionPolicy asks for bf16 on CUDA only; on the CPU everything is
fp32) and NCCL.

Tolerance. The sharded run (2 ranks x 1 micro-batch) and the one-process run (1 rank x 2 accumulated micro-batches)
see the same global batch in fp32. They differ only in how the two micro-batches' gradients are summed (a
reduce-scatter average against local accumulation, then the contract's rescaling), i.e. float rounding: about
1e-7 relative per step (measured: losses equal to 8 digits, grad norms to 7 over 4 steps), compounding with the
learning rate: the LoRA reward model at lr 1e-2 differed by 1.2e-5 relative at its 5th step on an AMD EPYC (AVX2)
machine. SAME_RUN = 1e-4 leaves room for that and still fails on any real mistake (a gradient scaled by the world
size moves the grad norm by 2x, a wrong shard or a dropped micro-batch moves the loss in the 3rd digit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from zhihu_rlhf.train import report, rm, sft

from test_train_rm import planted_pairs, write_pairs
from test_train_sft import doubling_rows, write_instruct

SAME_RUN = 1e-4  # relative: the same run sharded or not (see the module docstring)

SFT_ARGS = ["--model", "tiny", "--lr", "3e-3", "--epochs", "1", "--batch-tokens", "200", "--max-len", "128",
            "--device", "cpu", "--warmup-ratio", "0"]


def torchrun(stage: str, args: list[str]) -> None:
    """`torchrun --standalone` (a free port, so parallel test runs do not collide) with 2 CPU processes."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "zhihu_rlhf.train", stage, *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def train_records(out: Path) -> list[dict]:
    return [r for r in report.read_metrics(out) if r["split"] == "train"]


def assert_same_curve(a: list[dict], b: list[dict], keys: tuple[str, ...], rel: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=rel), (key, x, y)


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory) -> Path:
    return write_instruct(tmp_path_factory.mktemp("instruct"), doubling_rows(0, 16), doubling_rows(100, 6))


@pytest.fixture(scope="module")
def sharded_sft(instruct_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard") / "sft"
    torchrun("sft", [*SFT_ARGS, "--data", str(instruct_dir), "--grad-accum", "1", "--shard", "--save-steps", "2",
                     "--keep-checkpoints", "--out", str(out)])
    return out


def test_sharded_sft_matches_one_process_with_the_same_global_batch(sharded_sft, instruct_dir, tmp_path):
    one = sft.SFTOptions(
        model="tiny", data=str(instruct_dir), out=tmp_path / "one", lr=3e-3, epochs=1, batch_tokens=200,
        max_len=128, device="cpu", warmup_ratio=0.0, grad_accum=2,
    )
    sft.train(one)
    # 16 examples of ~90 tokens packed 2 per row -> 8 micro-batches -> 4 steps of 2 micro-batches in both runs.
    assert len(train_records(sharded_sft)) == 4
    assert_same_curve(train_records(one.out), train_records(sharded_sft), ("loss", "grad_norm"), rel=SAME_RUN)
    evals = [[r["loss"] for r in report.read_metrics(out) if r["split"] == "eval"] for out in (one.out, sharded_sft)]
    assert evals[1] == pytest.approx(evals[0], rel=SAME_RUN)

    # The sharded weights were gathered into one Hugging Face folder, in bf16, equal to the one-process save.
    assert json.loads((sharded_sft / "config.json").read_text())["dtype"] == "bfloat16"
    sharded, single = load_file(sharded_sft / "model.safetensors"), load_file(one.out / "model.safetensors")
    assert sharded.keys() == single.keys() and {t.dtype for t in sharded.values()} == {torch.bfloat16}
    for name, tensor in single.items():
        torch.testing.assert_close(sharded[name].float(), tensor.float(), rtol=2**-7, atol=1e-5, msg=name)
    model = AutoModelForCausalLM.from_pretrained(sharded_sft)
    assert model.config.num_hidden_layers == 2 and not list(sharded_sft.glob(".final-*"))


def test_sharded_checkpoint_resumes_onto_the_same_curve(sharded_sft, instruct_dir, tmp_path):
    """A sharded run killed after step 3: its 2-rank checkpoint at step 2 and the log it wrote past it."""
    checkpoint = sharded_sft / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                            "state.json", "trainer.pt"]  # one shard per rank
    cut = tmp_path / "cut"
    shutil.copytree(checkpoint, cut / "checkpoints" / checkpoint.name)
    lines = (sharded_sft / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= 3))

    torchrun("sft", [*SFT_ARGS, "--data", str(instruct_dir), "--grad-accum", "1", "--shard", "--resume",
                     "--out", str(cut)])
    assert report.read_metrics(cut)[:2] == report.read_metrics(sharded_sft)[:2]  # kept as written
    assert_same_curve(train_records(sharded_sft), train_records(cut), ("loss", "grad_norm"), rel=1e-6)
    resumed, whole = load_file(cut / "model.safetensors"), load_file(sharded_sft / "model.safetensors")
    assert all(torch.equal(resumed[name], tensor) for name, tensor in whole.items())


def test_sharded_lora_rm_with_grad_ckpt_matches_one_process(tmp_path):
    # 20 test pairs in chunks of 8: rank 0 evaluates two chunks, rank 1 one (uneven shares, a sharded model's hazard).
    data = write_pairs(tmp_path / "pairs", planted_pairs(48, seed=1), planted_pairs(20, seed=2))
    settings = dict(lr=1e-2, epochs=2, batch_size=8, max_len=128, warmup_ratio=0.0, lora_r=8, lora_dropout=0.0)
    one = rm.RMOptions(model="tiny", data=str(data), out=tmp_path / "one", device="cpu", grad_accum=2, lora=True,
                       grad_ckpt=True, **settings)
    rm.train(one)
    args = ["--model", "tiny", "--data", str(data), "--device", "cpu", "--grad-accum", "1", "--lora", "--grad-ckpt",
            "--shard", "--out", str(tmp_path / "two")]
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    torchrun("rm", args)

    two = tmp_path / "two"
    assert_same_curve(train_records(one.out), train_records(two), ("loss", "accuracy", "grad_norm"), rel=SAME_RUN)
    evals = [[r for r in report.read_metrics(out) if r["split"] == "eval"] for out in (one.out, two)]
    assert_same_curve(evals[0], evals[1], ("loss", "accuracy", "margin"), rel=SAME_RUN)
    assert evals[1][-1]["accuracy"] >= 0.8
    sharded, single = load_file(two / "adapter_model.safetensors"), load_file(one.out / "adapter_model.safetensors")
    assert sharded.keys() == single.keys() and any("score" in name for name in sharded)
    for name, tensor in single.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_sharded_lora_ppo_generates_scores_and_saves_adapters(tmp_path):
    """PPO's four roles sharded: generation on the gathered policy (ranks stop at different lengths), reference and
    RM as the shared bases with adapters off, value model through TokenScorer as the sharded root."""
    from rl_batch import write_prompts

    write_prompts(tmp_path / "prompts", 32)
    torchrun("ppo", ["--policy", "tiny", "--reward", "tiny", "--data", str(tmp_path / "prompts"), "--device", "cpu",
                     "--max-new-tokens", "8", "--rollout-batch-size", "8", "--micro-batch-size", "4", "--ppo-epochs", "2",
                     "--epochs", "1", "--lr", "1e-3", "--shard", "--lora", "--lora-dropout", "0", "--save-steps", "1",
                     "--out", str(tmp_path / "ppo")])
    records = train_records(tmp_path / "ppo")
    assert [r["step"] for r in records] == [1, 2]  # 32 prompts / (8 per rank x 2 ranks)
    assert records[0]["kl"] == 0.0  # reference == policy with its zero-start adapters off, on every rank
    assert all(r[k] is not None for r in records for k in ("reward_mean", "value_loss", "policy_loss", "entropy"))
    assert (tmp_path / "ppo" / "adapter_model.safetensors").exists()
    assert len((tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()) == 2 * 4


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_sharded_critic_free_rl_generates_groups_and_saves(tmp_path, stage):
    """RLOO with LoRA (reference = adapters off) and GRPO with full weights (a sharded frozen reference, --beta > 0),
    each sharded over 2 ranks: K samples per prompt generated on the gathered policy, scored by the tiny RM."""
    from rl_batch import write_prompts

    write_prompts(tmp_path / "prompts", 16)
    extra = ["--lora", "--lora-dropout", "0"] if stage == "rloo" else ["--beta", "0.1"]
    torchrun(stage, ["--policy", "tiny", "--reward", "tiny", "--data", str(tmp_path / "prompts"), "--device", "cpu",
                     "--max-new-tokens", "8", "--rollout-batch-size", "4", "--num-generations", "2",
                     "--micro-batch-size", "4", "--grad-accum", "1", "--epochs", "1", "--lr", "1e-3", "--shard",
                     "--out", str(tmp_path / stage), *extra])
    records = train_records(tmp_path / stage)
    assert [r["step"] for r in records] == [1, 2]  # 16 prompts / (4 per rank x 2 ranks)
    assert records[0]["kl"] == 0.0  # reference == starting policy on every rank
    assert all(r[k] is not None for r in records for k in ("reward_mean", "policy_loss", "group_reward_std", "entropy"))
    saved = "adapter_model.safetensors" if stage == "rloo" else "model.safetensors"
    assert (tmp_path / stage / saved).exists()
