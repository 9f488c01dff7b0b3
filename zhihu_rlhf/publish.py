"""`python -m zhihu_rlhf.publish OUT --repo-id NAME/REPO`: upload a built set's folder to a Hub dataset repo.

    python -m zhihu_rlhf.publish out/pairs --repo-id me/zhihu-rlhf-pairs --dry-run   # what would go where
    python -m zhihu_rlhf.publish out/pairs --repo-id me/zhihu-rlhf-pairs             # create repo + one commit

One commit holds every changed file (and deletes stale files under data/, formats/, plots/); its message names the
recipe and the hash of its parameters. Files are compared with the remote by content hash, so publishing unchanged
data makes no commit. The token comes from HF_TOKEN or the login cache (`hf auth login`); it is handed to HfApi and
never printed or written. `publish()` takes the HfApi object as an argument so tests can replace the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils.sha import git_hash
from tqdm import tqdm

from zhihu_rlhf.cards import REPO_PLACEHOLDER
from zhihu_rlhf.errors import UserError, cli_main

REPO_TYPE = "dataset"
# Remote files under these folders that the local folder no longer has are deleted in the same commit, so a
# re-published set never keeps an old format or plot. Other remote files (a LICENSE added by hand) are left alone.
MANAGED_FOLDERS = ("data/", "formats/", "plots/")
REQUIRED_FILES = ("README.md", "stats.json", "params.json")


@dataclass
class PublishOptions:
    folder: Path
    """A folder written by `python -m zhihu_rlhf.build` (README.md, stats.json, params.json, data/, ...)."""
    repo_id: str
    """Hub dataset repository, NAME/REPO; created if it does not exist."""
    private: bool = False
    """Create the repository as private (an existing repository keeps its visibility)."""
    revision: str | None = None
    """Branch to commit to (created from main if missing); None = main."""
    dry_run: bool = False
    """Only print which files would be uploaded where; needs no token and no network."""


@dataclass(frozen=True)
class LocalFile:
    path_in_repo: str
    content: bytes


def read_folder(folder: Path, repo_id: str) -> list[LocalFile]:
    """The files to publish, sorted; README.md gets the real repo id in its loading examples."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (build a set first: python -m zhihu_rlhf.build ...)")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing or not (folder / "data").is_dir():
        raise UserError(f"{folder} is not a zhihu_rlhf output folder: missing {', '.join(missing or ['data/'])}")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in relative.split("/")):
            continue
        content = path.read_bytes()
        if relative == "README.md":
            content = content.replace(REPO_PLACEHOLDER.encode(), repo_id.encode())
        files.append(LocalFile(relative, content))
    return files


def commit_message(folder: Path) -> tuple[str, str]:
    """(title, description): the recipe, tool version and parameters hash; the description lists the parameters."""
    build = json.loads((Path(folder) / "params.json").read_text(encoding="utf-8"))
    params = build["params"]
    title = (f"zhihu-rlhf {params.get('tool_version', '?')}: {build['kind']} recipe from {params.get('source', '?')}, "
             f"params {build['params_hash']}")
    return title, "Build parameters:\n\n```json\n" + json.dumps(build, indent=2, ensure_ascii=False) + "\n```\n"


def _target(options: PublishOptions) -> str:
    return f"https://huggingface.co/datasets/{options.repo_id} (branch {options.revision or 'main'})"


def _same_content(local: LocalFile, remote) -> bool:
    """LFS files are compared by sha256, regular files by their git blob id."""
    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == hashlib.sha256(local.content).hexdigest()
    return remote.blob_id == git_hash(local.content)


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Turn the Hub's exceptions into one line that says what to do."""
    try:
        yield
    except RepositoryNotFoundError as err:
        raise UserError(f"dataset repo {repo_id} not found or not accessible with your token: check --repo-id "
                        "and that the token may write to this namespace") from err
    except RevisionNotFoundError as err:
        raise UserError(f"branch not found on dataset repo {repo_id}: check --revision") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise UserError("the Hugging Face token was rejected (401): run `hf auth login` or set a valid HF_TOKEN") \
                from err
        if status == 403:
            raise UserError(f"no write access to dataset repo {repo_id} (403): use a token with write permission "
                            "for this namespace") from err
        detail = err.server_message or str(err).splitlines()[0]
        raise UserError(f"the Hub refused the request for dataset repo {repo_id} ({status}): {detail}") from err
    except (httpx2.TransportError, OfflineModeIsEnabled) as err:
        raise UserError(f"cannot reach the Hugging Face Hub ({type(err).__name__}): check the network "
                        "connection and that HF_HUB_OFFLINE is not set") from err


