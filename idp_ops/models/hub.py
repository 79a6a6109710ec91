"""Hugging Face Hub downloads: a repo + revision pinned to a commit, hashes from the Hub, gated repos.

huggingface_hub does the Hub API part: ``HfApi.model_info(revision, files_metadata=True)`` gives
the commit a branch or tag points at and, per file, its size, git blob id and (LFS files) sha256;
its error classes tell a gated repo from a missing one. The bytes are then streamed by
downloads.download_model from ``{endpoint}/{repo}/resolve/{commit}/{path}``, not by
``hf_hub_download``, because ours hashes while the bytes arrive, resumes a ``.part`` beside the
target with ``Range`` across drops and runs, places a file only on a hash match and keeps nothing
on a mismatch (hf_hub_download verifies nothing by default and keeps its own cache of symlinks into
blobs/), reports progress to our log rather than a tqdm bar, and needs no Xet client. The URL
names the commit, so a branch moving mid-download cannot mix two versions of a model.

What is verified, exactly: an LFS file against its sha256 (from the Hub, or the one configured,
which wins); a small non-LFS file (config.json, tokenizer files) against its git blob id, the sha1
of ``b"blob <size>\\0" + content``. Both are full-content checks; nothing is checked by size alone.

The token (file ``hf_token`` in the secrets dir, 0600) goes only into the ``token=`` argument of
the API call and an ``Authorization`` header held in memory: never env, argv, logs, results or
metadata. httpx drops that header on a redirect to another host (the Hub's CDN uses signed URLs).
Without a token file, ``token=False`` keeps huggingface_hub from using a token of its own
(``HF_TOKEN``, ~/.cache/huggingface): the secrets dir is the one place the box's token lives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from idp_ops.models.downloads import DownloadResult, download_model

HF_DEFAULT_ENDPOINT = "https://huggingface.co"


class HubError(Exception):
    """The Hub refused or does not know the repo, revision or file: a sentence for the operator."""


@dataclass
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files only
    blob_id: str | None  # git object id (sha1) of the file, or of its LFS pointer


@dataclass
class HubFile:
    """One file of a repo, shaped as downloads.DownloadSpec."""

    name: str
    target: str
    source_url: str
    sha256: str | None
    git_sha1: str | None


def hub_endpoint(endpoint: str | None = None) -> str:
    # Read HF_ENDPOINT per call: huggingface_hub.constants reads it once, at import.
    return (endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def denied_message(repo: str, status: int, endpoint: str, token_file: Path | None, has_token: bool) -> str:
    where = str(token_file) if token_file else "the secrets dir (file hf_token)"
    who = "the token in " + where + " has no access to it" if has_token else "no Hub token is set"
    return (
        f"{repo} is gated or private and {who} (HTTP {status}): accept the licence on the model page "
        f"{endpoint}/{repo} and put a token with read access in {where} (`idp-ops secrets hf-token`)"
    )


def resolve_repo(
    repo: str, revision: str, *, token: str | None, endpoint: str, token_file: Path | None = None, timeout_s=30.0
) -> tuple[str, list[RemoteFile]]:
    """The commit ``revision`` names and the repo's files at that commit, or a HubError."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def status_of(exc: HfHubHTTPError) -> int:
        return exc.response.status_code if getattr(exc, "response", None) is not None else 0

    api = HfApi(endpoint=endpoint, library_name="idp-ops")
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True, token=token or False, timeout=timeout_s)
    # Subclasses first: GatedRepoError is a RepositoryNotFoundError, all are HfHubHTTPError.
    except GatedRepoError as exc:
        raise HubError(denied_message(repo, status_of(exc), endpoint, token_file, bool(token))) from None
    except RevisionNotFoundError as exc:
        raise HubError(
            f"revision {revision!r} not found in {repo} (HTTP {status_of(exc)}): check the branch, tag or commit"
        ) from None
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"repo {repo} not found at {endpoint} (HTTP {status_of(exc)}); a private or gated repo answers the "
            "same to a token without access: check the name, then the token (`idp-ops secrets hf-token`)"
        ) from None
    except HfHubHTTPError as exc:
        status = status_of(exc)
        if status in (401, 403):
            raise HubError(denied_message(repo, status, endpoint, token_file, bool(token))) from None
        raise HubError(f"the Hub API at {endpoint} answered HTTP {status} for {repo}@{revision}") from None
    except Exception as exc:  # connection refused, DNS, TLS, offline mode: the Hub is out of reach
        raise HubError(f"cannot reach the Hub at {endpoint}: {type(exc).__name__}: {exc}") from None
    if not info.sha:
        raise HubError(f"the Hub at {endpoint} did not say which commit {repo}@{revision} is")
    files = [
        RemoteFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs else s.size,
            sha256=(s.lfs.sha256.lower() if s.lfs and s.lfs.sha256 else None),
            blob_id=s.blob_id.lower() if s.blob_id else None,
        )
        for s in info.siblings or []
    ]
    return info.sha, files


