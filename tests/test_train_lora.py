"""LoRA through peft on the tiny model (CPU): every stage trains its adapters and nothing else, the base with the
adapters off is the starting model, saved adapters and merged weights give the trained model's outputs, a killed
LoRA run resumes onto the same curve, and the options that cannot work here fail in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.train.prompts import encode_pairs
from zhihu_rlhf.train import dpo, loop, models, ppo, report, rm, runtime, sft
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.lora import WithoutAdapters, is_peft

from test_train_dpo import _write_pairs as write_letter_pairs
from test_train_rm import planted_pairs, write_pairs
from test_train_sft import doubling_rows, small_opts, write_instruct

LORA = dict(lora=True, lora_r=8, lora_alpha=16.0, lora_dropout=0.0)


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory) -> Path:
    return write_instruct(tmp_path_factory.mktemp("instruct"), doubling_rows(0, 16), doubling_rows(100, 6))


def keep_final_model(monkeypatch) -> dict:
    """Make a run's final save also hand over the trained model object (the run saves as usual)."""
    kept: dict = {}
    original = report.save_final

    def save_and_keep(out, model, *args, **kwargs):
        kept["model"] = model
        return original(out, model, *args, **kwargs)

    monkeypatch.setattr(report, "save_final", save_and_keep)
    return kept


