"""Incremental sha256 manifests of a file tree: scan, hash (parallel, cached), write, verify.

A manifest lists every regular file under a root (relative path, size, mtime_ns,
sha256) and every symlink (relative path, target: kept and restored as a link). It is
written as ``manifest.json`` and as ``SHA256SUMS`` (files only), which
``cd ROOT && sha256sum -c SHA256SUMS`` accepts.

Hashing a 500 GB store takes minutes even at the hash limit of the machine, so
hashes are cached in DuckDB (``manifest_cache``), keyed by absolute path with the
file's size, mtime_ns and inode: a file whose stat is unchanged reuses its hash
and an unchanged store costs one stat per file. The cache cannot see bit rot (a
flipped bit leaves the stat alone): that is the scrub's job (core/rsync.py), which
re-reads a rotating slice of the store every run without the cache.

Hashing runs in threads: hashlib releases the GIL while it digests a buffer. Each
thread ``readinto``s a reused 1 MiB buffer (measured here: 1.55 GB/s on one core
beside OpenSSL's 1.73 GB/s; 256 KiB, 4 and 8 MiB blocks were no faster). mmap was
~14% faster with two threads, but a file truncated while mapped kills the process
with SIGBUS, and a backup must survive a model being overwritten under it.
Biggest files go first so one 40 GB file does not start last.

Excludes follow rsync's pattern rules (the subset we need, see ``ExcludeRules``)
so the manifest lists exactly what a backup with the same excludes copies. Files
still being written (``IN_PROGRESS_EXCLUDES``) are never listed, whatever the settings say.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from idp_ops.errors import IdpOpsError
from idp_ops.fsutil import atomic_write_text

MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
# A manifest written into the tree it describes must not list itself.
OWN_FILES = frozenset({MANIFEST_NAME, SUMS_NAME})
FORMAT = "idp-ops-manifest/1"
BLOCK_SIZE = 1 << 20
PROGRESS_INTERVAL_S = 10.0
# Hashes finished so far reach the cache at least this often, so an interrupted
# first pass over a big store does not start from nothing next time.
CACHE_FLUSH_INTERVAL_S = 30.0
# A file that changes under the hasher this many times in a row is reported, not hashed.
CHANGED_RETRIES = 2

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Files still being written are not part of a store, whatever backup.excludes says: a
# half download would hash and verify as what it is, then restore as a broken model.
# core/downloads.py writes ``.<name>.part``; huggingface_hub ``*.incomplete``; our atomic
# writes (fsutil, restore) ``*.tmp``; rsync keeps partial files in ``.rsync-partial/``.
IN_PROGRESS_EXCLUDES = ("*.part", "*.incomplete", "*.tmp", ".rsync-partial/")


class ManifestError(IdpOpsError, RuntimeError):
    """A manifest that cannot be built, read or trusted; the message names the files."""


# -- excludes -----------------------------------------------------------------


class ExcludeRules:
    """rsync exclude patterns, the subset a model store needs.

    * ``name/`` (trailing slash) matches directories only;
    * a pattern without ``/`` matches the last path component at any depth (``*.tmp``);
    * a pattern with ``/`` matches the whole relative path, anchored at the root
      when it starts with ``/``, else at any directory boundary;
    * ``*`` and ``?`` stop at ``/``, ``**`` crosses it, ``[...]`` is a character class.
    """

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = list(patterns)
        self._rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for pattern in self.patterns:
            dir_only = pattern.endswith("/")
            body = pattern.rstrip("/")
            if not body:
                continue
            whole_path = "/" in body or "**" in body
            anchored = body.startswith("/")
            regex = _glob_to_regex(body.lstrip("/"))
            if whole_path and not anchored:
                regex = f"(?:.*/)?{regex}"
            self._rules.append((re.compile(f"^{regex}$", re.DOTALL), dir_only, whole_path))

    def excluded(self, rel_path: str, is_dir: bool) -> bool:
        name = rel_path.rsplit("/", 1)[-1]
        for regex, dir_only, whole_path in self._rules:
            if dir_only and not is_dir:
                continue
            if regex.match(rel_path if whole_path else name):
                return True
        return False


def _glob_to_regex(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                cls = glob[i + 1 : end]
                out.append("[^" + cls[1:] + "]" if cls.startswith("!") else "[" + cls + "]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


# -- scanning -----------------------------------------------------------------


@dataclass(frozen=True)
class FileStat:
    path: str  # relative to the root, '/'-separated
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class LinkStat:
    path: str
    target: str  # what the link holds (os.readlink), not what it resolves to


def scan(root: Path, excludes: Iterable[str] = ()) -> list[FileStat]:
    """Every regular file under ``root``, sorted by path (see scan_tree)."""
    return scan_tree(root, excludes)[0]


def scan_tree(root: Path, excludes: Iterable[str] = ()) -> tuple[list[FileStat], list[LinkStat]]:
    """Every regular file and every symlink under ``root``, each sorted by path.

    Symlinks are listed as links (rsync -a copies them as links; a link to a
    directory is not followed). Sockets and FIFOs are not listed. The manifest's
    own files at the top and files in progress are skipped.
    """
    root = Path(root)
    rules = ExcludeRules([*IN_PROGRESS_EXCLUDES, *excludes])
    found: list[FileStat] = []
    links: list[LinkStat] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        directory = root / rel_dir if rel_dir else root
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not rules.excluded(rel, is_dir=True):
                                stack.append(rel)
                        elif entry.is_file(follow_symlinks=False):
                            if (not rel_dir and entry.name in OWN_FILES) or rules.excluded(rel, is_dir=False):
                                continue
                            st = entry.stat(follow_symlinks=False)
                            found.append(FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino))
                        elif entry.is_symlink() and not rules.excluded(rel, is_dir=False):
                            links.append(LinkStat(rel, os.readlink(entry.path)))
                    except FileNotFoundError:
                        continue  # removed while we listed it: it is simply not part of this pass
        except FileNotFoundError:
            if not rel_dir:
                raise ManifestError(f"{root} does not exist") from None
        except NotADirectoryError:
            raise ManifestError(f"{root} is not a directory") from None
        except PermissionError as exc:
            raise ManifestError(
                f"cannot list {directory}: {exc.strerror} (a backup must be able to read everything)"
            ) from None
    found.sort(key=lambda f: f.path)
    links.sort(key=lambda f: f.path)
    return found, links


# -- hashing ------------------------------------------------------------------

_buffers = threading.local()


def _buffer() -> bytearray:
    # One buffer per thread, reused for every file it hashes.
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(BLOCK_SIZE)
    return buf


class FileChanged(Exception):
    """The file's size or mtime moved while it was being read."""


