"""Model downloads: resumable, verified by sha256, renamed into place only when they match.

Each declared model (``settings.model_downloads``) is fetched over HTTP(S) into
``.<name>.part`` beside its target, in the models dir, so the final rename is
atomic (same filesystem). The sha256 is computed while the bytes arrive; a
resumed download first hashes the bytes already on disk, then asks the server
for the rest with ``Range``. Only a matching hash is renamed into place; a
mismatch deletes the partial and names both hashes. A target already present is
hashed: right hash, skipped; wrong hash, reported and left alone (it may be the
operator's own file, and overwriting 40 GB silently is not ours to decide).

httpx rather than hand-rolled urllib: it follows the Hugging Face redirects to
the CDN, drops Authorization on cross-host redirects, and separates connect and
read timeouts.

Hugging Face repos (``hf_repo``) go through hub.py, which resolves the revision
to a commit and the expected hashes from the Hub, then fetches each file here.
A file the Hub stores without LFS has no sha256 in its metadata, only its git
blob id; such a file (a spec with ``git_sha1`` and no ``sha256``) is verified
against that: sha1 of ``b"blob <size>\\0" + content``, exact, not by size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import httpx

Status = Literal["skipped", "downloaded", "failed"]

HASH_CHUNK = 8 << 20
# Statuses worth retrying: the server or something in between is having a bad moment.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadSpec(Protocol):
    """What config.ModelDownload provides (kept structural so core/ needs no settings object)."""

    name: str
    sha256: str | None  # None/empty: verify ``git_sha1`` instead (a non-LFS Hub file)
    target: str

    @property
    def source_url(self) -> str: ...


@dataclass
class DownloadProgress:
    name: str
    done: int
    total: int | None
    received: int  # bytes fetched in this run (resumed bytes excluded)
    elapsed_s: float

    @property
    def rate_bps(self) -> float:
        return self.received / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def percent(self) -> float | None:
        return 100.0 * self.done / self.total if self.total else None

    def describe(self) -> str:
        share = f" of {_size(self.total)} ({self.percent:.1f} %)" if self.total else ""
        eta = ""
        if self.total and self.rate_bps > 0:
            eta = f", {max(self.total - self.done, 0) / self.rate_bps:,.0f} s left"
        return f"{self.name}: {_size(self.done)}{share} at {_size(self.rate_bps)}/s{eta}"


@dataclass
class DownloadResult:
    name: str
    target: str
    url: str
    status: Status
    message: str
    bytes_downloaded: int = 0  # fetched over the network in this run
    size: int | None = None  # of the verified file
    seconds: float = 0.0
    attempts: int = 0
    resumed_from: int = 0
    expected_sha256: str = ""
    sha256: str | None = None  # what we computed, when we got that far
    # What the check compared: "sha256", or "git-blob-sha1" for a small non-LFS Hub file.
    verified_by: str = "sha256"
    expected_git_sha1: str = ""
    # Hub downloads: the repo, the revision asked for, the commit it resolved to, and one entry per file.
    hf_repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict:
        return asdict(self)


class _Retry(Exception):
    """A failed attempt worth resuming (connection dropped, timeout, 5xx)."""


class _Fail(Exception):
    """A failure retrying will not fix (404, disk full, no space)."""


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n} B"


def partial_path(target: Path) -> Path:
    """Where a download of ``target`` collects its bytes: hidden, beside the target."""
    return target.with_name(f".{target.name}.part")


def sha256_file(path: Path, *, chunk: int = HASH_CHUNK, digest=None):
    """Feed the file's bytes to ``digest`` (a new sha256 if None) and return it."""
    digest = digest or hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content, as the Hub reports ``blobId`` for non-LFS files."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    return sha256_file(path, digest=digest).hexdigest()


