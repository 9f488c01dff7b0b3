"""Trainer loop room: step plans and checkpoints."""

from __future__ import annotations

import random

import numpy as np
import torch

from zhihu_rlhf.train import loop, models, runtime
from zhihu_rlhf.train.sft import SFTOptions


def test_step_plan_groups_micro_batches_and_keeps_ranks_even():
    assert loop.step_plan(7, grad_accum=2, world_size=1) == [[0, 1], [2, 3], [4, 5], [6]]
    assert loop.step_plan(7, grad_accum=1, world_size=2) == [[0, 1], [2, 3], [4, 5]]  # short last step dropped
    assert loop.step_plan(8, grad_accum=2, world_size=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    rt = runtime.Runtime(device=torch.device("cpu"), autocast_dtype=None)
    opts = SFTOptions(model="tiny", data="d", out=tmp_path, lr=1e-2)
    torch.manual_seed(0)
    _, model = models.load_tokenizer_and_model("tiny", "causal-lm")
    optimizer = loop.make_optimizer(list(model.parameters()), opts.lr, opts.weight_decay)
    scheduler = loop.make_scheduler(optimizer, opts.warmup_ratio, total_steps=10)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    for step in (1, 2, 3):
        loop.save_checkpoint(tmp_path, rt, model, optimizer, scheduler, {"global_step": step, "epoch": 0}, save_limit=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step-*"))] == ["step-00000002", "step-00000003"]
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(99)
    _, fresh = models.load_tokenizer_and_model("tiny", "causal-lm")
    fresh_opt = loop.make_optimizer(list(fresh.parameters()), opts.lr, opts.weight_decay)
    fresh_sched = loop.make_scheduler(fresh_opt, opts.warmup_ratio, total_steps=10)
    state = loop.load_checkpoint(loop.latest_checkpoint(tmp_path), fresh, fresh_opt, fresh_sched, rt)
    assert state == {"global_step": 3, "epoch": 0}
    assert all(torch.equal(v, saved_weights[k]) for k, v in fresh.state_dict().items())
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert len(fresh_opt.state) == len(optimizer.state) > 0
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
