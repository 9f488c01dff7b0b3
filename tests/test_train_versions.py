"""The trainer refuses, with one line, a transformers older than the one its code needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zhihu_rlhf.errors import UserError
from zhihu_rlhf.train import versions


def test_train_command_with_an_older_transformers_fails_with_one_line(tmp_path: Path) -> None:
    # An installed transformers 5.20.2 as importlib.metadata sees it: its dist-info first on the path.
    dist_info = tmp_path / "site" / "transformers-5.20.2.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.20.2\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "zhihu_rlhf.train", "sft", "--model", "tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr == (
        "error: zhihu_rlhf.train needs transformers>=5.23, found 5.20.2: pip install -U 'transformers>=5.23'\n"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("installed", "ok"), [("5.23.0", True), ("5.100.0", True), ("5.22.2", False), ("4.57.6", False)])
def test_floor_comparison_is_by_version_not_by_text(monkeypatch, installed: str, ok: bool) -> None:
    monkeypatch.setattr(versions, "version", lambda name: installed)
    if ok:
        versions.check_transformers()
    else:
        with pytest.raises(UserError, match=f"found {installed}"):
            versions.check_transformers()
