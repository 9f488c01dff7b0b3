"""Where and how a training process runs: device, precision, the torchrun process group, DDP, seeding.

    Runtime                        device, autocast dtype, rank/world size; .autocast(), .is_main, .all_reduce_sum(x),
                                   .no_sync(model, sync), .barrier()
    setup_runtime(device) -> Runtime     "auto" | "cuda" | "cpu"; inits the process group when WORLD_SIZE > 1
    wrap_ddp(model, rt) / unwrap(model)  DistributedDataParallel wrapper when world_size > 1, and back
    shutdown_runtime(rt)
    seed_everything(seed)
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zhihu_rlhf.errors import UserError


@dataclass
class Runtime:
    """Where and how this process trains."""

    device: torch.device
    # bf16 autocast on CUDA; None (plain fp32) on CPU.
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


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group, one GPU per local rank."""
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"--device must be auto, cuda or cpu, got {device!r}")
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
        autocast_dtype=torch.bfloat16 if use_cuda else None,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if not rt.distributed:
        return model
    device_ids = [rt.local_rank] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
