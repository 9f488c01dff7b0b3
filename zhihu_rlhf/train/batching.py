"""How micro-batches meet the attention kernel: packed rows with their sequence boundaries, or padded length buckets.

    ATTN_IMPLS                    the --attn-impl choices ("auto" first)
    loader_attn_impl(requested) -> str | None       what to load the model with ("auto" -> transformers' default)
    choose_attention(model, requested, device) -> str   the kernel the model runs: "auto" upgrades to flash-attention 2
                                  on CUDA when it is installed and packing is verified for the architecture
    batch_layout(model) -> Layout     packed (varlen kernel + verified architecture) or padded, with a one-line reason
    varlen_kwargs(lengths, device) -> dict          position_ids, cu_seq_lens_q/k, max_length_q/k of one packed row
    pack(order, lengths, batch_tokens) -> rows      greedy packing in the given order
    length_buckets(order, lengths, batch_tokens) -> batches   padded batches of similar lengths, rows x longest <= budget

Why two layouts. A packed row (several examples end to end, no padding) is exact only when attention stops at each
example's end. A varlen kernel (flash-attention 2/3) does that for free when it is given the boundaries
(cu_seq_lens): we pass them once per batch, so transformers never derives them from position_ids with a host sync in
every layer. sdpa and eager have no varlen form: on a packed row transformers builds a dense block-diagonal
[tokens x tokens] mask, kept per layer for backward, which costs far more than the padding it saves (on CPU a
packed forward+backward took 11.3 s against 1.8 s padded for the same tokens, benchmarks/RESULTS.md). So with sdpa/eager (the
CPU default) examples are padded, and sorted by length within groups of batches so that little is padding.

Packing is verified per architecture (config.model_type) by tests/test_train_batching.py, which compares packed
logits, boundaries passed as here, with each example run alone: exact for the types in PACKING_VERIFIED. BLOOM
(ALiBi, no position ids, no flash-attention in transformers) is not, nor is any type the tests do not cover: those
get padded batches, and the layout line says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

ATTN_IMPLS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
VARLEN_KERNELS = ("flash_attention_2", "flash_attention_3")
# model_type values whose packed logits equal single-example logits with boundaries passed (the tests decide).
PACKING_VERIFIED = frozenset({"llama", "qwen2", "opt", "gpt2", "gpt_neox"})
# A length-sorted group spans this many padded batches' worth of tokens. Padding overhead in the worst of five
# length worlds (benchmarks/bucket_padding.py, RESULTS.md): 81% unsorted, 8.6% at 16, 2.6% at 64; beyond 64 the
# gain is small while ever more optimizer steps see examples of one length (transformers' group_by_length uses 50).
BUCKET_SPAN = 64


def loader_attn_impl(requested: str) -> str | None:
    """The attn_implementation to load with: None for "auto" lets transformers pick (sdpa, or eager where the
    architecture has no sdpa, e.g. BLOOM); choose_attention may then upgrade it."""
    return None if requested == "auto" else requested


def choose_attention(model: nn.Module, requested: str, device: torch.device) -> str:
    """The attention kernel `model` will run. "auto" on CUDA with flash-attention 2 installed and an architecture
    whose packing is verified -> flash_attention_2 (exact packed rows, no masks); otherwise what it was loaded with."""
    from transformers.utils import is_flash_attn_2_available

    config = model.config
    if (
        requested == "auto"
        and device.type == "cuda"
        and config.model_type in PACKING_VERIFIED
        and is_flash_attn_2_available()
    ):
        model.set_attn_implementation("flash_attention_2")
    return config._attn_implementation


@dataclass(frozen=True)
class Layout:
    """packed: one padding-free row per micro-batch, boundaries passed to a varlen kernel; padded: length buckets."""

    kind: Literal["packed", "padded"]
    reason: str


def batch_layout(model: nn.Module) -> Layout:
    """Packed only where it is exact and cheap: a varlen kernel and an architecture in PACKING_VERIFIED."""
    model_type, attn = model.config.model_type, model.config._attn_implementation
    if attn not in VARLEN_KERNELS:
        return Layout("padded", f"{attn} attention has no varlen kernel, so packed rows would need dense masks")
    if model_type not in PACKING_VERIFIED:
        return Layout("padded", f"packing is not verified for model type {model_type!r} (see README, Training)")
    return Layout("packed", f"{attn} gets each row's sequence boundaries")


def varlen_kwargs(lengths: list[int], device: torch.device) -> dict[str, torch.Tensor | int]:
    """Model kwargs for one packed row of examples of these lengths, in the form transformers' flash-attention path
    takes them (modeling_flash_attention_utils._flash_attention_forward): position ids restarting per example,
    cumulative boundaries [0, l0, l0+l1, ...] as int32 on the device, and the longest length as a Python int
    (a tensor there would cost a host sync per layer)."""
    sizes = torch.tensor(lengths, dtype=torch.long, device=device)
    ends = sizes.cumsum(0)
    boundaries = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
    # each token's position: its index in the row minus the start of its example
    tokens = sum(lengths)  # from the host: reading it off the device would wait for it
    starts = torch.repeat_interleave(ends - sizes, sizes, output_size=tokens)
    positions = (torch.arange(tokens, device=device) - starts)[None]
    longest = max(lengths)
    return {
        "position_ids": positions,
        "cu_seq_lens_q": boundaries,
        "cu_seq_lens_k": boundaries,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def pack(order: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Greedy packing in the given order: start a new row when the next example would overflow batch_tokens."""
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and used + lengths[i] > batch_tokens:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        rows.append(current)
    return rows


def length_buckets(order: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Padded batches of at most batch_tokens tokens counting padding (rows x longest), of similar lengths.

    The order is cut into groups of about BUCKET_SPAN batches' worth of tokens; each group is sorted by length
    (longest first, ties in order) and cut greedily. Deterministic in `order`, so resume sees the same batches.
    """
    batches: list[list[int]] = []
    group: list[int] = []
    group_tokens = 0
    for position, i in enumerate(order):
        group.append(i)
        group_tokens += lengths[i]
        if group_tokens >= BUCKET_SPAN * batch_tokens or position == len(order) - 1:
            batches += _cut_sorted(sorted(group, key=lambda j: -lengths[j]), lengths, batch_tokens)
            group, group_tokens = [], 0
    return batches


def _cut_sorted(longest_first: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Consecutive batches of a longest-first list: each batch's first example sets its padded width."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in longest_first:
        if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
