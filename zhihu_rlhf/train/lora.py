"""LoRA adapters through peft: add them, run the base without them, merge them, save them.

    add_adapters(model, kind, *, r, alpha, dropout, targets, base_name) -> PeftModel   (--lora-r, --lora-alpha, ...)
    WithoutAdapters(model, peft_model)        the frozen base: `model` run with the adapters switched off
    merge_adapters(base, folder) -> model     a saved adapter folder merged into its base (plain transformers model)
    merged_copy(peft_model, adapter_weights, base) -> model     a freshly loaded base with the trained adapters merged in
    is_peft(model) / describe(peft_model)

Only the adapters train (and a reward model's `score` head, which peft keeps as a trainable copy for SEQ_CLS). The
base is frozen and shared: DPO's and PPO's reference is the same weights with the adapters switched off (at the
start the adapters add exactly zero: LoRA's B matrix starts at 0), and PPO's frozen reward model is the value
model's base with its adapters off. So LoRA PPO holds two sets of base weights (SFT and RM), not four.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zhihu_rlhf.errors import UserError, first_line


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def add_adapters(
    model: nn.Module, kind: str, *, r: int, alpha: float, dropout: float, targets: str, base_name: str
) -> nn.Module:
    """Wrap `model` (kind "causal-lm" or "reward") in LoRA adapters; the base is frozen, the trainable weights fp32.

    targets: "all-linear" or module names, comma-separated (--lora-targets).
    base_name goes into the adapters' config (base_model_name_or_path), so the saved folder says what it belongs
    to and `--model FOLDER` (or peft's AutoPeftModel) can put it back on that base.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    target_modules: str | list[str] = targets.strip()
    if target_modules != "all-linear":
        target_modules = [name.strip() for name in targets.split(",") if name.strip()]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=TaskType.CAUSAL_LM if kind == "causal-lm" else TaskType.SEQ_CLS,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"--lora-targets {targets!r}: {first_line(err)}") from None
    # Set after get_peft_model, which overwrites it with the model's own name_or_path ("" for the tiny model).
    peft_model.peft_config["default"].base_model_name_or_path = _base_reference(base_name)
    # AdamW needs fp32 weights to update: the score head copy comes in the base's dtype (bf16 on CUDA).
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return peft_model


def _base_reference(name: str) -> str:
    """A local folder as an absolute path (the run may be reloaded from elsewhere); Hub ids and `tiny` as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


class WithoutAdapters(nn.Module):
    """`model` (the PeftModel or a module around it) run with peft's adapters switched off: the frozen base.

    The same weights as the trained model, no copy. `peft_model` only provides the switch (peft's
    disable_adapter); it is kept as a bound method, not a submodule, so its parameters are not registered twice.
    """

    def __init__(self, model: nn.Module, peft_model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._disable_adapter = peft_model.disable_adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._disable_adapter():
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._disable_adapter():
            return self.model.generate(*args, **kwargs)


def merge_adapters(base: nn.Module, folder: str | Path) -> nn.Module:
    """The adapters saved in `folder` merged into `base`: a plain transformers model, as if fully fine-tuned.

    Loaded as a generic PeftModel (not the task-specific class), so causal-LM adapters from SFT also merge into a
    sequence-classifier base (an RM or value model started from an SFT run saved as adapters).
    """
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(folder))
    config.task_type = None
    try:
        peft_model = PeftModel.from_pretrained(base, str(folder), config=config)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{folder}: cannot put these LoRA adapters on their base: {first_line(err)}") from None
    return peft_model.merge_and_unload()


def merged_copy(peft_model: nn.Module, adapter_weights: dict[str, torch.Tensor], base: nn.Module) -> nn.Module:
    """`base` (a fresh copy of the adapters' base model, in the dtype to save) with the trained adapters merged in.

    The base is reloaded rather than merged in place so that the same code serves a 4-bit base (merging into
    NF4 weights would round them again) and a sharded one (rank 0 holds only its shard); `adapter_weights` are the
    trainable tensors of `peft_model`'s state dict (gathered when sharded).
    """
    from peft import PeftModel, set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    dtype = next(base.parameters()).dtype
    fresh = PeftModel(base, peft_model.peft_config["default"])
    adapters = get_peft_model_state_dict(peft_model, state_dict=adapter_weights, save_embedding_layers=False)
    result = set_peft_model_state_dict(fresh, {k: v.to(dtype) for k, v in adapters.items()})
    if result.unexpected_keys:
        raise RuntimeError(f"adapter weights that fit no module: {result.unexpected_keys[:3]}")
    return fresh.merge_and_unload()


def describe(model: nn.Module) -> str:
    """One line for the model card and the run's start: what is adapted and how much of the model trains.

    `model` is a PeftModel or a module around one (scoring.TokenScorer).
    """
    peft_model = next(m for m in model.modules() if is_peft(m))
    config = peft_model.peft_config["default"]
    trainable, total = peft_model.get_nb_trainable_parameters()
    # "all-linear" is resolved to full module paths; their last part is what a reader recognises (q_proj, ...).
    targets = sorted({name.rsplit(".", 1)[-1] for name in config.target_modules})
    return (
        f"LoRA r={config.r}, alpha={config.lora_alpha:g}, dropout={config.lora_dropout:g} on {', '.join(targets)}: "
        f"{trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.2f}%)"
    )
