"""Batch layout and attention (issue 13 items 3-4) and chunked log-probs (loss memory), over the fixture matrix.

No flash-attention kernel runs on a CPU, so the packed path is checked with `varlen_reference`: an attention function
registered the way transformers registers kernels, that attends within the segments given by cu_seq_lens_q (the
kwargs the flash path takes) and receives the same attention mask the flash path does (none). If an architecture
did not forward those kwargs to its attention, or our boundaries were wrong, packed logits would differ from each
example run alone. The allow-list batching.PACKING_VERIFIED must be exactly the fixture types where they do not.
"""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from model_fixtures import ARCH_FAMILIES, make_config, make_model, make_tokenizer, save_model
from zhihu_rlhf.train import batching, logprobs, sft
from zhihu_rlhf.train.batching import batch_layout, length_buckets, varlen_kwargs
from zhihu_rlhf.train.logprobs import TokenLogProbs
from zhihu_rlhf.train.sft import Example, collate_packed, collate_padded, completion_loss

TEXTS = ["如何评价这部电影？我觉得值得一看。", "Why is the sky blue? Rayleigh scattering.", "谢谢你的回答！" * 3]
SEGMENT_CALLS: list[list[int]] = []


def varlen_reference(module, query, key, value, attention_mask, *, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """Causal attention inside each [cu_seq_lens_q[i], cu_seq_lens_q[i+1]) segment of one packed row."""
    assert attention_mask is None  # what the flash path gets for a padding-free row
    assert cu_seq_lens_q is not None, "the boundaries did not reach the attention layer"
    assert isinstance(max_length_q, int)
    bounds = cu_seq_lens_q.tolist()
    SEGMENT_CALLS.append(bounds)
    parts = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True, scaling=kwargs.get("scaling")
        )[0]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False)
    ]
    return torch.cat(parts, dim=1), None


AttentionInterface.register("varlen_reference", varlen_reference)


def encode(family: str) -> list[list[int]]:
    tokenizer = make_tokenizer(family)
    return [tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_packing_is_exact_exactly_for_the_verified_architectures(family):
    examples = encode(family)
    packed_model = make_model(family, attn_impl="varlen_reference")
    alone_model = make_model(family, attn_impl="eager")  # same seed, same weights
    SEGMENT_CALLS.clear()
    with torch.no_grad():
        row = torch.tensor([sum(examples, [])])
        packed = packed_model(input_ids=row, use_cache=False, **varlen_kwargs([len(e) for e in examples], row.device))
        start, worst = 0, 0.0
        for ids in examples:
            alone = alone_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            worst = max(worst, (packed.logits[0, start : start + len(ids)] - alone).abs().max().item())
            start += len(ids)
    exact = worst < 1e-5
    model_type = packed_model.config.model_type
    assert exact == (model_type in batching.PACKING_VERIFIED), f"{model_type}: max |packed - alone| = {worst:.2e}"
    if exact:
        lengths = [len(e) for e in examples]
        assert SEGMENT_CALLS and all(b == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)] for b in SEGMENT_CALLS)


@pytest.mark.parametrize("family", [f for f in ARCH_FAMILIES if make_config(f).model_type in batching.PACKING_VERIFIED])
def test_sft_loss_on_a_packed_row_equals_padded_batches(family):
    tokenizer = make_tokenizer(family)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [Example(ids, prompt_len=4) for ids in encode(family)]
    cpu = torch.device("cpu")
    with torch.no_grad():
        packed, n_packed = completion_loss(TokenLogProbs(make_model(family, attn_impl="varlen_reference")), collate_packed(examples, cpu))
        padded, n_padded = completion_loss(TokenLogProbs(make_model(family, attn_impl="eager")), collate_padded(examples, pad, cpu))
    assert n_packed == n_padded == sum(len(e.input_ids) - 4 for e in examples)
    assert packed.item() == pytest.approx(padded.item(), rel=1e-6)


def test_varlen_kwargs_mark_each_example_once():
    kwargs = varlen_kwargs([3, 5, 2], torch.device("cpu"))
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 8, 10] and kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["cu_seq_lens_k"] is kwargs["cu_seq_lens_q"]
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 5 and type(kwargs["max_length_q"]) is int
    assert kwargs["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]


def fake_model(model_type: str, attn: str) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(model_type=model_type, _attn_implementation=attn))


