"""Log-probabilities of chosen next tokens without fp32 logits over the whole vocabulary for a whole batch.

    TokenLogProbs(model)            nn.Module around a causal LM (DDP and FSDP2 wrap this one or the model inside)
        forward(inputs, predict, targets, temperature=1.0, with_entropy=False) -> (logps [N], entropy [N] | None)
    entropy_from_logits(logits) -> entropy of softmax(logits) over the last dimension
    logits_chunk_tokens(vocab_size) -> how many positions go through the LM head at once

Why: SFT, DPO and PPO need log p(target) at N positions. model(...).logits would hold [N, vocab] (fp32 in the loss:
about 20 GB at 16k tokens and a 152k vocabulary, plus as much again for log_softmax and its gradient). Here the LM
head maps the hidden states of the N positions to log p(target) LOGITS_CHUNK_ELEMENTS / vocab positions at a time;
with gradients each chunk is checkpointed (its logits are recomputed in backward instead of kept), so at most one
chunk's logits exist at a time. A batch that fits in one chunk (small vocabularies, short responses) takes one step.

How: the model's OWN forward runs, exactly as a plain call would (so peft's disable_adapter switch, DDP, and FSDP2's
root hooks that gather the embeddings, final norm and LM head all apply), and two hooks on the LM head, for the
duration of the call, turn it into that chunked computation: the pre-hook keeps the head's input (the final hidden
states) and hands the head an empty slice of it, so the full logits are never computed; the forward hook returns
log p(target) in place of the logits. They come back as the model output's `logits`, so a sharded root's backward
hooks see them like any output. (scoring.TokenScorer reads a classifier's `score` head the same way.)

Models whose forward changes the logits after the LM head (Gemma's soft-capping, Cohere's and Granite's logit
scales: _LOGIT_TRANSFORMS) return their logits at the N positions instead (logits_to_keep), and those go through
the same chunked log-softmax: right, but [N, vocab] is built once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# fp32 logits of one chunk: 2**27 elements = 512 MiB (Qwen2.5's 151,936-token vocabulary: 883 positions per chunk).
LOGITS_CHUNK_ELEMENTS = 2**27
# Config fields of models whose forward does more than lm_head(last hidden state).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def logits_chunk_tokens(vocab_size: int) -> int:
    return max(1, LOGITS_CHUNK_ELEMENTS // vocab_size)


class TokenLogProbs(nn.Module):
    """A causal LM read as log p(targets) at the positions that predict them. Holds the model, adds no parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor | int],  # input_ids and attention_mask / position_ids / varlen kwargs
        predict: torch.Tensor,  # [B, T] bool: positions whose NEXT token is a target
        targets: torch.Tensor,  # [N] the target tokens, in the row-major order of predict's True positions
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log p(target) [N] fp32, entropy of each predicted distribution [N] (no grad) or None)."""
        # A peft wrapper holds the transformers model (its layers adapted in place) behind get_base_model().
        causal_lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        config = causal_lm.config
        vocab_size = config.get_text_config().vocab_size
        entropies: list[torch.Tensor | None] = []
        if any(getattr(config, name, None) is not None for name in _LOGIT_TRANSFORMS):
            logits = self.model(**inputs, use_cache=False, logits_to_keep=predict).logits  # [N, V], transformed
            logps, entropy = _chunked_logps(nn.Identity(), logits, targets, temperature, with_entropy, vocab_size)
            return logps, entropy

        head = causal_lm.get_output_embeddings()
        final_hidden: list[torch.Tensor] = []

        def keep_hidden(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            final_hidden.append(args[0])  # [B, T, H]
            return (args[0][:, :0], *args[1:])  # the head's own forward then computes [B, 0, V]: nothing

        def logps_instead(module: nn.Module, _args: tuple, _output: torch.Tensor) -> torch.Tensor:
            hidden = final_hidden.pop()[predict]  # [N, H]
            # module.forward, not module(...): the hooks must not run again; a LoRA-adapted head keeps its adapters.
            logps, entropy = _chunked_logps(module.forward, hidden, targets, temperature, with_entropy, vocab_size)
            entropies.append(entropy)
            return logps

        hooks = [head.register_forward_pre_hook(keep_hidden), head.register_forward_hook(logps_instead)]
        try:
            logps = self.model(**inputs, use_cache=False).logits
        finally:
            for hook in hooks:
                hook.remove()
        return logps, entropies[0]


def _chunked_logps(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,  # [N, H] (or [N, V] logits with an identity head)
    targets: torch.Tensor,  # [N]
    temperature: float,
    with_entropy: bool,
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    chunk = logits_chunk_tokens(vocab_size)
    # Checkpointing costs one more head matmul per chunk in backward; it only pays when there are several chunks.
    recompute = torch.is_grad_enabled() and len(targets) > chunk
    logps, entropies = [], []
    # At least one chunk, even an empty one: the result then keeps its dtype, device and graph when N = 0.
    for start in range(0, max(len(targets), 1), chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if recompute:
            logp, entropy = checkpoint(_target_logps, head, h, t, temperature, with_entropy, use_reentrant=False)
        else:
            logp, entropy = _target_logps(head, h, t, temperature, with_entropy)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)


def _target_logps(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(hidden) / temperature)[target] per row, as logit - logsumexp (no [rows, V] log_softmax)."""
    logits = head(hidden).float() / temperature
    logps = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    if not with_entropy:
        return logps, None
    with torch.no_grad():  # logged, not optimised
        return logps, entropy_from_logits(logits)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropy of softmax(logits): logsumexp(z) - sum softmax(z) * z."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
