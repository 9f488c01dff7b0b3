"""publish: --dry-run for real; the Hub replaced only at the HfApi object (a small in-memory fake that records
calls); re-publishing is a no-op; every failure is one clear line; the token never leaks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import CommitInfo, RepoFile, RepoFolder
from huggingface_hub.utils.sha import git_hash

from test_export import ALL_FORMATS, write
from zhihu_rlhf import publish as publish_module
from zhihu_rlhf.cards import REPO_PLACEHOLDER
from zhihu_rlhf.errors import UserError, cli_main
from zhihu_rlhf.publish import PublishOptions, main, publish

FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789abcdef"
REPO = "someone/zhihu-rlhf-pairs"


class FakeHub:
    """Stands in for HfApi: remembers repos and files, records every call, raises what a test plants."""

    def __init__(self, datasets: dict[str, dict[str, bytes]] | None = None, models: set[str] | None = None,
                 fail: dict[str, Exception] | None = None):
        self.datasets = datasets if datasets is not None else {}
        self.models = models or set()
        self.fail = fail or {}
        self.calls: list[tuple[str, tuple, dict]] = []

    def _record(self, name: str, *args, **kwargs) -> None:
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def repo_exists(self, repo_id, *, repo_type=None, token=None):
        self._record("repo_exists", repo_id, repo_type=repo_type)
        return repo_id in (self.datasets if repo_type == "dataset" else self.models)

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        self._record("create_repo", repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok)
        self.datasets.setdefault(repo_id, {".gitattributes": b"*.parquet filter=lfs\n"})

    def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False, **kwargs):
        self._record("create_branch", repo_id, branch=branch, repo_type=repo_type, exist_ok=exist_ok)

    def list_repo_tree(self, repo_id, *, recursive=False, revision=None, repo_type=None, **kwargs):
        self._record("list_repo_tree", repo_id, recursive=recursive, revision=revision, repo_type=repo_type)
        entries = []
        for path, content in sorted(self.datasets[repo_id].items()):
            if "/" in path:
                entries.append(RepoFolder(path=path.rsplit("/", 1)[0], oid="tree"))
            # Binary files live in LFS on the Hub: their tree entry carries the sha256, not the git blob id.
            lfs = ({"size": len(content), "oid": hashlib.sha256(content).hexdigest(), "pointerSize": 130}
                   if path.endswith((".parquet", ".png")) else None)
            entries.append(RepoFile(path=path, size=len(content), oid=git_hash(b"pointer " + content) if lfs
                                    else git_hash(content), lfs=lfs))
        return entries

    def create_commit(self, repo_id, operations, *, commit_message, commit_description=None, repo_type=None,
                      revision=None, **kwargs):
        operations = list(operations)
        self._record("create_commit", repo_id, operations=operations, commit_message=commit_message,
                     commit_description=commit_description, repo_type=repo_type, revision=revision)
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                self.datasets[repo_id][op.path_in_repo] = op.path_or_fileobj
            else:
                del self.datasets[repo_id][op.path_in_repo]
        return CommitInfo(commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/abc123",
                          commit_message=commit_message, commit_description=commit_description or "", oid="abc123")


def http_error(status: int, cls=HfHubHTTPError) -> HfHubHTTPError:
    request = httpx2.Request("POST", f"https://huggingface.co/api/datasets/{REPO}/commit/main")
    return cls(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.fixture
def folder(tmp_path) -> Path:
    return write(tmp_path / "pairs", "pairs", formats=ALL_FORMATS)


@pytest.fixture
def token(monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no login cache from the machine
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return FAKE_TOKEN


def local_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_dry_run_lists_every_file_and_touches_no_network(folder, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = FakeHub()
    assert publish(PublishOptions(folder, REPO, dry_run=True), api=hub) is None
    assert hub.calls == []
    out = capsys.readouterr().out
    files = local_files(folder)
    assert {"README.md", "stats.json", "params.json", "plots/upvote_ratio.png", "plots/time_gap.png",
            "data/train-00000-of-00001.parquet", "formats/llamafactory/dataset_info.json"} <= set(files)
    for path in files:
        assert f"{folder / path} -> {path} (" in out
    assert f"https://huggingface.co/datasets/{REPO} (branch main)" in out
    params_hash = json.loads((folder / "params.json").read_text())["params_hash"]
    assert params_hash in out


def test_first_publish_creates_the_repo_and_uploads_everything_in_one_commit(folder, token, capsys):
    hub = FakeHub()
    url = publish(PublishOptions(folder, REPO, private=True), api=hub)
    assert url == f"https://huggingface.co/datasets/{REPO}/commit/abc123"
    assert hub.names() == ["repo_exists", "repo_exists", "create_repo", "list_repo_tree", "create_commit"]
    _, _, create = hub.calls[2]
    assert create == {"repo_type": "dataset", "private": True, "exist_ok": True}
    [(_, args, commit)] = [c for c in hub.calls if c[0] == "create_commit"]
    assert args == (REPO,) and commit["repo_type"] == "dataset" and commit["revision"] is None
    assert sorted(op.path_in_repo for op in commit["operations"]) == local_files(folder)
    build = json.loads((folder / "params.json").read_text())
    assert build["params_hash"] in commit["commit_message"] and "pairs" in commit["commit_message"]
    readme = hub.datasets[REPO]["README.md"].decode()
    assert f'load_dataset("{REPO}")' in readme and REPO_PLACEHOLDER not in readme
    assert hub.datasets[REPO]["data/train-00000-of-00001.parquet"] == \
        (folder / "data/train-00000-of-00001.parquet").read_bytes()


def test_republishing_unchanged_data_makes_no_commit(folder, token, capsys):
    hub = FakeHub()
    publish(PublishOptions(folder, REPO), api=hub)
    hub.calls.clear()
    assert publish(PublishOptions(folder, REPO), api=hub) is None
    assert "create_commit" not in hub.names() and "create_repo" not in hub.names()
    assert "up to date" in capsys.readouterr().out


def test_republishing_changes_commits_only_changed_files_and_deletes_stale_ones(folder, token, tmp_path):
    hub = FakeHub()
    publish(PublishOptions(folder, REPO), api=hub)
    hub.datasets[REPO]["LICENSE"] = b"added by hand"
    rebuilt = write(folder, "pairs", formats=["trl"])  # no trl-chat etc. any more; card and params change
    hub.calls.clear()
    publish(PublishOptions(rebuilt, REPO), api=hub)
    [(_, _, commit)] = [c for c in hub.calls if c[0] == "create_commit"]
    added = {op.path_in_repo for op in commit["operations"] if isinstance(op, CommitOperationAdd)}
    deleted = {op.path_in_repo for op in commit["operations"] if isinstance(op, CommitOperationDelete)}
    assert added == {"README.md", "params.json"}  # parquet, stats and plots are byte-identical
    assert "formats/trl-chat/train-00000-of-00001.parquet" in deleted
    assert all(path.startswith(("formats/trl-chat/", "formats/llamafactory/", "formats/deepspeed-chat/",
                                "formats/zhihu_rlhf_3k/")) for path in deleted)
    assert "LICENSE" in hub.datasets[REPO]


def test_revision_creates_the_branch_and_commits_to_it(folder, token):
    hub = FakeHub(datasets={REPO: {}})
    publish(PublishOptions(folder, REPO, revision="v2"), api=hub)
    assert ("create_branch", (REPO,), {"branch": "v2", "repo_type": "dataset", "exist_ok": True}) in hub.calls
    assert [c[2]["revision"] for c in hub.calls if c[0] in ("list_repo_tree", "create_commit")] == ["v2", "v2"]


@pytest.mark.parametrize(("fail", "message"), [
    ({"create_commit": http_error(403)}, "no write access to dataset repo someone/zhihu-rlhf-pairs (403)"),
    ({"repo_exists": http_error(401)}, "token was rejected (401)"),
    ({"create_commit": http_error(404, RepositoryNotFoundError)}, "not found or not accessible with your token"),
    ({"create_commit": http_error(500)}, "the Hub refused the request for dataset repo someone/zhihu-rlhf-pairs (500)"),
    ({"repo_exists": httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")},
     "cannot reach the Hugging Face Hub"),
])
def test_hub_failures_become_one_clear_line(folder, token, fail, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        publish(PublishOptions(folder, REPO), api=FakeHub(fail=fail))


def test_a_model_repo_with_that_name_is_refused(folder, token):
    hub = FakeHub(models={REPO})
    with pytest.raises(UserError, match="is a model repository"):
        publish(PublishOptions(folder, REPO), api=hub)
    assert "create_repo" not in hub.names() and "create_commit" not in hub.names()


def test_no_token_is_a_clear_error_before_any_call(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = FakeHub()
    with pytest.raises(UserError, match="no Hugging Face token: set HF_TOKEN"):
        publish(PublishOptions(folder, REPO), api=hub)
    assert hub.calls == []


@pytest.mark.parametrize("argv", [
    ["missing-folder", "--repo-id", REPO, "--dry-run"],
    ["{folder}", "--repo-id", "not a repo id", "--dry-run"],
    ["{folder}", "--repo-id", "no-namespace", "--dry-run"],
])
def test_cli_bad_arguments_exit_2_with_one_line(folder, argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(main, [arg.format(folder=folder) for arg in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_not_an_output_folder_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README.md").write_text("hello")
    with pytest.raises(UserError, match="not a zhihu_rlhf output folder: missing stats.json, params.json"):
        publish(PublishOptions(tmp_path / "x", REPO, dry_run=True))


def test_token_appears_in_no_output_call_or_file(folder, token, capsys, monkeypatch):
    hub = FakeHub()
    publish(PublishOptions(folder, REPO, dry_run=True), api=hub)
    publish(PublishOptions(folder, REPO), api=hub)
    with pytest.raises(UserError) as failure:
        publish(PublishOptions(folder, REPO), api=FakeHub(fail={"create_commit": http_error(403)}))
    # The CLI path too, with a failing Hub behind it.
    monkeypatch.setattr(publish_module, "HfApi", lambda token: FakeHub(fail={"repo_exists": http_error(401)}))
    with pytest.raises(SystemExit):
        cli_main(main, [str(folder), "--repo-id", REPO])
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + str(failure.value)
    assert "error: the Hugging Face token was rejected" in captured.err
    assert FAKE_TOKEN not in repr(hub.calls)
    for path in folder.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes()
    for content in hub.datasets[REPO].values():
        assert FAKE_TOKEN.encode() not in content