def download_models(
    specs: list[DownloadSpec],
    models_dir: Path,
    *,
    hf_token_file: Path | None = None,
    hf_endpoint: str | None = None,
    **options,
) -> list[DownloadResult]:
    """Every declared model, one after the other; one failure does not stop the rest.

    Specs with ``hf_repo`` go through the Hub (hub.py); ``hf_token_file`` is read only then.
    """
    results = []
    for spec in specs:
        if getattr(spec, "hf_repo", None):
            from idp_ops.models.hub import download_hub_model

            results.append(
                download_hub_model(spec, models_dir, token_file=hf_token_file, endpoint=hf_endpoint, **options)
            )
        else:
            results.append(download_model(spec, models_dir, **options))
    return results


def download_model(
    spec: DownloadSpec,
    models_dir: Path,
    *,
    client: httpx.Client | None = None,
    headers: dict[str, str] | None = None,
    log: Callable[[str], None] = lambda _: None,
    progress: Callable[[DownloadProgress], None] | None = None,
    progress_interval_s: float = 5.0,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    chunk_size: int = 1 << 20,
    status_hint: Callable[[int], str | None] | None = None,
) -> DownloadResult:
    """Make ``models_dir/spec.target`` exist with sha256 ``spec.sha256``, downloading it if absent.

    ``max_attempts`` bounds consecutive attempts that brought no new bytes (a
    download that keeps progressing through drops keeps going, a dead one stops);
    backoff doubles from ``backoff_s``. Never raises for network or data problems:
    the result says ``failed`` and why. ``status_hint`` turns a final HTTP status
    (401, 403, 404) into the sentence the operator needs (hub.py: gated repos).
    """
    started = time.monotonic()
    models_dir = Path(models_dir).expanduser().resolve()
    target = models_dir / spec.target
    expected = (spec.sha256 or "").lower()
    git_sha1 = "" if expected else (getattr(spec, "git_sha1", None) or "").lower()
    result = DownloadResult(
        name=spec.name,
        target=str(target),
        url=spec.source_url,
        status="failed",
        message="",
        expected_sha256=expected,
        verified_by="sha256" if expected else "git-blob-sha1",
        expected_git_sha1=git_sha1,
    )
    report = progress or (lambda p: log(p.describe()))

    def finish(status: Status, message: str) -> DownloadResult:
        result.status, result.message = status, message
        result.seconds = round(time.monotonic() - started, 3)
        log(f"{spec.name}: {message}")
        return result

    if not expected and not git_sha1:
        return finish("failed", "no sha256 (nor git blob id) to verify against: refused")
    # A symlinked directory inside models_dir must not carry the target outside it.
    if not target.parent.resolve().is_relative_to(models_dir):
        return finish("failed", f"target {target} resolves outside the models dir {models_dir}: refused")
    if target.is_symlink() or target.exists():
        if not target.is_file():
            return finish("failed", f"{target} exists and is not a regular file: left untouched")
        log(f"{spec.name}: {target.name} present, verifying its sha256")
        try:
            got = sha256_file(target).hexdigest()
        except OSError as exc:
            return finish("failed", f"{target} is present but unreadable ({exc.strerror or exc}): left untouched")
        result.sha256, result.size = got, target.stat().st_size
        if not expected:
            blob = git_blob_sha1(target)
            if blob == git_sha1:
                return finish("skipped", f"present, git blob sha1 verified ({_size(result.size)})")
            return finish(
                "failed",
                f"{target} is present but its git blob sha1 is {blob}, expected {git_sha1}: left untouched "
                "(move it away to download the declared file)",
            )
        if got == expected:
            return finish("skipped", f"present, sha256 verified ({_size(result.size)})")
        return finish(
            "failed",
            f"{target} is present but its sha256 is {got}, expected {expected}: left untouched "
            "(move it away to download the declared file)",
        )

    part = partial_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        return finish("failed", f"cannot create {part}: {exc.strerror or exc}")
    handle = os.fdopen(fd, "r+b")
    try:
        try:
            # Two runs appending to one partial would corrupt it: the second one stops here.
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return finish("failed", f"another download of {target.name} is in progress ({part} is locked)")
        own_client = client is None
        if own_client:
            client = httpx.Client(
                follow_redirects=True,
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
                headers={"User-Agent": "idp-ops"},
            )
        try:
            return _fetch(spec, target, part, handle, client, headers or {}, result, finish, log, report,
                          progress_interval_s, max_attempts, backoff_s, chunk_size, started,
                          status_hint)  # fmt: skip
        finally:
            if own_client:
                client.close()
    finally:
        handle.close()