def hash_file(
    path: Path, *, on_bytes: Callable[[int], None] | None = None, drop_cache: bool = False
) -> tuple[str, os.stat_result]:
    """sha256 of one file and the stat of exactly the content hashed.

    ``drop_cache`` asks the kernel to drop the file's clean pages afterwards: a
    backup copy re-read by a scrub is never needed again, and it should not push
    the models the services have mapped out of the page cache (mapped pages are
    never dropped, so a loaded model is safe either way).
    """
    buf = _buffer()
    view = memoryview(buf)
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        fd = handle.fileno()
        before = os.fstat(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := handle.readinto(buf):
            digest.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
        after = os.fstat(fd)
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise FileChanged(str(path))
    return digest.hexdigest(), before


@dataclass
class HashProgress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float

    @property
    def rate_bytes_s(self) -> float:
        return self.bytes_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        pct = 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0
        eta = (self.bytes_total - self.bytes_done) / self.rate_bytes_s if self.rate_bytes_s else 0.0
        return (
            f"hashed {self.files_done}/{self.files_total} files, "
            f"{_gb(self.bytes_done)}/{_gb(self.bytes_total)} ({pct:.0f}%), "
            f"{self.rate_bytes_s / 1e6:.0f} MB/s, eta {eta:.0f} s"
        )


Progress = Callable[[HashProgress], None]


@dataclass
class HashOutcome:
    # path -> (sha256, stat of the hashed content)
    hashes: dict[str, tuple[str, os.stat_result]]
    vanished: list[str]
    errors: dict[str, str]
    bytes_hashed: int
    seconds: float

    @property
    def rate_bytes_s(self) -> float:
        return self.bytes_hashed / self.seconds if self.seconds > 0 else 0.0


def default_workers(workers: int = 0) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def hash_files(
    root: Path,
    files: Iterable[tuple[str, int]],
    *,
    workers: int = 0,
    progress: Progress | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
    on_batch: Callable[[dict[str, tuple[str, os.stat_result]]], None] | None = None,
    batch_interval_s: float = CACHE_FLUSH_INTERVAL_S,
    drop_cache: bool = False,
) -> HashOutcome:
    """Hash ``(relative path, expected size)`` pairs under ``root`` in parallel threads.

    ``progress`` is called every ``progress_interval_s`` (and once at the end when it
    was called at all); ``on_batch`` receives the hashes finished since its last call
    every ``batch_interval_s`` and at the end. A file that disappears is listed in
    ``vanished``; one that cannot be read, or keeps changing, in ``errors``.
    """
    root = Path(root)
    # Largest first: the pool's tail is then small files, not one huge straggler.
    todo = sorted(files, key=lambda item: item[1], reverse=True)
    started = time.monotonic()
    outcome = HashOutcome({}, [], {}, 0, 0.0)
    if not todo:
        return outcome
    bytes_total = sum(size for _, size in todo)
    # Live byte counter for progress only: an unlocked += may lose a few updates
    # between threads, which a progress line can afford; totals come from results.
    live = [0]

    def count(n: int) -> None:
        live[0] += n

    def work_one(rel: str) -> tuple[str, str | None, os.stat_result | None, str | None]:
        for _ in range(CHANGED_RETRIES + 1):
            try:
                sha, st = hash_file(root / rel, on_bytes=count if progress else None, drop_cache=drop_cache)
                return rel, sha, st, None
            except FileChanged:
                continue
            except FileNotFoundError:
                return rel, None, None, "vanished"
            except OSError as exc:
                return rel, None, None, f"cannot read: {exc.strerror or exc}"
        return rel, None, None, "kept changing while it was read"

    def work(group: list[str]) -> list[tuple[str, str | None, os.stat_result | None, str | None]]:
        return [work_one(rel) for rel in group]

    tasks = _task_groups(todo)
    results: queue.SimpleQueue = queue.SimpleQueue()
    batch: dict[str, tuple[str, os.stat_result]] = {}
    next_report = started + progress_interval_s
    next_flush = started + batch_interval_s
    reported = False
    pool = ThreadPoolExecutor(max_workers=min(default_workers(workers), len(tasks)), thread_name_prefix="sha256")
    try:
        for group in tasks:
            # A done-callback feeding a queue: waiting on the queue is O(1) per task,
            # where concurrent.futures.wait() over 100k pending futures is not.
            pool.submit(work, group).add_done_callback(results.put)
        for _ in range(len(tasks)):
            future = None
            while future is None:
                # A timeout is the moment to report progress and flush the cache, not an error.
                with contextlib.suppress(queue.Empty):
                    future = results.get(timeout=max(0.05, min(next_report, next_flush) - time.monotonic()))
                now = time.monotonic()
                for rel, sha, st, problem in future.result() if future is not None else ():
                    if sha is not None:
                        outcome.hashes[rel] = (sha, st)
                        outcome.bytes_hashed += st.st_size
                        batch[rel] = (sha, st)
                    elif problem == "vanished":
                        outcome.vanished.append(rel)
                    else:
                        outcome.errors[rel] = problem
                if progress and now >= next_report:
                    done_files = len(outcome.hashes) + len(outcome.vanished) + len(outcome.errors)
                    progress(HashProgress(done_files, len(todo), min(live[0], bytes_total), bytes_total, now - started))
                    reported = True
                    next_report = now + progress_interval_s
                if on_batch and batch and now >= next_flush:
                    on_batch(batch)
                    batch = {}
                    next_flush = now + batch_interval_s
    except BaseException:
        # Interrupted: files not started yet are dropped instead of hashed to the end,
        # and what did finish is still handed over (to the cache: not hashed again).
        pool.shutdown(wait=True, cancel_futures=True)
        if on_batch and batch:
            with contextlib.suppress(Exception):  # the interruption is the error worth reporting
                on_batch(batch)
        raise
    pool.shutdown(wait=True)
    outcome.seconds = time.monotonic() - started
    if on_batch and batch:
        on_batch(batch)
    if progress and reported:
        progress(HashProgress(len(todo), len(todo), outcome.bytes_hashed, bytes_total, outcome.seconds))
    outcome.vanished.sort()
    return outcome


# Small files travel to the threads in groups: a task per file costs ~65 us of pool
# overhead (measured), as much as hashing a 100 KB file.
GROUP_BYTES = 16 * 1024 * 1024
GROUP_FILES = 256


def _task_groups(todo: list[tuple[str, int]]) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for rel, size in todo:  # largest first: big files end up alone, small ones together
        current.append(rel)
        current_bytes += size
        if current_bytes >= GROUP_BYTES or len(current) >= GROUP_FILES:
            groups.append(current)
            current, current_bytes = [], 0
    if current:
        groups.append(current)
    return groups


# -- manifests ----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class Manifest:
    root: Path
    entries: dict[str, Entry]  # by relative path, in path order
    created_at: str
    excludes: list[str] = field(default_factory=list)
    # Symlinks by relative path -> their target, kept as links (never followed).
    links: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "root": str(self.root),
            "created_at": self.created_at,
            "excludes": self.excludes,
            "total_files": len(self.entries),
            "total_bytes": self.total_bytes,
            "links": [{"path": path, "target": target} for path, target in sorted(self.links.items())],
            "files": [
                {"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns, "sha256": e.sha256}
                for e in self.entries.values()
            ],
        }

    def with_entries(self, entries: Iterable[Entry]) -> Manifest:
        ordered = {e.path: e for e in sorted(entries, key=lambda e: e.path)}
        return Manifest(self.root, ordered, self.created_at, list(self.excludes), dict(self.links))


@dataclass
class ManifestStats:
    files: int
    bytes: int
    hashed_files: int
    hashed_bytes: int
    reused_files: int
    reused_bytes: int
    vanished: list[str]
    seconds: float
    hash_seconds: float

    @property
    def hash_rate_bytes_s(self) -> float:
        return self.hashed_bytes / self.hash_seconds if self.hash_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "hashed_files": self.hashed_files,
            "hashed_bytes": self.hashed_bytes,
            "reused_files": self.reused_files,
            "reused_bytes": self.reused_bytes,
            "vanished": self.vanished,
            "seconds": round(self.seconds, 3),
            "hash_rate_mb_s": round(self.hash_rate_bytes_s / 1e6, 1),
        }