def test_layout_packs_only_with_a_varlen_kernel_on_a_verified_architecture():
    assert batch_layout(fake_model("llama", "flash_attention_2")).kind == "packed"
    assert batch_layout(fake_model("opt", "flash_attention_3")).kind == "packed"
    for model_type, attn in [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "flex_attention"), ("bloom", "flash_attention_2"),
                             ("mistral", "flash_attention_2")]:
        layout = batch_layout(fake_model(model_type, attn))
        assert layout.kind == "padded"
        assert (attn in layout.reason) if attn != "flash_attention_2" else (repr(model_type) in layout.reason)


class Recorder:
    def __init__(self, model_type: str, attn: str) -> None:
        self.config = SimpleNamespace(model_type=model_type, _attn_implementation=attn)

    def set_attn_implementation(self, attn: str) -> None:
        self.config._attn_implementation = attn


@pytest.mark.parametrize(
    ("requested", "device", "flash_installed", "model_type", "expected"),
    [
        ("auto", "cuda", True, "qwen2", "flash_attention_2"),  # a user who changes nothing on a GPU: packed, exact
        ("auto", "cuda", False, "qwen2", "sdpa"),  # flash-attn not installed: padded buckets
        ("auto", "cuda", True, "bloom", "sdpa"),  # packing not verified (and no flash for BLOOM)
        ("auto", "cpu", True, "qwen2", "sdpa"),  # CPU default: padded buckets
        ("sdpa", "cuda", True, "qwen2", "sdpa"),  # an explicit choice is kept
    ],
)
def test_auto_attention_picks_flash_only_where_it_is_exact(monkeypatch, requested, device, flash_installed, model_type, expected):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: flash_installed)
    model = Recorder(model_type, "sdpa")
    assert batching.choose_attention(model, requested, torch.device(device)) == expected
    assert batching.loader_attn_impl(requested) == (None if requested == "auto" else requested)