def _ensure_repo(api: HfApi, options: PublishOptions) -> None:
    if api.repo_exists(options.repo_id, repo_type=REPO_TYPE):
        return
    if api.repo_exists(options.repo_id, repo_type="model"):
        raise UserError(f"{options.repo_id} is a model repository; publish the dataset under another --repo-id")
    api.create_repo(options.repo_id, repo_type=REPO_TYPE, private=options.private, exist_ok=True)


def publish(options: PublishOptions, api: HfApi | None = None, log: Callable[[str], None] = print) -> str | None:
    """Publish the folder; returns the commit URL, or None for a dry run or when the Hub is already up to date."""
    try:
        validate_repo_id(options.repo_id)
    except HFValidationError as err:
        raise UserError(f"--repo-id {options.repo_id!r} is not a valid repository id (NAME/REPO)") from err
    if "/" not in options.repo_id:
        raise UserError(f"--repo-id {options.repo_id!r}: give it as NAME/REPO (your user or organisation name)")
    files = read_folder(options.folder, options.repo_id)
    title, description = commit_message(options.folder)

    if options.dry_run:
        total = sum(len(f.content) for f in files)
        log(f"dry run: {len(files)} files ({tqdm.format_sizeof(total, 'B')}) would go to {_target(options)} in one commit")
        log(f'  commit message: "{title}"')
        for f in files:
            log(f"  {options.folder / f.path_in_repo} -> {f.path_in_repo} ({tqdm.format_sizeof(len(f.content), 'B')})")
        log(f"  the repo is created ({'private' if options.private else 'public'}) if missing; files identical on "
            f"the Hub are skipped; remote files under {', '.join(MANAGED_FOLDERS)} not listed here are deleted")
        return None

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    api = api or HfApi(token=token)
    with _hub_errors(options.repo_id):
        _ensure_repo(api, options)
        if options.revision:
            api.create_branch(options.repo_id, branch=options.revision, repo_type=REPO_TYPE, exist_ok=True)
        remote = {
            entry.path: entry
            for entry in api.list_repo_tree(options.repo_id, recursive=True, revision=options.revision,
                                            repo_type=REPO_TYPE)
            if hasattr(entry, "blob_id")  # files only, not folders
        }
        changed = [f for f in files if not _same_content(f, remote.get(f.path_in_repo))]
        local_paths = {f.path_in_repo for f in files}
        stale = sorted(path for path in remote if path.startswith(MANAGED_FOLDERS) and path not in local_paths)
        if not changed and not stale:
            log(f"up to date: {_target(options)} already has these {len(files)} files; no commit made")
            return None
        operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=f.content) for f in changed]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        info = api.create_commit(options.repo_id, operations, commit_message=title, commit_description=description,
                                 repo_type=REPO_TYPE, revision=options.revision)
    log(f"published {len(changed)} changed and {len(stale)} deleted files to {_target(options)}: {info.commit_url}")
    return info.commit_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zhihu_rlhf.publish",
        description="Upload a built set's folder (card, plots, parquet, formats) to a Hugging Face dataset repo "
                    "in one commit. The token comes from HF_TOKEN or `hf auth login`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folder", type=Path, help="folder written by `python -m zhihu_rlhf.build` (e.g. out/pairs)")
    parser.add_argument("--repo-id", required=True, help="dataset repository NAME/REPO (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to, created if missing (default: main)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded where; no network")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    publish(PublishOptions(folder=args.folder, repo_id=args.repo_id, private=args.private, revision=args.revision,
                           dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    cli_main(main)