def base_name(peft_name: str) -> str:
    """Name of a base weight inside a peft model -> its name in the plain model."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")


def assert_only_adapters_changed(model, kind: str, extra_trainable: tuple[str, ...] = ()) -> None:
    """Trainable = LoRA matrices (+ extra_trainable); every LoRA B moved off its zero start; the rest is the start."""
    _, start = models.load_tokenizer_and_model("tiny", kind)
    start_params = dict(start.named_parameters(remove_duplicate=False))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or any(e in n for e in extra_trainable) for n in trainable), trainable
    for name, param in model.named_parameters():
        if "lora_B" in name:
            assert param.abs().sum() > 0, name  # LoRA starts B at zero: non-zero means it trained
        elif not param.requires_grad:
            assert torch.equal(param, start_params[base_name(name)]), name


def token_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits


# ----------------------------------------------------------------------------------------------------------------
# SFT: adapters only, saved adapters, merged weights, resume


@pytest.fixture(scope="module")
def lora_sft(instruct_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "sft"
    monkeypatch = pytest.MonkeyPatch()
    kept = keep_final_model(monkeypatch)
    opts = small_opts(instruct_dir, out, lr=1e-2, **LORA)
    results = sft.train(opts)
    monkeypatch.undo()
    return opts, results, kept["model"]


def test_lora_sft_trains_only_the_adapters_and_its_loss_falls(lora_sft):
    opts, results, model = lora_sft
    records = report.read_metrics(opts.out)
    train = [r["loss"] for r in records if r["split"] == "train"]
    evals = [r["loss"] for r in records if r["split"] == "eval"]
    # A random base with frozen embeddings learns slower through rank-8 adapters than full fine-tuning does.
    assert train[-1] < 0.9 * train[0]
    assert evals == sorted(evals, reverse=True) and evals[-1] < evals[0] - 0.2
    assert results["loss"] == pytest.approx(evals[-1])
    assert is_peft(model)
    assert_only_adapters_changed(model, "causal-lm")


def test_saved_adapters_reload_onto_their_base_with_the_trained_outputs(lora_sft):
    opts, _, model = lora_sft
    out = opts.out
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 8
    with safe_open(out / "adapter_model.safetensors", "pt") as saved:
        assert saved.keys() and all("lora_A" in k or "lora_B" in k for k in saved.keys())
        assert {saved.get_slice(k).get_dtype() for k in saved.keys()} == {"F32"}  # adapters as trained
    assert "LoRA adapters" in (out / "README.md").read_text()
    ids = models.load_tokenizer("tiny")("问题3：3的两倍是多少？答：6。", add_special_tokens=False)["input_ids"]
    trained = token_logits(model, ids)

    _, base = models.load_tokenizer_and_model("tiny", "causal-lm")
    torch.testing.assert_close(token_logits(PeftModel.from_pretrained(base, str(out)), ids), trained)
    # The next stage takes the folder as --model: the adapters merged into their base.
    _, merged = models.load_tokenizer_and_model(str(out), "causal-lm")
    assert not is_peft(merged)
    torch.testing.assert_close(token_logits(merged, ids), trained, atol=1e-5, rtol=1e-5)


def test_merge_lora_saves_full_weights_with_the_same_logits(lora_sft, tmp_path):
    opts, _, model = lora_sft
    tokenizer = models.load_tokenizer("tiny")
    ids = tokenizer("问题5：5的两倍是多少？", add_special_tokens=False)["input_ids"]
    card = report.ModelCardInfo(task="sft", base_model="tiny", data="d", options={}, results={}, usage="")
    report.save_final(tmp_path / "fp32", model, tokenizer, card, merge_lora=True, dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32")
    assert not (tmp_path / "fp32" / "adapter_config.json").exists()
    torch.testing.assert_close(token_logits(merged, ids), token_logits(model, ids), atol=1e-5, rtol=1e-5)
    assert "merged into the weights" in (tmp_path / "fp32" / "README.md").read_text()

    report.save_final(tmp_path / "default", model, tokenizer, card, merge_lora=True)  # bf16 unless asked
    with safe_open(tmp_path / "default" / "model.safetensors", "pt") as saved:
        assert {saved.get_slice(k).get_dtype() for k in saved.keys()} == {"BF16"}


def test_killed_lora_run_resumes_onto_the_uninterrupted_curve(instruct_dir, tmp_path, monkeypatch):
    kw = dict(save_steps=3, epochs=2, batch_tokens=200, lr=1e-2, **LORA)
    sft.train(small_opts(instruct_dir, tmp_path / "full", **kw))
    full = [r for r in report.read_metrics(tmp_path / "full") if r["split"] == "train"]

    class Killed(Exception):
        pass

    original_log = report.MetricsLogger.log

    def log_then_die(self, step, split, **metrics):
        original_log(self, step, split, **metrics)
        if step == 5 and split == "train":
            raise Killed()

    monkeypatch.setattr(report.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        sft.train(small_opts(instruct_dir, tmp_path / "resumed", **kw))
    monkeypatch.setattr(report.MetricsLogger, "log", original_log)
    assert loop.latest_checkpoint(tmp_path / "resumed").name == "step-00000003"

    sft.train(small_opts(instruct_dir, tmp_path / "resumed", resume=True, **kw))
    resumed = [r for r in report.read_metrics(tmp_path / "resumed") if r["split"] == "train"]
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)


def test_checkpoint_holds_only_the_trained_tensors(tmp_path):
    rt = runtime.Runtime(device=torch.device("cpu"), autocast_dtype=None)
    opts = sft.SFTOptions(model="tiny", data="d", out=tmp_path, device="cpu", **LORA)
    _, model = models.load_for_training("tiny", "causal-lm", opts, rt)
    optimizer = loop.make_optimizer([p for p in model.parameters() if p.requires_grad], opts.lr, opts.weight_decay)
    scheduler = loop.make_scheduler(optimizer, opts.warmup_ratio, total_steps=4)
    path = loop.save_checkpoint(tmp_path, rt, model, optimizer, scheduler, {"global_step": 1}, save_limit=1)
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata.keys()
    weights = [k for k in keys if k.startswith("model.")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k.removeprefix("model.") for k in weights} == trainable


# ----------------------------------------------------------------------------------------------------------------
# RM, DPO, PPO


def test_lora_rm_trains_adapters_and_its_own_copy_of_the_score_head(tmp_path, monkeypatch):
    data = write_pairs(tmp_path / "pairs", planted_pairs(48, seed=1), planted_pairs(32, seed=2))
    kept = keep_final_model(monkeypatch)
    opts = rm.RMOptions(
        model="tiny", data=str(data), out=tmp_path / "rm", lr=1e-2, epochs=2, batch_size=8, max_len=128,
        device="cpu", warmup_ratio=0.0, **LORA,
    )
    results = rm.train(opts)
    evals = [r for r in report.read_metrics(opts.out) if r["split"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"] < math.log(2) + 0.2 and results["accuracy"] >= 0.8
    model = kept["model"]
    assert_only_adapters_changed(model, "reward", extra_trainable=("score.modules_to_save",))
    head = dict(model.named_parameters())
    assert not torch.equal(head["base_model.model.score.modules_to_save.default.weight"],
                           head["base_model.model.score.original_module.weight"])
    # The saved adapters carry the trained head: reloaded, they score as the trained model does.
    tokenizer, reloaded = models.load_tokenizer_and_model(str(opts.out), "reward")
    prompts, chosen = ["问题：你好？"] * 2, ["谢谢邀请！", "不知道。"]
    torch.testing.assert_close(rm.score(reloaded, tokenizer, prompts, chosen, template="plain"),
                               rm.score(model.eval(), tokenizer, prompts, chosen, template="plain"),
                               atol=1e-5, rtol=1e-5)


def test_lora_dpo_reference_is_the_base_with_adapters_off(tmp_path, monkeypatch):
    data = tmp_path / "pairs"
    write_letter_pairs(data, "train", 48, seed=1)
    write_letter_pairs(data, "test", 16, seed=2)
    kept = keep_final_model(monkeypatch)
    opts = dpo.DPOOptions(
        model="tiny", data=str(data), out=tmp_path / "dpo", device="cpu", epochs=2, lr=1e-2, beta=0.1,
        batch_size=8, grad_accum=1, warmup_ratio=0.0, save_steps=0, max_len=128, **LORA,
    )
    results = dpo.train(opts)
    train = [r for r in report.read_metrics(opts.out) if r["split"] == "train"]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert results["loss"] < math.log(2) and results["accuracy"] > 0.5
    model = kept["model"]
    assert_only_adapters_changed(model, "causal-lm")

    tokenizer, start = models.load_tokenizer_and_model("tiny", "causal-lm")
    pairs = encode_pairs(tokenizer, [{"prompt": "问题1234", "chosen": "abcdefghijk", "rejected": "nopqrstuvw"}],
                         "plain", 128, drop_cut=False, what="test")
    cpu = torch.device("cpu")
    with torch.no_grad():
        initial = dpo.pair_logps(TokenLogProbs(start.eval()), pairs, tokenizer.pad_token_id, cpu)
        reference = dpo.pair_logps(WithoutAdapters(TokenLogProbs(model), model).eval(), pairs, tokenizer.pad_token_id, cpu)
        trained = dpo.pair_logps(TokenLogProbs(model.eval()), pairs, tokenizer.pad_token_id, cpu)
    torch.testing.assert_close(reference, initial)
    assert not torch.allclose(trained[0], initial[0], atol=1e-3)


def test_lora_ppo_shares_base_weights_instead_of_copying_them(tmp_path, monkeypatch):
    """Policy + reference share the SFT weights; value model + frozen RM share the RM weights."""
    data = tmp_path / "prompts"
    write_letter_pairs(data, "train", 16, seed=1)
    wired: dict = {}
    monkeypatch.setattr(ppo, "run_iterations", lambda *args, **kwargs: wired.update(kwargs) or {})

    def roles() -> tuple:
        return wired["policy"], wired["reference"], wired["trained"]["value"], wired["reward"]

    opts = ppo.PPOOptions(policy="tiny", reward="tiny", data=str(data), out=tmp_path / "o", device="cpu",
                          rollout_batch_size=8, **LORA)
    ppo.train(opts)
    policy, ref_policy, value_model, reward = roles()
    assert isinstance(ref_policy, WithoutAdapters) and ref_policy.model is policy
    assert isinstance(reward, WithoutAdapters) and reward.model is value_model

    def storages(*modules) -> set[int]:
        return {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}

    assert storages(policy, ref_policy, value_model, reward) == storages(policy) | storages(value_model)
    # Without LoRA the reference and the RM are separate frozen models.
    ppo.train(ppo.PPOOptions(policy="tiny", reward="tiny", data=str(data), out=tmp_path / "o2", device="cpu",
                             rollout_batch_size=8))
    policy, ref_policy, value_model, reward = roles()
    assert not storages(policy) & storages(ref_policy) and not storages(value_model) & storages(reward)


def test_lora_ppo_raises_the_reward_from_a_zero_kl_start(tmp_path, monkeypatch):
    from test_train_ppo import _tiny_opts, latin_letter_share

    kept = keep_final_model(monkeypatch)
    # The random tiny model's logits are bounded by its frozen final norm and tied embeddings (near-uniform, entropy
    # ~ln 384): adapters on the blocks alone barely move them, so the LM head gets an adapter too.
    targets = "q_proj,v_proj,o_proj,down_proj,lm_head"
    opts = _tiny_opts(
        tmp_path, epochs=8, lr=2e-2, value_lr=2e-2, kl_coef=0.05, target_kl=6.0, kl_horizon=64,
        **{**LORA, "lora_targets": targets},
    )
    ppo.train(opts, reward_fn=latin_letter_share)
    records = [r for r in report.read_metrics(opts.out) if r["split"] == "train"]
    assert len(records) == 16
    assert records[0]["kl"] == 0.0  # the reference is the policy with its (zero-start) adapters off
    start = sum(r["reward_mean"] for r in records[:3]) / 3
    # The second half's mean, not the last few iterations': float rounding (e.g. how the LM head's rows are blocked)
    # changes the sampled responses after a few iterations, and the adaptive KL coefficient then makes the last
    # iterations' rewards swing by +-0.1 between runs that are equally right.
    end = sum(r["reward_mean"] for r in records[8:]) / 8
    assert end > start + 0.15, (start, end)
    assert_only_adapters_changed(kept["model"], "causal-lm")
    assert (opts.out / "adapter_model.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------
# Options that cannot work here


def run_cli(stage, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(stage.main, argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--load-in-4bit"], "error: --load-in-4bit only applies to LoRA training: add --lora\n"),
        (["--merge-lora"], "error: --merge-lora only applies to LoRA training: add --lora\n"),
        (["--lora", "--load-in-4bit", "--shard"], "error: --load-in-4bit and --shard do not work together"),
        (["--lora", "--lora-dropout", "1"], "error: --lora-dropout must be in [0, 1), got 1.0\n"),
        (["--lora", "--load-in-4bit", "--device", "cpu"], "error: --load-in-4bit needs a CUDA GPU"),
        (["--lora", "--lora-targets", "no_such_proj"], "error: --lora-targets 'no_such_proj': "),
        (["--shard"], "error: --shard splits the model over processes: launch with torchrun"),
    ],
)
def test_options_that_cannot_work_give_one_clear_line(instruct_dir, tmp_path, capsys, extra, message):
    argv = ["--model", "tiny", "--data", str(instruct_dir), "--out", str(tmp_path / "o"), *extra]
    code, err = run_cli(sft, argv, capsys)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_load_in_4bit_without_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import fails, as when not installed
    cuda = runtime.Runtime(device=torch.device("cuda", 0), autocast_dtype=torch.bfloat16)
    with pytest.raises(UserError, match=r"pip install 'zhihu-rlhf\[qlora\]'"):
        models._check_4bit_possible(cuda)


def test_readme_commands_for_large_models_use_real_flags():
    """The README's 7B-14B commands only use flags the stages have (a renamed flag would leave them broken)."""
    import dataclasses
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Training at 7B-14B", 1)[1].split("\n### ", 1)[0]
    commands = re.findall(r"zhihu_rlhf\.train (sft|rm|dpo|ppo) ((?:[^\n]|\\\n)*)", section)
    assert {stage for stage, _ in commands} == {"sft", "rm", "dpo", "ppo"}
    option_classes = {"sft": sft.SFTOptions, "rm": rm.RMOptions, "dpo": dpo.DPOOptions, "ppo": ppo.PPOOptions}
    for stage, args in commands:
        known = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(option_classes[stage])}
        used = set(re.findall(r"(?<!\S)--[a-z0-9-]+", args.split("#", 1)[0]))
        assert used and used <= known, (stage, used - known)