def test_length_buckets_cover_every_example_within_the_budget_with_little_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 512, (2000,), generator=gen).tolist()
    order = torch.randperm(2000, generator=gen).tolist()
    budget = 4096
    batches = length_buckets(order, lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    assert all(len(b) * max(lengths[i] for i in b) <= budget for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    # For comparison: 8 examples per batch in data order (what fits the budget at the longest length).
    unsorted = [order[i : i + 8] for i in range(0, len(order), 8)]
    padded_unsorted = sum(len(b) * max(lengths[i] for i in b) for b in unsorted)
    assert padded / sum(lengths) < 1.1 < padded_unsorted / sum(lengths)
    assert length_buckets(order, lengths, budget) == batches  # deterministic: resume sees the same batches
    # Sorting stays local: the first batch holds examples of the first group (BUCKET_SPAN budgets of the epoch's order).
    group_end = next(k for k in range(len(order)) if sum(lengths[i] for i in order[: k + 1]) >= batching.BUCKET_SPAN * budget)
    assert group_end < len(order) // 2 and set(batches[0]) <= set(order[: group_end + 1])


def test_sft_on_bloom_falls_back_to_padded_batches_and_says_so(tmp_path, capsys):
    """BLOOM: no sdpa, no flash, packing leaks (ALiBi): the default run loads it (eager) and pads, with a notice."""
    model_dir = save_model("bloom", "causal-lm", tmp_path / "bloom")
    data = tmp_path / "data"
    (data / "data").mkdir(parents=True)
    for split, n in (("train", 8), ("test", 2)):
        rows = {"prompt": [f"问题{i}：{i}的两倍是多少？" for i in range(n)], "completion": [f"答：{2 * i}。" for i in range(n)]}
        pl.DataFrame(rows).write_parquet(data / "data" / f"{split}-00000-of-00001.parquet")
    opts = sft.SFTOptions(model=str(model_dir), data=str(data), out=tmp_path / "out", epochs=1, max_len=64,
                          batch_tokens=256, grad_accum=1, device="cpu", save_steps=0)
    results = sft.train(opts)
    assert results["loss"] > 0
    assert "sft: batches: padded, eager attention has no varlen kernel" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# Chunked log-probs


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_chunked_logprobs_and_gradients_equal_the_full_logits(family, monkeypatch):
    model = make_model(family, attn_impl="eager")  # eval mode: no dropout, so both forwards are the same function
    examples = encode(family)
    input_ids, attention_mask = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(e) for e in examples], batch_first=True, padding_value=0
    ), torch.nn.utils.rnn.pad_sequence([torch.ones(len(e), dtype=torch.long) for e in examples], batch_first=True)
    predict = attention_mask.bool().clone()
    predict[torch.arange(len(examples)), attention_mask.sum(1) - 1] = False  # the last token predicts nothing
    targets = input_ids[:, 1:][predict[:, :-1]]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}

    # Direct: full logits, log_softmax, gather.
    logits = model(**inputs, use_cache=False).logits[predict].float() / 0.7
    full = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    (full * torch.linspace(-1, 1, len(full))).sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    # Chunked: 7 positions per chunk, so several checkpointed chunks; the LM head never sees more rows than that,
    # and its own call (inside the model's forward) gets no positions at all: no [tokens, vocab] logits.
    vocab = model.config.vocab_size
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 7 * vocab)
    head = model.get_output_embeddings()
    chunk_rows: list[int] = []
    head_calls: list[tuple[int, ...]] = []
    linear = F.linear

    def counting_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if weight is head.weight:
            chunk_rows.append(x.numel() // x.shape[-1])  # positions through the head in this call
        return linear(x, weight, bias)

    monkeypatch.setattr(F, "linear", counting_linear)
    hook = head.register_forward_hook(lambda m, args, out: head_calls.append(tuple(out.shape)))
    chunked, entropy = TokenLogProbs(model)(inputs, predict, targets, temperature=0.7, with_entropy=True)
    (chunked * torch.linspace(-1, 1, len(chunked))).sum().backward()
    hook.remove()
    assert len(targets) > 7 * 3 and 0 < max(chunk_rows) <= 7
    assert head_calls == [(len(examples), 0, vocab)]
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    expected_entropy = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(entropy, expected_entropy.detach(), rtol=1e-4, atol=1e-5)
    assert full_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in full_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_readme_lists_exactly_the_verified_architectures():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| flash-attention 2/3 | `"))
    listed = {cell.strip("`") for cell in row.split("|")[2].strip().split(", ")}
    assert listed == batching.PACKING_VERIFIED


def test_a_model_that_transforms_its_logits_gets_log_probs_of_the_transformed_logits():
    """Gemma 2 soft-caps its logits after the LM head: log-probs must come from the capped logits, with gradients."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0,
                          attn_implementation="eager")
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    input_ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    predict = torch.ones(2, 12, dtype=torch.bool)
    predict[:, -1] = False
    targets = input_ids[:, 1:].reshape(-1)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    logits = model(**inputs, use_cache=False).logits[predict]
    assert logits.abs().max() < 2.0  # capped: a plain lm_head(hidden) would not be
    full = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    full.sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    chunked, _ = TokenLogProbs(model)(inputs, predict, targets)
    chunked.sum().backward()
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_lora_reference_log_probs_are_the_base_models_after_the_policy_moved(family):
    """The reference (policy with its adapters switched off) must go through the switch: after one optimizer step
    the policy's log-probs move, the reference's stay the base model's."""
    from peft import LoraConfig, get_peft_model

    from zhihu_rlhf.train.lora import WithoutAdapters

    examples = encode(family)
    input_ids = torch.tensor([examples[1]])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    predict = torch.ones_like(input_ids, dtype=torch.bool)
    predict[:, -1] = False
    targets = input_ids[0, 1:]
    with torch.no_grad():
        base = TokenLogProbs(make_model(family, attn_impl="eager"))(inputs, predict, targets)[0]
    peft_model = get_peft_model(make_model(family, attn_impl="eager"), LoraConfig(r=4, target_modules="all-linear"))
    policy, reference = TokenLogProbs(peft_model), WithoutAdapters(TokenLogProbs(peft_model), peft_model)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    (-policy(inputs, predict, targets)[0].sum()).backward()
    optimizer.step()
    with torch.no_grad():
        moved, kept = policy(inputs, predict, targets)[0], reference(inputs, predict, targets)[0]
    torch.testing.assert_close(kept, base, rtol=1e-5, atol=1e-5)
    assert (moved - base).abs().max() > 1e-3  # 100x the tolerance above (BLOOM moves least: 4e-3)
