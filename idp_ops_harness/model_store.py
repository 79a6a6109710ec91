"""A small model store on real files, bit flips that keep size and mtime, and snapshot backups of it
with the real rsync (the backup tests' shared ground)."""

from __future__ import annotations

import os
from pathlib import Path

from idp_ops.backup.manifest import MANIFEST_NAME, build_manifest, verify
from idp_ops.backup.snapshots import DATA, SNAPSHOTS, backup

MARKER = ".idp-backup-volume"
EXCLUDES = ["*.tmp", "cache/"]


def make_store(root: Path) -> Path:
    files = {
        "llama/model-00001.gguf": os.urandom(300_000),
        "llama/config.json": b'{"a": 1}',
        "qwen/tokenizer.json": b"{}" * 1000,
        "qwen/weights.safetensors": os.urandom(150_000),
        "empty.bin": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def flip_bit(path: Path, offset: int) -> None:
    """One flipped bit, with size and mtime put back exactly as they were."""
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def run_backup(store: Path, dest: Path, **kwargs):
    cache = kwargs.pop("cache_file", store.parent / "history.duckdb")
    manifest = build_manifest(store, cache_file=cache, excludes=EXCLUDES).manifest
    kwargs.setdefault("excludes", EXCLUDES)
    kwargs.setdefault("marker_file", MARKER)
    return backup(store, dest, manifest, **kwargs)


def snapshot_dir(dest: Path, name: str) -> Path:
    return dest / SNAPSHOTS / name


def verify_snapshot(dest: Path, name: str):
    snap = snapshot_dir(dest, name)
    return verify(snap / DATA, snap / MANIFEST_NAME)