@dataclass
class ManifestResult:
    manifest: Manifest
    stats: ManifestStats


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_manifest(
    root: Path,
    *,
    cache_file: Path | None = None,
    excludes: Iterable[str] = (),
    workers: int = 0,
    progress: Progress | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> ManifestResult:
    """sha256 of every file under ``root``; with ``cache_file`` (the history DuckDB)
    only files whose (size, mtime_ns, inode) changed since the last pass are read.

    Raises ManifestError naming every file that could not be read (after caching
    the hashes that did succeed, so a retry does not repeat them).
    """
    started = time.monotonic()
    root = Path(root).expanduser().resolve()
    excludes = list(excludes)
    stats, links = scan_tree(root, excludes)
    cache = _load_cache(cache_file, root) if cache_file else {}
    entries: list[Entry] = []
    to_hash: list[FileStat] = []
    for st in stats:
        cached = cache.get(str(root / st.path))
        if cached and cached[:3] == (st.size, st.mtime_ns, st.inode):
            entries.append(Entry(st.path, st.size, st.mtime_ns, cached[3]))
        else:
            to_hash.append(st)
    reused_files, reused_bytes = len(entries), sum(e.size for e in entries)

    def store(batch: dict[str, tuple[str, os.stat_result]]) -> None:
        if cache_file:
            _store_cache(cache_file, root, batch)

    outcome = hash_files(
        root,
        [(f.path, f.size) for f in to_hash],
        workers=workers,
        progress=progress,
        progress_interval_s=progress_interval_s,
        on_batch=store,
    )
    for rel, (sha, st) in outcome.hashes.items():
        entries.append(Entry(rel, st.st_size, st.st_mtime_ns, sha))
    # An empty store is far more often an unmounted disk than a deleted one: keep its
    # cache rows so that 500 GB are not all re-hashed when the disk comes back.
    if cache_file and (stats or links):
        present = {str(root / e.path) for e in entries} | {str(root / rel) for rel in outcome.errors}
        gone = [path for path in cache if path not in present]
        if gone:
            _forget(cache_file, gone)
    if outcome.errors:
        listed = "\n".join(f"  {path}: {why}" for path, why in sorted(outcome.errors.items()))
        raise ManifestError(f"{len(outcome.errors)} file(s) under {root} could not be hashed:\n{listed}")
    manifest = Manifest(root, {}, utc_now_iso(), excludes, {link.path: link.target for link in links})
    manifest = manifest.with_entries(entries)
    return ManifestResult(
        manifest,
        ManifestStats(
            files=len(manifest.entries),
            bytes=manifest.total_bytes,
            hashed_files=len(outcome.hashes),
            hashed_bytes=outcome.bytes_hashed,
            reused_files=reused_files,
            reused_bytes=reused_bytes,
            vanished=outcome.vanished,
            seconds=time.monotonic() - started,
            hash_seconds=outcome.seconds,
        ),
    )


def sha256sums_text(entries: Iterable[Entry]) -> str:
    """``sha256sum -c`` format: ``HASH  PATH``; coreutils' escaped form for names
    holding a backslash, newline or carriage return (the line then starts with ``\\``)."""
    lines = []
    for entry in entries:
        name = entry.path
        if any(c in name for c in "\\\n\r"):
            name = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{entry.sha256}  {name}")
        else:
            lines.append(f"{entry.sha256}  {name}")
    return "".join(line + "\n" for line in lines)


def write_manifest(manifest: Manifest, out_dir: Path) -> tuple[Path, Path]:
    """Write ``manifest.json`` and ``SHA256SUMS`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    sums = out_dir / SUMS_NAME
    json_file = out_dir / MANIFEST_NAME
    try:
        atomic_write_text(sums, sha256sums_text(manifest.entries.values()))
    except UnicodeEncodeError:
        bad = [e.path for e in manifest.entries.values() if not _utf8(e.path)]
        raise ManifestError(
            f"file names that are not valid UTF-8 cannot go into {SUMS_NAME}: {bad[:10]} (rename them)"
        ) from None
    atomic_write_text(json_file, manifest_json_text(manifest))
    return json_file, sums


def manifest_json_text(manifest: Manifest) -> str:
    """manifest.json with one file per line: readable and diffable, and encoded by the C
    JSON encoder line by line (``indent=`` switches json to its pure-Python encoder,
    several times slower on a manifest of 100k files)."""
    data = manifest.to_json()
    files = data.pop("files")
    head = json.dumps(data, indent=2, sort_keys=True)
    lines = ",\n    ".join(json.dumps(f) for f in files)
    body = f'  "files": [\n    {lines}\n  ]' if files else '  "files": []'
    return head[:-2] + ",\n" + body + "\n}\n"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def load_manifest(path: Path) -> Manifest:
    """Read a manifest.json, refusing anything that could make a restore write outside its root."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
        raise ManifestError(f"{path} is not an idp-ops manifest (expected format {FORMAT!r})")
    entries = []
    for item in data["files"]:
        try:
            entry = Entry(str(item["path"]), int(item["size"]), int(item["mtime_ns"]), str(item["sha256"]))
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{path}: malformed file entry {item!r}") from None
        if not _safe_rel(entry.path) or not _SHA256_RE.match(entry.sha256):
            raise ManifestError(f"{path}: refusing unsafe or malformed entry {entry.path!r}")
        entries.append(entry)
    links = {}
    for item in data.get("links") or []:  # absent in manifests written before links were kept
        if not isinstance(item, dict) or not isinstance(item.get("target"), str) or not item["target"]:
            raise ManifestError(f"{path}: malformed link entry {item!r}")
        if not isinstance(item.get("path"), str) or not _safe_rel(item["path"]):
            raise ManifestError(f"{path}: refusing unsafe or malformed link {item.get('path')!r}")
        links[item["path"]] = item["target"]
    header = Manifest(
        Path(data.get("root", "")), {}, str(data.get("created_at", "")), list(data.get("excludes", [])), links
    )
    return header.with_entries(entries)


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return not rel.startswith("/") and ".." not in parts and "" not in parts


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    mismatched: list[str]
    missing: list[str]
    # Why each mismatched file failed (size differs, hash differs, unreadable): for people.
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "mismatched": self.mismatched, "missing": self.missing}


