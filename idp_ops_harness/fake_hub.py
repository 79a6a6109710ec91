"""A local stand-in for the part of the Hugging Face Hub that huggingface_hub and idp_ops.models.hub use.

No Hub is reachable from the test and benchmark machines, so this server speaks the Hub's wire
format on loopback, selected with ``HF_ENDPOINT``:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``?blobs=true``: siblings
  with ``size``, ``blobId`` and ``lfs {size, sha256, pointerSize}``), as ``HfApi.model_info`` reads;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size``, ``Accept-Ranges`` and ``Range: bytes=N-``, as ``hf_hub_download`` and ours read;
- errors as the Hub sends them: ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound
  (404) and GatedRepo (401 without a token, 403 with a token that has no access).

On cue it drops a connection mid-file once (``drop_after``) or lies about a file's sha256 in the
metadata (``lie_sha256``). Every request is recorded with its headers (``requests``) so tests can
see which token and Range were sent. Files are bytes in memory or paths on disk (big benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 1 << 20


@dataclass
class FakeRepo:
    files: dict[str, bytes | Path]
    lfs: set[str]
    commit: str
    branches: dict[str, str]
    gated: bool = False
    # path -> (sha256, size), computed once: a 300 MB benchmark file is hashed at setup, not per request.
    digests: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass
class HubState:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    # The one token with access to gated repos.
    token: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    # (repo, path) -> bytes to send before dropping the connection (first GET only).
    drop_after: dict[tuple[str, str], int] = field(default_factory=dict)
    # (repo, path) -> the sha256 the metadata claims instead of the real one.
    lie_sha256: dict[tuple[str, str], str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_repo(
        self,
        repo: str,
        files: dict[str, bytes | Path],
        *,
        lfs: set[str] | None = None,
        gated: bool = False,
        branch: str = "main",
    ) -> str:
        """Add a repo whose ``branch`` points at a commit made of ``files``; returns that commit."""
        lfs = set(lfs if lfs is not None else (p for p, body in files.items() if _size(body) > 10 * 1024))
        digests = {path: _digest(body) for path, body in files.items()}
        commit = hashlib.sha1(
            json.dumps(sorted((p, d[0]) for p, d in digests.items())).encode(), usedforsecurity=False
        ).hexdigest()
        self.repos[repo] = FakeRepo(files, lfs, commit, {branch: commit}, gated, digests)
        return commit


def git_blob_sha1(body: bytes) -> str:
    return hashlib.sha1(f"blob {len(body)}\0".encode() + body, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _size(body: bytes | Path) -> int:
    return len(body) if isinstance(body, bytes) else body.stat().st_size


def _digest(body: bytes | Path) -> tuple[str, int]:
    if isinstance(body, bytes):
        return hashlib.sha256(body).hexdigest(), len(body)
    digest = hashlib.sha256()
    with body.open("rb") as handle:
        while block := handle.read(8 * CHUNK):
            digest.update(block)
    return digest.hexdigest(), body.stat().st_size


class FakeHubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    # -- routing --------------------------------------------------------------

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def _route(self, method: str) -> None:
        state: HubState = self.server.state
        with state.lock:
            state.requests.append((method, self.path, dict(self.headers)))
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
            repo, _, revision = rest.partition("/revision/")
            return self._model_info(method, repo, revision or "main", parse_qs(url.query))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            return self._resolve(method, *match.groups())
        return self._error(404, "EntryNotFound", f"no route for {path}")

    # -- API ------------------------------------------------------------------

    def _find(self, repo_id: str, revision: str) -> tuple[FakeRepo | None, str | None]:
        repo = self.server.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None, None
        commit = repo.branches.get(revision) or (revision if revision == repo.commit else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None, None
        return repo, commit

    def _model_info(self, method: str, repo_id: str, revision: str, query: dict) -> None:
        repo, commit = self._find(repo_id, revision)
        if repo is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path in sorted(repo.files):
            sibling: dict = {"rfilename": path}
            if blobs:
                sha256, size = repo.digests[path]
                if path in repo.lfs:
                    pointer = lfs_pointer(sha256, size)
                    claimed = self.server.state.lie_sha256.get((repo_id, path), sha256)
                    sibling.update(
                        size=size,
                        blobId=git_blob_sha1(pointer),
                        lfs={"size": size, "sha256": claimed, "pointerSize": len(pointer)},
                    )
                else:
                    sibling.update(size=size, blobId=git_blob_sha1(_read(repo.files[path])))
            siblings.append(sibling)
        body = json.dumps(
            {
                "_id": commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    # -- files ----------------------------------------------------------------

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        state: HubState = self.server.state
        repo = state.repos.get(repo_id)
        if repo is not None and repo.gated:
            auth = self.headers.get("Authorization", "")
            if not auth:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. Please log in.")
            if auth != f"Bearer {state.token}":
                return self._error(
                    403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list."
                )
        repo, commit = self._find(repo_id, revision)
        if repo is None:
            return
        if path not in repo.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        source = repo.files[path]
        sha256, size = repo.digests[path]
        etag = sha256 if path in repo.lfs else git_blob_sha1(_read(source))
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{etag}"')
        if path in repo.lfs:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(size))
        self.end_headers()
        if method == "HEAD":
            return
        with state.lock:
            drop = state.drop_after.pop((repo_id, path), None)
        sent = 0
        try:
            for block in _blocks(source, start):
                if drop is not None and sent + len(block) >= drop:
                    self.wfile.write(block[: drop - sent])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the link goes away mid-file
                    self.close_connection = True
                    return
                self.wfile.write(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def _read(source: bytes | Path) -> bytes:
    return source if isinstance(source, bytes) else source.read_bytes()


def _blocks(source: bytes | Path, start: int) -> Iterator[bytes]:
    if isinstance(source, bytes):
        view = memoryview(source)
        for offset in range(start, len(source), CHUNK):
            yield bytes(view[offset : offset + CHUNK])
        return
    with source.open("rb") as handle:
        handle.seek(start)
        while block := handle.read(CHUNK):
            yield block


@dataclass
class FakeHub:
    base: str
    state: HubState


@contextmanager
def running_fake_hub() -> Iterator[FakeHub]:
    """The fake Hub on a free loopback port, for the duration of the block."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeHubHandler)
    httpd.daemon_threads = True
    httpd.state = HubState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FakeHub(base=f"http://127.0.0.1:{httpd.server_address[1]}", state=httpd.state)
    finally:
        httpd.shutdown()
        httpd.server_close()
