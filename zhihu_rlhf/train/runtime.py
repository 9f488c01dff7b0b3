"""Where and how a training process runs: device, precision, the torchrun process group, DDP or FSDP2, seeding.

    Runtime                        device, autocast dtype, rank/world size; .autocast(), .is_main, .all_reduce_sum(x),
                                   .no_sync(model, sync), .barrier()
    setup_runtime(device, precision) -> Runtime   device "auto" | "cuda" | "cpu", precision "auto" | "bf16" | "fp32";
                                   inits the process group when WORLD_SIZE > 1
    wrap_ddp(model, rt) / unwrap(model)  DistributedDataParallel wrapper when world_size > 1 (not for a sharded model)
    shard_model(model, rt)               FSDP2: fully_shard each transformer block, then the whole model
    load_from_rank0(model, source, rt)   fill a sharded skeleton with rank 0's weights, one tensor at a time
    is_sharded(model) / gathered(*models)  whether FSDP2 holds it; full weights on every rank for inference
    shutdown_runtime(rt)
    seed_everything(seed)
    training_runtime(device, precision, seed) -> Runtime   context: the two above and the shutdown, for a train()

Data parallel (DDP) keeps a full copy of weights, gradients and AdamW states on every process. Sharding (FSDP2,
torch.distributed.fsdp.fully_shard) keeps 1/N of each on each of N processes and all-gathers one block's weights
at a time for its forward and backward: compute in bf16 on CUDA (fp32 on CPU), gradients reduced in fp32, the
sharded fp32 weights are AdamW's master copy. Every rank must then run the same number of forward passes (each one
all-gathers); inference with uneven work per rank (evaluation, generation) runs inside `gathered(model)`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zhihu_rlhf.errors import UserError


@dataclass
class Runtime:
    """Where and how this process trains."""

    device: torch.device
    # bf16 autocast (precision "auto" on CUDA, or "bf16"); None: plain fp32 ("auto" on a CPU, or "fp32").
    autocast_dtype: torch.dtype | None
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def all_reduce_sum(self, value: float) -> float:
        """Sum a scalar over all ranks (identity on one process)."""
        if not self.distributed:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on accumulation micro-steps; sync on the last one."""
        if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


PRECISIONS = ("auto", "bf16", "fp32")


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the device and autocast; under torchrun (WORLD_SIZE > 1) join the process group, one GPU per local rank.

    precision "auto": bf16 autocast over fp32 weights on CUDA, plain fp32 on a CPU (exact, what the tests compare
    against); "bf16" also autocasts on a CPU (several times faster where the CPU has bf16 instructions, e.g.
    avx512_bf16/AMX, as TRL does by default); "fp32" never autocasts.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device must be auto, cuda or cpu, got {device!r}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available (use --device cpu or auto)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        # TF32 matmuls for whatever runs outside autocast (optimizer, fp32 reductions).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(
        device=dev,
        autocast_dtype=torch.bfloat16 if precision == "bf16" or (precision == "auto" and use_cuda) else None,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def training_runtime(device: str, precision: str, seed: int) -> Iterator[Runtime]:
    """A training command's runtime: setup_runtime, then seed_everything; the process group shut down however the
    run ends."""
    rt = setup_runtime(device, precision)
    seed_everything(seed)
    try:
        yield rt
    finally:
        shutdown_runtime(rt)


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if not rt.distributed or is_sharded(model):
        return model
    device_ids = [rt.local_rank] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ----------------------------------------------------------------------------------------------------------------
# FSDP2 sharding


def is_sharded(model: nn.Module) -> bool:
    """True when fully_shard manages (part of) the model."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_model(model: nn.Module, rt: Runtime) -> nn.Module:
    """fully_shard every transformer block (the classes transformers keeps whole, `_no_split_modules`), then the root.

    One block is all-gathered at a time, so a rank's peak is its shard of everything plus one full block. The
    root's own parameters (embeddings, final norm, heads) form one more group. Works on a meta-device skeleton
    (then fill it with load_from_rank0) and on peft models (adapters sit inside the blocks).
    """
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        raise UserError(f"--shard needs FSDP2 (torch >= 2.6); this is torch {torch.__version__}") from None
    if not rt.distributed:
        raise UserError(
            "--shard splits the model over processes: launch with torchrun --nproc-per-node N (N >= 2), "
            "e.g. torchrun --nproc-per-node 8 -m zhihu_rlhf.train sft ... --shard"
        )
    mesh = init_device_mesh(rt.device.type, (rt.world_size,))
    precision = MixedPrecisionPolicy(param_dtype=rt.autocast_dtype, reduce_dtype=torch.float32)
    block_classes = set()
    for module in model.modules():
        block_classes |= set(getattr(module, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_classes]
    if not blocks:
        raise UserError(f"--shard: {type(model).__name__} names no transformer block class (_no_split_modules)")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=precision)
    # The root must be the module whose forward every call goes through: for a peft model that is the transformers
    # model inside (generate() and the task wrappers call it directly, skipping the PeftModel's own forward).
    from peft import PeftModel

    fully_shard(model.get_base_model() if isinstance(model, PeftModel) else model, mesh=mesh, mp_policy=precision)
    return model


@torch.no_grad()
def load_from_rank0(model: nn.Module, source: nn.Module | None, rt: Runtime) -> None:
    """Fill a sharded model (built on the meta device) with the weights of `source`, a full model on rank 0 only.

    Rank 0 broadcasts one tensor at a time and each rank keeps its shard, so no other process ever holds a full
    copy. Buffers are not sharded and not all in the state dict (rotary inv_freq is not), so they are broadcast
    one by one as well.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=rt.device)
    full = source.state_dict() if rt.is_main and source is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    source_buffers = dict(source.named_buffers()) if rt.is_main and source is not None else {}
    for name, buffer in model.named_buffers():
        if rt.is_main:
            buffer.copy_(source_buffers[name])
        torch.distributed.broadcast(buffer, src=0)


@contextlib.contextmanager
def gathered(*models: object) -> Iterator[None]:
    """Inside: sharded models hold their full (compute-dtype) weights on every rank, so forwards need no collectives.

    For inference where ranks do uneven work (evaluation shares, generation of different lengths): one all-gather
    going in, instead of one per block per forward (and a hang when one rank runs fewer forwards). Costs one full
    bf16 copy of the weights per GPU while inside. Anything not sharded (or not a module) is left alone; models
    that share modules (LoRA's base with adapters off) are gathered once.
    """
    from torch.distributed.fsdp import FSDPModule

    groups: dict[int, FSDPModule] = {}
    for model in models:
        if isinstance(model, nn.Module):
            groups.update((id(m), m) for m in model.modules() if isinstance(m, FSDPModule))
    # Blocks free their full weights after each forward; a root (no FSDP module above it) keeps them, as fully_shard
    # sets it up: its weights are needed again first thing in backward.
    blocks = {
        id(sub)
        for group in groups.values()
        for sub in group.modules()
        if sub is not group and isinstance(sub, FSDPModule)
    }
    for group in groups.values():
        group.set_reshard_after_forward(False, recurse=False)
        group.unshard()
    try:
        yield
    finally:
        for key, group in groups.items():
            group.reshard()
            group.set_reshard_after_forward(key in blocks, recurse=False)