def verify(
    root: Path,
    manifest: Manifest | Path,
    *,
    workers: int = 0,
    progress: Progress | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
    drop_cache: bool = False,
) -> VerifyResult:
    """Re-hash every file the manifest lists under ``root`` (never the cache); check every link's target."""
    root = Path(root)
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory")
    result = check_entries(
        root,
        manifest.entries.values(),
        workers=workers,
        progress=progress,
        progress_interval_s=progress_interval_s,
        drop_cache=drop_cache,
    )
    missing, mismatched, reasons = check_links(root, manifest.links)
    result.missing = sorted(result.missing + missing)
    result.mismatched = sorted(result.mismatched + mismatched)
    result.reasons.update(reasons)
    result.checked += len(manifest.links)
    result.ok = not result.missing and not result.mismatched
    return result


def check_links(root: Path, links: Mapping[str, str]) -> tuple[list[str], list[str], dict[str, str]]:
    """Compare symlinks under ``root`` with ``links``: (missing, mismatched, reasons)."""
    missing, mismatched, reasons = [], [], {}
    for rel, target in sorted(links.items()):
        try:
            held = os.readlink(Path(root) / rel)
        except FileNotFoundError:
            missing.append(rel)
            continue
        except OSError as exc:  # EINVAL: there is something, but not a link
            mismatched.append(rel)
            reasons[rel] = "not a symlink" if exc.errno == errno.EINVAL else f"cannot read the link: {exc.strerror}"
            continue
        if held != target:
            mismatched.append(rel)
            reasons[rel] = f"symlink points to {held!r}, manifest says {target!r}"
    return missing, mismatched, reasons