def select_files(spec, files: list[RemoteFile], commit: str) -> list[RemoteFile]:
    """hf_file: that one file; include: every file matching a pattern (huggingface_hub's own fnmatch rules)."""
    from huggingface_hub.utils import filter_repo_objects

    if spec.hf_file:
        chosen = [f for f in files if f.path == spec.hf_file]
        if not chosen:
            raise HubError(
                f"{spec.hf_file} is not in {spec.hf_repo} at commit {commit} (HTTP 404); files there: {_listing(files)}"
            )
        return chosen
    chosen = list(filter_repo_objects(files, allow_patterns=list(spec.include), key=lambda f: f.path))
    if not chosen:
        raise HubError(
            f"no file of {spec.hf_repo} at commit {commit} matches include {list(spec.include)} (HTTP 404 for all); "
            f"files there: {_listing(files)}"
        )
    return chosen


def _listing(files: list[RemoteFile], limit: int = 12) -> str:
    names = [f.path for f in files]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") or "none"


def download_hub_model(
    spec,
    models_dir: Path,
    *,
    token_file: Path | None = None,
    endpoint: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    **options,
) -> DownloadResult:
    """Make the spec's Hub file(s) exist under ``models_dir``, verified; one DownloadResult for the spec.

    Never raises for Hub, network or data problems: the result says ``failed`` and why. For
    ``include`` the result lists every file in ``files`` and the verified ones stay in place.
    """
    from idp_ops.stack.secrets import SecretsError, read_hf_token

    started = time.monotonic()
    endpoint = hub_endpoint(endpoint)
    models_dir = Path(models_dir).expanduser().resolve()
    result = DownloadResult(
        name=spec.name,
        target=str(models_dir / spec.target),
        url=f"{endpoint}/{spec.hf_repo}",
        status="failed",
        message="",
        hf_repo=spec.hf_repo,
        revision=spec.hf_revision,
    )

    def finish(status, message: str) -> DownloadResult:
        result.status, result.message = status, message
        result.seconds = round(time.monotonic() - started, 3)
        log(f"{spec.name}: {message}")
        return result

    try:
        token = read_hf_token(token_file) if token_file else None
    except SecretsError as exc:
        return finish("failed", str(exc))
    log(f"{spec.name}: resolving {spec.hf_repo}@{spec.hf_revision} on {endpoint}")
    try:
        commit, remote = resolve_repo(
            spec.hf_repo,
            spec.hf_revision,
            token=token,
            endpoint=endpoint,
            token_file=token_file,
            timeout_s=min(float(options.get("timeout_s", 60.0)), 60.0),
        )
        result.commit = commit
        if spec.hf_revision != commit:
            log(f"{spec.name}: {spec.hf_revision} is commit {commit}; downloading that commit")
        chosen = select_files(spec, remote, commit)
    except HubError as exc:
        return finish("failed", str(exc))

    plans: list[tuple[HubFile, RemoteFile]] = []
    for remote_file in chosen:
        rel = PurePosixPath(remote_file.path)
        if rel.is_absolute() or ".." in rel.parts:
            return finish("failed", f"the Hub listed a file path {remote_file.path!r} outside the repo: refused")
        target = spec.target if spec.hf_file else str(PurePosixPath(spec.target) / rel)
        given = spec.sha256 if spec.hf_file else spec.file_sha256.get(remote_file.path)
        if given and remote_file.sha256 and given != remote_file.sha256:
            log(
                f"{spec.name}: {remote_file.path}: the configured sha256 {given} differs from the Hub's "
                f"{remote_file.sha256}; verifying against the configured one"
            )
        sha256 = given or remote_file.sha256
        git_sha1 = None if sha256 else remote_file.blob_id
        if not sha256 and not git_sha1:
            return finish("failed", f"the Hub gave no sha256 nor blob id for {remote_file.path}: nothing to verify")
        url = f"{endpoint}/{spec.hf_repo}/resolve/{commit}/{quote(remote_file.path)}"
        name = spec.name if spec.hf_file else f"{spec.name}/{remote_file.path}"
        plans.append((HubFile(name=name, target=target, source_url=url, sha256=sha256, git_sha1=git_sha1), remote_file))
    result.url = plans[0][0].source_url if spec.hf_file else f"{endpoint}/{spec.hf_repo}/tree/{commit}"

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    denied: list[int] = []
    for plan, remote_file in plans:

        def hint(status: int, path: str = remote_file.path) -> str | None:
            if status in (401, 403):
                denied.append(status)
                return denied_message(spec.hf_repo, status, endpoint, token_file, bool(token))
            if status == 404:
                return f"{path} not found in {spec.hf_repo} at commit {commit} (HTTP 404)"
            return None

        got = download_model(plan, models_dir, headers=headers, log=log, status_hint=hint, **options)
        result.files.append({"path": remote_file.path, "lfs": remote_file.sha256 is not None, **_file_fields(got)})
        if denied:
            break  # every other file of the repo would be refused the same way
    return _summarise(spec, result, finish)


