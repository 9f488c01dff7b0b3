"""Test-wide settings and shared fixtures."""

from pathlib import Path

import pytest
import torch

# The tiny models are far faster on one thread; two threads spin against each other on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_build_cache(tmp_path_factory):
    """Builds in tests never touch the user's step cache; module-scoped fixtures share this one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZHIHU_RLHF_CACHE", str(tmp_path_factory.mktemp("build-cache")))
        yield


@pytest.fixture(autouse=True)
def _build_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty step cache of its own (outside its tmp_path, which some tests list)."""
    monkeypatch.setenv("ZHIHU_RLHF_CACHE", str(tmp_path_factory.mktemp("build-cache")))


@pytest.fixture(scope="session")
def fixture_model_dir(tmp_path_factory):
    """fixture_model_dir(family, kind="causal-lm") -> a saved model_fixtures folder, written once per session.

    The folder looks like a Hub download (config, weights, tokenizer, generation_config), so it goes wherever a
    user would pass a model id: the trainer's --model/--policy/--reward, or from_pretrained.
    """
    from model_fixtures import save_model

    saved: dict[tuple[str, str], Path] = {}

    def folder(family: str, kind: str = "causal-lm") -> Path:
        if (family, kind) not in saved:
            saved[family, kind] = save_model(family, kind, tmp_path_factory.mktemp(f"{family}-{kind}"))
        return saved[family, kind]

    return folder