def check_entries(
    root: Path,
    entries: Iterable[Entry],
    *,
    workers: int = 0,
    progress: Progress | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
    drop_cache: bool = False,
) -> VerifyResult:
    """Compare files under ``root`` with ``entries``: size first (free), then sha256."""
    entries = list(entries)
    missing, mismatched, reasons = [], [], {}
    to_hash: list[Entry] = []
    for entry in entries:
        try:
            st = os.stat(root / entry.path, follow_symlinks=False)
        except FileNotFoundError:
            missing.append(entry.path)
            continue
        except OSError as exc:
            mismatched.append(entry.path)
            reasons[entry.path] = f"cannot stat: {exc.strerror}"
            continue
        if not stat.S_ISREG(st.st_mode):
            mismatched.append(entry.path)
            reasons[entry.path] = "not a regular file"
        elif st.st_size != entry.size:
            mismatched.append(entry.path)
            reasons[entry.path] = f"size {st.st_size}, manifest says {entry.size}"
        else:
            to_hash.append(entry)
    outcome = hash_files(
        root,
        [(e.path, e.size) for e in to_hash],
        workers=workers,
        progress=progress,
        progress_interval_s=progress_interval_s,
        drop_cache=drop_cache,
    )
    vanished = set(outcome.vanished)
    for entry in to_hash:
        if entry.path in vanished:
            missing.append(entry.path)
        elif entry.path in outcome.errors:
            mismatched.append(entry.path)
            reasons[entry.path] = outcome.errors[entry.path]
        elif outcome.hashes[entry.path][0] != entry.sha256:
            mismatched.append(entry.path)
            reasons[entry.path] = "sha256 differs from the manifest"
    missing.sort()
    mismatched.sort()
    return VerifyResult(not missing and not mismatched, len(entries), mismatched, missing, reasons)