def _fetch(spec, target, part, handle, client, headers, result, finish, log, report,
           progress_interval_s, max_attempts, backoff_s, chunk_size, started,
           status_hint=None) -> DownloadResult:  # fmt: skip
    digest = hashlib.sha256()
    offset = os.fstat(handle.fileno()).st_size
    if offset:
        # Resume: the hash must cover every byte of the final file, so read what is there first.
        log(f"{spec.name}: resuming after {_size(offset)} already downloaded; hashing them first")
        handle.seek(0)
        remaining = offset
        while remaining:
            block = handle.read(min(HASH_CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
        result.resumed_from = offset
    handle.seek(offset)
    total: int | None = None
    received = 0
    failures = 0
    last_error = ""
    last_report = time.monotonic()
    while True:
        result.attempts += 1
        before = offset
        try:
            request_headers = {**headers, "Accept-Encoding": "identity"}  # Range on raw bytes, not gzip
            if offset:
                request_headers["Range"] = f"bytes={offset}-"
            with client.stream("GET", spec.source_url, headers=request_headers) as response:
                status = response.status_code
                if status == 416 and offset:
                    # Nothing after our offset: the partial is complete, or longer than the file.
                    size = _content_range(response.headers.get("content-range", ""))[2]
                    if size == offset:
                        break
                    log(f"{spec.name}: partial of {_size(offset)} does not fit the remote file; starting over")
                    stale = offset
                    digest, offset = _restart(handle)
                    raise _Retry(f"HTTP 416: the {stale:,}-byte partial is longer than the remote file ({size})")
                if status in RETRYABLE_STATUS:
                    raise _Retry(f"HTTP {status} from {_without_query(response.url)}")
                if status not in (200, 206):
                    hint = status_hint(status) if status_hint else None
                    raise _Fail(hint or f"HTTP {status} from {_without_query(response.url)}")
                if status == 206:
                    start, _end, size = _content_range(response.headers.get("content-range", ""))
                    if start != offset:
                        log(f"{spec.name}: server resumed at byte {start}, not {offset}; starting over")
                        digest, offset = _restart(handle)
                        raise _Retry(f"server answered a different range (byte {start})")
                    total = size
                else:
                    if offset:
                        log(f"{spec.name}: server ignored the Range request; starting over from byte 0")
                        digest, offset = _restart(handle)
                    length = response.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                if total is not None:
                    needed = total - offset
                    free = shutil.disk_usage(part.parent).free
                    if needed > free:
                        raise _Fail(f"needs {_size(needed)} more but {part.parent} has {_size(free)} free")
                for chunk in response.iter_bytes(chunk_size):
                    handle.write(chunk)
                    digest.update(chunk)
                    offset += len(chunk)
                    received += len(chunk)
                    now = time.monotonic()
                    if now - last_report >= progress_interval_s:
                        last_report = now
                        report(DownloadProgress(spec.name, offset, total, received, now - started))
            if total is not None and offset < total:
                raise _Retry(f"connection closed at byte {offset:,} of {total:,}")
            break
        except _Fail as exc:
            result.bytes_downloaded = received
            return finish("failed", f"{exc}{_keep_or_drop(handle, part, offset)}")
        except (_Retry, httpx.TransportError) as exc:
            last_error = f"{type(exc).__name__}: {exc}" if isinstance(exc, httpx.TransportError) else str(exc)
        except OSError as exc:  # the disk, not the network: retrying will not help
            result.bytes_downloaded = received
            return finish("failed", f"writing {part}: {exc.strerror or exc}{_keep_or_drop(handle, part, offset)}")
        handle.flush()
        failures = 0 if offset > before else failures + 1
        if failures >= max_attempts or result.attempts >= max_attempts * 20:
            result.bytes_downloaded = received
            return finish(
                "failed",
                f"gave up after {result.attempts} attempts ({last_error}){_keep_or_drop(handle, part, offset)}",
            )
        delay = min(backoff_s * 2 ** max(failures - 1, 0), 60.0)
        log(
            f"{spec.name}: attempt {result.attempts} failed ({last_error}); resuming at byte {offset:,} in {delay:.1f} s"
        )
        time.sleep(delay)

    handle.flush()
    os.fsync(handle.fileno())
    result.bytes_downloaded = received
    result.size = offset
    result.sha256 = got = digest.hexdigest()
    report(DownloadProgress(spec.name, offset, total or offset, received, time.monotonic() - started))
    resumed = f" (resumed from an earlier partial of {_size(result.resumed_from)})" if result.resumed_from else ""
    if result.expected_sha256 and got != result.expected_sha256:
        part.unlink(missing_ok=True)
        return finish(
            "failed",
            f"sha256 mismatch: expected {result.expected_sha256}, got {got} for {_size(offset)} from "
            f"{spec.source_url}{resumed}; the download was deleted",
        )
    if not result.expected_sha256 and (blob := git_blob_sha1(part)) != result.expected_git_sha1:
        part.unlink(missing_ok=True)
        return finish(
            "failed",
            f"git blob sha1 mismatch: expected {result.expected_git_sha1}, got {blob} for {_size(offset)} from "
            f"{spec.source_url}{resumed}; the download was deleted",
        )
    os.chmod(part, 0o444)  # model files are read-only, for people as for containers
    try:
        # link + unlink never replaces a file that appeared meanwhile (os.replace would).
        os.link(part, target)
    except FileExistsError:
        return finish("failed", f"{target} appeared during the download: left untouched, verified copy kept in {part}")
    except OSError:
        os.replace(part, target)  # a filesystem without hard links; the target was absent a moment ago
    else:
        part.unlink()
    _fsync_dir(target.parent)
    check = "sha256" if result.expected_sha256 else "git blob sha1"
    return finish("downloaded", f"downloaded {_size(offset)} in {time.monotonic() - started:.1f} s, {check} verified")


def _keep_or_drop(handle, part: Path, offset: int) -> str:
    """After a failure: keep real bytes for the next run to resume, drop an empty partial."""
    # Best effort: the failure being reported may be the disk itself.
    with contextlib.suppress(OSError):
        handle.flush()
    if offset:
        return f"; {_size(offset)} kept in {part.name} to resume"
    part.unlink(missing_ok=True)
    return ""


def _restart(handle) -> tuple[hashlib._Hash, int]:
    handle.seek(0)
    handle.truncate()
    return hashlib.sha256(), 0


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    match = _CONTENT_RANGE.search(value)
    if not match:
        return None, None, None
    start, end, size = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(size) if size and size != "*" else None,
    )


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        # Some filesystems refuse fsync on a directory; the rename itself is already done.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _without_query(url: httpx.URL) -> str:
    # A CDN redirect target carries a signed query string: a short-lived credential, not for logs.
    return str(url.copy_with(query=None))


def record_downloads(history_file: Path, results: list[DownloadResult]) -> int:
    """One row per attempt in DuckDB ``model_downloads`` (a URL's signed query string never stored)."""
    import json
    from datetime import UTC, datetime

    from idp_ops.history import database as history

    now = datetime.now(UTC)
    rows = [
        {
            "finished_at": now,
            "name": r.name,
            "target": r.target,
            "url": _without_query(httpx.URL(r.url)) if r.url else None,
            "hf_repo": r.hf_repo,
            "revision": r.revision,
            "commit": r.commit,
            "status": r.status,
            "verified_by": r.verified_by,
            "sha256": r.sha256,
            "size": r.size,
            "bytes_downloaded": r.bytes_downloaded,
            "seconds": r.seconds,
            "attempts": r.attempts,
            "resumed_from": r.resumed_from,
            "files": json.dumps(r.files) if r.files else None,
            "message": r.message,
        }
        for r in results
    ]
    with history.connect(history_file) as con:
        return history.insert_rows(con, "model_downloads", rows)
