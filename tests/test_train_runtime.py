"""Trainer runtime room: device selection errors through the real entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_python_m_entry_point_gives_one_line_and_exit_2_for_missing_cuda(tmp_path):
    # Runs the real `python -m zhihu_rlhf.train` process; CUDA is hidden so the check is the same on any machine.
    result = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.train", "sft", "--model", "tiny", "--data", str(tmp_path),
         "--out", str(tmp_path / "o"), "--device", "cuda"],
        capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""}, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda was asked for but no CUDA GPU is available (use --device cpu or auto)"
    ]


def test_precision_auto_is_fp32_on_a_cpu_and_bf16_asks_for_autocast():
    import torch

    from zhihu_rlhf.errors import UserError
    from zhihu_rlhf.train.runtime import setup_runtime

    assert setup_runtime("cpu").autocast_dtype is None
    assert setup_runtime("cpu", "fp32").autocast_dtype is None
    rt = setup_runtime("cpu", "bf16")
    layer = torch.nn.Linear(4, 4)
    with rt.autocast():
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with pytest.raises(UserError, match="--precision"):
        setup_runtime("cpu", "fp16")