# -- the DuckDB cache ---------------------------------------------------------


def _load_cache(cache_file: Path, root: Path) -> dict[str, tuple[int, int, int, str]]:
    from idp_ops.history import database as history

    prefix = str(root).rstrip("/") + "/"
    with history.connect(cache_file) as con:
        rows = con.execute(
            "SELECT path, size, mtime_ns, inode, sha256 FROM manifest_cache WHERE starts_with(path, ?)", [prefix]
        ).fetchall()
    return {path: (size, mtime_ns, inode, sha) for path, size, mtime_ns, inode, sha in rows}


def _store_cache(cache_file: Path, root: Path, batch: Mapping[str, tuple[str, os.stat_result]]) -> None:
    from idp_ops.history import database as history

    # One bulk statement: the columns travel as five list parameters that UNNEST zips
    # back into rows (no round trip per row, and no pandas import on the hot path).
    columns = [
        [str(root / rel) for rel in batch],
        [st.st_size for _, st in batch.values()],
        [st.st_mtime_ns for _, st in batch.values()],
        [st.st_ino for _, st in batch.values()],
        [sha for sha, _ in batch.values()],
    ]
    with history.connect(cache_file) as con:
        con.execute(
            """INSERT OR REPLACE INTO manifest_cache
               SELECT unnest(?::VARCHAR[]), unnest(?::BIGINT[]), unnest(?::BIGINT[]), unnest(?::BIGINT[]),
                      unnest(?::VARCHAR[]), now()""",
            columns,
        )


def _forget(cache_file: Path, paths: Iterable[str]) -> None:
    """Drop cache rows of files that are gone, so the cache does not grow forever."""
    from idp_ops.history import database as history

    with history.connect(cache_file) as con:
        con.execute("DELETE FROM manifest_cache WHERE path IN (SELECT unnest(?::VARCHAR[]))", [list(paths)])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"
