"""The backup volume's shared parts: layout names, errors, the snapshot list, the lock, verified copies.

Used by the backup (core/rsync.py) and the restore (core/backup_restore.py); see
core/rsync.py for the layout and what each part guarantees.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from idp_ops.backup.manifest import BLOCK_SIZE, MANIFEST_NAME
from idp_ops.backup.retention import SNAPSHOT_RE, snapshot_key
from idp_ops.errors import IdpOpsError

SNAPSHOTS = "snapshots"
DATA = "models"
LOCK_NAME = ".lock"


class BackupError(IdpOpsError, RuntimeError):
    """A backup that cannot run or did not produce a good snapshot; the message says why and what to do."""


class DestinationRefused(BackupError):
    pass


class BackupRefused(BackupError):
    """The store is not one a snapshot should be taken of (see backup_guard); nothing was written."""


class RestoreError(IdpOpsError, RuntimeError):
    """A restore that cannot run or was stopped before it replaced a file it could not trust."""


def list_snapshots(destination: Path) -> list[Path]:
    """Verified snapshots, oldest first. Only a verified run renames its directory to a dated name."""
    root = Path(destination) / SNAPSHOTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if SNAPSHOT_RE.match(p.name) and (p / MANIFEST_NAME).is_file()]
    return sorted(found, key=lambda p: snapshot_key(p.name))


@contextmanager
def volume_lock(root: Path, *, shared: bool = False) -> Iterator[None]:
    """The volume's lock: a backup (which prunes) holds it exclusively, a restore shared,
    so a prune never deletes the snapshot being restored and restores do not block each other."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        # A volume mounted read-only for a restore: nothing can prune it anyway.
        fd = _open_or_none(root / LOCK_NAME)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            if shared:
                raise RestoreError(
                    f"a backup is using {root} right now (it holds {root / LOCK_NAME}) and may prune snapshots; "
                    "restore when it has finished"
                ) from None
            try:  # only shared holders: restores are reading
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                holder = "a restore is reading from"
            except BlockingIOError:
                holder = "another backup is writing to"
            raise BackupError(f"{holder} {root} right now (it holds {root / LOCK_NAME}); nothing was done") from None
        yield
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_or_none(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def copy_verified(src: Path, dst: Path, sha256: str) -> bool:
    """Copy ``src`` over ``dst`` atomically, hashing the bytes as they are copied; the
    copy replaces ``dst`` only if it hashes to ``sha256``.

    The temp name ends in .tmp, which the backup excludes, so a copy caught half-way
    by a backup is never taken for a model.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.idp-copy-{os.getpid()}.tmp")
    digest = hashlib.sha256()
    buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)
    try:
        with open(src, "rb", buffering=0) as reader, open(tmp, "wb", buffering=0) as writer:
            while n := reader.readinto(buf):
                digest.update(view[:n])
                writer.write(view[:n])
            writer.flush()
            os.fsync(writer.fileno())
            st = os.fstat(reader.fileno())
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            return False
        shutil.copystat(src, tmp)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        return True
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