_FILE_FIELDS = (
    "target", "status", "message", "bytes_downloaded", "size", "seconds", "attempts", "resumed_from",
    "sha256", "verified_by", "expected_sha256", "expected_git_sha1",
)  # fmt: skip


def _file_fields(got: DownloadResult) -> dict:
    data = got.as_dict()
    return {k: data[k] for k in _FILE_FIELDS}


def _summarise(spec, result: DownloadResult, finish) -> DownloadResult:
    files = result.files
    result.bytes_downloaded = sum(f["bytes_downloaded"] for f in files)
    result.attempts = sum(f["attempts"] for f in files)
    result.resumed_from = sum(f["resumed_from"] for f in files)
    sizes = [f["size"] for f in files]
    result.size = sum(sizes) if files and None not in sizes else None
    failed = [f for f in files if f["status"] == "failed"]
    if spec.hf_file:
        only = files[0]
        result.target, result.sha256, result.verified_by = only["target"], only["sha256"], only["verified_by"]
        result.expected_sha256, result.expected_git_sha1 = only["expected_sha256"], only["expected_git_sha1"]
        return finish(only["status"], f"{only['message']} (commit {result.commit})")
    counts = {s: sum(1 for f in files if f["status"] == s) for s in ("downloaded", "skipped", "failed")}
    summary = (
        f"{len(files)} files of {spec.hf_repo} at commit {result.commit}: {counts['downloaded']} downloaded, "
        f"{counts['skipped']} present, {counts['failed']} failed"
    )
    if failed:
        return finish("failed", f"{summary}; {failed[0]['path']}: {failed[0]['message']}")
    return finish("downloaded" if counts["downloaded"] else "skipped", summary)
