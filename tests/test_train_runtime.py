"""Trainer runtime room: device selection errors through the real entry point."""

from __future__ import annotations

import subprocess
import sys


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
